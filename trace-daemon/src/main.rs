use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use kvscope::{
    check,
    cli::{Cli, Command},
    engine,
    loader::{Facts, LoadOptions},
    offline, record,
    trace::{self, Filter, TraceOptions},
};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new().parse_filters(&cli.log).init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => {
            let facts = Facts::gather()?;
            let report = check::run(&facts);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check::render_text(&report));
            }
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
                    ..LoadOptions::default()
                },
                engine: engine::Config::default(),
                loss_interval: Duration::from_secs(2),
            };
            runtime()?.block_on(trace::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(args) => {
            let opts = record::RecordOptions {
                output: args.output,
                duration: args.duration.map(Duration::from_secs),
                load: LoadOptions {
                    filter_tgid: args.pid.unwrap_or(0),
                    ring_bytes: args.ring_bytes,
                    ..LoadOptions::default()
                },
            };
            runtime()?.block_on(record::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) => {
            let config = match &args.config {
                Some(p) => kvscope::config::DaemonConfig::load(p)?,
                None => kvscope::config::DaemonConfig::default(),
            };
            let opts = kvscope::daemon::DaemonOptions {
                config,
                config_path: args.config,
                metrics_listen: args.metrics_listen,
            };
            runtime()?.block_on(kvscope::daemon::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(kvscope::cli::ConfigCommand::Check { path }) => {
            let c = kvscope::config::DaemonConfig::load(&path)?;
            println!("{}: ok", path.display());
            print!(
                "{}",
                toml::to_string(&c).map_err(|e| anyhow::anyhow!("{e}"))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let format = if args.json { "json" } else { "text" };
            print!(
                "{}",
                offline::report(&args.file, engine::Config::default(), format)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            print!(
                "{}",
                offline::report(&args.file, engine::Config::default(), &args.format)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Timeline(args) => {
            let obj = match (args.vm, args.device) {
                (Some(v), _) => offline::Object::Vm(v),
                (None, Some(d)) => offline::Object::Device(d),
                (None, None) => unreachable!("clap requires one"),
            };
            let text = match &args.file {
                Some(f) => offline::timeline(f, engine::Config::default(), obj, args.stacks)?,
                None => runtime()?.block_on(offline::timeline_live(
                    obj,
                    args.stacks,
                    LoadOptions::default(),
                ))?,
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
