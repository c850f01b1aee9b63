//! DNS endpoints end to end: a ServiceEntry with `resolution: DNS` is resolved by the daemon
//! through the system resolver (here a test DNS server in the gateway namespace), and when the
//! answer changes after its TTL, the Plan follows with a new generation. Refused addresses
//! are dropped; NXDOMAIN empties the name; no answer at all keeps the last one.
use std::{net::Ipv4Addr, time::Duration};

use tests::{
    dns::{DnsServer, NetnsResolvConf},
    root,
    sluice::Sluice,
    topology::{Topology, backend_v4},
};

const NAME: &str = "backend.sluice.test";

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: dns}
spec:
  servers:
  - port: {number: 7000, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: dns}
spec:
  hosts: [backend.sluice.test]
  ports: [{number: 7000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: dns}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp: [{route: [{destination: {host: backend.sluice.test, port: {number: 7000}}}]}]
"#;

fn endpoints(dump: &serde_json::Value) -> Vec<String> {
    dump["config"]["plan"]["listeners"][0]["route"]["backends"][0]["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dns_endpoints_follow_the_answer_when_its_ttl_expires() {
    if !root::can_run("dns_endpoints_follow_the_answer_when_its_ttl_expires") {
        return;
    }
    let topology = Topology::builder().ipv4_only().build();
    let _resolv = NetnsResolvConf::new(&topology.gateway, Ipv4Addr::LOCALHOST);
    let server = DnsServer::start(
        &topology.gateway,
        "127.0.0.1:53".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    server.set(NAME, &[backend_v4(0)], 1);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("config.yaml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let dir_arg = dir.path().to_string_lossy().into_owned();
    // The refresh cap is an hour: only the 1 s TTL can explain a prompt refresh.
    let sluice = Sluice::start(
        &topology.gateway,
        &[
            "-f",
            &dir_arg,
            "--datapath",
            "userspace",
            "--dns-refresh",
            "1h",
        ],
    );

    let dump = sluice.config_dump();
    assert_eq!(dump["config"]["generation"], 1, "{dump:#}");
    assert_eq!(
        endpoints(&dump),
        [format!("{}:7000", backend_v4(0))],
        "{dump:#}"
    );
    assert_eq!(
        dump["config"]["diagnostics"],
        serde_json::json!([]),
        "{dump:#}"
    );

    server.set(NAME, &[backend_v4(1), backend_v4(2)], 1);
    let dump = sluice.wait_config(Duration::from_secs(15), "the new DNS answer", |d| {
        d["config"]["generation"] == 2
    });
    assert_eq!(
        endpoints(&dump),
        [
            format!("{}:7000", backend_v4(1)),
            format!("{}:7000", backend_v4(2))
        ],
        "{dump:#}"
    );
    assert!(sluice.log().contains("trigger=Dns"), "{}", sluice.log());

    // Addresses a gateway must not be sent to are refused and counted.
    server.set(NAME, &[Ipv4Addr::LOCALHOST, backend_v4(1)], 1);
    let dump = sluice.wait_config(
        Duration::from_secs(15),
        "the answer without loopback",
        |d| d["config"]["generation"] == 3,
    );
    assert_eq!(
        endpoints(&dump),
        [format!("{}:7000", backend_v4(1))],
        "{dump:#}"
    );
    assert_eq!(
        sluice.metric("sluice_dns_refused_addresses_total"),
        Some(1.0)
    );

    // The name's server says it does not exist (NXDOMAIN): the route has no endpoints, and
    // the Plan says why.
    server.remove(NAME);
    let dump = sluice.wait_config(Duration::from_secs(20), "the NXDOMAIN", |d| {
        d["config"]["generation"] == 4
    });
    assert!(endpoints(&dump).is_empty(), "{dump:#}");
    let warning = &dump["config"]["diagnostics"][0];
    assert_eq!(warning["code"], "SLU0004", "{dump:#}");
    assert!(
        sluice
            .metric("sluice_dns_lookups_total{result=\"no_addresses\"}")
            .is_some_and(|n| n >= 1.0)
    );

    server.set(NAME, &[backend_v4(2)], 1);
    let dump = sluice.wait_config(Duration::from_secs(20), "the name back", |d| {
        d["config"]["generation"] == 5
    });
    assert_eq!(
        endpoints(&dump),
        [format!("{}:7000", backend_v4(2))],
        "{dump:#}"
    );

    // No answer at all (the server is gone: timeouts): the last answer stands, lookups are
    // tried again and counted as failed, no new generation.
    drop(server);
    let failed = "sluice_dns_lookups_total{result=\"failed\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sluice.metric(failed).unwrap_or(0.0) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed lookups counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dump = sluice.config_dump();
    assert_eq!(dump["config"]["generation"], 5, "{dump:#}");
    assert_eq!(
        endpoints(&dump),
        [format!("{}:7000", backend_v4(2))],
        "{dump:#}"
    );
    assert!(
        sluice
            .log()
            .contains("DNS lookup timed out; the last answer stands")
            || sluice
                .log()
                .contains("DNS lookup failed; the last answer stands"),
        "{}",
        sluice.log()
    );
}
