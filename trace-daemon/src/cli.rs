//! Command-line interface definitions.
use clap::{Args, Parser, Subcommand};

use crate::trace::VmSel;

#[derive(Parser)]
#[command(
    name = "kvscope",
    version,
    about = "Trace and diagnose the VFIO <-> KVM path: VM refcounts, device opens, lock order",
    long_about = "kvscope watches the VFIO <-> KVM boundary of a Linux host with eBPF: \
        references to each VM (struct kvm users_count), VFIO device opens and releases, \
        and the mutexes on that path.\n\n\
        Start with `kvscope check` to see which roles this host lets kvscope attach, \
        and how; then `kvscope trace` to watch events live.",
    after_help = "Examples:\n  \
        kvscope check                 what can be attached here, and why\n  \
        kvscope check --json          the same, for scripts\n  \
        kvscope trace                 live events, one line each\n  \
        kvscope trace --vm 4242       only VMs created by pid 4242 (and their lock events)\n  \
        kvscope trace --json --stacks events as JSON lines"
)]
pub struct Cli {
    /// Log level of kvscope's own diagnostics (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn", env = "KVSCOPE_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Report what this host lets kvscope see: per role the symbol chosen, the
    /// attach method and why; BTF, kprobes, tracefs; the VFIO/KVM stack variant;
    /// the resulting tier. Exit status 0 when usable.
    Check(CheckArgs),
    /// Attach and print events live until Ctrl-C or SIGTERM.
    Trace(TraceArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TraceArgs {
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only this thread group (also filtered in the kernel).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only threads with this command name (exact, as in /proc/PID/comm).
    #[arg(long)]
    pub comm: Option<String>,
    /// Only one VM: its struct kvm address (0x...) or the pid that created it.
    #[arg(long, value_name = "ADDR|PID")]
    pub vm: Option<VmSel>,
    /// Print symbolised kernel stacks under events that carry one.
    #[arg(long)]
    pub stacks: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = 4 << 20, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
}

pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!(
            "{v} must be a power of two of at least 4096 (the kernel requires it for ring buffers)"
        ));
    }
    Ok(v)
}
