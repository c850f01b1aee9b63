//! The L4 suite: plain TCP through the kernel NAT (XDP, TC), the userspace forwarder,
//! nftables and the TCP proxies, as requests over new and kept-alive connections and as
//! iperf3 bulk; then the kernel programs' per-packet cost.
use std::{fmt::Write as _, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use tests::{
    bpffs::TempBpffs,
    load::{self, RrServer, Transport},
    netns::NetNs,
    sluice::Sluice,
    topology::{self, Topology},
};

use super::{
    BenchArgs, Column, Contestant, Running, WORKERS, netns_inode, render, spawn_in, wait_listening,
};

const CONTESTANTS: [Contestant; 8] = [
    Contestant::Direct,
    Contestant::SluiceXdp,
    Contestant::SluiceTc,
    Contestant::SluiceUserspace,
    Contestant::Nftables,
    Contestant::Haproxy,
    Contestant::Nginx,
    Contestant::Envoy,
];

const RR_PORT: u16 = 9000;
const IPERF_PORT: u16 = 5201;

impl Contestant {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct (routed, no NAT)",
            Self::SluiceXdp => "Sluice XDP",
            Self::SluiceTc => "Sluice TC",
            Self::SluiceSockmap => "-",
            Self::SluiceUserspace => "Sluice userspace (1 worker)",
            Self::Nftables => "nftables DNAT+SNAT",
            Self::Haproxy => "HAProxy tcp (1 thread)",
            Self::Nginx => "nginx stream (1 worker)",
            Self::Envoy => "Envoy tcp_proxy (1 worker)",
        }
    }
}

/// One measurement of one run.
#[derive(Default, Clone)]
struct Sample {
    conn_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    req_per_s: f64,
    gbit_per_s: f64,
    gbit_4_streams: f64,
    /// CPU used outside the benchmark during the run, in percent of the machine.
    outside_cpu_pct: f64,
}

/// Measures every chosen contestant; returns the suite's tables.
pub(super) fn run(args: &BenchArgs, envoy: &Path) -> anyhow::Result<String> {
    let mut results: Vec<(&str, Vec<Sample>)> = Vec::new();
    for contestant in Contestant::chosen(args, &CONTESTANTS) {
        eprintln!("bench: {}", contestant.name());
        let samples = measure(contestant, args, envoy)
            .with_context(|| format!("measuring {}", contestant.name()))?;
        results.push((contestant.name(), samples));
    }
    eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
    let costs = tests::packet_cost::measure(PACKET_COST_REPEAT, PACKET_COST_SYNS);
    Ok(table(&results, args) + &cost_table(&costs))
}

/// Runs per measured path of the per-packet cost: the kernel averages them.
const PACKET_COST_REPEAT: u32 = 1_000_000;
/// New connections timed one by one (each SYN must be new).
const PACKET_COST_SYNS: u16 = 5_000;

fn cost_table(costs: &[tests::packet_cost::PacketCost]) -> String {
    let mut out = format!(
        "\nPer-packet cost of the kernel programs (BPF_PROG_TEST_RUN, the program alone: {PACKET_COST_REPEAT} runs per path, {PACKET_COST_SYNS} SYNs one by one):\n\n| path | XDP ns/packet | TC ns/packet |\n|---|---|---|\n"
    );
    for cost in costs {
        out += &format!(
            "| {} | {:.0} | {:.0} |\n",
            cost.path, cost.xdp_ns, cost.tc_ns
        );
    }
    out
}

fn measure(contestant: Contestant, args: &BenchArgs, envoy: &Path) -> anyhow::Result<Vec<Sample>> {
    let mut topology = Topology::builder().static_neighbours();
    if contestant != Contestant::SluiceXdp {
        // The physical limit and the peers keep TSO and checksum offload; XDP on veth cannot
        // have them, and that cost is part of what its figures show.
        topology = topology.default_offloads();
    }
    let topology = topology.build();
    // A load generator's settings: the whole port range, and ports in TIME_WAIT reused (with
    // timestamps, as Linux does it). Otherwise the client runs out of ephemeral ports within a
    // few seconds of connection churn and every contestant measures the client's connect().
    // The proxies' connections to the backend churn the gateway's ports the same way: there
    // these are the settings every busy proxy host runs with.
    for ns in [&topology.client, &topology.gateway] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    let backend = topology::backend_v4(0);
    let _rr = RrServer::start(&topology.backend, SocketAddr::new(backend.into(), RR_PORT));
    let mut iperf = spawn_in(
        &topology.backend,
        "iperf3",
        &[
            "-s",
            "-B",
            &backend.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ],
    )?;
    wait_listening(&topology.backend, IPERF_PORT)?;
    let (running, host) = start(contestant, &topology, envoy)?;
    let rr = SocketAddr::new(host, RR_PORT);
    let ours = [&topology.client, &topology.gateway, &topology.backend]
        .map(|ns| netns_inode(&format!("/run/netns/{}", ns.name)));
    let samples = super::sampled(args, &ours, |_| {
        let conns = load::new_connections(
            &topology.client,
            rr,
            &Transport::Plain,
            WORKERS,
            args.duration,
        );
        let keep = load::keep_alive(
            &topology.client,
            rr,
            &Transport::Plain,
            WORKERS,
            args.duration,
        );
        let gbit = iperf_gbit(&topology.client, host, args.duration, 1)?;
        let gbit_4_streams = iperf_gbit(&topology.client, host, args.duration, 4)?;
        let line = format!(
            "{:.0} conn/s ({} errors), {:.0} req/s ({} errors), {gbit:.2} Gbit/s, \
             {gbit_4_streams:.2} Gbit/s over 4 streams",
            conns.rate(),
            conns.errors,
            keep.rate(),
            keep.errors
        );
        let sample = Sample {
            conn_per_s: conns.rate(),
            p50_us: f64::from(conns.percentile_us(0.5)),
            p99_us: f64::from(conns.percentile_us(0.99)),
            req_per_s: keep.rate(),
            gbit_per_s: gbit,
            gbit_4_streams,
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
        // What the datapath dropped or passed on, so the errors above come with a reason.
        let (_, metrics) = sluice.admin_get("/stats/prometheus");
        let l4 = |l: &&str| {
            l.starts_with("sluice_datapath_packets_total{reason=\"l4_") && !l.ends_with(" 0")
        };
        for line in metrics.lines().filter(l4) {
            eprintln!("bench:   {line}");
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(iperf.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = iperf.wait();
    Ok(samples)
}

/// Starts `contestant` on the gateway; returns what to stop afterwards and the address
/// clients connect to.
fn start(
    contestant: Contestant,
    topology: &Topology,
    envoy: &Path,
) -> anyhow::Result<(Running, std::net::IpAddr)> {
    let listener = topology::GATEWAY_CLIENT_V4.into();
    let backend = topology::backend_v4(0);
    let mut running = Running::default();
    match contestant {
        Contestant::Direct => return Ok((running, backend.into())),
        Contestant::SluiceXdp | Contestant::SluiceTc | Contestant::SluiceUserspace => {
            let dir = tempfile::tempdir()?;
            std::fs::write(dir.path().join("bench.yaml"), sluice_config(backend))?;
            let bpffs = TempBpffs::new();
            let config = dir.path().to_string_lossy().into_owned();
            let bpffs_arg = bpffs.path().to_string_lossy().into_owned();
            let mut args = vec!["-f", &config, "--bpffs", &bpffs_arg, "--instance", "bench"];
            let wrapper: &[&str] = match contestant {
                Contestant::SluiceXdp => {
                    args.extend(topology::SLUICE_XDP_ARGS);
                    &[]
                }
                Contestant::SluiceTc => {
                    args.extend(topology::SLUICE_TC_ARGS);
                    &[]
                }
                _ => {
                    args.extend(["--datapath", "userspace"]);
                    &["env", "TOKIO_WORKER_THREADS=1"]
                }
            };
            running.sluice = Some(Sluice::start_with(
                &topology.gateway,
                wrapper,
                tests::sluice::ADMIN_ADDR,
                &args,
            ));
            running._bpffs = Some(bpffs);
            running._config = Some(dir);
        }
        Contestant::Nftables => {
            let rules = format!(
                "table ip bench {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n    ip daddr {listener} tcp dport {{ {RR_PORT}, {IPERF_PORT} }} dnat to {backend}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    ip daddr {backend} masquerade\n  }}\n}}\n"
            );
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("bench.nft");
            std::fs::write(&file, rules)?;
            topology
                .gateway
                .exec("nft", &["-f", &file.to_string_lossy()]);
        }
        Contestant::Haproxy => {
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("haproxy.cfg");
            let mut cfg = String::from(
                "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
            );
            for port in [RR_PORT, IPERF_PORT] {
                let _ = write!(
                    cfg,
                    "listen p{port}\n  bind {listener}:{port}\n  server b {backend}:{port}\n"
                );
            }
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "haproxy",
                &["-f", &file.to_string_lossy(), "-db"],
            )?);
            wait_listening(&topology.gateway, RR_PORT)?;
            running._config = Some(dir);
        }
        Contestant::Nginx => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().to_string_lossy().into_owned();
            let mut cfg = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\n\
                 pid {path}/nginx.pid;\nerror_log {path}/error.log;\n\
                 events {{ worker_connections 16384; }}\nstream {{\n"
            );
            for port in [RR_PORT, IPERF_PORT] {
                let _ = writeln!(
                    cfg,
                    "  server {{ listen {listener}:{port}; proxy_pass {backend}:{port}; }}"
                );
            }
            cfg += "}\n";
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "nginx",
                &["-c", &file.to_string_lossy(), "-p", &path],
            )?);
            wait_listening(&topology.gateway, RR_PORT)?;
            running._config = Some(dir);
        }
        Contestant::SluiceSockmap => bail!("the socket splice is a TLS passthrough byte path"),
        Contestant::Envoy => {
            let dir = tempfile::tempdir()?;
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
            wait_listening(&topology.gateway, RR_PORT)?;
            running._config = Some(dir);
        }
    }
    Ok((running, listener))
}

fn sluice_config(backend: std::net::Ipv4Addr) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bench, namespace: bench}\nspec:\n  servers:\n",
    );
    for port in [RR_PORT, IPERF_PORT] {
        let _ = write!(
            text,
            "  - port: {{number: {port}, name: p{port}, protocol: TCP}}\n    hosts: ['*']\n"
        );
    }
    text += "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bench, namespace: bench}\nspec:\n  hosts: ['*']\n  gateways: [bench]\n  tcp:\n";
    for port in [RR_PORT, IPERF_PORT] {
        let _ = write!(
            text,
            "  - match: [{{port: {port}}}]\n    route: [{{destination: {{host: '{backend}', port: {{number: {port}}}}}}}]\n"
        );
    }
    text
}

fn envoy_config(listener: std::net::IpAddr, backend: std::net::Ipv4Addr) -> String {
    let mut listeners = String::new();
    let mut clusters = String::new();
    for port in [RR_PORT, IPERF_PORT] {
        let _ = write!(
            listeners,
            "  - name: p{port}\n    address: {{socket_address: {{address: '{listener}', port_value: {port}}}}}\n    \
             filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
             '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
             stat_prefix: p{port}\n          cluster: c{port}\n"
        );
        let _ = write!(
            clusters,
            "  - name: c{port}\n    type: STATIC\n    connect_timeout: 5s\n    load_assignment:\n      \
             cluster_name: c{port}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: \
             {{address: {{socket_address: {{address: '{backend}', port_value: {port}}}}}}}\n"
        );
    }
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

fn iperf_gbit(
    client: &NetNs,
    host: std::net::IpAddr,
    duration: Duration,
    streams: usize,
) -> anyhow::Result<f64> {
    let secs = duration.as_secs().max(1).to_string();
    let out = client
        .command("iperf3")
        .args([
            "-c",
            &host.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs,
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3's JSON")?;
    let bits = report["end"]["sum_received"]["bits_per_second"].as_f64();
    bits.map(|b| b / 1e9)
        .with_context(|| format!("iperf3 reported no throughput: {}", report["error"]))
}

fn table(results: &[(&str, Vec<Sample>)], args: &BenchArgs) -> String {
    let columns: [Column<Sample>; 7] = [
        ("new conn/s", |s| s.conn_per_s, 0, true),
        ("p50 µs", |s| s.p50_us, 0, false),
        ("p99 µs", |s| s.p99_us, 0, false),
        ("keep-alive req/s", |s| s.req_per_s, 0, true),
        ("1-stream Gbit/s", |s| s.gbit_per_s, 2, true),
        ("4-stream Gbit/s", |s| s.gbit_4_streams, 2, true),
        ("CPU outside %", |s| s.outside_cpu_pct, 1, false),
    ];
    let title = format!(
        "Sluice benchmark, L4: medians of {} runs of {:.0?} each (min-max), ratio to the direct path in brackets.\n\
         Client, gateway and backend share this machine's {} cores; {} concurrent clients; {}-byte requests and responses.",
        args.runs,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        WORKERS,
        load::MESSAGE
    );
    render(&title, results, &columns)
}
