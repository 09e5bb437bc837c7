//! One body per hook, stamped into both flavours.
//!
//! A hook's logic is written once against [`Call`] (its arguments and, at exit,
//! its return value). The macros below make the thin `fentry_`/`fexit_` and
//! `kprobe_`/`kretprobe_` programs around it. kretprobes have no arguments, so
//! the kprobe flavour stashes them at entry (only when the entry logic asks: the
//! mutex hooks stash only for watched locks) and the kretprobe takes them back.
use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid};

use crate::maps::{ARG_STASH, StashKey};

/// The arguments (and return value, at exit) of a traced call.
pub struct Call {
    pub args: [u64; 3],
    pub ret: Option<i64>,
}

impl Call {
    #[inline(always)]
    pub fn arg(&self, n: usize) -> u64 {
        if n < 3 { self.args[n] } else { 0 }
    }
}

/// The first three arguments of an fentry/fexit program, as plain numbers.
/// Read directly, the trampoline's context gives typed BTF pointers, on which
/// the verifier refuses any arithmetic (hashing a lock address, for one);
/// bpf_get_func_arg hands back scalars, as the kprobe flavour sees them, and
/// the verifier inlines it into the same loads.
#[inline(always)]
pub fn trampoline_args<C: aya_ebpf::EbpfContext>(ctx: &C) -> [u64; 3] {
    let mut a = [0u64; 3];
    for (n, v) in a.iter_mut().enumerate() {
        // Fails (leaving 0) past the function's own argument count.
        let _ = unsafe {
            aya_ebpf::helpers::generated::bpf_get_func_arg(ctx.as_ptr(), n as u32, v as *mut u64)
        };
    }
    a
}

#[inline(always)]
fn key(hook: u16) -> StashKey {
    StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        hook: hook as u64,
    }
}

#[inline(always)]
pub fn stash<C: EbpfContext>(ctx: &C, hook: u16, args: &[u64; 3]) {
    if ARG_STASH.insert(key(hook), *args, 0).is_err() {
        // Full map (slow path): the exit event of this call is lost; count it
        // and say so.
        crate::emit::count_lost(hook as u32);
        crate::emit::count_drop(trace_common::DropCause::StashFull, hook as u32);
        aya_log_ebpf::warn!(ctx, "ARG_STASH full: exit of hook {} lost", hook);
    }
}

#[inline(always)]
pub fn unstash(hook: u16) -> Option<[u64; 3]> {
    let k = key(hook);
    let v = unsafe { ARG_STASH.get(k) }.copied();
    if v.is_some() {
        let _ = ARG_STASH.remove(k);
    }
    v
}

/// Entry-only hook: `$logic(&ctx, &Call) -> bool` (the bool is ignored).
macro_rules! entry_hook {
    ($fentry:ident, $kprobe:ident, $logic:path) => {
        #[aya_ebpf::macros::fentry]
        pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            let call = $crate::hook::Call {
                args: $crate::hook::trampoline_args(&ctx),
                ret: None,
            };
            let _ = $logic(&ctx, &call);
            0
        }

        #[aya_ebpf::macros::kprobe]
        pub fn $kprobe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            let call = $crate::hook::Call {
                args: [
                    ctx.arg(0).unwrap_or(0),
                    ctx.arg(1).unwrap_or(0),
                    ctx.arg(2).unwrap_or(0),
                ],
                ret: None,
            };
            let _ = $logic(&ctx, &call);
            0
        }
    };
}

/// Exit-only hook: `$exit(&ctx, &Call)` with `ret` set. The fexit flavour sees
/// the arguments itself; the kprobe flavour stashes them at entry.
macro_rules! exit_hook {
    ($hook:expr, $fexit:ident, $kprobe:ident, $kretprobe:ident, $exit:path) => {
        exit_hook!(
            $hook,
            $fexit,
            $kprobe,
            $kretprobe,
            $exit,
            $crate::hook::keep_args
        );
    };
    // `$stash(&Call) -> bool`: whether the kprobe flavour keeps this call's
    // arguments for its exit (hot hooks keep only the calls they report).
    ($hook:expr, $fexit:ident, $kprobe:ident, $kretprobe:ident, $exit:path, $stash:path) => {
        $crate::hook::fexit_body!($fexit, $exit);

        #[aya_ebpf::macros::kprobe]
        pub fn $kprobe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            let call = $crate::hook::Call {
                args: [
                    ctx.arg(0).unwrap_or(0),
                    ctx.arg(1).unwrap_or(0),
                    ctx.arg(2).unwrap_or(0),
                ],
                ret: None,
            };
            if $stash(&call) {
                $crate::hook::stash(&ctx, $hook as u16, &call.args);
            }
            0
        }

        $crate::hook::kretprobe_body!($hook, $kretprobe, $exit);
    };
}

/// Hook with both bodies: `$entry(&ctx, &Call) -> bool` (true: the exit needs
/// this call's arguments) and `$exit(&ctx, &Call)`.
macro_rules! entry_exit_hook {
    ($hook:expr, $fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident, $entry:path, $exit:path) => {
        #[aya_ebpf::macros::fentry]
        pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            let call = $crate::hook::Call {
                args: $crate::hook::trampoline_args(&ctx),
                ret: None,
            };
            let _ = $entry(&ctx, &call);
            0
        }

        $crate::hook::fexit_body!($fexit, $exit);

        #[aya_ebpf::macros::kprobe]
        pub fn $kprobe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            let call = $crate::hook::Call {
                args: [
                    ctx.arg(0).unwrap_or(0),
                    ctx.arg(1).unwrap_or(0),
                    ctx.arg(2).unwrap_or(0),
                ],
                ret: None,
            };
            if $entry(&ctx, &call) {
                $crate::hook::stash(&ctx, $hook as u16, &call.args);
            }
            0
        }

        $crate::hook::kretprobe_body!($hook, $kretprobe, $exit);
    };
}

/// The fexit program: arguments and return value straight from the trampoline.
macro_rules! fexit_body {
    ($fexit:ident, $exit:path) => {
        #[aya_ebpf::macros::fexit]
        pub fn $fexit(ctx: aya_ebpf::programs::FExitContext) -> u32 {
            let call = $crate::hook::Call {
                args: $crate::hook::trampoline_args(&ctx),
                ret: ctx.ret::<i64>().ok(),
            };
            $exit(&ctx, &call);
            0
        }
    };
}
pub(crate) use fexit_body;

macro_rules! kretprobe_body {
    ($hook:expr, $kretprobe:ident, $exit:path) => {
        #[aya_ebpf::macros::kretprobe]
        pub fn $kretprobe(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            if let Some(args) = $crate::hook::unstash($hook as u16) {
                let call = $crate::hook::Call {
                    args,
                    ret: Some(ctx.ret::<i64>()),
                };
                $exit(&ctx, &call);
            }
            0
        }
    };
}
pub(crate) use kretprobe_body;

/// Default stash filter of exit hooks: every call the `--pid` filter lets through.
#[inline(always)]
pub fn keep_args(_call: &Call) -> bool {
    crate::emit::wanted()
}
