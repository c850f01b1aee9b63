//! `cargo xtask bench`: Sluice against the direct routed path and its peers, measured in one
//! run on the same three-namespace network (method: docs/bench.md). Two suites: `l4` (new
//! connections per second with latency, kept-alive requests per second, bulk throughput,
//! and the kernel programs' per-packet cost), `sni` (TLS passthrough: handshakes per
//! second, TLS requests per second, bulk after the handshake) and `http` (the L7 proxy:
//! HTTP/1.1 kept alive and per connection, h2c, HTTPS kept alive and per handshake). Each contestant gets a fresh
//! network; every figure is the median of `--runs` runs with its min-max spread, and the
//! ratio to the direct path's median.
mod http;
mod l4;
mod sni;

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use tests::{bpffs::TempBpffs, netns::NetNs, sluice::Sluice};

use crate::{
    build::{self, BuildArgs, build_both, workspace_root},
    setup,
};

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
    /// Where the results tables are written (relative to the workspace); by default
    /// `bench/results.md` in cargo's target directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measure only these (comma-separated); the direct path is always measured.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Contestant>,
    /// Record a system-wide perf profile of each contestant's first kept-alive run and add
    /// where the CPU went (by process, and the contestant's top symbols) to the report.
    #[arg(long)]
    perf: bool,
    /// The suites to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["l4", "sni", "http"])]
    suite: Vec<Suite>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    /// Plain TCP: the kernel NAT, the userspace forwarder, nftables and the TCP proxies.
    L4,
    /// TLS passthrough by SNI.
    Sni,
    /// The L7 proxy: HTTP/1.1, h2c and HTTPS through Sluice and the HTTP proxies.
    Http,
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
    /// The SNI suite's kernel byte path through the socket splice (sockmap).
    SluiceSockmap,
    SluiceUserspace,
    Nftables,
    Haproxy,
    Nginx,
    Envoy,
}

impl Contestant {
    fn chosen(args: &BenchArgs, suite: &[Contestant]) -> Vec<Contestant> {
        suite
            .iter()
            .copied()
            .filter(|c| *c == Contestant::Direct || args.only.is_empty() || args.only.contains(c))
            .collect()
    }
}

/// Whatever a contestant started, stopped when dropped.
#[derive(Default)]
struct Running {
    sluice: Option<Sluice>,
    process: Option<Child>,
    _bpffs: Option<TempBpffs>,
    _config: Option<tempfile::TempDir>,
}

impl Running {
    /// The process of the contestant, if it runs one.
    fn pid(&self) -> Option<u32> {
        self.sluice
            .as_ref()
            .map(Sluice::pid)
            .or_else(|| self.process.as_ref().map(Child::id))
    }
}

/// A system-wide `perf record` for `duration`, started now; [`Profile::summary`] reads it.
struct Profile {
    file: PathBuf,
    recording: Child,
}

impl Profile {
    fn start(name: &str, duration: Duration) -> anyhow::Result<Profile> {
        let dir = build::target_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let file = dir.join(format!("perf-{slug}.data"));
        let recording = std::process::Command::new("perf")
            .args(["record", "-a", "-g", "-F", "499", "-o"])
            .arg(&file)
            .args(["--", "sleep", &format!("{:.1}", duration.as_secs_f64())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (Debian: linux-perf)")?;
        Ok(Profile { file, recording })
    }

    /// Shares of all CPU samples by process, and the top symbols of `pid`.
    fn summary(mut self, name: &str, what: &str, pid: Option<u32>) -> anyhow::Result<String> {
        self.recording.wait()?;
        let report = |args: &[&str]| -> anyhow::Result<String> {
            let out = std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-q",
                    "-g",
                    "none",
                    "-i",
                ])
                .arg(&self.file)
                .args(args)
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let mut out = format!("\nperf, {name}, {what}: CPU samples by process (all CPUs)\n\n```\n");
        for line in report(&["--sort", "pid", "--percent-limit", "2"])?
            .lines()
            .take(12)
        {
            out += line.trim_end();
            out += "\n";
        }
        out += "```\n";
        if let Some(pid) = pid {
            let _ = writeln!(
                out,
                "\ntop symbols of the contestant (pid {pid}), share of all samples:\n\n```"
            );
            let pid = pid.to_string();
            for line in report(&["--pid", &pid, "--sort", "dso,sym", "--percent-limit", "0.5"])?
                .lines()
                .take(20)
            {
                out += line.trim_end();
                out += "\n";
            }
            out += "```\n";
        }
        Ok(out)
    }
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
            "wrk",
            "nghttp2-client",
        ],
        &mut installed,
    )?;
    let envoy = setup::envoy(&build::target_dir(), &mut installed)?;
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
    let mut report = String::new();
    if args.suite.contains(&Suite::L4) {
        report += &l4::run(args, &envoy)?;
    }
    if args.suite.contains(&Suite::Sni) {
        report += &sni::run(args, &envoy)?;
    }
    if args.suite.contains(&Suite::Http) {
        report += &http::run(args, &envoy)?;
    }
    println!("{report}");
    let out = match &args.out {
        Some(out) => workspace_root().join(out),
        None => build::target_dir().join("bench/results.md"),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: results written to {}", out.display());
    Ok(())
}

/// Takes `args.runs` samples with `run(n)`, which returns a sample and its log line, each
/// with the share of CPU used outside the benchmark meanwhile. A run during which processes
/// outside it (or the hypervisor) took over `MAX_OUTSIDE_CPU_PCT` measured them too: it is
/// repeated, up to as many extra runs as asked for.
fn sampled<S>(
    args: &BenchArgs,
    ours: &[u64; 3],
    mut run: impl FnMut(usize) -> anyhow::Result<(S, String)>,
) -> anyhow::Result<Vec<(S, f64)>> {
    let mut samples = Vec::new();
    let mut repeats = 0;
    while samples.len() < args.runs {
        let n = samples.len() + 1;
        let outside = OutsideCpu::start(ours);
        let (sample, line) = run(n)?;
        let outside_cpu_pct = outside.percent();
        eprintln!("bench:   run {n}: {line}; {outside_cpu_pct:.1}% CPU outside");
        if outside_cpu_pct > MAX_OUTSIDE_CPU_PCT && repeats < args.runs {
            repeats += 1;
            eprintln!("bench:   run {n} repeated: over {MAX_OUTSIDE_CPU_PCT}% CPU outside");
            continue;
        }
        samples.push((sample, outside_cpu_pct));
    }
    Ok(samples)
}

/// A column of a results table: its heading, the value, decimals, and whether it is
/// compared with the direct path.
type Column<S> = (&'static str, fn(&S) -> f64, usize, bool);

/// Samples by contestant name, in the order measured.
type Named<S> = Vec<(&'static str, Vec<S>)>;

/// Each chosen contestant of a suite measured in turn: its samples under its name, and the
/// profiles the runs recorded (with `--perf`), in order.
fn measure_each<S>(
    args: &BenchArgs,
    suite: &str,
    contestants: &[Contestant],
    name: fn(Contestant) -> &'static str,
    mut measure: impl FnMut(Contestant) -> anyhow::Result<(Vec<S>, String)>,
) -> anyhow::Result<(Named<S>, String)> {
    let mut results = Vec::new();
    let mut profiles = String::new();
    for contestant in Contestant::chosen(args, contestants) {
        eprintln!("bench ({suite}): {}", name(contestant));
        let (samples, profile) = anyhow::Context::with_context(measure(contestant), || {
            format!("measuring {}", name(contestant))
        })?;
        results.push((name(contestant), samples));
        profiles += &profile;
    }
    Ok((results, profiles))
}

/// Renders `results` (the direct path first) as a Markdown table: per column the median
/// with the min-max spread, and its ratio to the direct path's median where asked.
fn render<S>(title: &str, results: &[(&str, Vec<S>)], columns: &[Column<S>]) -> String {
    let direct = |field: fn(&S) -> f64| {
        results
            .first()
            .map(|(_, s)| stats(&s.iter().map(field).collect::<Vec<_>>()).0)
    };
    let mut out = format!("{title}\n\n| contestant |");
    for (name, _, _, _) in columns {
        let _ = write!(out, " {name} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(columns.len());
    out += "\n";
    for (name, samples) in results {
        let _ = write!(out, "| {name} |");
        for (_, field, decimals, ratio) in columns {
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
