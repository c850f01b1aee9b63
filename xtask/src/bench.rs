//! `cargo xtask bench`: Sluice against the direct routed path and its peers, measured in one
//! run on the same three-namespace network (method: docs/bench.md): new connections per
//! second with latency, kept-alive requests per second, and single-stream throughput. Each
//! contestant gets a fresh network; every figure is the median of `--runs` runs with its
//! min-max spread, and the ratio to the direct path's median.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use tests::{
    bpffs::TempBpffs,
    load::{self, RrServer},
    netns::NetNs,
    sluice::Sluice,
    topology::{self, Topology},
};

use crate::{
    build::{BuildArgs, build_both, workspace_root},
    setup,
};

const RR_PORT: u16 = 9000;
const IPERF_PORT: u16 = 5201;
/// Concurrent clients of the load generator.
const WORKERS: usize = 32;

#[derive(Args)]
pub struct BenchArgs {
    /// Runs per measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Length of each measurement.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the results table is written.
    #[arg(long, default_value = "target/bench/results.md")]
    pub out: PathBuf,
    /// Measure only these (comma-separated); the direct path is always measured.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Contestant>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|e| format!("{text}: {e}"))?;
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Contestant {
    Direct,
    SluiceXdp,
    SluiceTc,
    SluiceUserspace,
    Nftables,
    Haproxy,
    Nginx,
    Envoy,
}

impl Contestant {
    const ALL: [Contestant; 8] = [
        Self::Direct,
        Self::SluiceXdp,
        Self::SluiceTc,
        Self::SluiceUserspace,
        Self::Nftables,
        Self::Haproxy,
        Self::Nginx,
        Self::Envoy,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct (routed, no NAT)",
            Self::SluiceXdp => "Sluice XDP",
            Self::SluiceTc => "Sluice TC",
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

/// Whatever a contestant started, stopped when dropped.
#[derive(Default)]
struct Running {
    sluice: Option<Sluice>,
    process: Option<Child>,
    _bpffs: Option<TempBpffs>,
    _config: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark builds network namespaces and loads BPF programs: run it as root");
    }
    let mut installed = Vec::new();
    setup::apt_install(
        &[
            "haproxy",
            "nftables",
            "iperf3",
            "iproute2",
            "nginx",
            "libnginx-mod-stream",
        ],
        &mut installed,
    )?;
    let envoy = setup::envoy(&workspace_root().join("target"), &mut installed)?;
    let (bin, object) = build_both(&BuildArgs {
        release: true,
        ..BuildArgs::default()
    })?;
    // SAFETY: set before this process starts any thread; the harness reads them to find
    // sluice and the eBPF object (the per-packet cost loads it).
    unsafe {
        std::env::set_var("SLUICE_BIN", &bin);
        std::env::set_var("SLUICE_EBPF_OBJECT", &object);
    }

    let mut results: Vec<(Contestant, Vec<Sample>)> = Vec::new();
    let chosen = Contestant::ALL
        .into_iter()
        .filter(|c| *c == Contestant::Direct || args.only.is_empty() || args.only.contains(c));
    for contestant in chosen {
        eprintln!("bench: {}", contestant.name());
        let samples = measure(contestant, args, &envoy)
            .with_context(|| format!("measuring {}", contestant.name()))?;
        results.push((contestant, samples));
    }
    eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
    let costs = tests::packet_cost::measure(PACKET_COST_REPEAT, PACKET_COST_SYNS);
    let table = table(&results, args) + &cost_table(&costs);
    println!("{table}");
    let out = workspace_root().join(&args.out);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: results written to {}", out.display());
    Ok(())
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

fn measure(
    contestant: Contestant,
    args: &BenchArgs,
    envoy: &std::path::Path,
) -> anyhow::Result<Vec<Sample>> {
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
    let mut samples = Vec::new();
    let mut repeats = 0;
    while samples.len() < args.runs {
        let run = samples.len() + 1;
        let outside = OutsideCpu::start(&ours);
        let conns = load::new_connections(&topology.client, rr, WORKERS, args.duration);
        let keep = load::keep_alive(&topology.client, rr, WORKERS, args.duration);
        let gbit = iperf_gbit(&topology.client, host, args.duration, 1)?;
        let gbit_4_streams = iperf_gbit(&topology.client, host, args.duration, 4)?;
        let outside_cpu_pct = outside.percent();
        eprintln!(
            "bench:   run {run}: {:.0} conn/s ({} errors), {:.0} req/s ({} errors), {gbit:.2} Gbit/s, \
             {gbit_4_streams:.2} Gbit/s over 4 streams; {outside_cpu_pct:.1}% CPU outside",
            conns.rate(),
            conns.errors,
            keep.rate(),
            keep.errors
        );
        // Another process took a share of the CPUs: the run measured it too. Repeated, up to
        // as many extra runs as asked for.
        if outside_cpu_pct > MAX_OUTSIDE_CPU_PCT && repeats < args.runs {
            repeats += 1;
            eprintln!("bench:   run {run} repeated: over {MAX_OUTSIDE_CPU_PCT}% CPU outside");
            continue;
        }
        samples.push(Sample {
            conn_per_s: conns.rate(),
            p50_us: f64::from(conns.percentile_us(0.5)),
            p99_us: f64::from(conns.percentile_us(0.99)),
            req_per_s: keep.rate(),
            gbit_per_s: gbit,
            gbit_4_streams,
            outside_cpu_pct,
        });
    }
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
    envoy: &std::path::Path,
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

fn spawn_in(ns: &NetNs, program: &str, args: &[&str]) -> anyhow::Result<Child> {
    ns.command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))
}

/// Waits until something in `ns` listens on TCP `port` (`ss`), for at most 10 s.
fn wait_listening(ns: &NetNs, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns
            .command("ss")
            .args(["-Htln", &format!("sport = :{port}")])
            .output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} in {}", ns.name)
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

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    (
        median,
        sorted.first().copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    )
}

fn table(results: &[(Contestant, Vec<Sample>)], args: &BenchArgs) -> String {
    type Field = fn(&Sample) -> f64;
    // (column, value, decimals, compared with the direct path)
    let fields: [(&str, Field, usize, bool); 7] = [
        ("new conn/s", |s| s.conn_per_s, 0, true),
        ("p50 µs", |s| s.p50_us, 0, false),
        ("p99 µs", |s| s.p99_us, 0, false),
        ("keep-alive req/s", |s| s.req_per_s, 0, true),
        ("1-stream Gbit/s", |s| s.gbit_per_s, 2, true),
        ("4-stream Gbit/s", |s| s.gbit_4_streams, 2, true),
        ("CPU outside %", |s| s.outside_cpu_pct, 1, false),
    ];
    let direct = |field: Field| {
        results
            .iter()
            .find(|(c, _)| *c == Contestant::Direct)
            .map(|(_, s)| stats(&s.iter().map(field).collect::<Vec<_>>()).0)
    };
    let mut out = format!(
        "Sluice benchmark: medians of {} runs of {:.0?} each (min-max), ratio to the direct path in brackets.\n\
         Client, gateway and backend share this machine's {} cores; {} concurrent clients; {}-byte requests and responses.\n\n",
        args.runs,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        WORKERS,
        load::MESSAGE
    );
    out += "| contestant |";
    for (name, _, _, _) in &fields {
        let _ = write!(out, " {name} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(fields.len());
    out += "\n";
    for (contestant, samples) in results {
        let _ = write!(out, "| {} |", contestant.name());
        for (_, field, decimals, ratio) in &fields {
            let values: Vec<f64> = samples.iter().map(field).collect();
            let (median, min, max) = stats(&values);
            let _ = write!(
                out,
                " {median:.decimals$} ({min:.decimals$}-{max:.decimals$})"
            );
            if *ratio && let Some(d) = direct(*field).filter(|d| *d > 0.0) {
                let _ = write!(out, " [{:.2}x]", median / d);
            }
            out += " |";
        }
        out += "\n";
    }
    out
}

/// Runs over this share of CPU used outside the benchmark are repeated.
const MAX_OUTSIDE_CPU_PCT: f64 = 5.0;

/// The inode of a network namespace, which identifies it.
fn netns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map_or(0, |m| m.ino())
}

/// CPU time of the user processes outside the benchmark's namespaces (and other than this
/// one, whose load threads enter them), from `/proc/<pid>/stat`, since `start`.
struct OutsideCpu {
    ours: [u64; 3],
    before: std::collections::HashMap<u32, u64>,
    steal_before: u64,
    started: Instant,
}

impl OutsideCpu {
    fn start(ours: &[u64; 3]) -> OutsideCpu {
        OutsideCpu {
            ours: *ours,
            before: outside_ticks(ours),
            steal_before: steal_ticks(),
            started: Instant::now(),
        }
    }

    /// Percent of all CPUs' time since `start`, the hypervisor's steal included (a virtual
    /// machine's neighbours take CPU the same way another process does).
    fn percent(&self) -> f64 {
        let after = outside_ticks(&self.ours);
        let used: u64 = after
            .iter()
            .map(|(pid, ticks)| ticks.saturating_sub(self.before.get(pid).copied().unwrap_or(0)))
            .sum::<u64>()
            + steal_ticks().saturating_sub(self.steal_before);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        100.0 * used as f64 / hz / (self.started.elapsed().as_secs_f64() * cpus)
    }
}

/// CPU time stolen by the hypervisor, all CPUs (`steal` on the `cpu` line of /proc/stat).
fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?.to_owned();
            line.split_whitespace().nth(8)?.parse().ok()
        })
        .unwrap_or(0)
}

/// utime + stime of each user process not in `ours`, by PID.
fn outside_ticks(ours: &[u64; 3]) -> std::collections::HashMap<u32, u64> {
    /// `PF_KTHREAD`: kernel threads (softirq work of the benchmark's own packets) are not noise.
    const PF_KTHREAD: u64 = 0x0020_0000;
    let me = std::process::id();
    let mut ticks = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || ours.contains(&netns_inode(&format!("/proc/{pid}/ns/net"))) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which may itself hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if field(6).is_none_or(|flags| flags & PF_KTHREAD != 0) {
            continue;
        }
        ticks.insert(pid, field(11).unwrap_or(0) + field(12).unwrap_or(0));
    }
    ticks
}
