//! The command line: argument parsing, the one-shot commands (`validate`, `plan`,
//! `inspect`, `cleanup`, `version`), and `run`, which starts the daemon and its admin
//! server.
pub mod args;
pub mod commands;
pub mod inspect;

use std::process::ExitCode;

use clap::Parser as _;

pub use args::{Cli, Command};

use crate::{admin::AdminServer, daemon, datapath};

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let object = if datapath::ebpf_object::embedded() {
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
            let _flush_logs = daemon::logging::init(args.log_format);
            raise_open_file_limit();
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
            let code = match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
            // A config load stuck on a hung file system holds a blocking thread: exit
            // without it rather than wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every proxied connection holds
/// two sockets, and the usual soft limit (1024) would cap the servers at a few hundred.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "could not raise the open file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open file limit"),
    }
}

/// `sluice run`: the daemon, with the admin server bound once the first config is loaded
/// (so a taken admin port fails before anything is attached) and stopped after it.
async fn run(args: args::RunArgs) -> anyhow::Result<()> {
    let daemon = daemon::run::Daemon::load(&args).await?;
    let admin = AdminServer::start(args.admin_addr, daemon.state()).await?;
    let served = daemon.serve(args).await;
    admin.shutdown().await;
    served
}
