//! kvscope's kernel-side programs.
//!
//! One program per hook and flavour: `fentry_<fn>`/`fexit_<fn>` (tier 1) and
//! `kprobe_<fn>`/`kretprobe_<fn>` (tier 2) share one body per hook (see
//! `hook.rs`); `tp_<name>` programs are the tracepoint tier (3). The loader picks
//! which to load and attach; every event goes to the `EVENTS` ring buffer as a
//! `trace_common::Event`.
#![no_std]
#![no_main]

mod config;
mod emit;
mod held;
#[macro_use]
mod hook;
mod kread;
mod maps;
mod probes;
mod uapi;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the tracing helpers need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
