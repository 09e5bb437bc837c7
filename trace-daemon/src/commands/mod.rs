//! What the `kvscope` binary runs: the CLI definition and one module per
//! command (the daemon's lives in `service`).
pub mod check;
pub mod cli;
pub mod lock_modes;
pub mod manpage;
pub mod offline;
pub mod record;
pub mod run;
pub mod top;
pub mod trace;
