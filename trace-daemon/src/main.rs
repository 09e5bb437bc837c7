use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use kvscope::{
    attach::{
        loader::{Facts, LoadOptions},
        plan::LockWatch,
    },
    commands::check,
    commands::cli::{Cli, Command},
    commands::offline,
    commands::record,
    commands::trace::{self, Filter, TraceOptions},
    engine,
};

/// kvscope's own diagnostics in the form of every other line it prints
/// (`kvscope: ...`), the level said when it is not plain information; the
/// module only at debug and trace, where the reader is a developer. No
/// timestamp: the journal and terminals have their own.
fn log_line(f: &mut env_logger::fmt::Formatter, r: &log::Record) -> std::io::Result<()> {
    use std::io::Write as _;
    match r.level() {
        log::Level::Info => writeln!(f, "kvscope: {}", r.args()),
        log::Level::Error => writeln!(f, "kvscope: error: {}", r.args()),
        log::Level::Warn => writeln!(f, "kvscope: warning: {}", r.args()),
        l => writeln!(
            f,
            "kvscope: {}: [{}] {}",
            l.as_str().to_lowercase(),
            r.target(),
            r.args()
        ),
    }
}

/// Runs a live command to completion. The runtime is not waited for at the
/// end: an attach thread abandoned at a stop signal must not hold the exit.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(f);
    rt.shutdown_background();
    r
}

/// Writes a report to `-o FILE` (private unless shared) or standard output.
fn emit(text: &str, output: Option<&std::path::Path>, share: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    match output {
        Some(p) => {
            let mut f = kvscope::recording::private_file::open(
                p,
                kvscope::recording::private_file::Open::Truncate,
                kvscope::recording::private_file::mode(share),
            )?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
        }
    }
}

/// Exit status of `replay` and `report` when `--fail-on` is met.
const EXIT_FINDINGS: u8 = 3;

/// Writes an offline command's output, warns about unverified delivery, and
/// turns a damaged recording into exit 1 unless `--salvage` accepted it, and
/// findings at or above `fail_on` into exit 3.
fn finish(
    file: &std::path::Path,
    out: offline::Output,
    output: Option<&std::path::Path>,
    share: bool,
    salvage: bool,
    fail_on: Option<kvscope::commands::cli::FailOn>,
) -> anyhow::Result<ExitCode> {
    // Recordings made before the self-test, or whose self-test failed, say so.
    if let Some(w) = &out.delivery_warning {
        eprintln!("kvscope: warning: {}: {w}", file.display());
    }
    emit(&out.text, output, share)?;
    match out.damage {
        Some(d) if !salvage => {
            eprintln!(
                "kvscope: {}: damaged recording ({d}); what is shown covers the events before the damage; --salvage accepts that and exits 0",
                file.display()
            );
            Ok(ExitCode::FAILURE)
        }
        _ => match (fail_on, out.worst) {
            (Some(at), Some(worst)) if worst >= at.severity() => {
                eprintln!(
                    "kvscope: {}: findings up to {} (--fail-on {}): exit {EXIT_FINDINGS}",
                    file.display(),
                    worst.name(),
                    at.severity().name()
                );
                Ok(ExitCode::from(EXIT_FINDINGS))
            }
            _ => Ok(ExitCode::SUCCESS),
        },
    }
}

/// `kvscope run`: kvscope's own failure is 125, never a status CMD could
/// have given.
fn run_command(args: kvscope::commands::cli::RunArgs) -> ExitCode {
    use kvscope::commands::run;
    let opts = run::RunOptions {
        argv: args.command,
        load: LoadOptions {
            ring_bytes: args.ring_bytes,
            lock_watch: args.lock_watch,
            ..LoadOptions::default()
        },
        fail_on: args.fail_on.severity(),
        junit: args.junit,
        tap: args.tap,
        output: args.output,
        all: args.all,
        share: args.share,
        tree_grace: Duration::from_secs(args.tree_grace),
        settle: Duration::from_millis(args.settle_ms),
    };
    match block_on(run::run(opts)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kvscope: {e:#}; exit {}", run::EXIT_KVSCOPE_FAILED);
            ExitCode::from(run::EXIT_KVSCOPE_FAILED)
        }
    }
}

/// Counts what is allocated, so an idle tick knows when to trim.
#[global_allocator]
static ALLOCATOR: kvscope::memory::Counting = kvscope::memory::Counting;

fn main() -> ExitCode {
    kvscope::memory::tune();
    kvscope::attach::live::hold_signals();
    let cli = Cli::parse();
    if !cli.command.is_live() {
        kvscope::attach::live::release_signals();
    }
    env_logger::Builder::new()
        .parse_filters(&cli.log)
        .format(log_line)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    kvscope::kernel::btf::add_user_files(cli.command.btf());
    match cli.command {
        Command::Check(args) => {
            let facts = Facts::gather()?;
            let report = check::run(&facts);
            let text = if args.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                check::render_text(&report)
            };
            emit(&text, None, false)?;
            if let Some(why) = &report.reason {
                eprintln!("kvscope: not usable here: {why}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace(args) => {
            let opts = TraceOptions {
                json: args.json,
                stacks: args.stacks,
                filter: Filter::new(args.pid, args.comm, args.vm),
                load: LoadOptions {
                    filter_tgid: args.pid.unwrap_or(0),
                    ring_bytes: args.ring_bytes,
                    lock_watch: if args.deep_for.is_some() {
                        LockWatch::Deep
                    } else {
                        args.lock_watch
                    },
                    deep_for: args.deep_for,
                    // Stacks printed: one on every event that can have one.
                    every_stack: args.stacks,
                    ..LoadOptions::default()
                },
                engine: engine::Config::default(),
                loss_interval: Duration::from_secs(2),
            };
            block_on(trace::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(args) => {
            let opts = record::RecordOptions {
                output: args.output,
                duration: args.duration.map(Duration::from_secs),
                load: LoadOptions {
                    filter_tgid: args.pid.unwrap_or(0),
                    ring_bytes: args.ring_bytes,
                    lock_watch: args.lock_watch,
                    stacks: !args.no_stacks,
                    lock_stacks: !args.no_stacks,
                    every_stack: args.every_stack,
                    ..LoadOptions::default()
                },
                share: args.share,
            };
            block_on(async {
                record::run(opts, kvscope::attach::live::Signals::install()?, None).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let opts = kvscope::commands::top::TopOptions {
                load: LoadOptions::default(),
                interval: Duration::from_secs(args.interval),
                vm: args.vm,
                sort: args.sort,
                batch: args.batch,
            };
            block_on(async {
                kvscope::commands::top::run(opts, kvscope::attach::live::Signals::install()?).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => Ok(run_command(args)),
        Command::Daemon(args) => {
            let config = match &args.config {
                Some(p) => kvscope::service::config::DaemonConfig::load(p)?,
                None => kvscope::service::config::DaemonConfig::default(),
            };
            kvscope::kernel::btf::add_user_files(&config.btf);
            let opts = kvscope::service::daemon::DaemonOptions {
                config,
                config_path: args.config,
                metrics_listen: args.metrics_listen,
                web_config: args.web_config,
            };
            block_on(kvscope::service::daemon::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(kvscope::commands::cli::ConfigCommand::Check { path }) => {
            let c = kvscope::service::config::DaemonConfig::load(&path)?;
            c.check_outputs()
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            let effective = toml::to_string(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
            emit(&format!("{}: ok\n{effective}", path.display()), None, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let format = if args.json { "json" } else { "text" };
            let out = offline::report(&args.file, &args.offline, format)?;
            finish(
                &args.file,
                out,
                None,
                false,
                args.offline.salvage,
                args.offline.fail_on,
            )
        }
        Command::Report(args) => {
            let out = offline::report(&args.file, &args.offline, &args.format)?;
            finish(
                &args.file,
                out,
                args.output.as_deref(),
                args.share,
                args.offline.salvage,
                args.offline.fail_on,
            )
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kvscope", &mut out);
            emit(&String::from_utf8_lossy(&out), None, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage(args) => {
            use kvscope::commands::manpage;
            match &args.dir {
                Some(dir) => {
                    for (name, text) in manpage::pages()? {
                        let p = dir.join(&name);
                        std::fs::write(&p, text)
                            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
                    }
                }
                None => emit(&manpage::page(args.command.as_deref())?, None, false)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(args) => {
            let out = offline::events(&args)?;
            finish(&args.file, out, None, false, args.salvage, None)
        }
        Command::Timeline(args) => {
            let obj = match (args.vm, args.device) {
                (Some(v), _) => offline::Object::Vm(v),
                (None, Some(d)) => offline::Object::Device(d),
                (None, None) => unreachable!("clap requires one"),
            };
            match &args.file {
                Some(f) => {
                    let out = offline::timeline(f, engine::Config::default(), obj, args.stacks)?;
                    finish(f, out, None, false, args.salvage, None)
                }
                None => {
                    let text = block_on(offline::timeline_live(
                        obj,
                        args.stacks,
                        LoadOptions::default(),
                    ))?;
                    emit(&text, None, false)?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}
