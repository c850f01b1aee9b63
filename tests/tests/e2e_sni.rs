//! TLS passthrough end to end, with the userspace datapath (bytes copied) and with the
//! kernel datapath attached (bytes spliced): real rustls backends that own their
//! certificates, real clients (rustls, curl, openssl s_client) that verify what they are
//! shown, routed by SNI through the gateway without it ever terminating TLS.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use tests::{
    bpffs::TempBpffs,
    echo, root,
    sluice::Sluice,
    tls::{self, TestCa, TlsBackend, TlsClient},
    topology::{self, Topology},
};

const PORT: u16 = 8443;
const BACKEND_PORT: u16 = 9443;
/// Plain TCP echo backend for the byte-level tests (the gateway does not care).
const ECHO_PORT: u16 = 9000;
const LISTENER: &str = "0.0.0.0:8443";

/// Three TLS backends: `a.example.com`, `b.example.com`, and `*.example.com` (the wildcard
/// route), plus `raw.example.com` -> a plain TCP echo server.
fn config(b_backend: usize) -> String {
    let se = |name: &str, host: &str, address: IpAddr, port: u16| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: sni}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: tls, protocol: TLS}}]\n  resolution: STATIC\n  endpoints: [{{address: '{address}'}}]\n"
        )
    };
    let route = |sni: &str, host: &str, port: u16| {
        format!(
            "  - match: [{{sniHosts: ['{sni}']}}]\n    route: [{{destination: {{host: {host}, port: {{number: {port}}}}}}}]\n"
        )
    };
    let mut text = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: sni}}\nspec:\n  servers:\n  - port: {{number: {PORT}, name: tls, protocol: TLS}}\n    tls: {{mode: PASSTHROUGH}}\n    hosts: ['*.example.com']\n"
    );
    for (i, name) in ["a", "b", "wild"].iter().enumerate() {
        text += &se(
            name,
            &format!("{name}.sni.test"),
            topology::backend_v4(i).into(),
            BACKEND_PORT,
        );
    }
    text += &se(
        "raw",
        "raw.sni.test",
        topology::backend_v4(0).into(),
        ECHO_PORT,
    );
    let b_host = ["a", "b", "wild"][b_backend];
    text += "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: sni}\nspec:\n  hosts: ['*.example.com']\n  gateways: [gw]\n  tls:\n";
    text += &route("a.example.com", "a.sni.test", BACKEND_PORT);
    text += &route("b.example.com", &format!("{b_host}.sni.test"), BACKEND_PORT);
    text += &route("raw.example.com", "raw.sni.test", ECHO_PORT);
    text += &route("*.example.com", "wild.sni.test", BACKEND_PORT);
    text
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `--datapath userspace`: the bytes are copied through the daemon.
    Userspace,
    /// TC attached on both gateway interfaces: the bytes are spliced (splice(2)).
    Kernel,
    /// TC attached, and the bytes moved by the kernel's socket splice (sockmap).
    Sockmap,
}

impl Mode {
    fn args(self) -> Vec<&'static str> {
        match self {
            Mode::Userspace => vec!["--datapath", "userspace"],
            Mode::Kernel => topology::SLUICE_TC_ARGS.to_vec(),
            Mode::Sockmap => [topology::SLUICE_TC_ARGS, &["--sni-byte-path", "sockmap"]].concat(),
        }
    }

    fn byte_path(self) -> &'static str {
        match self {
            Mode::Userspace => "Copy",
            Mode::Kernel => "Splice",
            Mode::Sockmap => "Sockmap",
        }
    }
}

struct Gateway {
    topology: Topology,
    ca: TestCa,
    backends: Vec<TlsBackend>,
    bpffs: TempBpffs,
    config: tempfile::TempDir,
    sluice: Sluice,
}

impl Gateway {
    fn start(mode: Mode, extra: &[&str]) -> Gateway {
        let topology = Topology::builder()
            .backends(3)
            .ipv4_only()
            .default_offloads()
            .build();
        let ca = TestCa::new();
        let names: [&[&str]; 3] = [
            &["a.example.com"],
            &["b.example.com"],
            &["*.example.com", "*.er.example.com"],
        ];
        let backends = names
            .iter()
            .enumerate()
            .map(|(i, names)| {
                TlsBackend::start(
                    &topology.backend,
                    SocketAddr::new(topology::backend_v4(i).into(), BACKEND_PORT),
                    ca.issue(names),
                    &format!("backend-{i}"),
                )
            })
            .collect();
        let bpffs = TempBpffs::new();
        let config = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(config.path().join("sni.yaml"), self::config(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut args: Vec<String> = [
            "-f",
            &config.path().to_string_lossy(),
            "--bpffs",
            &bpffs.path().to_string_lossy(),
            "--instance",
            "sni",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(mode.args().iter().chain(extra).map(|s| s.to_string()));
        let sluice = Sluice::start(&topology.gateway, &args);
        let log = sluice.log();
        assert!(
            log.contains(&format!("byte_path={}", mode.byte_path())),
            "{log}"
        );
        Gateway {
            topology,
            ca,
            backends,
            bpffs,
            config,
            sluice,
        }
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT)
    }

    /// A verified TLS session from the client host for `sni`.
    fn connect(&self, sni: &str) -> std::io::Result<TlsClient> {
        let (vip, config, sni) = (self.vip(), self.ca.client_config(), sni.to_owned());
        self.topology
            .client
            .run(move || TlsClient::connect(vip, &sni, config))
    }

    /// Entries of the socket splice's SOCKHASH (two per spliced connection), read with
    /// bpftool from the pinned map.
    fn spliced_sockets(&self) -> usize {
        let pin = self.bpffs.pin_dir("sni").join("SNI_SOCKETS");
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .unwrap_or_else(|e| panic!("bpftool: {e}"));
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bpftool map dump {}: {e}: {}{}",
                pin.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        dump.as_array().map_or(0, Vec::len)
    }

    fn failures(&self, reason: &str) -> f64 {
        self.sluice
            .metric(&format!(
                "sluice_sni_handshake_failures_total{{listener=\"{LISTENER}\",reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    }

    fn connections(&self, route: usize, backend: usize) -> f64 {
        self.sluice
            .metric(&format!(
                "sluice_sni_connections_total{{listener=\"{LISTENER}\",route=\"sni/vs:spec.tls[{route}]\",backend=\"{}:{BACKEND_PORT}\"}}",
                topology::backend_v4(backend)
            ))
            .unwrap_or(0.0)
    }
}

/// Each name reaches its own backend, whose certificate the client verifies; the wildcard
/// takes other names at any depth; a name no route takes, a ClientHello without SNI and
/// plain text are refused and counted.
fn routes_by_sni(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let gw = Gateway::start(mode, &["--access-log"]);
    let cases = [
        ("a.example.com", 0),
        ("b.example.com", 1),
        ("x.example.com", 2),
        ("deep.er.example.com", 2),
    ];
    for (sni, backend) in cases {
        let session = gw
            .connect(sni)
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", gw.sluice.log()));
        assert_eq!(
            session.peer_certificate().as_ref(),
            Some(&gw.backends[backend].certificate),
            "{sni} saw another backend's certificate"
        );
        let id = gw.topology.client.run(move || session.get());
        assert_eq!(
            id.unwrap_or_else(|e| panic!("{sni}: {e}")),
            format!("backend-{backend}")
        );
    }
    assert_eq!(gw.connections(0, 0), 1.0);
    assert_eq!(gw.connections(1, 1), 1.0);
    assert_eq!(gw.connections(3, 2), 2.0);

    // curl and openssl, verifying against the CA.
    let ca = gw.ca.pem_path();
    let curl = gw.topology.client.exec(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca.to_string_lossy(),
            "--resolve",
            &format!("b.example.com:{PORT}:{}", topology::GATEWAY_CLIENT_V4),
            &format!("https://b.example.com:{PORT}/"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "backend-1");
    let mut openssl = gw
        .topology
        .client
        .command("openssl")
        .args([
            "s_client",
            "-connect",
            &gw.vip().to_string(),
            "-servername",
            "a.example.com",
            "-verify_return_error",
            "-CAfile",
            &ca.to_string_lossy(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    if let Some(mut stdin) = openssl.stdin.take() {
        let _ = stdin.write_all(b"Q\n");
    }
    let out = openssl
        .wait_with_output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("subject=CN = a.example.com"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // Refused: an unknown name (no route), no SNI (an IP address as the name), plain text.
    assert!(gw.connect("example.org").is_err());
    let (vip, config) = (gw.vip(), gw.ca.client_config());
    let no_sni = gw
        .topology
        .client
        .run(move || TlsClient::connect(vip, &topology::GATEWAY_CLIENT_V4.to_string(), config));
    assert!(no_sni.is_err());
    let plain = gw.topology.client.run(move || {
        let mut stream = TcpStream::connect(vip)?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n")?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map(|_| rest)
    });
    // Closed with the request unread, so the stack resets rather than finishes.
    match plain {
        Ok(rest) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    for reason in ["no_route", "no_sni", "not_tls"] {
        assert_eq!(gw.failures(reason), 1.0, "{reason}\n{}", gw.sluice.log());
    }
    let log = gw.sluice.log();
    assert!(
        log.lines().any(|l| l.contains("tls passthrough")
            && l.contains("sni=\"a.example.com\"")
            && l.contains(&format!(
                "backend={}:{BACKEND_PORT}",
                topology::backend_v4(0)
            ))),
        "no access-log line for a.example.com:\n{log}"
    );
}

#[test]
fn userspace_routes_by_sni() {
    routes_by_sni("userspace_routes_by_sni", Mode::Userspace);
}

#[test]
fn kernel_mode_routes_by_sni() {
    routes_by_sni("kernel_mode_routes_by_sni", Mode::Kernel);
}

/// 100 MB each way through one TLS session, verified chunk by chunk by the client.
fn bulk(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let gw = Gateway::start(mode, &[]);
    let mut session = gw
        .connect("bulk.example.com")
        .unwrap_or_else(|e| panic!("{e}"));
    let data: Vec<u8> = (0..100 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let session = gw.topology.client.run(move || {
        session.echo(&data)?;
        Ok::<_, std::io::Error>(session)
    });
    session
        .unwrap_or_else(|e| panic!("100 MB echo: {e}"))
        .close();
    let bytes = |direction: &str| {
        gw.sluice
            .metric(&format!(
                "sluice_sni_bytes_total{{listener=\"{LISTENER}\",route=\"sni/vs:spec.tls[3]\",backend=\"{}:{BACKEND_PORT}\",direction=\"{direction}\"}}",
                topology::backend_v4(2)
            ))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Counted when the connection ends, which follows the client's close.
    while bytes("upstream").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // TLS records add their overhead on top of the 100 MiB of payload.
    for direction in ["upstream", "downstream"] {
        let moved = bytes(direction).unwrap_or(0.0);
        assert!(
            (104_857_600.0..110_000_000.0).contains(&moved),
            "{direction}: {moved}"
        );
    }
}

#[test]
fn userspace_bulk_100mb_both_ways() {
    bulk("userspace_bulk_100mb_both_ways", Mode::Userspace);
}

#[test]
fn kernel_mode_bulk_100mb_both_ways() {
    bulk("kernel_mode_bulk_100mb_both_ways", Mode::Kernel);
}

/// A ClientHello one byte every 100 ms still routes (the echo backend returns it intact),
/// while a client that says nothing is cut at the ClientHello deadline and counted.
fn slow_and_silent_clients(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    // The default deadline (10 s) leaves room for a ClientHello of ~80 bytes at 10/s.
    let gw = Gateway::start(mode, &[]);
    let echo_at = SocketAddr::new(topology::backend_v4(0).into(), ECHO_PORT);
    let server = echo::serve(&gw.topology.backend, echo_at, 1);
    let hello = tls::minimal_client_hello("raw.example.com");
    assert!(
        hello.len() < 90,
        "{} bytes would not arrive in time",
        hello.len()
    );
    let vip = gw.vip();
    let silent = gw.topology.client.spawn(move || {
        let mut stream = TcpStream::connect(vip)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let n = stream.read(&mut buf)?;
        Ok::<_, std::io::Error>((n, started.elapsed()))
    });
    let sent = hello.clone();
    let slow = gw.topology.client.run(move || {
        let mut stream = TcpStream::connect(vip)?;
        stream.set_nodelay(true)?;
        for byte in &sent {
            stream.write_all(std::slice::from_ref(byte))?;
            std::thread::sleep(Duration::from_millis(100));
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back)?;
        Ok::<_, std::io::Error>(back)
    });
    assert_eq!(slow.unwrap_or_else(|e| panic!("slow client: {e}")), hello);
    assert_eq!(
        server
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        hello.len() as u64
    );
    let (n, waited) = silent
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
        .unwrap_or_else(|e| panic!("silent client: {e}"));
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        (Duration::from_millis(9900)..Duration::from_secs(13)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(gw.failures("timeout"), 1.0);
}

#[test]
fn userspace_slow_and_silent_clients() {
    slow_and_silent_clients("userspace_slow_and_silent_clients", Mode::Userspace);
}

#[test]
fn kernel_mode_slow_and_silent_clients() {
    slow_and_silent_clients("kernel_mode_slow_and_silent_clients", Mode::Kernel);
}

/// A post-quantum ClientHello (X25519MLKEM768 key share, larger than one segment) sent in
/// two TCP segments is reassembled, routed, and the handshake completes with that group.
fn post_quantum_hello_in_two_segments(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let gw = Gateway::start(mode, &[]);
    let (connection, hello) = tls::client_hello("a.example.com", gw.ca.client_config());
    assert!(hello.len() > 1460, "{} bytes fit one segment", hello.len());
    let vip = gw.vip();
    let session = gw.topology.client.run(move || {
        let mut tcp = TcpStream::connect(vip)?;
        tcp.set_nodelay(true)?;
        let (first, second) = hello.split_at(700);
        tcp.write_all(first)?;
        // Pacing, not synchronisation: the halves leave as separate segments.
        std::thread::sleep(Duration::from_millis(100));
        tcp.write_all(second)?;
        tls::finish_handshake(connection, tcp)
    });
    let session = session.unwrap_or_else(|e| panic!("handshake: {e}\n{}", gw.sluice.log()));
    assert_eq!(
        session.key_exchange(),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(
        session.peer_certificate().as_ref(),
        Some(&gw.backends[0].certificate)
    );
    let id = gw.topology.client.run(move || session.get());
    assert_eq!(id.unwrap_or_else(|e| panic!("{e}")), "backend-0");
}

#[test]
fn userspace_post_quantum_hello_in_two_segments() {
    post_quantum_hello_in_two_segments(
        "userspace_post_quantum_hello_in_two_segments",
        Mode::Userspace,
    );
}

#[test]
fn kernel_mode_post_quantum_hello_in_two_segments() {
    post_quantum_hello_in_two_segments(
        "kernel_mode_post_quantum_hello_in_two_segments",
        Mode::Kernel,
    );
}

/// 500 TLS sessions open at once, each exchanging bytes, then all closed: the daemon's
/// sockets and pipes are back to what they were, and its gauges to zero.
fn many_connections_leak_nothing(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    const SESSIONS: usize = 500;
    let gw = Gateway::start(mode, &[]);
    let before = gw.sluice.open_fds();
    let (vip, config) = (gw.vip(), gw.ca.client_config());
    let sessions = gw.topology.client.run(move || {
        let mut sessions = Vec::new();
        for i in 0..SESSIONS {
            let sni = format!("s{i}.example.com");
            let mut session = TlsClient::connect(vip, &sni, config.clone())?;
            session.echo(&[i as u8; 100])?;
            sessions.push(session);
        }
        Ok::<_, std::io::Error>(sessions)
    });
    let sessions = sessions.unwrap_or_else(|e| panic!("{e}\n{}", gw.sluice.log()));
    let during = gw.sluice.open_fds();
    assert!(during.sockets >= 2 * SESSIONS, "{before:?} -> {during:?}");
    let active = format!(
        "sluice_sni_active_connections{{listener=\"{LISTENER}\",route=\"sni/vs:spec.tls[3]\"}}"
    );
    assert_eq!(gw.sluice.metric(&active), Some(SESSIONS as f64));
    if mode == Mode::Sockmap {
        assert_eq!(gw.spliced_sockets(), 2 * SESSIONS);
    }
    for session in sessions {
        session.close();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = gw.sluice.open_fds();
        // No more than before (an admin connection open then may have closed since).
        let released = now.sockets <= before.sockets && now.pipes <= before.pipes;
        let spliced = if mode == Mode::Sockmap {
            gw.spliced_sockets()
        } else {
            0
        };
        if released && spliced == 0 && gw.sluice.metric(&active) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still open: {before:?} -> {now:?}, active {:?}, spliced {spliced}",
            gw.sluice.metric(&active)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.backends[2].handshakes(), SESSIONS);
}

#[test]
fn userspace_many_connections_leak_nothing() {
    many_connections_leak_nothing("userspace_many_connections_leak_nothing", Mode::Userspace);
}

#[test]
fn kernel_mode_many_connections_leak_nothing() {
    many_connections_leak_nothing("kernel_mode_many_connections_leak_nothing", Mode::Kernel);
}

/// A reload that moves `b.example.com` to another backend: new sessions go there, and a
/// session opened before carries on with its backend.
fn reload_moves_a_name(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let gw = Gateway::start(mode, &[]);
    let mut held = gw
        .connect("b.example.com")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        held.peer_certificate().as_ref(),
        Some(&gw.backends[1].certificate)
    );
    let file = gw.config.path().join("sni.yaml");
    tests::sluice::replace_config(&file, &config(2));
    gw.sluice
        .wait_config(Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    let moved = gw
        .connect("b.example.com")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        moved.peer_certificate().as_ref(),
        Some(&gw.backends[2].certificate),
        "a new session after the reload goes to the wildcard's backend"
    );
    let held = gw.topology.client.run(move || {
        held.echo(b"still here")?;
        Ok::<_, std::io::Error>(held)
    });
    held.unwrap_or_else(|e| panic!("the session from before the reload: {e}"))
        .close();
    moved.close();
}

#[test]
fn userspace_reload_moves_a_name() {
    reload_moves_a_name("userspace_reload_moves_a_name", Mode::Userspace);
}

#[test]
fn kernel_mode_reload_moves_a_name() {
    reload_moves_a_name("kernel_mode_reload_moves_a_name", Mode::Kernel);
}

#[test]
fn sockmap_mode_routes_by_sni() {
    routes_by_sni("sockmap_mode_routes_by_sni", Mode::Sockmap);
}

#[test]
fn sockmap_mode_bulk_100mb_both_ways() {
    bulk("sockmap_mode_bulk_100mb_both_ways", Mode::Sockmap);
}

#[test]
fn sockmap_mode_slow_and_silent_clients() {
    slow_and_silent_clients("sockmap_mode_slow_and_silent_clients", Mode::Sockmap);
}

#[test]
fn sockmap_mode_post_quantum_hello_in_two_segments() {
    post_quantum_hello_in_two_segments(
        "sockmap_mode_post_quantum_hello_in_two_segments",
        Mode::Sockmap,
    );
}

#[test]
fn sockmap_mode_many_connections_leak_nothing() {
    many_connections_leak_nothing("sockmap_mode_many_connections_leak_nothing", Mode::Sockmap);
}

#[test]
fn sockmap_mode_reload_moves_a_name() {
    reload_moves_a_name("sockmap_mode_reload_moves_a_name", Mode::Sockmap);
}

/// A reload that adds a listener whose port is taken: the rest keeps serving, `/ready` says
/// NOT_SERVING naming the listener and the error, `/config_dump` lists it; once the port is
/// free, the next reload binds it and `/ready` is 200 again.
#[test]
fn a_listener_that_cannot_be_bound_is_named_and_not_ready() {
    if !root::can_run("a_listener_that_cannot_be_bound_is_named_and_not_ready") {
        return;
    }
    let gw = Gateway::start(Mode::Userspace, &[]);
    let squatter = gw
        .topology
        .gateway
        .run(|| std::net::TcpListener::bind("0.0.0.0:9444"))
        .unwrap_or_else(|e| panic!("{e}"));
    let extra = "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: more, namespace: sni}\nspec:\n  servers:\n  - port: {number: 9444, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: ['*.example.com']\n";
    let write = |text: &str| {
        let file = gw.config.path().join("sni.yaml");
        tests::sluice::replace_config(&file, text);
    };
    write(&(config(1) + extra));
    let dump = gw
        .sluice
        .wait_config(Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    let unserved = &dump["serving"]["unserved"];
    assert_eq!(unserved[0]["address"], "0.0.0.0:9444", "{dump:#}");
    assert!(
        unserved[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Address already in use")),
        "{unserved}"
    );
    let (status, body) = gw.sluice.admin_get("/ready");
    assert_eq!(status, 503);
    assert!(body.starts_with("NOT_SERVING\n0.0.0.0:9444: "), "{body}");
    // The listeners that were bound keep serving.
    let session = gw
        .connect("a.example.com")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        session.peer_certificate().as_ref(),
        Some(&gw.backends[0].certificate)
    );
    drop(squatter);
    write(&(config(1) + extra + "# touched\n"));
    gw.sluice
        .wait_config(Duration::from_secs(15), "generation 3", |d| {
            d["serving"]["generation"] == 3
        });
    assert_eq!(gw.sluice.admin_get("/ready"), (200, "LIVE\n".to_owned()));
}

/// A route endpoint that refuses is passed over for the next one of the Maglev table: with
/// `a.example.com`'s second endpoint refusing, every session reaches the first, and the
/// refusals are counted against the second.
fn a_refusing_endpoint_is_passed_over(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
    let gw = Gateway::start(mode, &[]);
    let refusing = SocketAddr::new(topology::backend_v4(1).into(), 9999);
    let two = config(1).replace(
        &format!(
            "  endpoints: [{{address: '{}'}}]\n",
            topology::backend_v4(0)
        ),
        &format!(
            "  endpoints: [{{address: '{}'}}, {{address: '{}', ports: {{tls: {}}}}}]\n",
            topology::backend_v4(0),
            refusing.ip(),
            refusing.port()
        ),
    );
    assert_ne!(two, config(1), "the second endpoint was not added");
    let file = gw.config.path().join("sni.yaml");
    tests::sluice::replace_config(&file, &two);
    gw.sluice
        .wait_config(Duration::from_secs(15), "generation 2", |d| {
            d["serving"]["generation"] == 2
        });
    for _ in 0..20 {
        let session = gw
            .connect("a.example.com")
            .unwrap_or_else(|e| panic!("{e}\n{}", gw.sluice.log()));
        assert_eq!(
            session.peer_certificate().as_ref(),
            Some(&gw.backends[0].certificate)
        );
        session.close();
    }
    let refused = gw
        .sluice
        .metric(&format!(
            "sluice_sni_connect_failures_total{{listener=\"{LISTENER}\",route=\"sni/vs:spec.tls[0]\",backend=\"{refusing}\"}}"
        ))
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "{refused} refusals counted");
}

#[test]
fn userspace_a_refusing_endpoint_is_passed_over() {
    a_refusing_endpoint_is_passed_over(
        "userspace_a_refusing_endpoint_is_passed_over",
        Mode::Userspace,
    );
}

#[test]
fn kernel_a_refusing_endpoint_is_passed_over() {
    a_refusing_endpoint_is_passed_over("kernel_a_refusing_endpoint_is_passed_over", Mode::Kernel);
}
