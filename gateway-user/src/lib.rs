//! The `sluice` daemon as a library: the binary is a thin `main`, and tests drive the same
//! code. One folder per role; arrows point down this list, never up:
//!
//! - `config`: YAML with positions, the Istio model, per-object validation
//! - `compile`: config -> Plan, pure; the Plan types
//! - `select`: backend sets and Maglev, shared by the kernel sync and the proxies
//! - `datapath`: loading, attaching and pinning the eBPF programs, the map sync
//! - `proxy`: the userspace servers (L4 forwarder, SNI passthrough)
//! - `daemon`: `run`, reload, snapshots, DNS, the state the servers and admin share
//! - `admin`: the admin server and metrics (reads the daemon's state)
//! - `cli`: argument parsing and the one-shot commands
pub mod admin;
pub mod cli;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod proxy;
pub mod select;

/// Runs the command line; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    cli::main()
}
