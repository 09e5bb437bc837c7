use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use kvscope::{
    check,
    cli::{Cli, Command},
    loader::{Facts, LoadOptions},
    trace::{self, Filter, TraceOptions},
};

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
                loss_interval: Duration::from_secs(2),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(trace::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
