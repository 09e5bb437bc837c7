//! kvscope: eBPF tracing and diagnosis of the VFIO <-> KVM path.
//!
//! Layers, dependencies pointing down only:
//! - `commands`: what the CLI runs (check, trace, record, the offline readers).
//! - `attach` (hook table, plan, loader, live loop), `engine` (pure analysis:
//!   events in, typed state and findings out), `output` (text, JSON, HTML,
//!   Perfetto: rendered from the engine's data), `recording` (file formats),
//!   `service` (the daemon: config, metrics).
//! - `event`: the typed event model, decoded from the ABI (`trace_common`).
//! - `kernel`: facts about the running kernel (BTF, kallsyms, tracefs).
//!
//! The engine imports no output; the scenario and workload generators live
//! in the `kvscope-testkit` crate, out of the shipped library.
pub mod attach;
pub mod commands;
pub mod engine;
pub mod event;
pub mod hexaddr;
pub mod identity;
pub mod kernel;
pub mod memory;
pub mod output;
pub mod recording;
pub mod service;
pub mod vm_sel;
