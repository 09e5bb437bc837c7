//! kvscope's developer and CI tasks. `cargo xtask --help` lists them.
mod buildcache;
mod cmd;
mod deb;
mod footprint;
mod hostbench;
mod install;
mod lab;
mod replaybench;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "kvscope developer and CI tasks",
    long_about = "kvscope developer and CI tasks.\n\n\
        Every task first makes sure the toolchain pieces it needs are there \
        (nightly rust-src, bpf-linker built against the nightly LLVM) and \
        installs them when missing, into a cache outside the repository \
        ($KVSCOPE_CACHE, else $XDG_CACHE_HOME/kvscope, else ~/.cache/kvscope)."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (idempotent; a second run takes about a second).
    Setup,
    /// Build the `kvscope` binary (release) with its BPF object embedded.
    Build,
    /// Build, then run `kvscope` with the arguments after `--` (e.g. `-- check`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the test tiers: fmt and clippy, unit and scenario tests, BPF object
    /// checks, and the live tracepoint-tier tests (root, /dev/kvm).
    Test(test::TestArgs),
    /// Build, then install the binary, systemd unit, example config (an existing
    /// one is kept), dashboards and README under DESTDIR.
    Install {
        #[arg(long, default_value = "/")]
        destdir: std::path::PathBuf,
    },
    /// Build the Debian package (binary with its BPF object, unit, config,
    /// dashboards, man page, completions) into target/debian/.
    Deb,
    /// The guest lab: boot real Debian kernels under QEMU with KVM and VFIO and
    /// check that kvscope attaches there (see README, "Guest lab").
    Lab {
        /// Kernels to boot (default: all of the matrix: 6.12, 6.1, sid, trixie,
        /// trixie-bpo, bullseye, patched, cdev).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Guests booted side by side (default: one per host CPU; a lab guest
        /// keeps about one CPU busy). 1 boots the rows one after the other.
        #[arg(long)]
        jobs: Option<usize>,
        /// Run this shell command in the guest instead of the checks.
        #[arg(long)]
        cmd: Option<String>,
        /// After the run, write each kernel's last pass date (kept in the
        /// cache by every passing run) into the README's support matrix.
        #[arg(long)]
        update_readme: bool,
        /// Record cycles of the stop/delivery stress test (run with the 6.12
        /// kernel, host loaded); 0 skips it.
        #[arg(long, default_value_t = lab::stress::CYCLES)]
        stress: u64,
        /// The host lab instead: Debian with systemd, libvirt and QEMU in the
        /// guest, kvscope installed from its package as the service (rows:
        /// 6.12, trixie; --kernel picks among them).
        #[arg(long)]
        host: bool,
    },
    /// Replay-analysis benchmark: events/s (median of 3) and memory at two
    /// sizes (--against REV: side by side with another revision); with --lab,
    /// probe overhead in a guest (kvscope vs bpftrace vs none); with --live, the
    /// live path on this host's kernel under a flood of real VMs; with
    /// --footprint, the idle cost of each command on this host.
    Bench {
        /// Events in the larger run (the smaller is half).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Measure probe overhead in the guest lab instead.
        #[arg(long)]
        lab: bool,
        /// The lab kernel for --lab.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Iterations of the hooked and KVM_RUN loops per run for --lab and
        /// --host (the ioctl and pipe loops do 10x).
        #[arg(long, default_value_t = 2000)]
        iterations: u64,
        /// Measure the live path on this host's kernel instead: a flood of real
        /// VM creations, events/s into the engine and exact loss accounting at
        /// the default ring and a 4 KiB one (root, /dev/kvm).
        #[arg(long, conflicts_with = "lab")]
        live: bool,
        /// Measure probe overhead on this host's own kernel and CPU instead:
        /// the loops kvscope does not watch (KVM_RUN where /dev/kvm runs a
        /// vCPU, an ioctl, a pipe), unprobed vs `kvscope record` lean and deep
        /// (root).
        #[arg(long, conflicts_with_all = ["lab", "live"])]
        host: bool,
        /// The idle footprint on this host instead (root): per command
        /// (daemon, trace, record) resident memory idle and at its start-up
        /// peak, CPU time per idle minute, wakeups per second, time to ready
        /// and to stop; with --against, beside that revision's.
        #[arg(long, conflicts_with_all = ["lab", "live", "host"])]
        footprint: bool,
        /// Seconds each --footprint run idles before it is measured and stopped.
        #[arg(long, default_value_t = 20, requires = "footprint")]
        idle_secs: u64,
        /// Also build the replay benchmark (with --footprint: kvscope) at this
        /// git revision and run the two alternately: before/after figures from
        /// one run.
        #[arg(long, value_name = "REV", conflicts_with_all = ["lab", "live"])]
        against: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup().map(|_| ()),
        Task::Build => {
            let env = setup::setup()?;
            cmd::build_release(&env)
        }
        Task::Run { args } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            cmd::run_kvscope(&env, &args)
        }
        Task::Lab {
            kernels,
            cmd,
            update_readme,
            stress,
            host,
            jobs,
        } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            if host {
                let r = lab::host::run(&env, &kernels);
                if update_readme {
                    lab::readme::update_readme()?;
                }
                return r;
            }
            let r = lab::matrix::run(
                &kernels,
                cmd.as_deref(),
                jobs.unwrap_or_else(lab::matrix::default_jobs),
            )
            .and_then(|()| {
                let wanted = kernels.is_empty() || kernels.iter().any(|k| k == lab::stress::KERNEL);
                if stress > 0 && cmd.is_none() && wanted {
                    lab::stress::run(stress)
                } else {
                    Ok(())
                }
            });
            if update_readme {
                lab::readme::update_readme()?;
            }
            r
        }
        Task::Install { destdir } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            install::install(&destdir)
        }
        Task::Bench {
            lab: true,
            kernel,
            iterations,
            ..
        } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            lab::bench::run(&kernel, iterations)
        }
        Task::Bench {
            host: true,
            iterations,
            ..
        } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            hostbench::run(iterations)
        }
        Task::Bench {
            footprint: true,
            against,
            idle_secs,
            ..
        } => {
            let env = setup::setup()?;
            cmd::build_release(&env)?;
            footprint::run(
                &env,
                against.as_deref(),
                std::time::Duration::from_secs(idle_secs),
            )
        }
        Task::Bench { live: true, .. } => {
            let env = setup::setup()?;
            replaybench::live(&env)
        }
        Task::Bench {
            events, against, ..
        } => {
            let env = setup::setup()?;
            replaybench::run(&env, events, against.as_deref())
        }
        Task::Deb => {
            let env = setup::setup()?;
            deb::build(&env).map(|_| ())
        }
        Task::Test(args) => {
            let env = setup::setup()?;
            test::run(&env, &args)
        }
    }
}
