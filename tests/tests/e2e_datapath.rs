//! End-to-end: real TCP between a client and a backend namespace crosses the gateway
//! namespace, where `sluice run` has its ingress program on the client-facing interface. The
//! daemon's counters must account for every frame the client sent, exactly, and the pinned
//! maps must be readable with bpftool and gone after shutdown.
use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use gateway_common::{PacketReason, map_names};
use tests::{
    bpffs::TempBpffs,
    echo,
    netns::unique_prefix,
    root,
    sluice::Sluice,
    tap::TxTap,
    topology::{self, CLIENT_IF, GATEWAY_CLIENT_IF, Topology, TopologyBuilder},
};

const CONNECTIONS: usize = 4;
const BYTES_PER_CONNECTION: usize = 64 * 1024;

/// A gateway network with a private bpffs and a unique instance name. Declare the `Sluice`
/// after it, so the daemon stops before the namespaces and the bpffs go away.
struct Setup {
    topology: Topology,
    bpffs: TempBpffs,
    instance: String,
}

impl Setup {
    fn new(topology: TopologyBuilder) -> Setup {
        Setup {
            topology: topology.build(),
            bpffs: TempBpffs::new(),
            instance: unique_prefix(),
        }
    }

    /// `sluice run` arguments: this setup's bpffs and instance, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        self.args_for(&self.instance, extra)
    }

    /// Like [`Setup::args`] for a second daemon with its own instance.
    fn args_for(&self, instance: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--bpffs".to_owned(),
            self.bpffs.path().to_string_lossy().into_owned(),
            "--instance".to_owned(),
            instance.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// After sluice exited: no pins, no pin directory, no XDP program on the interface.
    fn assert_cleaned_up(&self, log: &str) {
        assert!(
            !self.bpffs.pin_dir(&self.instance).exists(),
            "pins left behind:\n{log}"
        );
        let link = self
            .topology
            .gateway
            .ip(&["link", "show", GATEWAY_CLIENT_IF]);
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(
            !link.contains("prog/xdp"),
            "XDP program left attached: {link}"
        );
    }
}

fn series(kind: &str, reason: PacketReason) -> String {
    format!(
        "sluice_datapath_{kind}_total{{reason=\"{}\",verdict=\"{}\"}}",
        reason.label(),
        reason.verdict().label()
    )
}

/// Packets and bytes of every reason, as `/stats/prometheus` reports them.
fn reason_counters(sluice: &Sluice) -> Vec<(u64, u64)> {
    let (status, body) = sluice.admin_get("/stats/prometheus");
    assert_eq!(status, 200, "{body}");
    PacketReason::ALL
        .iter()
        .map(|&r| {
            let get = |kind| {
                tests::admin::sample(&body, &series(kind, r))
                    .unwrap_or_else(|| panic!("{} missing from:\n{body}", series(kind, r)))
                    as u64
            };
            (get("packets"), get("bytes"))
        })
        .collect()
}

/// Sums one reason's per-CPU values from `bpftool -j map dump pinned`, reading the
/// BTF-formatted field names; panics if bpftool does not print them.
fn bpftool_counters(pin: &std::path::Path, reason: PacketReason) -> (u64, u64) {
    let out = tests::netns::run(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pin),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let entries: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool JSON: {e}\n{text}"));
    let entries = entries
        .as_array()
        .unwrap_or_else(|| panic!("bpftool output is not a list:\n{text}"));
    let entry = entries
        .iter()
        .map(|e| e.get("formatted").unwrap_or(e))
        .find(|e| e["key"] == serde_json::json!(reason.index()))
        .unwrap_or_else(|| {
            panic!(
                "no BTF-formatted entry for key {} in:\n{text}",
                reason.index()
            )
        });
    let values = entry["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-CPU values:\n{text}"));
    values.iter().fold((0, 0), |(p, b), v| {
        let field = |name: &str| {
            v["value"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("field {name:?} not decoded by bpftool:\n{text}"))
        };
        (p + field("packets"), b + field("bytes"))
    })
}

/// Runs real TCP echo traffic through the gateway with the datapath attached as `args` ask,
/// and checks the counters against an AF_PACKET tap on the client's interface.
fn counts_real_tcp_exactly(test: &str, args: &[&str], attachment: &str) {
    if !root::can_run(test) {
        return;
    }
    // No IPv6 and no ARP on the links: every frame the client sends is the test's TCP.
    let setup = Setup::new(Topology::builder().ipv4_only().static_neighbours());
    let topology = &setup.topology;
    let sluice = Sluice::start(
        &topology.gateway,
        &setup.args(&[&["--interface", GATEWAY_CLIENT_IF], args].concat()),
    );

    let attached = format!(
        "sluice_datapath_interface{{interface=\"{GATEWAY_CLIENT_IF}\",attachment=\"{attachment}\"}}"
    );
    assert_eq!(
        sluice.metric(&attached),
        Some(1.0),
        "{attached}\n{}",
        sluice.log()
    );

    let backend = SocketAddr::new(topology::backend_v4(0).into(), 7000);
    let server = echo::serve(&topology.backend, backend, CONNECTIONS);
    let before = reason_counters(&sluice);
    let tap = TxTap::start(&topology.client, CLIENT_IF);

    for _ in 0..CONNECTIONS {
        echo::roundtrip(&topology.client, backend, BYTES_PER_CONNECTION);
    }
    let echoed = server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(echoed, (CONNECTIONS * BYTES_PER_CONNECTION) as u64);

    // The client's last ACKs may still be on their way: wait (on the counters themselves)
    // until the datapath has counted as many frames as the client's tap saw leave.
    let tcp = PacketReason::Tcp.index() as usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    // Quiescence: both counts equal and unchanged across two polls. A close handshake's
    // last ACK leaves the client after the test's last write, at a time of its own.
    let mut settled = None;
    loop {
        let sent = tap.counts().0;
        let seen = reason_counters(&sluice)[tcp].0 - before[tcp].0;
        if seen == sent && settled == Some(sent) {
            break;
        }
        settled = (seen == sent).then_some(sent);
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (tx_packets, tx_bytes) = tap.finish();
    let after = reason_counters(&sluice);
    for reason in PacketReason::ALL {
        let i = reason.index() as usize;
        let (packets, bytes) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        if reason == PacketReason::Tcp {
            assert_eq!(
                packets,
                tx_packets,
                "tcp packets vs the frames the client sent\n{}",
                sluice.log()
            );
            assert_eq!(
                bytes, tx_bytes,
                "tcp bytes vs the bytes the client sent ({tx_packets} frames)"
            );
        } else {
            assert_eq!(
                (packets, bytes),
                (0, 0),
                "{} moved without such traffic",
                reason.label()
            );
        }
    }
    // Handshake, data and teardown of every connection, and at least the payload in bytes.
    assert!(
        tx_packets >= (CONNECTIONS * 4) as u64,
        "only {tx_packets} packets"
    );
    assert!(
        tx_bytes >= (CONNECTIONS * BYTES_PER_CONNECTION) as u64,
        "only {tx_bytes} bytes"
    );

    // bpftool reads the same numbers from the pinned map, with BTF field names.
    let pin = setup
        .bpffs
        .pin_dir(&setup.instance)
        .join(map_names::REASON_COUNTERS);
    assert_eq!(
        bpftool_counters(&pin, PacketReason::Tcp),
        after[tcp],
        "bpftool vs /stats/prometheus"
    );

    let (status, log) = sluice.stop();
    assert!(status.success(), "sluice exited with {status}:\n{log}");
    assert!(log.contains("detached the datapath"), "{log}");
    setup.assert_cleaned_up(&log);
}

#[test]
fn xdp_native_counts_real_tcp_exactly() {
    counts_real_tcp_exactly(
        "xdp_native_counts_real_tcp_exactly",
        &["--datapath", "xdp", "--xdp-mode", "native"],
        "xdp-native",
    );
}

#[test]
fn xdp_generic_counts_real_tcp_exactly() {
    counts_real_tcp_exactly(
        "xdp_generic_counts_real_tcp_exactly",
        &["--datapath", "xdp", "--xdp-mode", "generic"],
        "xdp-generic",
    );
}

#[test]
fn tc_counts_real_tcp_exactly() {
    counts_real_tcp_exactly("tc_counts_real_tcp_exactly", &["--datapath", "tc"], "tc");
}

#[test]
fn auto_falls_back_to_tc_when_xdp_is_taken() {
    if !root::can_run("auto_falls_back_to_tc_when_xdp_is_taken") {
        return;
    }
    let setup = Setup::new(Topology::builder().ipv4_only());
    let gateway = &setup.topology.gateway;
    let holder = Sluice::start(
        gateway,
        &setup.args(&["--interface", GATEWAY_CLIENT_IF, "--datapath", "xdp"]),
    );
    let second = unique_prefix();
    let fallback = Sluice::start_with(
        gateway,
        &[],
        "127.0.0.1:19001",
        // An explicit XDP mode keeps XDP first on veth.
        &setup.args_for(
            &second,
            &[
                "--interface",
                GATEWAY_CLIENT_IF,
                "--datapath",
                "auto",
                "--xdp-mode",
                "native",
            ],
        ),
    );
    let tc =
        format!("sluice_datapath_interface{{interface=\"{GATEWAY_CLIENT_IF}\",attachment=\"tc\"}}");
    assert_eq!(fallback.metric(&tc), Some(1.0), "{}", fallback.log());
    let log = fallback.log();
    assert!(log.contains("failed=\"xdp-native\""), "{log}");
    assert!(log.contains("falling back to tc"), "{log}");

    let (status, log) = fallback.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("detached the datapath interface=gw-c"),
        "{log}"
    );
    assert!(
        !setup.bpffs.pin_dir(&second).exists(),
        "pins left behind:\n{log}"
    );
    let (status, log) = holder.stop();
    assert!(status.success(), "{log}");
    setup.assert_cleaned_up(&log);
}

/// `--datapath auto` on a veth attaches TC without trying XDP, and says why.
#[test]
fn auto_attaches_tc_first_on_veth() {
    if !root::can_run("auto_attaches_tc_first_on_veth") {
        return;
    }
    let setup = Setup::new(Topology::builder().ipv4_only());
    let sluice = Sluice::start(
        &setup.topology.gateway,
        &setup.args(&["--interface", GATEWAY_CLIENT_IF, "--datapath", "auto"]),
    );
    let tc =
        format!("sluice_datapath_interface{{interface=\"{GATEWAY_CLIENT_IF}\",attachment=\"tc\"}}");
    assert_eq!(sluice.metric(&tc), Some(1.0), "{}", sluice.log());
    let log = sluice.log();
    assert!(log.contains("veth: TC first"), "{log}");
    assert!(!log.contains("falling back"), "{log}");
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
    setup.assert_cleaned_up(&log);
}

#[test]
fn userspace_mode_runs_without_bpf_and_says_so() {
    if !root::can_run("userspace_mode_runs_without_bpf_and_says_so") {
        return;
    }
    let topology = Topology::builder().ipv4_only().build();
    let sluice = Sluice::start(
        &topology.gateway,
        &["--datapath", "userspace", "--interface", GATEWAY_CLIENT_IF],
    );
    assert_eq!(
        sluice.metric("sluice_datapath{mode=\"userspace\"}"),
        Some(1.0)
    );
    let (_, metrics) = sluice.admin_get("/stats/prometheus");
    assert!(
        !metrics.contains("sluice_datapath_packets_total"),
        "{metrics}"
    );
    let (status, dump) = sluice.admin_get("/config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value =
        serde_json::from_str(&dump).unwrap_or_else(|e| panic!("{e}: {dump}"));
    assert_eq!(dump["datapath"]["mode"], "userspace", "{dump}");
    assert_eq!(dump["datapath"]["reason"], "--datapath userspace", "{dump}");
    let link = topology.gateway.ip(&["link", "show", GATEWAY_CLIENT_IF]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "userspace mode attached XDP"
    );
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("mode=\"userspace\"") || log.contains("mode=userspace"),
        "{log}"
    );
}

#[test]
fn auto_without_privileges_falls_back_to_userspace() {
    if !root::can_run("auto_without_privileges_falls_back_to_userspace") {
        return;
    }
    let setup = Setup::new(Topology::builder().ipv4_only());
    let unprivileged = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let sluice = Sluice::start_with(
        &setup.topology.gateway,
        &unprivileged,
        tests::sluice::ADMIN_ADDR,
        &setup.args(&["--interface", GATEWAY_CLIENT_IF]),
    );
    assert_eq!(
        sluice.metric("sluice_datapath{mode=\"userspace\"}"),
        Some(1.0),
        "{}",
        sluice.log()
    );
    let log = sluice.log();
    assert!(log.contains("running the userspace datapath"), "{log}");
    let (_, dump) = sluice.admin_get("/config_dump");
    assert!(dump.contains("\"mode\": \"userspace\""), "{dump}");
}

#[test]
fn a_missing_interface_fails_startup_and_leaves_nothing_behind() {
    if !root::can_run("a_missing_interface_fails_startup_and_leaves_nothing_behind") {
        return;
    }
    let setup = Setup::new(Topology::builder().ipv4_only());
    // gw-c exists, nosuch0 does not: the first attach must be undone too.
    let args = setup.args(&[
        "--datapath",
        "xdp",
        "--interface",
        GATEWAY_CLIENT_IF,
        "--interface",
        "nosuch0",
    ]);
    let mut sluice = Sluice::spawn(
        &setup.topology.gateway,
        &[],
        tests::sluice::ADMIN_ADDR,
        &args,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sluice.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice kept running:\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = sluice.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("interface \"nosuch0\" not found in this network namespace"),
        "{log}"
    );
    assert!(
        log.contains("detached the datapath interface=gw-c"),
        "{log}"
    );
    setup.assert_cleaned_up(&log);
}
