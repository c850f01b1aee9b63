//! L4 forwarding end to end, in every datapath mode (userspace, XDP, TC): TCP listeners of
//! the Plan forward to
//! weighted backends, and the bytes arrive intact.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tests::{
    bpffs::TempBpffs,
    echo, root,
    servers::{self, NameServer},
    sluice::Sluice,
    topology::{self, Topology},
};

const PORT: u16 = 7000;

/// A Gateway on :7000 and a VirtualService splitting it across `backends` (address, weight)
/// of a STATIC ServiceEntry per destination.
fn config(backends: &[(IpAddr, u32)]) -> String {
    tests::example::l4_config(PORT, backends)
}

struct Gateway {
    topology: Topology,
    _bpffs: TempBpffs,
    _config: tempfile::TempDir,
    sluice: Sluice,
    /// What `sluice run` was started with.
    args: Vec<String>,
}

/// Where the gateway forwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Userspace,
    Xdp,
    /// TC on hosts with their default offloads: GSO packets and partial checksums reach the
    /// program, which is what TC is for.
    Tc,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Userspace => &["--datapath", "userspace"],
            Mode::Xdp => topology::SLUICE_XDP_ARGS,
            Mode::Tc => topology::SLUICE_TC_ARGS,
        }
    }

    fn kernel(self) -> bool {
        self != Mode::Userspace
    }
}

fn gateway(config_text: &str, mode: Mode, extra: &[&str]) -> Gateway {
    gateway_through(config_text, mode, extra, &[])
}

/// [`gateway`] with `sluice` run through `wrapper` (e.g. `prlimit …`).
fn gateway_through(config_text: &str, mode: Mode, extra: &[&str], wrapper: &[&str]) -> Gateway {
    gateway_with(2, mode == Mode::Tc, config_text, mode, extra, wrapper)
}

/// [`gateway_through`] with `backends` backend addresses in the topology, whose hosts keep
/// their default offloads (TSO, partial checksums) if `default_offloads`.
fn gateway_with(
    backends: usize,
    default_offloads: bool,
    config_text: &str,
    mode: Mode,
    extra: &[&str],
    wrapper: &[&str],
) -> Gateway {
    let mut topology = Topology::builder().backends(backends);
    if default_offloads {
        topology = topology.default_offloads();
    }
    let topology = topology.build();
    let bpffs = TempBpffs::new();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("l4.yaml"), config_text).unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<String> = [
        "-f",
        &dir.path().to_string_lossy(),
        "--bpffs",
        &bpffs.path().to_string_lossy(),
        "--instance",
        "l4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(mode.args().iter().chain(extra).map(|s| s.to_string()));
    let sluice = Sluice::start_with(&topology.gateway, wrapper, "127.0.0.1:19000", &args);
    Gateway {
        topology,
        _bpffs: bpffs,
        _config: dir,
        sluice,
        args,
    }
}

/// Asserts which path carried the test's connections to `listener`: in kernel mode the
/// kernel NAT (the userspace forwarder counted nothing), otherwise the userspace forwarder.
fn assert_path(gw: &Gateway, mode: Mode, listener: &str) {
    let dump = gw.sluice.config_dump();
    let kernel: Vec<String> = dump["serving"]["l4_kernel"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let (_, metrics) = gw.sluice.admin_get("/stats/prometheus");
    let userspace = metrics.lines().any(|l| {
        l.starts_with(&format!(
            "sluice_l4_connections_total{{listener=\"{listener}\""
        ))
    });
    let forwarded = gw
        .sluice
        .metric("sluice_datapath_packets_total{reason=\"l4_forwarded\",verdict=\"forward\"}");
    if mode.kernel() {
        assert!(
            kernel.contains(&listener.to_owned()),
            "{listener} not kernel-served: {dump:#}"
        );
        assert!(
            !userspace,
            "the userspace forwarder carried connections to {listener}"
        );
        assert!(
            forwarded.is_some_and(|p| p > 0.0),
            "nothing NATed in {mode:?}"
        );
    } else {
        assert!(kernel.is_empty(), "{dump:#}");
        assert!(
            userspace,
            "the userspace forwarder carried nothing to {listener}"
        );
    }
}

fn echo_and_bulk(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), mode, &[]);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);

    let server = echo::serve(&gw.topology.backend, backend, 3);
    for _ in 0..3 {
        echo::roundtrip(&gw.topology.client, vip, 64 * 1024);
    }
    server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));

    let sink = servers::digest_sink(&gw.topology.backend, backend);
    servers::send_and_verify(&gw.topology.client, vip, 100 * 1024 * 1024);
    assert_eq!(
        sink.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        100 * 1024 * 1024
    );

    let userspace =
        format!("sluice_l4_connections_total{{listener=\"0.0.0.0:{PORT}\",backend=\"{backend}\"}}");
    let forwarded = gw
        .sluice
        .metric("sluice_datapath_packets_total{reason=\"l4_forwarded\",verdict=\"forward\"}");
    let dump = gw.sluice.config_dump();
    if mode.kernel() {
        // The kernel carried every connection: the userspace forwarder saw none.
        let listener = format!("0.0.0.0:{PORT}");
        assert_eq!(
            dump["serving"]["l4_kernel"],
            serde_json::json!([listener]),
            "{dump:#}"
        );
        assert_eq!(gw.sluice.metric(&userspace), None, "{}", gw.sluice.log());
        // XDP: at least one frame per 1500 bytes of payload (replies are fewer: delayed ACKs,
        // GRO). TC sees GSO packets of up to 64 KiB.
        let mtu = if mode == Mode::Tc { 65536.0 } else { 1500.0 };
        let minimum = 100.0 * 1024.0 * 1024.0 / mtu;
        // The kernel's own per-listener and per-backend counters saw the same connections.
        let kernel = |name: &str, label: &str, value: &str| {
            gw.sluice.metric(&format!(
                "sluice_l4_kernel_{name}_total{{{label}=\"{value}\"}}"
            ))
        };
        assert_eq!(kernel("connections", "listener", &listener), Some(4.0));
        assert_eq!(
            kernel("backend_connections", "backend", &backend.to_string()),
            Some(4.0)
        );
        assert!(
            kernel("bytes", "listener", &listener).is_some_and(|b| b > 100.0 * 1024.0 * 1024.0)
        );
        assert!(
            forwarded.is_some_and(|p| p > minimum),
            "{forwarded:?} packets NATed in {mode:?}"
        );
        if mode == Mode::Tc {
            // GSO survived the NAT: the bulk crossed as super-packets (about 2,500 here),
            // not as 70,000 MTU-sized frames.
            assert!(
                forwarded.is_some_and(|p| p < 100.0 * 1024.0 * 1024.0 / 1500.0 / 4.0),
                "{forwarded:?} packets NATed in TC: GSO packets were split"
            );
        }
    } else {
        assert_eq!(
            dump["serving"]["l4_kernel"],
            serde_json::json!([]),
            "{dump:#}"
        );
        assert_eq!(gw.sluice.metric(&userspace), Some(4.0), "{userspace}");
        let up = format!(
            "sluice_l4_bytes_total{{listener=\"0.0.0.0:{PORT}\",backend=\"{backend}\",direction=\"upstream\"}}"
        );
        assert_eq!(
            gw.sluice.metric(&up),
            Some((3 * 64 * 1024 + 100 * 1024 * 1024) as f64)
        );
    }
}

fn weights_are_honoured(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let gw = gateway(&config(&[(b0.ip(), 80), (b1.ip(), 20)]), mode, &[]);
    let _s0 = NameServer::start(&gw.topology.backend, b0, "b0");
    let _s1 = NameServer::start(&gw.topology.backend, b1, "b1");
    let names = servers::ask_name(
        &gw.topology.client,
        SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT),
        1000,
    );
    let first = names.iter().filter(|n| *n == "b0").count();
    let second = names.iter().filter(|n| *n == "b1").count();
    assert_eq!(first + second, 1000, "every connection reached a backend");
    assert!(
        (750..=850).contains(&first),
        "{first} of 1000 connections on the weight-80 backend (±5 points)"
    );
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}

fn ipv6(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v6(0).into(), PORT);
    let gw = gateway(
        &config(&[(backend.ip(), 100)]).replace(
            &format!("number: {PORT}, name: tcp, protocol: TCP}}\n    hosts"),
            &format!("number: {PORT}, name: tcp, protocol: TCP}}\n    bind: '::'\n    hosts"),
        ),
        mode,
        &[],
    );
    let server = echo::serve(&gw.topology.backend, backend, 2);
    for _ in 0..2 {
        echo::roundtrip(
            &gw.topology.client,
            SocketAddr::new(topology::GATEWAY_CLIENT_V6.into(), PORT),
            32 * 1024,
        );
    }
    server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_path(&gw, mode, &format!("[::]:{PORT}"));
}

#[test]
fn userspace_echo_and_100mb() {
    echo_and_bulk("userspace_echo_and_100mb", Mode::Userspace);
}

#[test]
fn kernel_mode_echo_and_100mb() {
    echo_and_bulk("kernel_mode_echo_and_100mb", Mode::Xdp);
}

#[test]
fn tc_mode_echo_and_100mb() {
    echo_and_bulk("tc_mode_echo_and_100mb", Mode::Tc);
}

#[test]
fn userspace_weights_80_20() {
    weights_are_honoured("userspace_weights_80_20", Mode::Userspace);
}

#[test]
fn kernel_mode_weights_80_20() {
    weights_are_honoured("kernel_mode_weights_80_20", Mode::Xdp);
}

#[test]
fn tc_mode_weights_80_20() {
    weights_are_honoured("tc_mode_weights_80_20", Mode::Tc);
}

#[test]
fn userspace_ipv6() {
    ipv6("userspace_ipv6", Mode::Userspace);
}

#[test]
fn kernel_mode_ipv6() {
    ipv6("kernel_mode_ipv6", Mode::Xdp);
}

#[test]
fn tc_mode_ipv6() {
    ipv6("tc_mode_ipv6", Mode::Tc);
}

/// Two backends 50/50; under load, a reload removes one. No connection may fail, connections
/// begun after the new generation is visible avoid the removed backend, and a long-lived
/// connection through another listener is untouched.
fn reload_under_load(test: &str, mode: Mode) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use tests::servers::Answer;
    if !root::can_run(test) {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let echo_backend = SocketAddr::new(topology::backend_v4(0).into(), 7001);
    let with_echo = |text: String| {
        text.replace("    hosts: ['*']\n", "    hosts: ['*']\n  - port: {number: 7001, name: tcp-echo, protocol: TCP}\n    hosts: ['*']\n")
            + "  - match: [{port: 7001}]\n    route: [{destination: {host: 203.0.113.2, port: {number: 7001}}}]\n"
    };
    let both = with_echo(config(&[(b0.ip(), 50), (b1.ip(), 50)])).replace(
        "  tcp:\n  - route:",
        "  tcp:\n  - match: [{port: 7000}]\n    route:",
    );
    let gw = gateway(&both, mode, &[]);
    let _s0 = NameServer::start(&gw.topology.backend, b0, "b0");
    let _s1 = NameServer::start(&gw.topology.backend, b1, "b1");

    // A long-lived connection through the echo listener, open across the reload.
    let echo = echo::serve(&gw.topology.backend, echo_backend, 1);
    let (to_echo, from_test) = std::sync::mpsc::channel::<()>();
    let long_lived = gw.topology.client.spawn({
        let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 7001);
        move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(vip).unwrap_or_else(|e| panic!("{e}"));
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 5];
            for round in 0..2 {
                stream
                    .write_all(b"hello")
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                stream
                    .read_exact(&mut buf)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(&buf, b"hello");
                if round == 0 {
                    let _ = from_test.recv_timeout(std::time::Duration::from_secs(30));
                }
            }
        }
    });

    let progress = Arc::new(AtomicUsize::new(0));
    let marker = Arc::new(AtomicBool::new(false));
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let load = servers::load(
        &gw.topology.client,
        vip,
        1500,
        progress.clone(),
        marker.clone(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while progress.load(Ordering::Acquire) < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let only_b0 = with_echo(config(&[(b0.ip(), 100)])).replace(
        "  tcp:\n  - route:",
        "  tcp:\n  - match: [{port: 7000}]\n    route:",
    );
    let file = gw._config.path().join("l4.yaml");
    tests::sluice::replace_config(&file, &only_b0);
    gw.sluice
        .wait_config(std::time::Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    marker.store(true, Ordering::Release);
    let _ = to_echo.send(());

    let answers = load.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    long_lived
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    echo.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| matches!(a, Answer::Failed(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(answers.len(), 1500);
    let before_b1 = answers
        .iter()
        .filter(|a| matches!(a, Answer::Named { name, after_marker: false } if name == "b1"))
        .count();
    assert!(
        before_b1 > 50,
        "b1 served only {before_b1} connections before the reload"
    );
    let after: Vec<&Answer> = answers
        .iter()
        .filter(|a| {
            matches!(
                a,
                Answer::Named {
                    after_marker: true,
                    ..
                }
            )
        })
        .collect();
    assert!(
        after.len() > 100,
        "only {} connections after the reload",
        after.len()
    );
    assert!(
        after
            .iter()
            .all(|a| matches!(a, Answer::Named { name, .. } if name == "b0")),
        "a connection after the reload reached b1"
    );
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}

#[test]
fn userspace_reload_under_load() {
    reload_under_load("userspace_reload_under_load", Mode::Userspace);
}

#[test]
fn kernel_mode_reload_under_load() {
    reload_under_load("kernel_mode_reload_under_load", Mode::Xdp);
}

#[test]
fn tc_mode_reload_under_load() {
    reload_under_load("tc_mode_reload_under_load", Mode::Tc);
}

/// The daemon forgets finished kernel connections: both entries of each closed connection
/// expire after the closing timeout.
#[test]
fn kernel_flows_expire_after_close() {
    if !root::can_run("kernel_flows_expire_after_close") {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(
        &config(&[(backend.ip(), 100)]),
        Mode::Xdp,
        &["--l4-closing-timeout", "1s"],
    );
    let server = echo::serve(&gw.topology.backend, backend, 5);
    for _ in 0..5 {
        echo::roundtrip(
            &gw.topology.client,
            SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT),
            1024,
        );
    }
    server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(
        gw.sluice.metric(&format!(
            "sluice_l4_kernel_connections_total{{listener=\"0.0.0.0:{PORT}\"}}"
        )),
        Some(5.0)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let expired = gw.sluice.metric("sluice_l4_kernel_flows_expired_total");
        let live = gw.sluice.metric("sluice_l4_kernel_flows");
        if expired == Some(10.0) && live == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flows not expired: live {live:?}, expired {expired:?}\n{}",
            gw.sluice.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `sluice inspect` reads the pinned maps: listeners with their backends' shares, and the
/// backend of one open connection.
#[test]
fn inspect_shows_listeners_and_the_backend_of_a_flow() {
    if !root::can_run("inspect_shows_listeners_and_the_backend_of_a_flow") {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let gw = gateway(&config(&[(b0.ip(), 80), (b1.ip(), 20)]), Mode::Xdp, &[]);
    let bpffs = gw._bpffs.path().to_string_lossy().into_owned();
    let inspect = |args: &[&str]| {
        let out = gw
            .topology
            .gateway
            .command(&root::sluice_bin().to_string_lossy())
            .args(["inspect", "--bpffs", &bpffs, "--instance", "l4"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("sluice inspect: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listeners = inspect(&["listeners"]);
    assert!(
        listeners.contains(&format!("listener 0.0.0.0:{PORT}")),
        "{listeners}"
    );
    assert!(
        listeners.contains(&format!("backend {b0} via 203.0.113.1"))
            && listeners.contains("80.0 %"),
        "{listeners}"
    );
    assert!(
        listeners.contains(&format!("backend {b1} via 203.0.113.1"))
            && listeners.contains("20.0 %"),
        "{listeners}"
    );

    // Hold a connection open and ask where it went.
    let echo0 = echo::serve(&gw.topology.backend, b0, 1);
    let echo1 = echo::serve(&gw.topology.backend, b1, 1);
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let client = gw.topology.client.spawn(move || {
        use std::io::{Read, Write};
        let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
        let mut stream = std::net::TcpStream::connect(vip).unwrap_or_else(|e| panic!("{e}"));
        stream.write_all(b"ping").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 4];
        stream
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = port_tx.send(stream.local_addr().map(|a| a.port()).unwrap_or_default());
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(30));
    });
    let port = port_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let flow = inspect(&["flow", &topology::CLIENT_V4.to_string(), &port.to_string()]);
    assert!(
        flow.starts_with(&format!("{}:{port} -> 0.0.0.0:{PORT}", topology::CLIENT_V4))
            || flow.starts_with(&format!(
                "{}:{port} -> {}:{PORT}",
                topology::CLIENT_V4,
                topology::GATEWAY_CLIENT_V4
            )),
        "{flow}"
    );
    assert!(flow.contains("established"), "{flow}");
    let on_b0 = flow.contains(&format!("backend {b0}"));
    assert!(on_b0 || flow.contains(&format!("backend {b1}")), "{flow}");
    let flows = inspect(&["flows"]);
    assert!(flows.contains("1 connections"), "{flows}");
    drop(done_tx);
    client
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    // The unused echo server still waits for its one connection: give it one.
    let idle = if on_b0 { (echo1, b1) } else { (echo0, b0) };
    echo::roundtrip(&gw.topology.backend, idle.1, 1);
    idle.0
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// `--keep-datapath`: the daemon exits and the kernel keeps forwarding (the established
/// connection and new ones); the next run takes over the pinned maps and swaps its program
/// onto the pinned links, so the connection and the counters carry on; its own exit,
/// without the flag, removes everything.
fn restart_keeps_connections(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let mut gw = gateway(&config(&[(backend.ip(), 100)]), mode, &["--keep-datapath"]);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let listener = format!("0.0.0.0:{PORT}");
    let connections = format!("sluice_l4_kernel_connections_total{{listener=\"{listener}\"}}");

    let server = echo::serve_concurrently(&gw.topology.backend, backend, 2);
    let held = echo::HeldConnection::open(&gw.topology.client, vip);
    held.exchange(1);
    assert_path(&gw, mode, &listener);
    assert_eq!(gw.sluice.metric(&connections), Some(1.0));

    // The first run exits and leaves the datapath behind.
    let (status, log) = gw.sluice.stop_in_place();
    assert!(status.success(), "{log}");
    assert!(log.contains("left the datapath attached"), "{log}");
    let pin_dir = gw._bpffs.pin_dir("l4");
    let links: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(links.len(), 2, "one pinned link per interface: {links:?}");

    // No daemon: the kernel alone carries the held connection and a new one.
    held.exchange(2);
    echo::roundtrip(&gw.topology.client, vip, 1000);

    // The second run (without the flag) takes over.
    let args: Vec<String> = gw
        .args
        .iter()
        .filter(|a| *a != "--keep-datapath")
        .cloned()
        .collect();
    gw.sluice = Sluice::start(&gw.topology.gateway, &args);
    let log = gw.sluice.log();
    assert!(
        log.contains("loaded the eBPF programs on the maps a previous run pinned"),
        "{log}"
    );
    assert_eq!(
        log.matches("replaced the previous run's program on its link")
            .count(),
        2,
        "{log}"
    );
    held.exchange(3);
    assert_path(&gw, mode, &listener);
    // Counters continue: the held connection and the one made while no daemon ran.
    assert_eq!(gw.sluice.metric(&connections), Some(2.0), "{log}");
    drop(held);
    let echoed = server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(echoed, 3 * 1000 + 1000);

    // Its exit removes the programs, the links and the maps.
    let (status, log) = gw.sluice.stop_in_place();
    assert!(status.success(), "{log}");
    assert!(!pin_dir.exists(), "pins left behind: {log}");
    let refused = gw.topology.client.run(move || {
        std::net::TcpStream::connect_timeout(&vip, std::time::Duration::from_secs(3))
            .map_err(|e| e.kind())
    });
    assert_eq!(
        refused.err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "something still forwards {vip}"
    );
}

#[test]
fn kernel_mode_restart_keeps_connections() {
    restart_keeps_connections("kernel_mode_restart_keeps_connections", Mode::Xdp);
}

#[test]
fn tc_mode_restart_keeps_connections() {
    restart_keeps_connections("tc_mode_restart_keeps_connections", Mode::Tc);
}

/// A backend leaves the route while a connection to it is open. `keep` (the default): the
/// connection runs on, the backend is out of rotation, not down. `reset`: the connection is
/// reset at once. New connections go to the remaining backend either way.
fn backend_removal(test: &str, mode: Mode, removal: &str) {
    if !root::can_run(test) {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let gw = gateway(
        &config(&[(b0.ip(), 100)]),
        mode,
        &["--l4-backend-removal", removal],
    );
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let listener = format!("0.0.0.0:{PORT}");
    let on_b0 = echo::serve_concurrently(&gw.topology.backend, b0, 1);
    let held = echo::HeldConnection::open(&gw.topology.client, vip);
    held.exchange(1);
    assert_path(&gw, mode, &listener);

    let file = gw._config.path().join("l4.yaml");
    tests::sluice::replace_config(&file, &config(&[(b1.ip(), 100)]));
    gw.sluice
        .wait_config(std::time::Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    let on_b1 = echo::serve(&gw.topology.backend, b1, 1);
    echo::roundtrip(&gw.topology.client, vip, 1000);
    assert_eq!(
        on_b1
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        1000,
        "the new connection went to {b1}"
    );

    let kernel_resets = gw.sluice.metric("sluice_l4_kernel_flows_reset_total");
    let userspace_resets = gw.sluice.metric(&format!(
        "sluice_l4_connections_reset_total{{listener=\"{listener}\",backend=\"{b0}\"}}"
    ));
    if removal == "keep" {
        held.exchange(2);
        drop(held);
        assert_eq!(
            on_b0
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            2000
        );
        assert_eq!(userspace_resets, None);
        if mode.kernel() {
            assert_eq!(kernel_resets, Some(0.0));
        }
    } else {
        let reset = held.try_exchange(2);
        assert!(
            reset.as_ref().is_err_and(|e| e.contains("reset by peer")),
            "{reset:?}"
        );
        if mode.kernel() {
            // Both directions' entries of the one connection.
            assert_eq!(kernel_resets, Some(2.0), "{}", gw.sluice.log());
        } else {
            assert_eq!(userspace_resets, Some(1.0), "{}", gw.sluice.log());
        }
    }
}

#[test]
fn userspace_backend_removal_keeps_connections() {
    backend_removal(
        "userspace_backend_removal_keeps_connections",
        Mode::Userspace,
        "keep",
    );
}

#[test]
fn kernel_mode_backend_removal_keeps_connections() {
    backend_removal(
        "kernel_mode_backend_removal_keeps_connections",
        Mode::Xdp,
        "keep",
    );
}

#[test]
fn tc_mode_backend_removal_keeps_connections() {
    backend_removal(
        "tc_mode_backend_removal_keeps_connections",
        Mode::Tc,
        "keep",
    );
}

#[test]
fn userspace_backend_removal_resets_connections() {
    backend_removal(
        "userspace_backend_removal_resets_connections",
        Mode::Userspace,
        "reset",
    );
}

#[test]
fn kernel_mode_backend_removal_resets_connections() {
    backend_removal(
        "kernel_mode_backend_removal_resets_connections",
        Mode::Xdp,
        "reset",
    );
}

#[test]
fn tc_mode_backend_removal_resets_connections() {
    backend_removal(
        "tc_mode_backend_removal_resets_connections",
        Mode::Tc,
        "reset",
    );
}

/// The kernel NAT draws source ports from `--l4-nat-ports`, which the daemon reserves from
/// the host: with every NAT port in use, connections the gateway host opens itself to the
/// same backend (from the same address) take other ports, and both kinds carry their own
/// bytes. Without the reservation about half the local connections would pick a NAT port
/// and their replies would be NATed to a client.
fn nat_and_local_ports_apart(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    const NAT: usize = 16;
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(
        &config(&[(backend.ip(), 100)]),
        mode,
        &["--l4-nat-ports", "32768-32783"],
    );
    let reserved = || {
        let out = gw
            .topology
            .gateway
            .exec("sysctl", &["-n", "net.ipv4.ip_local_reserved_ports"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(reserved(), "32768-32783", "{}", gw.sluice.log());
    // Half of the host's ephemeral ports overlap the NAT range.
    gw.topology
        .gateway
        .sysctl("net.ipv4.ip_local_port_range", "32768 32799");
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let echoed = echo::serve_concurrently(&gw.topology.backend, backend, 2 * NAT);
    let nat: Vec<echo::HeldConnection> = (0..NAT)
        .map(|_| echo::HeldConnection::open(&gw.topology.client, vip))
        .collect();
    let local: Vec<echo::HeldConnection> = (0..NAT)
        .map(|_| echo::HeldConnection::open(&gw.topology.gateway, backend))
        .collect();
    for (i, held) in nat.iter().chain(&local).enumerate() {
        held.exchange(i as u8);
    }
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
    let forwarded = gw.sluice.metric(&format!(
        "sluice_l4_kernel_connections_total{{listener=\"0.0.0.0:{PORT}\"}}"
    ));
    assert_eq!(forwarded, Some(NAT as f64), "every NAT port is in use");
    drop(nat);
    drop(local);
    assert_eq!(
        echoed
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        (2 * NAT * 1000) as u64
    );
    let (status, log) = gw.sluice.stop();
    assert!(status.success(), "{log}");
    assert_eq!(reserved(), "", "released on exit:\n{log}");
}

#[test]
fn kernel_mode_nat_and_local_ports_apart() {
    nat_and_local_ports_apart("kernel_mode_nat_and_local_ports_apart", Mode::Xdp);
}

#[test]
fn tc_mode_nat_and_local_ports_apart() {
    nat_and_local_ports_apart("tc_mode_nat_and_local_ports_apart", Mode::Tc);
}

/// The userspace forwarder's limits: bytes counted while a connection is open, a
/// connection cap (more are closed as accepted, and a freed slot is used again), and an idle
/// timeout that closes the silent connection and leaves the busy one.
#[test]
fn userspace_forwarder_limits() {
    if !root::can_run("userspace_forwarder_limits") {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(
        &config(&[(backend.ip(), 100)]),
        Mode::Userspace,
        &["--l4-max-connections", "2", "--l4-idle-timeout", "2s"],
    );
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let server = echo::serve_concurrently(&gw.topology.backend, backend, 3);
    let metric =
        |name: &str, labels: &str| gw.sluice.metric(&format!("sluice_l4_{name}{{{labels}}}"));
    let listener = format!("listener=\"0.0.0.0:{PORT}\"");

    let busy = echo::HeldConnection::open(&gw.topology.client, vip);
    busy.exchange(1);
    let up = format!("{listener},backend=\"{backend}\",direction=\"upstream\"");
    assert_eq!(
        metric("bytes_total", &up),
        Some(1000.0),
        "counted while open"
    );
    let silent = echo::HeldConnection::open(&gw.topology.client, vip);
    silent.exchange(1);

    let refused = echo::HeldConnection::open(&gw.topology.client, vip);
    assert!(
        refused.try_exchange(1).is_err(),
        "a third connection was carried"
    );
    assert_eq!(metric("overloaded_total", &listener), Some(1.0));
    drop(refused);

    // The busy connection talks every 500 ms; the silent one is closed after 2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut round = 2;
    while metric("idle_closed_total", &listener).is_none() {
        assert!(std::time::Instant::now() < deadline, "{}", gw.sluice.log());
        std::thread::sleep(Duration::from_millis(500));
        busy.exchange(round);
        round = round.wrapping_add(1);
    }
    assert_eq!(metric("idle_closed_total", &listener), Some(1.0));
    assert!(
        silent.try_exchange(9).is_err(),
        "the idle connection is closed"
    );
    busy.exchange(round);
    drop(silent);

    // Its slot is free again.
    let next = echo::HeldConnection::open(&gw.topology.client, vip);
    next.exchange(1);
    drop(next);
    drop(busy);
    server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Out of file descriptors: the forwarder raises its soft limit to the hard one at start;
/// when accepts still fail (EMFILE) it backs off and logs once, and serves again as soon as
/// descriptors are free.
#[test]
fn userspace_forwarder_out_of_file_descriptors() {
    if !root::can_run("userspace_forwarder_out_of_file_descriptors") {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway_through(
        &config(&[(backend.ip(), 100)]),
        Mode::Userspace,
        &[],
        &["prlimit", "--nofile=64:4096"],
    );
    let pid = gw.sluice.pid().to_string();
    let open_files = || {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_else(|e| panic!("{e}"));
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default()
    };
    assert_eq!(
        open_files(),
        "4096:4096",
        "raised to the hard limit at start"
    );

    // Every descriptor the daemon may open is in use: accepts fail with EMFILE.
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("{e}"));
    let set_limit = |limit: &str| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}")])
            .output()
            .unwrap_or_else(|e| panic!("prlimit: {e}"));
        assert!(out.status.success(), "{out:?}");
    };
    set_limit(&format!("{}:4096", in_use - 2));
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let _server = NameServer::start(&gw.topology.backend, backend, "b0");
    let held = gw.topology.client.run(move || {
        (0..3)
            .map(|_| {
                std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect::<Vec<_>>()
    });
    let failed = gw
        .sluice
        .wait_log(|l| l.contains("accept failed; backing off"));
    assert!(failed.contains("Too many open files"), "{failed}");
    // Not a line per retry: accepts keep failing (backing off to 1 s) for two seconds, and
    // a warning comes at most every 10 s.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        gw.sluice.log().matches("accept failed").count(),
        1,
        "{}",
        gw.sluice.log()
    );

    set_limit("4096:4096");
    gw.sluice.wait_log(|l| l.contains("accepting again"));
    drop(held);
    assert_eq!(
        servers::ask_name(&gw.topology.client, vip, 3),
        ["b0", "b0", "b0"]
    );
}

/// A half-closed connection (the client's FIN sent, the backend still sending) outlives a
/// 30 s pause with the default timeouts: a FIN closes only its own direction, and the flow
/// closes when both have. The client reads everything and then a clean end, no reset.
fn half_close_survives_a_pause(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    use std::io::{Read as _, Write as _};
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), mode, &[]);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = gw.topology.backend.spawn(move || {
        let listener =
            std::net::TcpListener::bind(backend).unwrap_or_else(|e| panic!("{backend}: {e}"));
        let _ = bound_tx.send(());
        let (mut stream, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut request = Vec::new();
        stream
            .read_to_end(&mut request)
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(&[1; 1000])
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_secs(30));
        stream
            .write_all(&[2; 1000])
            .unwrap_or_else(|e| panic!("{e}"));
        request.len()
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let received = gw.topology.client.run(move || {
        let mut stream = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(b"request")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).map(|_| got)
    });
    let got = received.unwrap_or_else(|e| panic!("the half-closed connection broke: {e}"));
    assert_eq!(got.len(), 2000);
    assert!(got[..1000].iter().all(|b| *b == 1) && got[1000..].iter().all(|b| *b == 2));
    assert_eq!(
        server
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        7
    );
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}

#[test]
fn xdp_half_close_survives_a_pause() {
    half_close_survives_a_pause("xdp_half_close_survives_a_pause", Mode::Xdp);
}

#[test]
fn tc_half_close_survives_a_pause() {
    half_close_survives_a_pause("tc_half_close_survives_a_pause", Mode::Tc);
}

/// Sends `packet` (an IP packet, headers and checksums its own) from `ns` through a raw
/// socket: what a blind attacker on the client's path can do.
fn send_raw_ipv4(ns: &tests::netns::NetNs, packet: Vec<u8>, dst: std::net::Ipv4Addr) {
    ns.run(move || {
        tests::flood::RawSocket::open()
            .send(&packet, dst)
            .unwrap_or_else(|e| panic!("sendto: {e}"));
    });
}

/// A spoofed RST with the client's addresses and ports but a sequence number far from what
/// the client has sent is dropped by the kernel NAT and counted; the connection carries on.
fn blind_reset_is_dropped(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), mode, &[]);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let server = echo::serve(&gw.topology.backend, backend, 1);
    let held = echo::HeldConnection::open(&gw.topology.client, vip);
    held.exchange(1);

    // The client-side flow entry: the client's port and the sequence it has reached.
    let pin = gw._bpffs.pin_dir("l4").join("L4_FLOWS");
    let out = tests::netns::run(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin),
    );
    let dump: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool JSON: {e}"));
    let entry = dump
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e.get("formatted").unwrap_or(e))
        .find(|e| e["key"]["dst_port"] == PORT)
        .unwrap_or_else(|| panic!("no client-side flow in {dump:#}"));
    let client_port = entry["key"]["src_port"].as_u64().unwrap_or_default() as u16;
    let seq_next = entry["value"]["seq_next"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq_next in {entry:#}")) as u32;

    let rst = tests::packets::PacketBuilder::tcp(
        topology::CLIENT_V4.into(),
        topology::GATEWAY_CLIENT_V4.into(),
        client_port,
        PORT,
        gateway_common::proto::tcp_flags::RST,
    )
    .seq(seq_next.wrapping_add(1 << 30))
    .build();
    // The IP packet: the Ethernet header is the kernel's to write.
    send_raw_ipv4(
        &gw.topology.client,
        rst[14..].to_vec(),
        topology::GATEWAY_CLIENT_V4,
    );
    let dropped = "sluice_datapath_packets_total{reason=\"l4_rst_out_of_window\",verdict=\"drop\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.sluice.metric(dropped) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the blind RST was not counted: {:?}",
            gw.sluice.metric(dropped)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    held.exchange(2);
    drop(held);
    assert_eq!(
        server
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        2000
    );
}

#[test]
fn xdp_blind_reset_is_dropped() {
    blind_reset_is_dropped("xdp_blind_reset_is_dropped", Mode::Xdp);
}

#[test]
fn tc_blind_reset_is_dropped() {
    blind_reset_is_dropped("tc_blind_reset_is_dropped", Mode::Tc);
}

/// Transit traffic is not a wildcard listener's: a client reaching another host's port
/// 7000 through the gateway (routed, as a node routes pod or VM traffic) gets that host,
/// while the gateway's own address on the port is the listener's.
fn transit_is_not_captured(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let gw = gateway(&config(&[(b0.ip(), 100)]), mode, &[]);
    let _s0 = NameServer::start(&gw.topology.backend, b0, "b0");
    let _s1 = NameServer::start(&gw.topology.backend, b1, "b1");
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    assert_eq!(servers::ask_name(&gw.topology.client, vip, 2), ["b0", "b0"]);
    assert_eq!(
        servers::ask_name(&gw.topology.client, b1, 2),
        ["b1", "b1"],
        "transit to another host's port was captured by the wildcard listener"
    );
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}

#[test]
fn xdp_transit_is_not_captured() {
    transit_is_not_captured("xdp_transit_is_not_captured", Mode::Xdp);
}

#[test]
fn tc_transit_is_not_captured() {
    transit_is_not_captured("tc_transit_is_not_captured", Mode::Tc);
}

/// A kernel listener only where the userspace fallback holds the port: a port another
/// program of the node owns (its bind fails on a reload) is not programmed in the kernel,
/// and its connections keep reaching that program.
fn a_port_owned_by_another_program_is_left_alone(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), mode, &[]);
    let _b0 = NameServer::start(&gw.topology.backend, backend, "b0");
    // Another program of the node on port 7001.
    let owner = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), PORT + 1);
    let _owner = NameServer::start(&gw.topology.gateway, owner, "owner");
    let file = gw._config.path().join("l4.yaml");
    let both = config(&[(backend.ip(), 100)]).replace(
        "  - port: {number: 7000, name: tcp, protocol: TCP}\n    hosts: ['*']\n",
        "  - port: {number: 7000, name: tcp, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 7001, name: tcp2, protocol: TCP}\n    hosts: ['*']\n",
    );
    assert_ne!(
        both,
        config(&[(backend.ip(), 100)]),
        "the second server was not added"
    );
    tests::sluice::replace_config(&file, &both);
    let dump = gw
        .sluice
        .wait_config(Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    let unserved = dump["serving"]["unserved"].to_string();
    assert!(unserved.contains("0.0.0.0:7001"), "{dump:#}");
    assert_eq!(
        dump["serving"]["l4_kernel"],
        serde_json::json!([format!("0.0.0.0:{PORT}")]),
        "{dump:#}"
    );
    let vip = |port| SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), port);
    assert_eq!(
        servers::ask_name(&gw.topology.client, vip(PORT + 1), 1),
        ["owner"]
    );
    assert_eq!(servers::ask_name(&gw.topology.client, vip(PORT), 1), ["b0"]);
}

#[test]
fn xdp_a_port_owned_by_another_program_is_left_alone() {
    a_port_owned_by_another_program_is_left_alone(
        "xdp_a_port_owned_by_another_program_is_left_alone",
        Mode::Xdp,
    );
}

#[test]
fn tc_a_port_owned_by_another_program_is_left_alone() {
    a_port_owned_by_another_program_is_left_alone(
        "tc_a_port_owned_by_another_program_is_left_alone",
        Mode::Tc,
    );
}

/// A Plan the kernel cannot hold (more distinct Maglev tables than it has slots) is not
/// left half-served: the Plan places every L4 listener in userspace and says why, the
/// kernel's listeners are withdrawn, `/config_dump` says the kernel serves none, and the
/// userspace forwarder serves them all.
#[test]
fn a_plan_beyond_the_kernels_limits_is_withdrawn_from_it() {
    if !root::can_run("a_plan_beyond_the_kernels_limits_is_withdrawn_from_it") {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), Mode::Tc, &[]);
    let _b0 = NameServer::start(&gw.topology.backend, backend, "b0");
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    assert_eq!(servers::ask_name(&gw.topology.client, vip, 1), ["b0"]);
    assert_eq!(
        gw.sluice.config_dump()["serving"]["l4_kernel"],
        serde_json::json!([format!("0.0.0.0:{PORT}")])
    );

    // 140 ports, each to its own backend port: 140 distinct tables, the kernel has 128.
    let ports = PORT..PORT + 140;
    let servers_yaml: String = ports
        .clone()
        .map(|p| {
            format!("  - port: {{number: {p}, name: tcp-{p}, protocol: TCP}}\n    hosts: ['*']\n")
        })
        .collect();
    let routes: String = ports
        .clone()
        .map(|p| {
            let to = if p == PORT { PORT } else { p + 1000 };
            format!(
                "  - match: [{{port: {p}}}]\n    route: [{{destination: {{host: {}, port: {{number: {to}}}}}}}]\n",
                backend.ip()
            )
        })
        .collect();
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: l4}}\nspec:\n  servers:\n{servers_yaml}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: l4}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  tcp:\n{routes}"
    );
    let file = gw._config.path().join("l4.yaml");
    tests::sluice::replace_config(&file, &text);
    let dump = gw
        .sluice
        .wait_config(Duration::from_secs(30), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    assert_eq!(
        dump["serving"]["l4_kernel"],
        serde_json::json!([]),
        "{}",
        gw.sluice.log()
    );
    assert_eq!(
        dump["serving"]["l4_userspace"].as_array().map(Vec::len),
        Some(140)
    );
    // The Plan says so (had a sync been refused instead, the record of the kernel's maps
    // would have withdrawn them all: `sync::tests::a_failed_write_leaves_the_record_true…`).
    assert!(
        gw.sluice
            .log()
            .contains("served in userspace: the Plan needs 140 distinct backend sets"),
        "{}",
        gw.sluice.log()
    );
    assert_eq!(servers::ask_name(&gw.topology.client, vip, 2), ["b0", "b0"]);
    let userspace =
        format!("sluice_l4_connections_total{{listener=\"0.0.0.0:{PORT}\",backend=\"{backend}\"}}");
    assert_eq!(
        gw.sluice.metric(&userspace),
        Some(2.0),
        "{}",
        gw.sluice.log()
    );
}

/// The userspace forwarder tries the next choice when a backend refuses: with one of two
/// backends down, every connection is served, and the refusals are counted.
#[test]
fn userspace_forwarder_tries_the_next_backend() {
    if !root::can_run("userspace_forwarder_tries_the_next_backend") {
        return;
    }
    let (b0, b1) = (
        SocketAddr::new(topology::backend_v4(0).into(), PORT),
        SocketAddr::new(topology::backend_v4(1).into(), PORT),
    );
    let gw = gateway(
        &config(&[(b0.ip(), 50), (b1.ip(), 50)]),
        Mode::Userspace,
        &[],
    );
    // Only b1 listens: b0 refuses.
    let _s1 = NameServer::start(&gw.topology.backend, b1, "b1");
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let names = servers::ask_name(&gw.topology.client, vip, 40);
    assert_eq!(names, vec!["b1"; 40]);
    let refused = gw
        .sluice
        .metric(&format!(
            "sluice_l4_connect_failures_total{{listener=\"0.0.0.0:{PORT}\",backend=\"{b0}\"}}"
        ))
        .unwrap_or(0.0);
    // About half the connections chose b0 first.
    assert!(
        (5.0..=35.0).contains(&refused),
        "{refused} refusals counted"
    );
}

/// Active health checks: of two backends, one that stops answering leaves the rotation within a few
/// check intervals (in the kernel's Maglev table as in userspace), its state shows on
/// `/config_dump` and the metrics, and it returns when it answers again.
fn a_dead_backend_leaves_and_returns(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let addresses: Vec<SocketAddr> = (0..2)
        .map(|i| SocketAddr::new(topology::backend_v4(i).into(), PORT))
        .collect();
    let gw = gateway(
        &config(&addresses.iter().map(|a| (a.ip(), 100)).collect::<Vec<_>>()),
        mode,
        &[
            "--health-check-interval",
            "300ms",
            "--health-check-timeout",
            "200ms",
        ],
    );
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let mut servers_up: Vec<Option<NameServer>> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Some(NameServer::start(
                &gw.topology.backend,
                *a,
                &format!("b{i}"),
            ))
        })
        .collect();
    let count = |names: &[String], name: &str| names.iter().filter(|n| *n == name).count();
    let names = servers::ask_name(&gw.topology.client, vip, 60);
    assert!(count(&names, "b1") > 5, "{names:?}");

    let healthy = format!("sluice_endpoint_healthy{{endpoint=\"{}\"}}", addresses[1]);
    let wait_for = |value: f64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gw.sluice.metric(&healthy) != Some(value) {
            assert!(
                std::time::Instant::now() < deadline,
                "{healthy} != {value}\n{}",
                gw.sluice.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    servers_up[1] = None; // b1 stops: its port refuses
    wait_for(0.0);
    let dump = gw.sluice.config_dump();
    assert_eq!(
        dump["health"][addresses[1].to_string()]["healthy"],
        false,
        "{dump:#}"
    );
    // Every new connection goes to the other one (in kernel mode a connection sent to b1
    // would be refused: ask_name fails on it).
    let names = servers::ask_name(&gw.topology.client, vip, 60);
    assert_eq!(count(&names, "b0"), 60, "{names:?}");

    servers_up[1] = Some(NameServer::start(&gw.topology.backend, addresses[1], "b1"));
    wait_for(1.0);
    let names = servers::ask_name(&gw.topology.client, vip, 60);
    assert!(count(&names, "b1") > 5, "b1 is back: {names:?}");
}

#[test]
fn tc_a_dead_backend_leaves_and_returns() {
    a_dead_backend_leaves_and_returns("tc_a_dead_backend_leaves_and_returns", Mode::Tc);
}

#[test]
fn userspace_a_dead_backend_leaves_and_returns() {
    a_dead_backend_leaves_and_returns(
        "userspace_a_dead_backend_leaves_and_returns",
        Mode::Userspace,
    );
}

#[test]
fn xdp_syn_flood_spares_connections() {
    syn_flood_spares_connections("xdp_syn_flood_spares_connections", Mode::Xdp);
}

#[test]
fn tc_syn_flood_spares_connections() {
    syn_flood_spares_connections("tc_syn_flood_spares_connections", Mode::Tc);
}

/// One request and its answer over `stream` (the request-response servers' protocol).
fn request(stream: &mut std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut answer = [0u8; tests::load::MESSAGE];
    stream.write_all(&[0x5a; tests::load::MESSAGE])?;
    stream.read_exact(&mut answer)?;
    if answer != [0x5a; tests::load::MESSAGE] {
        return Err(std::io::Error::other("the answer differs"));
    }
    Ok(())
}

/// A spoofed SYN flood (>= 20k SYN/s for 10 s from 192.0.2.0/24) at a listener with eight
/// backends, while 100 connections established through the kernel run, half of them busy
/// and half idle throughout, and a client opens new connections one after another: no
/// established connection is lost (the flood's handshakes live in their own table, which
/// evicts only its own), at least 99 % of the new connections succeed (SYNs the kernel hands
/// to the stack's SYN cookies are served by the userspace forwarder), and the hand-over is
/// counted.
fn syn_flood_spares_connections(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    const FLOOD: Duration = Duration::from_secs(10);
    // Eight backends: source ports for 250k handshakes (31,744 each), more than the flood
    // sends, so what the flood meets is the flow table's capacity, not a port shortage.
    let backends: Vec<SocketAddr> = (0..8)
        .map(|i| SocketAddr::new(topology::backend_v4(i).into(), PORT))
        .collect();
    let weighted: Vec<(IpAddr, u32)> = backends.iter().map(|b| (b.ip(), 1)).collect();
    let gw = gateway_with(8, mode == Mode::Tc, &config(&weighted), mode, &[], &[]);
    let _servers: Vec<tests::load::RrServer> = backends
        .iter()
        .map(|b| tests::load::RrServer::start(&gw.topology.backend, *b))
        .collect();
    // The flood's sources are routable, as on the internet: the stack's SYN-ACKs go out
    // (and are lost), so its SYN cookies do the work they would.
    gw.topology.gateway.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        &topology::CLIENT_V4.to_string(),
    ]);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);

    let mut established: Vec<std::net::TcpStream> = gw.topology.client.run(move || {
        (0..100)
            .map(|i| {
                let mut stream = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                request(&mut stream)?;
                Ok(stream)
            })
            .collect::<std::io::Result<_>>()
            .unwrap_or_else(|e| panic!("establishing: {e}"))
    });
    let kernel_connections = gw.sluice.metric(&format!(
        "sluice_l4_kernel_connections_total{{listener=\"0.0.0.0:{PORT}\"}}"
    ));
    assert!(
        kernel_connections.is_some_and(|n| n >= 100.0),
        "the established connections are not the kernel's: {kernel_connections:?}"
    );
    let idle = established.split_off(50);

    let flood = tests::flood::syn_flood(
        &gw.topology.client,
        std::net::SocketAddrV4::new(topology::GATEWAY_CLIENT_V4, PORT),
        22_000,
        FLOOD,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The busy half: a request on each, every 50 ms, all through the flood.
    let busy = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut busy = established;
            let mut failures = Vec::new();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) && rounds < 1000 {
                for (i, stream) in busy.iter_mut().enumerate() {
                    if let Err(e) = request(stream) {
                        failures.push(format!("busy connection {i}, round {rounds}: {e}"));
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (busy, rounds, failures)
        }
    });
    // New connections, one after another, for as long as the flood lasts.
    let (attempted, failed) = gw.topology.client.run(move || {
        let start = std::time::Instant::now();
        let (mut attempted, mut failed) = (0u32, Vec::new());
        while start.elapsed() < FLOOD && attempted < 2000 {
            attempted += 1;
            let outcome = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                .and_then(|mut stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    request(&mut stream)
                });
            if let Err(e) = outcome {
                failed.push(format!("new connection {attempted}: {e}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (attempted, failed)
    });
    let report = flood
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (busy, rounds, busy_failures) =
        busy.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let to_stack = gw
        .sluice
        .metric("sluice_datapath_packets_total{reason=\"l4_syn_to_stack\",verdict=\"pass\"}")
        .unwrap_or_default();
    // The daemon's last table sweep (every 5 s) saw the flood under way.
    let flows = gw.sluice.metric("sluice_l4_kernel_flows").unwrap_or(-1.0);
    let half_open = gw
        .sluice
        .metric("sluice_l4_kernel_half_open")
        .unwrap_or(-1.0);
    eprintln!(
        "{test}: flood {} SYNs in {:.1?} ({:.0}/s), {to_stack} handed to the stack; {flows} flow \
         and {half_open} half-open entries; busy rounds {rounds}, busy failures {}; new \
         connections {attempted} attempted, {} failed",
        report.sent,
        report.elapsed,
        report.rate(),
        busy_failures.len(),
        failed.len()
    );
    assert!(
        report.rate() >= 20_000.0 && report.elapsed >= FLOOD - Duration::from_millis(100),
        "the flood was weaker than asked: {report:?}"
    );
    assert!(busy_failures.is_empty(), "{busy_failures:#?}");
    assert!(
        rounds >= 50,
        "the busy connections ran only {rounds} rounds"
    );
    // Every established connection, idle or busy, still carries requests.
    for (i, mut stream) in busy.into_iter().chain(idle).enumerate() {
        request(&mut stream).unwrap_or_else(|e| panic!("established connection {i} lost: {e}"));
    }
    assert!(
        failed.len() * 100 <= attempted as usize,
        "{} of {attempted} new connections failed: {failed:#?}",
        failed.len()
    );
    assert!(attempted >= 100, "only {attempted} new connections tried");
    assert!(
        to_stack > 0.0,
        "no SYN went to the stack's cookies during the flood"
    );
    assert!(
        half_open > 0.0 && flows < 10_000.0,
        "the flood's handshakes reached the established table: {flows} flow entries, \
         {half_open} half-open"
    );
}

#[test]
fn xdp_mss_fits_a_smaller_backend_link() {
    mss_fits_a_smaller_backend_link("xdp_mss_fits_a_smaller_backend_link", Mode::Xdp);
}

#[test]
fn tc_mss_fits_a_smaller_backend_link() {
    mss_fits_a_smaller_backend_link("tc_mss_fits_a_smaller_backend_link", Mode::Tc);
}

/// The segment size a connected socket sends with (`TCP_MAXSEG`).
fn sending_mss(stream: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on an open socket with an int-sized buffer that outlives the call.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut mss).cast(),
            &raw mut len,
        )
    };
    assert_eq!(ret, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    mss as u32
}

/// The gateway's link to the backends carries 1400-byte packets while both ends announce
/// 1460-byte segments from their 1500-byte links: the kernel NAT clamps the MSS of the SYN
/// and the SYN-ACK to 1360, so 200 KB cross both ways instead of stalling on packets the
/// link drops.
fn mss_fits_a_smaller_backend_link(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway(&config(&[(backend.ip(), 100)]), mode, &[]);
    gw.topology
        .gateway
        .ip(&["link", "set", topology::GATEWAY_BACKEND_IF, "mtu", "1400"]);
    let server = echo::serve(&gw.topology.backend, backend, 2);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let mss = gw.topology.client.run(move || {
        let stream = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting: {e}"));
        sending_mss(&stream)
    });
    assert!(mss <= 1360, "the client sends {mss}-byte segments");
    echo::roundtrip(&gw.topology.client, vip, 200_000);
    assert_eq!(
        server
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        200_000
    );
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}

#[test]
fn xdp_too_big_is_answered() {
    too_big_is_answered("xdp_too_big_is_answered", Mode::Xdp);
}

#[test]
fn tc_too_big_is_answered() {
    too_big_is_answered("tc_too_big_is_answered", Mode::Tc);
}

/// The route to the backend shrinks to 1400 bytes after the handshake agreed on 1460-byte
/// segments: the kernel NAT answers the client's oversize segments with ICMP fragmentation
/// needed (MTU 1400), the client's stack lowers its path MTU, and a 300 KB upload arrives
/// whole. (TC: hosts without offloads; a `CHECKSUM_PARTIAL` skb is not answered, see
/// `Hook::reshape`.)
fn too_big_is_answered(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    const UPLOAD: usize = 300_000;
    let backend = SocketAddr::new(topology::backend_v4(0).into(), PORT);
    let gw = gateway_with(2, false, &config(&[(backend.ip(), 100)]), mode, &[], &[]);
    let _server = tests::load::RrServer::start(&gw.topology.backend, backend);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let stream = gw.topology.client.run(move || {
        std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting: {e}"))
    });
    assert!(sending_mss(&stream) > 1400, "the handshake already knew");
    gw.topology
        .gateway
        .ip(&["link", "set", topology::GATEWAY_BACKEND_IF, "mtu", "1400"]);
    // The request-response server's bulk mode: 'B', everything, then it answers the count.
    let counted = gw.topology.client.run(move || {
        use std::io::{Read, Write};
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut upload = vec![0x5a; tests::load::MESSAGE + UPLOAD];
        upload[0] = b'B';
        stream.write_all(&upload)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut count = [0u8; 8];
        stream.read_exact(&mut count)?;
        std::io::Result::Ok(u64::from_be_bytes(count))
    });
    let counted = counted.unwrap_or_else(|e| panic!("the upload stalled: {e}"));
    assert_eq!(counted, (tests::load::MESSAGE + UPLOAD) as u64);
    let answered = gw
        .sluice
        .metric("sluice_datapath_packets_total{reason=\"l4_too_big\",verdict=\"forward\"}")
        .unwrap_or_default();
    assert!(answered > 0.0, "no oversize segment was answered");
    assert_path(&gw, mode, &format!("0.0.0.0:{PORT}"));
}
