use std::process::ExitCode;

use clap::Parser as _;
use sensor::{
    agent,
    cli::{Cli, Command, PolicyCommand, RulesCommand},
    config::Config,
    logging,
};

/// Exit code for bad input (config file, flags), as clap uses for bad flags.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = match Config::resolve(&args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("sensor: {err}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            logging::init(config.log_format);
            match agent::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{:#}", anyhow::Error::from(err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rules(RulesCommand::Check(args)) => match sensor::rules::check::check(&args) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sensor: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Rules(RulesCommand::Bench(args)) => match sensor::rules::bench::run(&args) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sensor: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Cleanup(args) => {
            let dir = match (&args.bpf_pin_dir, &args.config) {
                (Some(dir), _) => dir.clone(),
                (None, Some(path)) => match sensor::config::FileConfig::load(path) {
                    Ok(file) => {
                        file.bpf_pin_dir.unwrap_or_else(|| sensor::pins::DEFAULT_DIR.into())
                    }
                    Err(err) => {
                        eprintln!("sensor: {err}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
                (None, None) => sensor::pins::DEFAULT_DIR.into(),
            };
            match sensor::pins::Pins::new(&dir).cleanup() {
                Ok(n) => {
                    println!("removed {n} pinned objects under {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("sensor: cleaning up {}: {err}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy(PolicyCommand::Check(args)) => match sensor::policy::check::check(&args) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sensor: {err}");
                ExitCode::FAILURE
            }
        },
    }
}
