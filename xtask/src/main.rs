//! `cargo xtask`: everything a fresh machine needs, from toolchain to tests, in one place.
mod bench;
mod build;
mod demo;
mod setup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, LLVM 22, bpf-linker, bpftool, …);
    /// idempotent: only what is missing is installed.
    Setup,
    /// Build the eBPF object (release, bpfel-unknown-none).
    BuildEbpf(build::EbpfArgs),
    /// Build the eBPF object and the `sluice` binary that embeds it.
    Build(build::BuildArgs),
    /// Build, then run `sluice` with the given arguments (needs root for the kernel datapath).
    Run {
        #[command(flatten)]
        build: build::BuildArgs,
        /// Arguments for `sluice`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Everything CI runs: formatting, clippy, unit, PROG_TEST_RUN and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A tour on real network namespaces: client, gateway running sluice, backend.
    Demo,
    /// Run the fuzz targets (`fuzz/`) for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Measure Sluice against the direct path and its peers (root; installs the peers).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf(args) => {
            setup::setup().and_then(|()| build::build_ebpf(&args).map(drop))
        }
        Command::Build(args) => setup::setup().and_then(|()| build::build(&args).map(drop)),
        Command::Run { build, args } => {
            setup::setup().and_then(|()| build::run_sluice(&build, &args))
        }
        Command::Test { args } => setup::setup().and_then(|()| build::test(&args)),
        Command::Demo => setup::setup().and_then(|()| demo::demo()),
        Command::Fuzz { seconds } => setup::setup().and_then(|()| build::fuzz(seconds)),
        Command::Bench(args) => setup::setup().and_then(|()| bench::bench(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
