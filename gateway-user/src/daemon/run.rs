//! `sluice run`: load the config, start the datapath and the servers, serve until
//! SIGINT/SIGTERM, then undo everything this run created.
use anyhow::Context as _;
use tokio::{
    net::TcpStream,
    signal::unix::{SignalKind, signal},
};

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use super::{
    dns, health,
    logging::LogFormat,
    privileges,
    reload::Reloader,
    snapshot::{self, Snapshot},
    state::{DatapathView, ServerState, Serving, SharedState, Unserved},
};
use crate::{
    compile,
    datapath::{
        Datapath, DatapathMode, DatapathOptions, DatapathStatus, XdpModeChoice, parse_instance,
        ports::PortRange,
    },
    proxy::{
        http::{HttpOptions, HttpProxy},
        l4::{L4Options, L4Proxy},
        relay,
        sni::{SniOptions, SniProxy},
    },
};

/// `sluice run`.
#[derive(Debug, clap::Args)]
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

    /// L4 connections with no packet for this long are forgotten by the kernel and closed
    /// by the userspace forwarder.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub l4_idle_timeout: std::time::Duration,

    /// How often every L4 and TLS passthrough endpoint is checked with a TCP connect; an
    /// unhealthy one gets no new connections (kernel and userspace alike). Off (`0s`) by
    /// default, as Istio's gateways check nothing actively (Kubernetes readiness removes
    /// endpoints); turn it on for endpoints nothing else watches, e.g. `5s`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// How long a health check's connect may take.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_check_timeout: Duration,

    /// Failed checks in a row that make an endpoint unhealthy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_check_unhealthy_threshold: u32,

    /// Passed checks in a row that make an unhealthy endpoint healthy again.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_check_healthy_threshold: u32,

    /// L4 connections the userspace forwarder carries at once, over every listener; more
    /// are closed as they are accepted (`sluice_l4_overloaded_total`). Each holds two
    /// sockets and up to 128 KiB of buffers.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub l4_max_connections: u32,

    /// Kernel L4 connections are forgotten this long after their FIN or RST.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub l4_closing_timeout: std::time::Duration,

    /// Established L4 connections whose backend leaves their listener's route: `keep` lets
    /// them run to their end, `reset` resets them (kernel and userspace alike).
    #[arg(long, value_enum, default_value_t = crate::select::BackendRemoval::Keep)]
    pub l4_backend_removal: crate::select::BackendRemoval,

    /// On exit, leave the programs attached and the maps and links pinned: the kernel keeps
    /// forwarding established (and new) L4 connections with the last config, and the next
    /// run with the same --bpffs and --instance takes them over without a gap. Without it,
    /// exit removes everything.
    #[arg(long, env = "SLUICE_KEEP_DATAPATH")]
    pub keep_datapath: bool,

    /// Write an access-log line per TLS passthrough connection (target `access`: client,
    /// SNI, route, backend, bytes each way, duration, how it ended), JSON with
    /// `--log-format json`. Off by default, as Istio's `accessLogFile`.
    #[arg(long, env = "SLUICE_ACCESS_LOG")]
    pub access_log: bool,

    /// Where `credentialName` certificates are found: `<dir>/<name>/tls.crt` and `tls.key`,
    /// the layout of a Kubernetes TLS Secret mounted as a volume.
    #[arg(long, default_value = "/etc/sluice/credentials")]
    pub credentials_dir: PathBuf,

    /// The namespace the gateway runs in: VirtualServices, ServiceEntries and
    /// DestinationRules whose `exportTo` does not reach it are not used, as Istio's gateways
    /// read `exportTo` (Kubernetes' downward API sets `POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub gateway_namespace: String,

    /// Where the mesh workload identity is mounted for ISTIO_MUTUAL servers:
    /// `cert-chain.pem`, `key.pem` and `root-cert.pem`, as istio-agent writes them with
    /// `OUTPUT_CERTS`. Without it, ISTIO_MUTUAL servers are not served (and say why).
    #[arg(long, env = "SLUICE_MESH_IDENTITY_DIR")]
    pub mesh_identity_dir: Option<PathBuf>,

    /// The CAs (a PEM file) that verify upstream certificates when a DestinationRule's
    /// `tls` names none (no `caCertificates`, no credential with a `ca.crt`). Default: the
    /// system's (`SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's bundle).
    #[arg(long, env = "SLUICE_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// The longest an HTTP client may take to send a request's headers (and, over TLS, its
    /// handshake); slower ones are closed (slowloris). An HTTP/1.1 connection waiting for
    /// its next request is closed after this long too.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// Threads serving HTTP and HTTPS connections, each with its own single-threaded
    /// runtime; a connection stays on the worker that accepted it. Default: one per CPU.
    #[arg(long, env = "SLUICE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// An HTTP connection with no request in progress for this long is closed (HTTP/2 with
    /// a GOAWAY), as Envoy's idle timeout.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Duration,

    /// The largest request head (HTTP/1.1) or header list (HTTP/2) accepted, in bytes;
    /// larger ones are answered 431. Envoy's default is 60 KiB.
    #[arg(long, default_value_t = 60 * 1024, value_parser = clap::value_parser!(u32).range(8192..=1 << 20))]
    pub http_max_header_bytes: u32,

    /// HTTP/2 streams one client connection may have open at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// HTTP connections served at once; connections beyond are closed as they are accepted
    /// (counted as `sluice_http_overloaded_total{reason="connections"}`).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// HTTP requests in progress at once; requests beyond are answered 503 with
    /// `x-envoy-overloaded: true` (counted as `reason="requests"`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_requests: u32,

    /// The longest a TLS passthrough client may take to send its whole ClientHello; slower
    /// or silent clients are closed (and counted as `timeout`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub client_hello_timeout: Duration,

    /// How TLS passthrough bytes travel after the SNI decision: `sockmap` hands both sockets
    /// to the kernel's socket splice (an sk_skb program; no wakeup per message), `splice`
    /// moves them with splice(2) through a pipe per direction, `copy` reads them into
    /// userspace; `auto` is splice, and copy with the userspace datapath.
    #[arg(long, value_enum, default_value_t = SniBytePath::Auto)]
    pub sni_byte_path: SniBytePath,

    /// Source ports of the kernel NAT towards backends, FIRST-LAST. The daemon adds them to
    /// `net.ipv4.ip_local_reserved_ports` while the kernel NATs, so the host's own
    /// connections (the userspace proxies') never take a port a NAT flow holds. The default
    /// lies below Linux's default ephemeral range (32768-60999).
    #[arg(long, default_value_t = PortRange::DEFAULT)]
    pub l4_nat_ports: PortRange,

    /// Handshakes the kernel NAT may have forwarded and seen no client ACK for (a count that
    /// halves every second) before new SYNs go to the stack instead, whose SYN cookies
    /// answer them without keeping state and whose connections the userspace forwarder
    /// serves: SYN flood protection (`sluice_datapath_packets_total{reason="l4_syn_to_stack"}`).
    #[arg(long, default_value_t = gateway_common::l4::DEFAULT_SYN_BACKLOG, value_parser = clap::value_parser!(u32).range(1..))]
    pub l4_syn_backlog: u32,
}

/// `--sni-byte-path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SniBytePath {
    Auto,
    Splice,
    Sockmap,
    Copy,
}

/// The kernel datapath's socket splice as the SNI server's byte path.
struct KernelSplice(Arc<crate::datapath::sockets::SocketSplice>);

impl relay::Splicer for KernelSplice {
    fn insert(&self, client: &TcpStream, backend: &TcpStream) -> std::io::Result<()> {
        self.0.insert(client, backend)
    }
}

/// A daemon whose first config is loaded, before anything is attached or bound.
pub struct Daemon {
    state: Arc<SharedState>,
    reloader: Reloader,
}

impl Daemon {
    /// Loads and compiles the first config; it must be valid for the daemon to start.
    pub async fn load(args: &RunArgs) -> anyhow::Result<Daemon> {
        // Before anything else: SIGHUP's default action ends the process, and a config
        // tool may send one as soon as the daemon exists.
        let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "sluice starting");
        let state = SharedState::new();
        let resolver = dns::Resolver::from_system(state.dns.clone());
        let (snapshot, resolved) =
            load_config(&args.config, &args.gateway_namespace, 1, &resolver).await?;
        let reloader = Reloader::new(
            args.config.clone(),
            args.gateway_namespace.clone(),
            hangup,
            state.clone(),
            &snapshot,
            resolver,
            resolved,
        );
        state.apply_config(Arc::new(snapshot));
        Ok(Daemon { state, reloader })
    }

    /// The state the admin server reads.
    pub fn state(&self) -> Arc<SharedState> {
        self.state.clone()
    }

    /// Starts the datapath and the servers, serves until SIGINT/SIGTERM, then undoes
    /// everything this run created.
    pub async fn serve(self, args: RunArgs) -> anyhow::Result<()> {
        let Daemon { state, reloader } = self;
        // Installed before attaching, so a signal during startup still runs the cleanup below.
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

        let options = DatapathOptions {
            mode: args.datapath,
            xdp_mode: args.xdp_mode,
            interfaces: args.interfaces.clone(),
            bpffs: args.bpffs.clone(),
            instance: args.instance.clone(),
            keep_on_exit: args.keep_datapath,
            nat: crate::datapath::NatOptions {
                ports: args.l4_nat_ports,
                syn_backlog: args.l4_syn_backlog,
            },
        };
        let mut datapath = Datapath::start(&options)?;
        let status = datapath.status();
        let sni_mode = match (args.sni_byte_path, &status, datapath.socket_splice()) {
            (SniBytePath::Copy, _, _)
            | (SniBytePath::Auto, DatapathStatus::Userspace { .. }, _) => relay::Mode::Copy,
            (SniBytePath::Sockmap, _, Some(splice)) => {
                relay::Mode::Sockmap(Arc::new(KernelSplice(splice)))
            }
            (SniBytePath::Sockmap, _, None) => {
                datapath.abandon();
                anyhow::bail!(
                    "--sni-byte-path sockmap needs the kernel datapath's socket splice, which is not loaded (see the log)"
                )
            }
            (SniBytePath::Splice | SniBytePath::Auto, _, _) => relay::Mode::Splice,
        };
        tracing::info!(byte_path = ?sni_mode, "TLS passthrough byte path");
        tracing::info!(mode = status.mode_label(), status = %serde_json::to_string(&status).unwrap_or_default(), "datapath running");
        state.set_datapath(DatapathView {
            status,
            counters: datapath.counter_reader(),
        });
        // Listeners are bound before /ready turns 200.
        let workers = std::sync::Arc::new(
            crate::proxy::workers::Workers::start(
                args.workers.map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get()),
                    usize::from,
                ),
                "sluice-http",
            )
            .context("starting the HTTP workers")?,
        );
        let mut servers = Servers {
            userspace: L4Proxy::new(
                state.l4.clone(),
                L4Options {
                    removal: args.l4_backend_removal,
                    idle_timeout: args.l4_idle_timeout,
                    max_connections: args.l4_max_connections as usize,
                },
            ),
            kernel: datapath
                .take_l4()
                .map(|kernel| kernel.with_backend_removal(args.l4_backend_removal)),
            sni: SniProxy::new(
                state.sni.clone(),
                SniOptions {
                    hello_timeout: args.client_hello_timeout,
                    connect_timeout: crate::proxy::CONNECT_TIMEOUT,
                    mode: sni_mode,
                    access_log: args.access_log,
                },
            ),
            http: HttpProxy::new(
                state.http.clone(),
                HttpOptions {
                    credentials: args.credentials_dir.clone(),
                    mesh_identity: args.mesh_identity_dir.clone(),
                    upstream_ca_file: args.upstream_ca_file.clone(),
                    header_read_timeout: args.http_header_timeout,
                    idle_timeout: args.http_idle_timeout,
                    max_header_bytes: args.http_max_header_bytes as usize,
                    max_concurrent_streams: args.http2_max_concurrent_streams,
                    max_connections: args.http_max_connections as usize,
                    max_requests: args.http_max_requests as usize,
                    access_log: args.access_log,
                },
                workers.clone(),
            ),
            status: Serving::default(),
        };
        if let Some(kernel) = &servers.kernel {
            state.set_kernel_l4(kernel.stats());
        }
        if let Some(current) = state.config().current {
            let failures = servers.apply(&current).await;
            if let Some((address, error)) = failures.into_iter().next() {
                drop(servers);
                datapath.abandon();
                return Err(error.context(format!("serving the listener {address}")));
            }
        }
        state.set_serving(servers.status.clone());
        let needed = privileges::StillNeeded {
            kernel: matches!(datapath.status(), DatapathStatus::Kernel { .. }),
            unmounts_bpffs: datapath.mounted_bpffs(),
        };
        match privileges::drop_all_but(&privileges::kept(needed)) {
            Ok(kept) => {
                let mut kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
                kept.sort();
                tracing::info!(?kept, "dropped every other capability; no_new_privs set");
            }
            Err(e) => tracing::warn!("capabilities not dropped: {e:#}"),
        }
        // Subscribed before the reloader starts, so no applied config is missed.
        let applied = state.subscribe();
        let timeouts = crate::datapath::l4::Timeouts {
            closing: args.l4_closing_timeout,
            // Half-open entries: a client retransmits its SYN after 1, 3 and 7 s, and each
            // retransmit keeps its handshake's entries; a flood's fade in seconds.
            syn: Duration::from_secs(10),
            idle: args.l4_idle_timeout,
        };
        let certificates = servers.http.watch_certificates().unwrap_or_else(|e| {
            tracing::warn!("certificates will not be reloaded when their files change: {e:#}");
            tokio::sync::watch::channel(0).1
        });
        let checking = tokio::spawn(health::run(
            state.health.clone(),
            state.subscribe(),
            health::HealthOptions {
                interval: args.health_check_interval,
                timeout: args.health_check_timeout,
                unhealthy_threshold: args.health_check_unhealthy_threshold,
                healthy_threshold: args.health_check_healthy_threshold,
            },
        ));
        let serving = tokio::spawn(follow_plans(
            servers,
            state.clone(),
            applied,
            certificates,
            timeouts,
        ));
        state.set_state(ServerState::Live);
        tracing::info!("sluice is ready");
        let (stop_reloads, stopped) = tokio::sync::watch::channel(false);
        let reloads = tokio::spawn(reloader.run(args.dns_refresh, stopped));

        let (mut serving, mut reloads, mut checking) = (serving, reloads, checking);
        // A background task that ends before a signal has died (a panic, or an error it
        // cannot go on after): the daemon no longer follows its config, so it says so on
        // /healthz and exits non-zero for the orchestrator to restart it.
        let died = tokio::select! {
            _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); None }
            _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); None }
            ended = &mut serving => Some(task_death("serving the applied config (plans, flow expiry)", ended.map(Ok))),
            ended = &mut reloads => Some(task_death("config reloads and DNS refresh", ended)),
            ended = &mut checking => Some(task_death("health checks", ended.map(Ok))),
        };
        if let Some(reason) = &died {
            tracing::error!("{reason}; exiting for a restart");
            state.set_state(ServerState::Failed);
        } else {
            state.set_state(ServerState::Draining);
        }
        serving.abort();
        checking.abort();
        let _ = stop_reloads.send(true);
        if !reloads.is_finished() {
            match reloads.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("config reloads had stopped: {e:#}"),
                Err(e) => tracing::error!("the config reload task failed: {e}"),
            }
        }
        datapath.shutdown();
        tracing::info!("shutdown complete");
        match died {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    }
}

/// `snapshot` with backend sets that give `unhealthy` endpoints no new connections (the
/// snapshot itself when every endpoint is healthy).
fn with_health(
    snapshot: &Arc<Snapshot>,
    unhealthy: &std::collections::BTreeSet<SocketAddr>,
) -> Arc<Snapshot> {
    if unhealthy.is_empty() {
        return snapshot.clone();
    }
    let mut served = (**snapshot).clone();
    served.backend_sets = Arc::new(crate::select::BackendSets::for_plan_with_health(
        &snapshot.plan,
        unhealthy,
    ));
    Arc::new(served)
}

/// Why a background task ended early, from its outcome.
fn task_death(task: &str, ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => format!("the task {task} ended"),
        Ok(Err(e)) => format!("the task {task} failed: {e:#}"),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            format!("the task {task} panicked: {message}")
        }
        Err(e) => format!("the task {task} was cancelled: {e}"),
    }
}

/// Builds generation `generation` of the config, resolving its DNS names first, and logs
/// what it found. Errors (the config is not applied) come back as one message listing all.
pub async fn load_config(
    paths: &[PathBuf],
    namespace: &str,
    generation: u64,
    resolver: &dns::Resolver,
) -> anyhow::Result<(Snapshot, dns::Resolved)> {
    let checked = snapshot::check_off_runtime(paths, snapshot::LOAD_TIMEOUT).await;
    let checked = crate::config::visibility::for_gateway(checked, namespace);
    let resolved = resolver
        .resolve(
            &compile::dns_names(&checked.objects),
            &compile::DnsAnswers::default(),
        )
        .await;
    let snapshot = snapshot::build(checked, &resolved.answers, generation).map_err(|rejected| {
        let count = rejected
            .diagnostics
            .iter()
            .filter(|d| d.severity == crate::config::Severity::Error)
            .count();
        anyhow::anyhow!("the config has {count} error(s):\n{}", rejected.errors())
    })?;
    for diagnostic in &snapshot.diagnostics {
        tracing::warn!(code = diagnostic.code, "{diagnostic}");
    }
    tracing::info!(
        generation,
        objects = snapshot.objects.len(),
        files = snapshot.sources.len(),
        listeners = snapshot.plan.listeners.len(),
        left_out = snapshot.plan.left_out.len(),
        "config applied"
    );
    Ok((snapshot, resolved))
}

/// What serves the Plan's listeners: for L4 ones the userspace forwarder on every one (it
/// is also the fallback for connections the kernel does not take) and the kernel where it
/// can; for TLS passthrough ones the SNI server.
struct Servers {
    userspace: L4Proxy,
    kernel: Option<crate::datapath::l4::KernelL4>,
    sni: SniProxy,
    http: HttpProxy,
    status: Serving,
}

impl Servers {
    /// Applies `plan`: every removed listener is closed before any new one is bound (a
    /// port may change server), and sockets come before the kernel maps, so the fallback
    /// exists before the kernel takes SYNs. Returns the listeners that could not be bound.
    async fn apply(&mut self, snapshot: &Snapshot) -> Vec<(SocketAddr, anyhow::Error)> {
        let (plan, sets) = (&snapshot.plan, &snapshot.backend_sets);
        self.userspace.close_unwanted(plan).await;
        self.sni.close_unwanted(plan).await;
        self.http.close_unwanted(plan).await;
        let mut failures = self.userspace.update(plan, sets).await;
        failures.extend(self.sni.update(plan, sets).await);
        failures.extend(self.http.update(plan).await);
        let kernel = self
            .kernel
            .as_mut()
            .map(|k| {
                let unbound: Vec<SocketAddr> =
                    failures.iter().map(|(address, _)| *address).collect();
                k.apply(plan, sets, &unbound)
            })
            .unwrap_or_default();
        let unserved: Vec<Unserved> = failures
            .iter()
            .chain(self.http.unserved())
            .map(|(address, error)| Unserved {
                address: *address,
                reason: format!("{error:#}"),
            })
            .collect();
        self.status = Serving {
            generation: snapshot.generation,
            l4_kernel: kernel,
            l4_userspace: self.userspace.addresses(),
            sni: self.sni.addresses(),
            sni_byte_path: self.sni.byte_path(),
            http: self.http.addresses(),
            unserved,
        };
        failures
    }
}

/// Serves every Plan the reloader applies, tries HTTPS servers whose certificates did not
/// load again when certificate files change, and expires the kernel's finished connections.
async fn follow_plans(
    mut servers: Servers,
    state: Arc<SharedState>,
    mut applied: tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>,
    mut certificates: tokio::sync::watch::Receiver<u64>,
    timeouts: crate::datapath::l4::Timeouts,
) {
    let mut current = state.config().current;
    let mut health = state.health.subscribe();
    // Often enough that a closed connection is forgotten within ~1.5x its timeout.
    let mut expiry = tokio::time::interval(
        (timeouts.closing / 2).clamp(Duration::from_millis(200), Duration::from_secs(5)),
    );
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(snapshot) = applied.borrow_and_update().clone() else { continue };
                super::fault::point("plan-follower");
                let served = with_health(&snapshot, &health.borrow());
                for (address, error) in servers.apply(&served).await {
                    tracing::error!(%address, generation = snapshot.generation, "listener not served: {error:#}");
                }
                for (address, error) in servers.http.unserved() {
                    tracing::error!(%address, generation = snapshot.generation, "HTTPS server not served: {error:#}");
                }
                state.set_serving(servers.status.clone());
                current = Some(snapshot);
            }
            Ok(()) = health.changed() => {
                let Some(snapshot) = current.clone() else { continue };
                let served = with_health(&snapshot, &health.borrow_and_update());
                for (address, error) in servers.apply(&served).await {
                    tracing::error!(%address, "listener not served: {error:#}");
                }
                state.set_serving(servers.status.clone());
            }
            Ok(()) = certificates.changed() => {
                if servers.http.unserved().is_empty() {
                    continue;
                }
                let Some(snapshot) = current.clone() else { continue };
                let before = servers.http.unserved().len();
                let served = with_health(&snapshot, &health.borrow());
                for (address, error) in servers.apply(&served).await {
                    tracing::error!(%address, "listener not served: {error:#}");
                }
                if servers.http.unserved().len() < before {
                    tracing::info!("HTTPS servers whose certificates appeared are served");
                }
                state.set_serving(servers.status.clone());
            }
            _ = expiry.tick() => {
                if let Some(kernel) = servers.kernel.as_mut() {
                    // A sweep makes syscalls per entry, which adds up on a full table: this
                    // worker blocks for it while the others keep serving.
                    match tokio::task::block_in_place(|| kernel.expire(&timeouts)) {
                        Ok((_, 0)) => {}
                        Ok((live, removed)) => tracing::debug!(live, removed, "expired kernel L4 flows"),
                        Err(e) => tracing::warn!("expiring kernel L4 flows failed: {e:#}"),
                    }
                    match kernel.sync_local_addresses() {
                        Ok(0) => {}
                        Ok(changed) => tracing::info!(changed, "the node's addresses changed; wildcard listeners follow"),
                        Err(e) => tracing::warn!("updating the node's addresses failed: {e:#}"),
                    }
                }
            }
        }
    }
}
