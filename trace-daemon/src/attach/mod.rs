//! Getting events out of the kernel: the hook table (which kernel function
//! serves which role), the plan for this kernel, the BPF loader, the live
//! loop that drains the ring buffer, and the delivery self-test.
mod detach;
pub mod forward;
pub mod gate;
pub mod handoff;
pub mod hooks;
mod late_kallsyms;
pub mod live;
pub mod loader;
pub mod lost_totals;
pub mod modules;
pub mod plan;
pub mod reload;
pub mod ring_fill;
pub mod selftest;
mod signals;
mod ticker;
mod verifier;
