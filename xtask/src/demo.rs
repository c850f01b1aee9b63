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
    topology::{self, GATEWAY_BACKEND_IF, GATEWAY_CLIENT_IF, Topology},
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
        "--interface",
        GATEWAY_BACKEND_IF,
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
    let dump = sluice.config_dump();
    let attached: Vec<String> = dump["datapath"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{} on {}",
                i["attachment"].as_str().unwrap_or("?"),
                i["interface"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "(the kernel NATs both directions, attached as {}: the client's SYN picks a backend \
         from the Maglev table, and the stack never sees these connections)",
        attached.join(", ")
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

    section("conntrack: bpftool -j map dump pinned …/L4_FLOWS (BTF-decoded)");
    let pin = bpffs
        .pin_dir("demo")
        .join(gateway_common::map_names::L4_FLOWS);
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for entry in entries.as_array().into_iter().flatten().take(6) {
        let entry = entry.get("formatted").unwrap_or(entry);
        let (key, value) = (&entry["key"], &entry["value"]);
        let direction = if value["direction"] == 0 {
            "to backend"
        } else {
            "to client "
        };
        println!(
            "{direction}  {} -> {}  rewritten to  {} -> {}",
            endpoint(&key["src"], &key["src_port"]),
            endpoint(&key["dst"], &key["dst_port"]),
            endpoint(&value["new_src"], &value["new_src_port"]),
            endpoint(&value["new_dst"], &value["new_dst_port"]),
        );
    }
    println!(
        "({} entries: two per connection)",
        entries.as_array().map_or(0, Vec::len)
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

/// `address:port` from a BTF-decoded 16-byte address (IPv4 mapped into IPv6) and a port.
fn endpoint(address: &serde_json::Value, port: &serde_json::Value) -> String {
    let bytes: Vec<u8> = address
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect()
        })
        .unwrap_or_default();
    let ip = <[u8; 16]>::try_from(bytes.as_slice()).map_or_else(
        |_| "?".into(),
        |b| gateway_common::addr::from_mapped(b).to_string(),
    );
    format!("{ip}:{}", port.as_u64().unwrap_or_default())
}
