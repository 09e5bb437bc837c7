//! Detaching: every program of the object together, since each detach waits
//! for the kernel's grace periods; the links the kernel releases one at a time
//! are left to a child (attach/handoff.rs).
use aya::{Ebpf, programs::Program};

use super::handoff::Handoff;

/// Detaches and unloads every program of `ebpf`. fentry and fexit first, each
/// in a thread of its own: their trampoline updates wait for grace periods
/// outside any global mutex, so run together those waits overlap. Then the
/// kprobes and tracepoints, whose release the kernel serialises: a child takes
/// their links over and releases them after this process let go (or, when no
/// child can be made, threads here do). Programs never loaded cost nothing.
pub fn detach_programs(ebpf: &mut Ebpf) {
    let t = std::time::Instant::now();
    let (trampolines, perf): (Vec<&mut Program>, Vec<&mut Program>) = ebpf
        .programs_mut()
        .map(|(_, p)| p)
        .filter(|p| p.fd().is_ok())
        .partition(|p| matches!(p, Program::FEntry(_) | Program::FExit(_)));
    let (nt, np) = (trampolines.len(), perf.len());
    unload_together(trampolines);
    log::info!(
        "detached {nt} fentry/fexit programs: {} ms",
        t.elapsed().as_millis()
    );
    match Handoff::start() {
        // Closing what the child also holds is quick: no threads to start.
        Some(h) => {
            perf.into_iter().for_each(unload);
            h.go();
        }
        None => unload_together(perf),
    }
    log::info!(
        "detached {np} kprobe/tracepoint programs: {} ms",
        t.elapsed().as_millis()
    );
}

fn unload_together(mut progs: Vec<&mut Program>) {
    std::thread::scope(|s| {
        for p in progs.iter_mut() {
            s.spawn(move || unload(p));
        }
    });
}

/// Detaches and unloads one program of the kinds kvscope uses; a program
/// never loaded (its role not attached here) has nothing to undo.
pub fn unload(p: &mut Program) {
    let _ = match p {
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        _ => Ok(()),
    };
}
