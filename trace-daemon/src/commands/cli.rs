//! Command-line interface definitions.
use clap::{Args, Parser, Subcommand};

use crate::attach::plan::LockWatch;

use crate::vm_sel::VmSel;

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
        kvscope trace --json --stacks events as JSON lines\n  \
        kvscope record -o run.kvs     capture now (Ctrl-C to stop) ...\n  \
        kvscope replay run.kvs        ... analyse anywhere\n  \
        kvscope timeline run.kvs --vm 0xffff888102760000\n  \
        kvscope report run.kvs --format html -o run.html   one page (created 0600)\n  \
        kvscope events run.kvs --pid 4242   the raw events, as recorded"
)]
pub struct Cli {
    /// Log level of kvscope's own diagnostics: off, error, warn, info, debug,
    /// trace, or env_logger directives such as `kvscope=debug,aya=warn`.
    #[arg(long, global = true, default_value = "warn", env = "KVSCOPE_LOG", value_parser = parse_log)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// `--btf`, on the commands that read the kernel (not repeated in the help
/// of every other one).
#[derive(Args, Clone, Debug, Default)]
pub struct BtfArgs {
    /// BTF for kernel modules that carry none (kernels before 5.11: KVM and
    /// VFIO types live in modules): a module's debug `.ko` from the
    /// distribution's debug package after `pahole -J` (its build id must be
    /// the running module's, or it is refused), or a raw BTF file (used,
    /// said unverified). Repeatable; KVSCOPE_BTF takes a colon-separated
    /// list. `check` says where each struct offset was read.
    #[arg(
        long = "btf",
        value_name = "FILE",
        env = "KVSCOPE_BTF",
        value_delimiter = ':'
    )]
    pub btf: Vec<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Report what this host lets kvscope see: per role the symbol chosen, the
    /// attach method and why; BTF, kprobes, tracefs; the VFIO/KVM stack variant;
    /// the resulting tier. Exit status 0 when usable.
    Check(CheckArgs),
    /// Attach and print events live, with the findings they raise, until
    /// Ctrl-C or SIGTERM.
    Trace(TraceArgs),
    /// Attach and write the raw event stream to a file for later analysis.
    Record(RecordArgs),
    /// Run the analysis engine over a recording: summary and findings.
    Replay(ReplayArgs),
    /// A live, refreshing view of the host's VMs, one row each: name, pid,
    /// users_count, who holds it, VFIO devices open, findings; losses in the
    /// header. On a terminal the screen is redrawn every --interval; piped,
    /// or with --batch N, it prints N plain tables and exits.
    #[command(after_help = "Examples:\n  \
        kvscope top\n  \
        kvscope top --vm lab-a --interval 1\n  \
        kvscope top --batch 3 --sort users      three tables, for a script or a log")]
    Top(TopArgs),
    /// One VM's or one VFIO device's history from a recording.
    Timeline(TimelineArgs),
    /// Run as the fleet service: attach, analyse continuously, write findings to
    /// a JSON-lines file and the journal, serve Prometheus metrics. SIGHUP
    /// reloads the config file; SIGTERM detaches and exits.
    Daemon(DaemonArgs),
    /// Run a command under kvscope and judge it, for kernel CI.
    ///
    /// Attach (deep lock watching by default), wait until ready, run CMD (its streams
    /// passed through, signals sent to kvscope passed on), wait for its whole
    /// process tree, detach, and print the findings that involve the tree as
    /// `report` does. Exit status: CMD's own when it failed; else 90 when
    /// findings reach --fail-on, 91 when events were lost or kvscope was
    /// blind for a while, 0 when clean; 125 when kvscope itself failed,
    /// 126/127 when CMD cannot be executed / is not found.
    #[command(after_help = "Examples:\n  \
        kvscope run -- ./kvm_create_max_vcpus\n  \
        kvscope run --junit kvscope.xml --fail-on warning -- make -C tools/testing/selftests/kvm run_tests\n  \
        kvscope run --tap -- ./vfio_test      TAP on standard output after the command's\n  \
        kvscope run -o run.kvs -- qemu-system-x86_64 ...   keep the recording for replay")]
    Run(RunArgs),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Summarise a recording: text, JSON, a self-contained HTML page with a
    /// picture of each VM's references, or Perfetto / Chrome trace-event JSON.
    Report(ReportArgs),
    /// Dump a recording's raw events, one line (or JSON object) each, as
    /// `perf script` does: what the kernel side sent, before any analysis.
    Events(EventsArgs),
    /// Print a shell completion script: `kvscope completions bash >
    /// /etc/bash_completion.d/kvscope` (also zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): `kvscope manpage | man -l -` (kvscope(1)),
    /// `kvscope manpage run` (kvscope-run(1)); `--dir DIR` writes them all.
    Manpage(ManpageArgs),
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// A level, or comma-separated `target=level` directives; an unknown level is
/// an error (env_logger would ignore it silently).
pub fn parse_log(s: &str) -> Result<String, String> {
    for d in s.split(',').filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} is not a log level: use one of {} (or target=level, comma-separated)",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(s.to_owned())
}

impl Command {
    /// The `--btf` files of a command that reads the kernel.
    pub fn btf(&self) -> &[std::path::PathBuf] {
        match self {
            Command::Check(a) => &a.kernel.btf,
            Command::Trace(a) => &a.kernel.btf,
            Command::Record(a) => &a.kernel.btf,
            Command::Daemon(a) => &a.kernel.btf,
            Command::Run(a) => &a.kernel.btf,
            Command::Timeline(a) => &a.kernel.btf,
            Command::Top(a) => &a.kernel.btf,
            _ => &[],
        }
    }

    /// Commands that attach and run until a signal: they hold SIGINT, SIGTERM
    /// and SIGHUP from the start until their handlers are installed.
    pub fn is_live(&self) -> bool {
        match self {
            Command::Trace(_)
            | Command::Record(_)
            | Command::Daemon(_)
            | Command::Run(_)
            | Command::Top(_) => true,
            Command::Timeline(t) => t.live,
            _ => false,
        }
    }
}

#[derive(Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// Config file (TOML; see packaging/kvscope.toml). Defaults without one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Prometheus endpoint address, overriding the config's metrics_listen.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// TLS and basic auth for the endpoint, overriding the config's
    /// web_config: a file in the Prometheus exporter-toolkit's format
    /// (tls_server_config, basic_auth_users with bcrypt hashes), read again
    /// on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct ManpageArgs {
    /// The command whose page to print (default: kvscope's own).
    pub command: Option<String>,
    /// Write every page (kvscope.1, kvscope-COMMAND.1) into this directory.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file without starting anything; prints the effective
    /// configuration.
    Check { path: std::path::PathBuf },
}

#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// Output file (overwritten).
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Stop after this many seconds (default: at Ctrl-C / SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Only this thread group (filtered in the kernel).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = trace_common::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// How watched locks are followed: `deep` hooks the mutex API (every
    /// mutex of the host pays a filter) and traces ioctl/close (every syscall
    /// of the host takes the slow path); `lean` hooks no mutex and no syscall
    /// where function hooks work (tiers 1-2): it reads the held locks' owner
    /// words at the VFIO/KVM path hooks and at lock contention, orders them by
    /// the lock table, and follows VMs from /dev/kvm's handler. Lean sees no
    /// long-hold and no lock order outside the table: `kvscope check` lists
    /// what each mode raises here.
    #[arg(long = "locks", value_enum, default_value_t = LockWatch::Lean)]
    pub lock_watch: LockWatch,
    /// Take no kernel stacks (the daemon's `stacks = false`): the hooked
    /// path's cheapest setting; findings then show no stack.
    #[arg(long)]
    pub no_stacks: bool,
    /// Take a stack at every path hook, also at KVM_SET_DEVICE_ATTR's handler
    /// and the VFIO file link it makes, whose call path the events around them
    /// already name (by default they take none: a stack is most of their
    /// cost).
    #[arg(long, conflicts_with = "no_stacks")]
    pub every_stack: bool,
    /// Create the file world-readable (0644). By default it is 0600: it holds
    /// kernel addresses and stacks, which the kernel hides from other users.
    #[arg(long)]
    pub share: bool,
}

/// The order of `top`'s rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TopSort {
    /// By name (libvirt domain, QEMU -name, comm[pid]).
    Name,
    /// Most references first.
    Users,
    /// By creating process.
    Pid,
    /// Most findings first.
    Findings,
}

#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Only this VM: a name (libvirt domain, QEMU -name or uuid), the pid
    /// that created it, or its kvm address (0x...).
    #[arg(long, value_name = "NAME|PID|0xADDR")]
    pub vm: Option<VmSel>,
    #[arg(long, value_enum, default_value_t = TopSort::Name)]
    pub sort: TopSort,
    /// Print this many plain tables (one per interval), then exit: for
    /// scripts and logs. Without it, a terminal is redrawn until Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// How watched locks are followed (as for `record --locks`); deep by
    /// default: a test run wants every lock rule checked.
    #[arg(long = "locks", value_enum, default_value_t = LockWatch::Deep)]
    pub lock_watch: LockWatch,
    /// The least severe finding that fails the run (exit 90).
    #[arg(long, value_enum, value_name = "SEVERITY", default_value = "error")]
    pub fail_on: FailOn,
    /// Write JUnit XML here: a test case for the command, one for coverage,
    /// and one per finding kind and VM, the findings' text and stacks in
    /// the failure.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// Write TAP version 13: `--tap` on standard output after CMD's,
    /// `--tap=FILE` to a file (use that when CMD prints TAP itself).
    #[arg(long, value_name = "FILE", require_equals = true, num_args = 0..=1, default_missing_value = "-")]
    pub tap: Option<std::path::PathBuf>,
    /// Keep the recording here for replay, report and timeline (else it
    /// is a private temporary file, removed).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Judge every finding on the host, not only those involving CMD's
    /// process tree (the VMs it created, its threads).
    #[arg(long)]
    pub all: bool,
    /// Create -o, --junit and --tap files world-readable (0644), not 0600.
    #[arg(long)]
    pub share: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = trace_common::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// After CMD ends, how long the rest of its process tree is waited for.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub tree_grace: u64,
    /// After the tree ended, record this much longer: what its last closes
    /// set off in the kernel (deferred puts, work items) is judged too.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub settle_ms: u64,
    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", trailing_var_arg = true, required = true, num_args = 1..)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// A file written by `kvscope record`.
    pub file: std::path::PathBuf,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub offline: OfflineArgs,
}

/// What the offline commands share: damaged files, selections, thresholds.
#[derive(Args, Clone, Debug, Default)]
pub struct OfflineArgs {
    /// Analyse what survived in a damaged recording and exit 0 (without it a
    /// damaged file is reported, then exit 1).
    #[arg(long)]
    pub salvage: bool,
    /// Only this VM, its devices and findings: its libvirt domain, QEMU
    /// -name or uuid (as recorded), the pid that created it, or its struct
    /// kvm address (0x...).
    #[arg(
        long = "vm",
        value_name = "NAME|PID|0xADDR",
        conflicts_with = "pid_filter"
    )]
    pub vm_filter: Option<VmSel>,
    /// Only VMs created by this process, their devices and findings.
    #[arg(long = "pid", value_name = "PID")]
    pub pid_filter: Option<u32>,
    /// zombie-vm: a closed VM not destroyed after this long (default 10000).
    #[arg(long, value_name = "MS")]
    pub zombie_after_ms: Option<u64>,
    /// leaked-ref: a closed device still holding its VM after this long (default 1000).
    #[arg(long, value_name = "MS")]
    pub leak_grace_ms: Option<u64>,
    /// long-wait on a watched lock past this long (default 1000).
    #[arg(long, value_name = "MS")]
    pub long_wait_ms: Option<u64>,
    /// long-hold of a watched lock past this long (default 5000).
    #[arg(long, value_name = "MS")]
    pub long_hold_ms: Option<u64>,
    /// Exit 3 when a finding (of the selection) is at least this severe, for
    /// scripts and CI; the output is written first.
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub fail_on: Option<FailOn>,
}

/// `--fail-on`: the least severity that fails the command.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    Info,
    Warning,
    Error,
    Critical,
}

impl FailOn {
    pub fn severity(self) -> crate::engine::Severity {
        use crate::engine::Severity;
        match self {
            FailOn::Info => Severity::Info,
            FailOn::Warning => Severity::Warning,
            FailOn::Error => Severity::Error,
            FailOn::Critical => Severity::Critical,
        }
    }
}

impl OfflineArgs {
    /// The engine's settings with the thresholds given on the command line.
    pub fn engine(&self) -> crate::engine::Config {
        let mut c = crate::engine::Config::default();
        let set = |v: Option<u64>, f: &mut u64| {
            if let Some(v) = v {
                *f = v;
            }
        };
        set(self.zombie_after_ms, &mut c.zombie_after_ms);
        set(self.leak_grace_ms, &mut c.leak_grace_ms);
        set(self.long_wait_ms, &mut c.long_wait_ms);
        set(self.long_hold_ms, &mut c.long_hold_ms);
        c
    }
}

#[derive(Args)]
pub struct EventsArgs {
    /// A file written by `kvscope record`.
    pub file: std::path::PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only events of this process (thread group).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only events that carry this VM (struct kvm address, 0x...).
    #[arg(long, value_parser = parse_addr)]
    pub vm: Option<u64>,
    /// Print each event's symbolised stack under it.
    #[arg(long)]
    pub stacks: bool,
    /// Dump what survived in a damaged recording and exit 0.
    #[arg(long)]
    pub salvage: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("object").required(true).args(["vm", "device"])))]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "live"])))]
pub struct TimelineArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// A file written by `kvscope record`.
    pub file: Option<std::path::PathBuf>,
    /// Attach and follow live instead; the timeline is printed at Ctrl-C.
    #[arg(long)]
    pub live: bool,
    /// The VM: its libvirt domain, QEMU -name or uuid, the pid that created
    /// it (every VM it made, in order), or its struct kvm address (0x...).
    /// With --live, a VM made after the start is selected by its name too.
    #[arg(long, value_name = "NAME|PID|0xADDR")]
    pub vm: Option<VmSel>,
    /// The VFIO device: its struct vfio_device address (0x...).
    #[arg(long, value_parser = parse_addr)]
    pub device: Option<u64>,
    /// Show the kernel stack under each step that has one.
    #[arg(long)]
    pub stacks: bool,
    /// Analyse what survived in a damaged recording and exit 0.
    #[arg(long)]
    pub salvage: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A file written by `kvscope record`.
    pub file: std::path::PathBuf,
    #[arg(long, default_value = "text", value_parser = ["text", "json", "html", "perfetto"])]
    pub format: String,
    /// Write to this file instead of standard output (created 0600: reports
    /// name kernel addresses).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Create the -o file world-readable (0644) instead of 0600.
    #[arg(long, requires = "output")]
    pub share: bool,
    #[command(flatten)]
    pub offline: OfflineArgs,
}

pub fn parse_addr(s: &str) -> Result<u64, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("{s:?}: give the address in hex, e.g. 0xffff888102760000"))?;
    u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?} is not a hex address: {e}"))
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub kernel: BtfArgs,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only this thread group (also filtered in the kernel).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only threads with this command name (exact, as in /proc/PID/comm: at
    /// most 15 characters, the kernel cuts longer names).
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only one VM: its libvirt domain or QEMU -name or uuid, the pid that
    /// created it, or its struct kvm address (0x...).
    #[arg(long, value_name = "NAME|PID|0xADDR")]
    pub vm: Option<VmSel>,
    /// Print symbolised kernel stacks under events that carry one.
    #[arg(long)]
    pub stacks: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = trace_common::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// How watched locks are followed (as for `record --locks`).
    #[arg(long = "locks", value_enum, default_value_t = LockWatch::Lean)]
    pub lock_watch: LockWatch,
    /// Watch locks deep for this long (30s, 10m, 1h), then switch to lean
    /// without stopping: an investigation, time-boxed. Starts deep whatever
    /// --locks says.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deep_for: Option<std::time::Duration>,
}

/// `30`, `30s`, `10m`, `1h`: a positive duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a duration is a number with s, m or h (30s, 10m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit {unit:?} is not s, m or h")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// A thread name as the kernel keeps it: a longer one would match nothing.
pub fn parse_comm(s: &str) -> Result<String, String> {
    if s.len() > 15 {
        return Err(format!(
            "{s:?} is {} bytes; the kernel keeps 15 (TASK_COMM_LEN): use {:?}, as /proc/PID/comm shows it",
            s.len(),
            s.get(..15).unwrap_or(s)
        ));
    }
    Ok(s.to_owned())
}

pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count"))?;
    crate::attach::loader::check_ring_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_s_m_h_and_refuse_the_rest() {
        assert_eq!(parse_duration("30").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("not s, m or h"));
    }

    #[test]
    fn comm_names_longer_than_the_kernel_keeps_are_refused() {
        assert_eq!(parse_comm("qemu-system-x86").unwrap(), "qemu-system-x86");
        let e = parse_comm("qemu-system-x86_64").unwrap_err();
        assert!(e.contains("use \"qemu-system-x86\""), "{e}");
    }
}
