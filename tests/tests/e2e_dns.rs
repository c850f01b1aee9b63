//! DNS endpoints end to end: a ServiceEntry with `resolution: DNS` is resolved by the daemon
//! through the system resolver (here a test DNS server in the gateway namespace), and when the
//! answer changes after its TTL, the Plan follows with a new generation.
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

    // A name that stops resolving leaves the route with no endpoints and says why.
    server.set("other.sluice.test", &[], 1);
    drop(server);
    let dump = sluice.wait_config(Duration::from_secs(20), "the failed lookup", |d| {
        d["config"]["generation"] == 3
    });
    assert!(endpoints(&dump).is_empty(), "{dump:#}");
    let warning = &dump["config"]["diagnostics"][0];
    assert_eq!(warning["code"], "SLU0004", "{dump:#}");
}
