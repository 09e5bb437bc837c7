//! Rendering at the edge: everything here is a pure function of the engine's
//! data and the recording's metadata (text, JSON, HTML, Perfetto).
pub mod ci_results;
pub mod event_line;
pub mod finding_text;
pub mod html;
pub mod perfetto;
pub mod report;
pub mod wall;
