//! The `sluice` daemon as a library: the binary is a thin `main`, and tests drive the same
//! code.
pub mod admin;
pub mod backends;
pub mod cli;
pub mod commands;
pub mod compile;
pub mod config;
pub mod datapath;
pub mod dns;
pub mod ebpf_object;
pub mod inspect;
pub mod l4proxy;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod run;
pub mod snapshot;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let object = if ebpf_object::embedded() {
                "embedded"
            } else {
                "absent (userspace only)"
            };
            println!(
                "sluice {} (eBPF object: {object})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Command::Validate(args) => commands::validate(&args),
        Command::Plan(args) => commands::plan(&args),
        Command::Inspect(args) => match inspect::inspect(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice inspect: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Cleanup(args) => match datapath::kernel::cleanup(&args.bpffs, &args.instance) {
            Ok(removed) if removed.is_empty() => {
                println!("nothing pinned for instance {:?}", args.instance);
                ExitCode::SUCCESS
            }
            Ok(removed) => {
                for path in removed {
                    println!("removed {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice cleanup: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            logging::init(args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
