//! Detaching: every program of the object together, since each detach waits
//! for the kernel's grace periods.
use aya::{Ebpf, programs::Program};

/// Detaches and unloads every program of `ebpf`, each in a thread of its own.
/// A detach waits for grace periods (trampoline updates, kprobe and tracepoint
/// unregistration), some of them outside the kernel's global mutexes: run
/// together, those waits overlap. Programs never loaded cost nothing.
pub fn detach_programs(ebpf: &mut Ebpf) {
    let t = std::time::Instant::now();
    let mut progs: Vec<&mut Program> = ebpf
        .programs_mut()
        .map(|(_, p)| p)
        .filter(|p| p.fd().is_ok())
        .collect();
    let n = progs.len();
    std::thread::scope(|s| {
        for p in progs.iter_mut() {
            s.spawn(move || unload(p));
        }
    });
    log::info!("detached {n} programs: {} ms", t.elapsed().as_millis());
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
