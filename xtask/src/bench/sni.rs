//! The SNI suite: TLS passthrough, the client's TLS session ending at a rustls backend
//! (ECDSA P-256 certificate) that the contestant reaches by reading the ClientHello's server
//! name. Full handshakes per second (a new connection and one request each, no session
//! resumption), TLS requests per second over kept-alive sessions, and one stream's bulk
//! throughput after the handshake; every contestant with one worker.
use std::{fmt::Write as _, net::SocketAddr, path::Path};

use tests::{
    bpffs::TempBpffs,
    load::{self, RrServer, Transport},
    sluice::Sluice,
    tls::TestCa,
    topology::{self, Topology},
};

use super::{
    BenchArgs, Column, Contestant, Profile, Running, WORKERS, netns_inode, render, spawn_in,
    wait_listening,
};

/// Where the contestants listen, and the TLS backend.
const LISTEN_PORT: u16 = 8443;
const BACKEND_PORT: u16 = 9443;
/// The name the clients send, and the backend's certificate's.
const SERVER_NAME: &str = "bench.example.com";

const CONTESTANTS: [Contestant; 7] = [
    Contestant::Direct,
    Contestant::SluiceSockmap,
    Contestant::SluiceTc,
    Contestant::SluiceUserspace,
    Contestant::Haproxy,
    Contestant::Nginx,
    Contestant::Envoy,
];

fn name(contestant: Contestant) -> &'static str {
    match contestant {
        Contestant::Direct => "direct (routed, no proxy)",
        Contestant::SluiceSockmap => "Sluice, kernel byte path: sockmap (1 worker)",
        Contestant::SluiceTc => "Sluice, kernel byte path: splice (1 worker)",
        Contestant::SluiceUserspace => "Sluice, userspace copy (1 worker)",
        Contestant::Haproxy => "HAProxy req.ssl_sni (1 thread)",
        Contestant::Nginx => "nginx ssl_preread (1 worker)",
        Contestant::Envoy => "Envoy tls_inspector (1 worker)",
        Contestant::SluiceXdp | Contestant::Nftables => "-",
    }
}

#[derive(Default, Clone)]
struct Sample {
    handshakes_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    req_per_s: f64,
    gbit_per_s: f64,
    outside_cpu_pct: f64,
}

pub(super) fn run(args: &BenchArgs, envoy: &Path) -> anyhow::Result<String> {
    let (results, profiles) =
        super::measure_each(args, "sni", &CONTESTANTS, name, |c| measure(c, args, envoy))?;
    let columns: [Column<Sample>; 6] = [
        ("TLS handshakes/s", |s| s.handshakes_per_s, 0, true),
        ("p50 µs", |s| s.p50_us, 0, false),
        ("p99 µs", |s| s.p99_us, 0, false),
        ("TLS keep-alive req/s", |s| s.req_per_s, 0, true),
        ("1-stream Gbit/s", |s| s.gbit_per_s, 2, true),
        ("CPU outside %", |s| s.outside_cpu_pct, 1, false),
    ];
    let title = format!(
        "\nSluice benchmark, TLS passthrough by SNI: medians of {} runs of {:.0?} each (min-max), ratio to the direct path in brackets.\n\
         {} concurrent clients; a full TLS 1.3 handshake (X25519MLKEM768, ECDSA P-256) and one {}-byte request per new connection; {}-byte requests over kept-alive sessions.",
        args.runs,
        args.duration,
        WORKERS,
        load::MESSAGE,
        load::MESSAGE
    );
    Ok(render(&title, &results, &columns) + &profiles)
}

/// The samples of every run, and (with `--perf`) the profile of the first kept-alive run.
fn measure(
    contestant: Contestant,
    args: &BenchArgs,
    envoy: &Path,
) -> anyhow::Result<(Vec<Sample>, String)> {
    let topology = Topology::builder()
        .static_neighbours()
        .default_offloads()
        .build();
    for ns in [&topology.client, &topology.gateway] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    let ca = TestCa::new();
    let backend = SocketAddr::new(topology::backend_v4(0).into(), BACKEND_PORT);
    let _server = RrServer::start_tls(&topology.backend, backend, ca.issue(&[SERVER_NAME]));
    let (running, target) = start(contestant, &topology, backend, envoy)?;
    let transport = Transport::tls(&ca.client_config(), SERVER_NAME);
    let ours = [&topology.client, &topology.gateway, &topology.backend]
        .map(|ns| netns_inode(&format!("/run/netns/{}", ns.name)));
    let mut profile = String::new();
    let samples = super::sampled(args, &ours, |run| {
        let handshakes =
            load::new_connections(&topology.client, target, &transport, WORKERS, args.duration);
        let perf = (args.perf && run == 1)
            .then(|| Profile::start(name(contestant), args.duration))
            .transpose()?;
        let keep = load::keep_alive(&topology.client, target, &transport, WORKERS, args.duration);
        if let Some(perf) = perf {
            profile = perf.summary(name(contestant), "kept-alive requests", running.pid())?;
        }
        let gbit = load::bulk(&topology.client, target, &transport, args.duration);
        let line = format!(
            "{:.0} handshakes/s ({} errors), {:.0} req/s ({} errors), {gbit:.2} Gbit/s",
            handshakes.rate(),
            handshakes.errors,
            keep.rate(),
            keep.errors
        );
        let sample = Sample {
            handshakes_per_s: handshakes.rate(),
            p50_us: f64::from(handshakes.percentile_us(0.5)),
            p99_us: f64::from(handshakes.percentile_us(0.99)),
            req_per_s: keep.rate(),
            gbit_per_s: gbit,
            outside_cpu_pct: 0.0,
        };
        Ok((sample, line))
    })?
    .into_iter()
    .map(|(sample, outside_cpu_pct)| Sample {
        outside_cpu_pct,
        ..sample
    })
    .collect();
    if let Some(sluice) = &running.sluice {
        let (_, metrics) = sluice.admin_get("/stats/prometheus");
        let refused = |l: &&str| {
            (l.starts_with("sluice_sni_handshake_failures_total")
                || l.starts_with("sluice_sni_connect_failures_total"))
                && !l.ends_with(" 0")
        };
        for line in metrics.lines().filter(refused) {
            eprintln!("bench:   {line}");
        }
    }
    Ok((samples, profile))
}

/// Starts `contestant` on the gateway; returns what to stop afterwards and where clients
/// connect.
fn start(
    contestant: Contestant,
    topology: &Topology,
    backend: SocketAddr,
    envoy: &Path,
) -> anyhow::Result<(Running, SocketAddr)> {
    let listener = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), LISTEN_PORT);
    let mut running = Running::default();
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_string_lossy().into_owned();
    match contestant {
        Contestant::Direct => return Ok((running, backend)),
        Contestant::SluiceTc | Contestant::SluiceSockmap | Contestant::SluiceUserspace => {
            std::fs::write(dir.path().join("bench.yaml"), sluice_config(backend))?;
            let bpffs = TempBpffs::new();
            let bpffs_arg = bpffs.path().to_string_lossy().into_owned();
            let mut args = vec!["-f", &path, "--bpffs", &bpffs_arg, "--instance", "bench"];
            match contestant {
                Contestant::SluiceTc => {
                    args.extend(topology::SLUICE_TC_ARGS);
                    args.extend(["--sni-byte-path", "splice"]);
                }
                Contestant::SluiceSockmap => {
                    args.extend(topology::SLUICE_TC_ARGS);
                    args.extend(["--sni-byte-path", "sockmap"]);
                }
                _ => args.extend(["--datapath", "userspace"]),
            }
            running.sluice = Some(Sluice::start_with(
                &topology.gateway,
                &["env", "TOKIO_WORKER_THREADS=1"],
                tests::sluice::ADMIN_ADDR,
                &args,
            ));
            running._bpffs = Some(bpffs);
        }
        Contestant::Haproxy => {
            let cfg = format!(
                "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend sni\n  bind {listener} backlog 4096\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  tcp-request content reject\n  use_backend b if {{ req.ssl_sni -i {SERVER_NAME} }}\n\
                 backend b\n  server b {backend}\n"
            );
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "haproxy",
                &["-f", &file.to_string_lossy(), "-db"],
            )?);
        }
        Contestant::Nginx => {
            let cfg = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\n\
                 pid {path}/nginx.pid;\nerror_log {path}/error.log;\n\
                 events {{ worker_connections 16384; }}\nstream {{\n\
                 map $ssl_preread_server_name $sni_backend {{\n  hostnames;\n  {SERVER_NAME} {backend};\n}}\n\
                 server {{\n  listen {listener} backlog=4096;\n  ssl_preread on;\n  preread_timeout 5s;\n  proxy_pass $sni_backend;\n  proxy_connect_timeout 5s;\n  proxy_half_close on;\n}}\n}}\n"
            );
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "nginx",
                &[
                    "-c",
                    &file.to_string_lossy(),
                    "-p",
                    &path,
                    "-e",
                    &format!("{path}/error.log"),
                ],
            )?);
        }
        Contestant::Envoy => {
            let file = dir.path().join("envoy.yaml");
            std::fs::write(&file, envoy_config(listener, backend))?;
            running.process = Some(spawn_in(
                &topology.gateway,
                &envoy.to_string_lossy(),
                &[
                    "-c",
                    &file.to_string_lossy(),
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "error",
                ],
            )?);
        }
        Contestant::SluiceXdp | Contestant::Nftables => {
            anyhow::bail!("{} does not route by SNI", name(contestant))
        }
    }
    if running.process.is_some() {
        wait_listening(&topology.gateway, LISTEN_PORT)?;
    }
    running._config = Some(dir);
    Ok((running, listener))
}

fn sluice_config(backend: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  servers:\n  - port: {{number: {LISTEN_PORT}, name: tls, protocol: TLS}}\n    tls: {{mode: PASSTHROUGH}}\n    hosts: ['*.example.com']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  hosts: ['*.example.com']\n  gateways: [bench]\n  tls:\n  - match: [{{sniHosts: [{SERVER_NAME}]}}]\n    route: [{{destination: {{host: '{}', port: {{number: {}}}}}}}]\n",
        backend.ip(),
        backend.port()
    )
}

fn envoy_config(listener: SocketAddr, backend: SocketAddr) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "static_resources:\n  listeners:\n  - name: sni\n    address: {{socket_address: {{address: '{}', port_value: {}}}}}\n    \
         tcp_backlog_size: 4096\n    listener_filters_timeout: 5s\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      \
         typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}\n    \
         filter_chains:\n    - filter_chain_match: {{server_names: ['{SERVER_NAME}']}}\n      filters:\n      - name: envoy.filters.network.tcp_proxy\n        \
         typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: sni\n          cluster: b\n  \
         clusters:\n  - name: b\n    type: STATIC\n    connect_timeout: 5s\n    circuit_breakers: {{thresholds: [{{priority: DEFAULT, max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}}]}}\n    \
         load_assignment:\n      cluster_name: b\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}\n",
        listener.ip(),
        listener.port(),
        backend.ip(),
        backend.port()
    );
    out
}
