//! Command-line interface of the `sluice` binary.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::daemon::run::RunArgs;
use crate::datapath::parse_instance;

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
    Run(Box<RunArgs>),
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

    /// The namespace the gateway runs in, which `exportTo` is read against.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub gateway_namespace: String,

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

    /// The namespace the gateway runs in, which `exportTo` is read against.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub gateway_namespace: String,

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_defaults_match_the_documented_ports() {
        let cli = Cli::try_parse_from(["sluice", "run"]).unwrap_or_else(|e| panic!("{e}"));
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.admin_addr.to_string(), "127.0.0.1:19000");
        assert_eq!(args.datapath, crate::datapath::DatapathMode::Auto);
        assert_eq!(args.bpffs, PathBuf::from("/sys/fs/bpf"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
