//! Command-line interface of the `sluice` binary.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    backends::BackendRemoval,
    datapath::{DatapathMode, XdpModeChoice},
};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "eBPF/XDP-accelerated L4 gateway with a userspace L7 fallback"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: load and attach the datapath, serve the config, run the admin server.
    Run(RunArgs),
    /// Validate config: every object on its own (like `istioctl validate`) and the set as a
    /// whole (like `istioctl analyze`). Exit status 1 on any error.
    Validate(ValidateArgs),
    /// Print the Plan the config compiles to: listeners, routes, backends, and where each
    /// runs (kernel, kernel splice, userspace) and why.
    Plan(PlanArgs),
    /// Show the kernel L4 state from the pinned maps: listeners and backends, connections,
    /// or the backend of one client's connection.
    Inspect(InspectArgs),
    /// Remove what a daemon run with `--keep-datapath` left attached and pinned for this
    /// instance: its programs stop forwarding and its connections are dropped.
    Cleanup(CleanupArgs),
    /// Print version and build information.
    Version,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config files or directories (`*.yaml`, `*.yml`, searched recursively).
    #[arg(short = 'f', long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,

    /// Interface to attach the datapath to; repeat for several.
    #[arg(short, long = "interface", value_name = "IFNAME")]
    pub interfaces: Vec<String>,

    /// Datapath: `auto` tries XDP, then TC per interface, and runs in userspace when BPF is
    /// unavailable; the other values insist on one.
    #[arg(long, value_enum, default_value_t = DatapathMode::Auto)]
    pub datapath: DatapathMode,

    /// XDP attach mode: `auto` tries native, then generic (skb) mode per interface.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    pub xdp_mode: XdpModeChoice,

    /// Address of the admin server (/ready, /healthz, /stats/prometheus, /config_dump).
    #[arg(long, default_value = "127.0.0.1:19000")]
    pub admin_addr: SocketAddr,

    /// bpffs mount point; mounted by sluice when nothing is mounted there. Maps are pinned
    /// under `<bpffs>/sluice/<instance>/`.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,

    /// Instance name: keeps the pins of several gateways on one node apart.
    #[arg(long, default_value = "default", value_parser = parse_instance)]
    pub instance: String,

    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often DNS names of ServiceEntries are resolved again; a change produces a new
    /// config generation. Config files are watched, and SIGHUP reloads at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub dns_refresh: std::time::Duration,

    /// Kernel L4 connections with no packet for this long are forgotten.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub l4_idle_timeout: std::time::Duration,

    /// Kernel L4 connections are forgotten this long after their FIN or RST.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub l4_closing_timeout: std::time::Duration,

    /// Established L4 connections whose backend leaves their listener's route: `keep` lets
    /// them run to their end, `reset` resets them (kernel and userspace alike).
    #[arg(long, value_enum, default_value_t = BackendRemoval::Keep)]
    pub l4_backend_removal: BackendRemoval,

    /// On exit, leave the programs attached and the maps and links pinned: the kernel keeps
    /// forwarding established (and new) L4 connections with the last config, and the next
    /// run with the same --bpffs and --instance takes them over without a gap. Without it,
    /// exit removes everything.
    #[arg(long, env = "SLUICE_KEEP_DATAPATH")]
    pub keep_datapath: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs mount point the daemon pinned under.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,

    /// The daemon's instance name.
    #[arg(long, default_value = "default", value_parser = parse_instance)]
    pub instance: String,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Config files or directories (`*.yaml`, `*.yml`, searched recursively).
    #[arg(short = 'f', long = "config", value_name = "PATH", required = true)]
    pub config: Vec<PathBuf>,

    /// Fail on warnings too.
    #[arg(long)]
    pub strict: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Config files or directories (`*.yaml`, `*.yml`, searched recursively).
    #[arg(short = 'f', long = "config", value_name = "PATH", required = true)]
    pub config: Vec<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// bpffs mount point the daemon pins under.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,

    /// The daemon's instance name.
    #[arg(long, default_value = "default", value_parser = parse_instance)]
    pub instance: String,

    #[command(subcommand)]
    pub what: InspectWhat,
}

#[derive(Debug, Subcommand)]
pub enum InspectWhat {
    /// Kernel listeners, their backends and each backend's share of new connections.
    Listeners,
    /// Live kernel connections: client, listener, backend, state.
    Flows,
    /// The connection from one client address and port.
    Flow { client: std::net::IpAddr, port: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Instance names become a directory name under bpffs.
fn parse_instance(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a valid instance name: use 1-64 characters of [A-Za-z0-9_-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_path_safe() {
        assert!(parse_instance("edge-1").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(parse_instance(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn run_defaults_match_the_documented_ports() {
        let cli = Cli::try_parse_from(["sluice", "run"]).unwrap_or_else(|e| panic!("{e}"));
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.admin_addr.to_string(), "127.0.0.1:19000");
        assert_eq!(args.datapath, DatapathMode::Auto);
        assert_eq!(args.bpffs, PathBuf::from("/sys/fs/bpf"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
