//! `cargo xtask demo`: builds sluice and runs it on a real three-namespace network (client,
//! gateway, backend), drives TCP through the gateway, and shows what the daemon reports:
//! readiness, Prometheus counters, the pinned maps through bpftool, the config dump. Every
//! namespace, mount and process it creates is removed at the end, also on failure.
use std::{net::SocketAddr, process::Command};

use anyhow::{Context as _, bail};
use tests::{
    bpffs::TempBpffs,
    echo,
    sluice::Sluice,
    topology::{self, GATEWAY_CLIENT_IF, Topology},
};

use crate::build::{BuildArgs, build, workspace_root};

const CONFIG: &str = include_str!("../../config/demo/gateway.yaml");
const CONNECTIONS: usize = 10;
const BYTES: usize = 256 * 1024;

fn section(title: &str) {
    println!("\n=== {title} ===");
}

pub fn demo() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and loads BPF programs: run it as root");
    }
    let bin = build(&BuildArgs::default())?;
    // SAFETY: set before this process starts any thread; the harness reads it to find sluice.
    unsafe { std::env::set_var("SLUICE_BIN", &bin) };

    section("network");
    let topology = Topology::builder().build();
    println!(
        "client {} --[{GATEWAY_CLIENT_IF}: sluice]-- gateway {} | {} -- backend {}",
        topology::CLIENT_V4,
        topology::GATEWAY_CLIENT_V4,
        topology::GATEWAY_BACKEND_V4,
        topology::backend_v4(0)
    );
    let bpffs = TempBpffs::new();
    let config_dir = tempfile::tempdir().context("creating a config directory")?;
    let config = config_dir.path().join("gateway.yaml");
    std::fs::write(&config, CONFIG).context("writing the demo config")?;

    section("sluice run");
    let args = [
        "--config",
        &config.to_string_lossy(),
        "--interface",
        GATEWAY_CLIENT_IF,
        "--bpffs",
        &bpffs.path().to_string_lossy(),
        "--instance",
        "demo",
    ];
    println!(
        "{} run {} (in the gateway namespace)",
        bin.display(),
        args.join(" ")
    );
    let sluice = Sluice::start(&topology.gateway, &args);
    let (status, body) = sluice.admin_get("/ready");
    println!("GET /ready -> {status} {}", body.trim());

    section(&format!(
        "traffic: {CONNECTIONS} TCP echo connections of {} KiB",
        BYTES / 1024
    ));
    let backend = SocketAddr::new(topology::backend_v4(0).into(), 7000);
    let listener = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 7000);
    let server = echo::serve(&topology.backend, backend, CONNECTIONS);
    for _ in 0..CONNECTIONS {
        echo::roundtrip(&topology.client, listener, BYTES);
    }
    let echoed = server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server panicked"))?;
    println!(
        "client {} -> gateway listener {listener} -> backend {backend}: {echoed} bytes echoed intact",
        topology::CLIENT_V4
    );
    println!(
        "(XDP classifies and counts every frame; the TCP listener is forwarded by the userspace \
         proxy until the kernel NAT path lands)"
    );

    section("GET /stats/prometheus (datapath, L4 and config series)");
    let (_, metrics) = sluice.admin_get("/stats/prometheus");
    let shown = |l: &&str| {
        (l.starts_with("sluice_datapath")
            || l.starts_with("sluice_l4")
            || l.starts_with("sluice_config_generation"))
            && !l.ends_with(" 0")
    };
    for line in metrics.lines().filter(shown) {
        println!("{line}");
    }

    section("bpftool map dump pinned …/REASON_COUNTERS (key 9 = tcp)");
    let pin = bpffs
        .pin_dir("demo")
        .join(gateway_common::map_names::REASON_COUNTERS);
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&pin)
        .output()?;
    let dump = String::from_utf8_lossy(&out.stdout);
    let tcp_entry = dump
        .split("},{\n        \"key\": ")
        .find(|e| e.starts_with('9'))
        .unwrap_or(&dump);
    println!(
        "bpftool map dump pinned {}\n  \"key\": {}",
        pin.display(),
        tcp_entry.trim_end()
    );

    section("GET /config_dump (datapath)");
    let (_, config_dump) = sluice.admin_get("/config_dump");
    let config_dump: serde_json::Value = serde_json::from_str(&config_dump)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&config_dump["datapath"])?
    );
    let objects = config_dump["config"]["objects"]
        .as_array()
        .map_or(0, Vec::len);
    println!("config: {objects} objects loaded from {}", config.display());

    section("shutdown (SIGTERM)");
    let (status, log) = sluice.stop();
    for line in log
        .lines()
        .filter(|l| l.contains("detached") || l.contains("removed the pinned"))
    {
        println!("{line}");
    }
    println!(
        "sluice exited: {status}; pins left: {}",
        bpffs.pin_dir("demo").exists()
    );
    println!(
        "\nDemo done: namespaces, bpffs mount and processes are removed. Source: {}",
        workspace_root().display()
    );
    Ok(())
}
