//! `cargo xtask demo`: builds sluice and runs it on a real three-namespace network (client,
//! gateway, backend), drives TCP through the gateway, and shows what the daemon reports:
//! readiness, Prometheus counters, the pinned maps through bpftool, the config dump. Every
//! namespace, mount and process it creates is removed at the end, also on failure.
use std::{net::SocketAddr, process::Command};

use anyhow::{Context as _, bail};
use tests::{
    bpffs::TempBpffs,
    echo,
    http::{self, HttpBackend},
    sluice::Sluice,
    tls::{TestCa, TlsBackend, TlsClient},
    topology::{self, GATEWAY_BACKEND_IF, GATEWAY_CLIENT_IF, Topology},
};

use crate::build::{BuildArgs, build, workspace_root};

const CONFIG: &str = include_str!("../../config/demo/gateway.yaml");
const HTTP_CONFIG: &str = include_str!("../../config/demo/http.yaml");
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
    let topology = Topology::builder().backends(2).build();
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
    let http_config = config_dir.path().join("http.yaml");
    std::fs::write(&http_config, HTTP_CONFIG).context("writing the demo's HTTP config")?;
    // The HTTPS server's credential, laid out as a mounted Kubernetes TLS Secret.
    let ca = TestCa::new();
    let credentials = config_dir.path().join("credentials");
    ca.issue(&["secure.demo.example"])
        .write(&credentials.join("demo-secure-cred"));

    section("sluice run");
    let args = [
        "--config",
        &config.to_string_lossy(),
        "--config",
        &http_config.to_string_lossy(),
        "--credentials-dir",
        &credentials.to_string_lossy(),
        "--interface",
        GATEWAY_CLIENT_IF,
        "--interface",
        GATEWAY_BACKEND_IF,
        "--bpffs",
        &bpffs.path().to_string_lossy(),
        "--instance",
        "demo",
        // The default byte path (splice) keeps nothing in a map; the socket splice shows
        // each connection's sockets in SNI_SOCKETS.
        "--sni-byte-path",
        "sockmap",
        "--access-log",
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

    tls_passthrough(&topology, &sluice, &bpffs)?;
    http_gateway(&topology, &sluice, &ca)?;

    section("GET /stats/prometheus (datapath, L4 and config series)");
    let (_, metrics) = sluice.admin_get("/stats/prometheus");
    let shown = |l: &&str| {
        (l.starts_with("sluice_datapath")
            || l.starts_with("sluice_l4")
            || l.starts_with("sluice_sni")
            || l.starts_with("sluice_http_requests_total")
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

/// The TLS passthrough stop: two hostnames on :8443, each served by a TLS server that owns
/// its certificate; what a real client (openssl s_client) sees for each; the byte path and
/// the SOCKHASH entries of an open session; the access-log lines.
fn tls_passthrough(topology: &Topology, sluice: &Sluice, bpffs: &TempBpffs) -> anyhow::Result<()> {
    section("TLS passthrough: alpha.example.com and beta.example.com on :8443, routed by SNI");
    let ca = TestCa::new();
    let servers: Vec<TlsBackend> = ["alpha", "beta"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            TlsBackend::start(
                &topology.backend,
                SocketAddr::new(topology::backend_v4(i).into(), 9443),
                ca.issue(&[&format!("{name}.example.com")]),
                &format!("{name}'s own TLS server"),
            )
        })
        .collect();
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 8443);
    for (name, server) in ["alpha", "beta"].iter().zip(&servers) {
        let host = format!("{name}.example.com");
        let out = topology
            .client
            .command("openssl")
            .args([
                "s_client",
                "-connect",
                &vip.to_string(),
                "-servername",
                &host,
            ])
            .args(["-verify_return_error", "-CAfile"])
            .arg(ca.pem_path())
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let shown: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("subject=") || l.contains("Verify return code"))
            .collect();
        println!(
            "openssl s_client -servername {host} (client {}) -> backend {}: {}",
            topology::CLIENT_V4,
            server.addr,
            shown.join("; ")
        );
    }
    let config = ca.client_config();
    let held = topology
        .client
        .run(move || TlsClient::connect(vip, "beta.example.com", config))
        .context("a TLS session to beta.example.com")?;
    let dump = sluice.config_dump();
    println!(
        "byte path: {} (docs/datapath.md compares it with splice, the default, and copy)",
        dump["serving"]["sni_byte_path"].as_str().unwrap_or("?")
    );
    let pin = bpffs
        .pin_dir("demo")
        .join(gateway_common::map_names::SNI_SOCKETS);
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    println!(
        "bpftool map dump pinned …/SNI_SOCKETS while beta's session is open: {} entries (each socket under its own tuple, pointing at its peer)",
        entries.as_array().map_or(0, Vec::len)
    );
    for entry in entries.as_array().into_iter().flatten() {
        // bpftool shows a SOCKHASH key as raw bytes (its value, a socket, cannot be read).
        let bytes: Vec<u8> = entry["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        if let Some((local, remote)) = sock_key(&bytes) {
            println!("  bytes arriving on the socket {local} <-> {remote} leave by its peer");
        }
    }
    let body = topology.client.run(move || held.get())?;
    println!("GET / over that session -> {body:?}");
    let log = sluice.log();
    for line in log
        .lines()
        .filter(|l| l.contains("tls passthrough"))
        .take(4)
    {
        println!("access log: {line}");
    }
    Ok(())
}

/// The HTTP stop: a Bookinfo-style gateway answering by host and path on :8080 (80/20
/// weights between two reviews versions), httpsRedirect, the HTTPS host with its own
/// certificate on :8444, and the access-log lines those requests wrote.
fn http_gateway(topology: &Topology, sluice: &Sluice, ca: &TestCa) -> anyhow::Result<()> {
    section("HTTP: bookinfo.demo.example on :8080, secure.demo.example on :8444 (HTTPS)");
    let backends = [
        (0, 9080, "productpage"),
        (0, 9081, "reviews-v1"),
        (1, 9081, "reviews-v2"),
    ]
    .map(|(i, port, id)| {
        HttpBackend::start(
            &topology.backend,
            SocketAddr::new(topology::backend_v4(i).into(), port),
            id,
        )
    });
    let gateway = topology::GATEWAY_CLIENT_V4;
    let curl = |args: &[&str]| http::curl(&topology.client, args).map_err(anyhow::Error::msg);
    let bookinfo = format!("bookinfo.demo.example:8080:{gateway}");
    for path in ["/productpage", "/static/app.css", "/nothing-here"] {
        let got = curl(&[
            "--resolve",
            &bookinfo,
            &format!("http://bookinfo.demo.example:8080{path}"),
        ])?;
        let first = got.body.lines().next().unwrap_or_default();
        println!(
            "GET http://bookinfo.demo.example:8080{path} -> {} {}",
            got.status,
            if got.status == 200 {
                format!("(answered by {first})")
            } else {
                "(no route: Envoy's 404)".to_owned()
            }
        );
    }
    let got = curl(&[
        "--resolve",
        &bookinfo,
        "http://bookinfo.demo.example:8080/reviews/[1-100]",
    ])?;
    println!(
        "100 x GET /reviews/N (weights 80/20): reviews-v1 answered {}, reviews-v2 {}",
        got.body.matches("reviews-v1\nGET").count(),
        got.body.matches("reviews-v2\nGET").count()
    );
    let got = curl(&[
        "--resolve",
        &format!("secure.demo.example:8080:{gateway}"),
        "http://secure.demo.example:8080/productpage",
    ])?;
    println!(
        "GET http://secure.demo.example:8080/productpage -> {} location: {}",
        got.status,
        got.header("location").unwrap_or("-")
    );
    let out = topology
        .client
        .command("curl")
        .args([
            "-sS",
            "-v",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--resolve", &format!("secure.demo.example:8444:{gateway}")])
        .arg("--cacert")
        .arg(ca.pem_path())
        .arg("https://secure.demo.example:8444/productpage")
        .output()?;
    let subject = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| {
            l.trim_start_matches("* ")
                .trim()
                .strip_prefix("subject: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!(
        "GET https://secure.demo.example:8444/productpage -> {} (status, HTTP version); certificate {subject}, verified by the demo CA",
        String::from_utf8_lossy(&out.stdout)
    );
    let served: usize = backends.iter().map(HttpBackend::requests).sum();
    println!("the backends answered {served} requests");
    for line in sluice
        .log()
        .lines()
        .filter(|l| l.contains("INFO access: http "))
        .take(5)
    {
        println!("access log: {line}");
    }
    Ok(())
}

/// The two ends of a `gateway_common::sockets::SockKey` read back from its bytes (IPv4).
fn sock_key(bytes: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    let v4 = |i: usize| -> Option<std::net::IpAddr> {
        let b = bytes.get(i..i + 4)?;
        Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into())
    };
    let (local_port, remote_port) = (word(4)? as u16, word(8)? as u16);
    Some((
        SocketAddr::new(v4(16)?, local_port),
        SocketAddr::new(v4(32)?, remote_port),
    ))
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
