//! kvscope: eBPF tracing and diagnosis of the VFIO <-> KVM path.
//!
//! Edges (kernel facts, loading, outputs, CLI) read and write the world; the
//! analysis engine (`engine`) only takes typed events (`event`) and returns state
//! and findings, so it runs the same live, in replay and in tests.
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod event;
pub mod hexaddr;
pub mod hooks;
pub mod html;
pub mod jsonl;
pub mod kernel;
pub mod live;
pub mod loader;
pub mod metrics;
pub mod offline;
pub mod plan;
pub mod private_file;
pub mod record;
pub mod recording;
pub mod render;
pub mod report;
pub mod scenario;
pub mod selftest;
pub mod trace;
pub mod visual;
pub mod workload;
