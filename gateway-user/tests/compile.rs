//! Golden tests of compile: Istio's documented examples compiled to a Plan, asserted field by
//! field; and the cross-object warnings, each with the part of the Plan it leaves out.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use gateway_user::{
    compile::{
        DnsAnswers, compile,
        plan::{
            Backend, CertificateSource, Endpoint, HttpAction, Listener, ListenerKind, Place, Plan,
            RouteOrigin, TlsTermination,
        },
    },
    config::{Diagnostic, ObjectRef, Severity, check, check_text},
};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(name)
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn origin(kind: &str, namespace: &str, name: &str, path: &str) -> RouteOrigin {
    RouteOrigin {
        object: object(kind, namespace, name),
        path: path.into(),
    }
}

fn endpoint(address: &str) -> Endpoint {
    Endpoint {
        address: address
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{address}: {e}")),
        weight: 1,
    }
}

fn backend(host: &str, port: u16, weight: u32, endpoints: &[&str]) -> Backend {
    Backend {
        host: host.into(),
        subset: None,
        port,
        weight,
        load_balancer: "LEAST_REQUEST".into(),
        endpoints: endpoints.iter().map(|e| endpoint(e)).collect(),
        ..Backend::default()
    }
}

/// Compiles `files` (which must have no errors); returns the Plan and the warnings/infos as
/// `code path` strings.
fn compiled(files: &[PathBuf], dns: &DnsAnswers) -> (Plan, Vec<String>) {
    let checked = check(files);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let out = compile(&checked.objects, dns);
    let diagnostics = out.diagnostics.iter().map(summary).collect();
    (out.plan, diagnostics)
}

/// `CODE Kind namespace/name path`: what a warning is about, without its wording.
fn summary(d: &Diagnostic) -> String {
    let object = d
        .object
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    format!("{} {object} {}", d.code, d.path)
}

fn listener(plan: &Plan, port: u16) -> &Listener {
    plan.listeners
        .iter()
        .find(|l| l.port == port)
        .unwrap_or_else(|| panic!("no listener on {port}: {plan:#?}"))
}

#[test]
fn reference_gateway_with_bookinfo_and_mongo() {
    let (plan, diagnostics) = compiled(
        &[
            example("seed-gateway.yaml"),
            example("bookinfo.yaml"),
            example("mongo.yaml"),
        ],
        &DnsAnswers::default(),
    );
    let ports: Vec<(String, u16, &str)> = plan
        .listeners
        .iter()
        .map(|l| (l.bind.to_string(), l.port, l.protocol.as_str()))
        .collect();
    assert_eq!(
        ports,
        [
            ("0.0.0.0".into(), 80, "HTTP"),
            ("0.0.0.0".into(), 443, "HTTPS"),
            ("0.0.0.0".into(), 2379, "MONGO"),
            ("0.0.0.0".into(), 9080, "HTTP"),
            ("0.0.0.0".into(), 9443, "HTTPS")
        ]
    );
    // The Mongo route matches port 27017, which this Gateway does not expose.
    assert_eq!(
        diagnostics,
        ["SLU0003 Gateway some-config-namespace/my-gateway spec.servers[4]"]
    );

    let bookinfo = |path: &str| {
        origin(
            "VirtualService",
            "bookinfo-namespace",
            "bookinfo-rule",
            path,
        )
    };
    let qa = backend(
        "reviews.qa.svc.cluster.local",
        7777,
        100,
        &["203.0.113.20:17777"],
    );
    let split = vec![
        backend(
            "reviews.prod.svc.cluster.local",
            9080,
            80,
            &["203.0.113.10:9080", "203.0.113.11:9080"],
        ),
        backend(
            "reviews.qa.svc.cluster.local",
            7777,
            20,
            &["203.0.113.20:17777"],
        ),
    ];

    let http80 = listener(&plan, 80);
    assert_eq!(http80.runs.place, Place::Userspace);
    assert_eq!(http80.servers.len(), 1);
    assert_eq!(
        (http80.servers[0].gateway.clone(), http80.servers[0].server),
        (object("Gateway", "some-config-namespace", "my-gateway"), 0)
    );
    let ListenerKind::Http { virtual_hosts } = &http80.kind else {
        panic!("{http80:#?}")
    };
    assert_eq!(virtual_hosts.len(), 1);
    let vhost = &virtual_hosts[0];
    assert_eq!(vhost.domains, ["uk.bookinfo.com", "eu.bookinfo.com"]);
    assert!(vhost.https_redirect);
    assert_eq!(vhost.routes.len(), 2);
    assert_eq!(vhost.routes[0].origin, bookinfo("spec.http[0]"));
    assert_eq!(
        vhost.routes[0].matches[0].headers["cookie"]
            .exact
            .as_deref(),
        Some("user=dev-123")
    );
    assert_eq!(
        vhost.routes[0].action,
        HttpAction::Route {
            backends: vec![qa.clone()]
        }
    );
    assert_eq!(vhost.routes[1].origin, bookinfo("spec.http[1]"));
    assert_eq!(
        vhost.routes[1].matches[0]
            .uri
            .as_ref()
            .and_then(|u| u.prefix.as_deref()),
        Some("/reviews/")
    );
    assert_eq!(
        vhost.routes[1].action,
        HttpAction::Route {
            backends: split.clone()
        }
    );
    assert_eq!(vhost.routes[1].runs.place, Place::Userspace);

    let https443 = listener(&plan, 443);
    let ListenerKind::Https {
        certificates,
        virtual_hosts,
    } = &https443.kind
    else {
        panic!("{https443:#?}")
    };
    assert_eq!(
        certificates,
        &[TlsTermination {
            hosts: vec!["uk.bookinfo.com".into(), "eu.bookinfo.com".into()],
            mode: "SIMPLE".into(),
            certificates: vec![CertificateSource::Files {
                certificate: "/etc/certs/servercert.pem".into(),
                private_key: "/etc/certs/privatekey.pem".into()
            }],
            ca_certificates: None,
            ca_crl: None,
            subject_alt_names: vec![],
            verify_spki: vec![],
            verify_hash: vec![],
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            cipher_suites: vec![],
        }]
    );
    assert_eq!(
        virtual_hosts[0].domains,
        ["uk.bookinfo.com", "eu.bookinfo.com"]
    );
    assert!(!virtual_hosts[0].https_redirect);
    assert_eq!(virtual_hosts[0].routes.len(), 2);

    let https9443 = listener(&plan, 9443);
    let ListenerKind::Https {
        certificates,
        virtual_hosts,
    } = &https9443.kind
    else {
        panic!("{https9443:#?}")
    };
    assert_eq!(
        certificates[0].certificates,
        [CertificateSource::Credential {
            name: "bookinfo-secret".into()
        }]
    );
    assert_eq!(certificates[0].hosts, ["bookinfo-namespace/*.bookinfo.com"]);
    // Only hosts under *.bookinfo.com, and only from VirtualServices in bookinfo-namespace.
    assert_eq!(
        virtual_hosts[0].domains,
        ["uk.bookinfo.com", "eu.bookinfo.com"]
    );

    let wildcard = listener(&plan, 9080);
    let ListenerKind::Http { virtual_hosts } = &wildcard.kind else {
        panic!("{wildcard:#?}")
    };
    assert_eq!(
        virtual_hosts[0].domains,
        [
            "reviews.prod.svc.cluster.local",
            "uk.bookinfo.com",
            "eu.bookinfo.com"
        ]
    );
    assert!(!virtual_hosts[0].https_redirect);

    let mongo = listener(&plan, 2379);
    assert_eq!(mongo.runs.place, Place::Kernel);
    assert_eq!(mongo.kind, ListenerKind::L4Forward { route: None });
}

#[test]
fn mongo_route_bound_to_the_exposed_port_runs_in_the_kernel() {
    let text = std::fs::read_to_string(example("mongo.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fixed = dir.path().join("mongo-2379.yaml");
    std::fs::write(&fixed, text.replace("port: 27017", "port: 2379"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (plan, diagnostics) = compiled(
        &[example("seed-gateway.yaml"), fixed],
        &DnsAnswers::default(),
    );
    assert_eq!(diagnostics, Vec::<String>::new());
    let mongo = listener(&plan, 2379);
    let ListenerKind::L4Forward { route: Some(route) } = &mongo.kind else {
        panic!("{mongo:#?}")
    };
    assert_eq!(
        route.origin,
        origin(
            "VirtualService",
            "bookinfo-namespace",
            "bookinfo-mongo",
            "spec.tcp[0]"
        )
    );
    assert_eq!(route.runs.place, Place::Kernel);
    assert_eq!(
        route.backends,
        [backend(
            "mongo.prod.svc.cluster.local",
            5555,
            100,
            &["203.0.113.30:5555"]
        )]
    );
}

#[test]
fn passthrough_gateway_routes_by_sni_and_splices_in_the_kernel() {
    let (plan, diagnostics) = compiled(&[example("passthrough.yaml")], &DnsAnswers::default());
    assert_eq!(diagnostics, Vec::<String>::new());
    assert_eq!(plan.listeners.len(), 1);
    let tls = &plan.listeners[0];
    assert_eq!(
        (tls.port, tls.protocol.as_str(), tls.runs.place),
        (443, "HTTPS", Place::KernelSplice)
    );
    let ListenerKind::SniRoute { routes } = &tls.kind else {
        panic!("{tls:#?}")
    };
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].sni_hosts, ["nginx.example.com"]);
    assert_eq!(
        routes[0].origin,
        origin("VirtualService", "edge", "nginx", "spec.tls[0]")
    );
    assert_eq!(
        routes[0].backends,
        [backend(
            "my-nginx.edge.svc.cluster.local",
            443,
            100,
            &["203.0.113.42:443"]
        )]
    );
    assert_eq!(routes[1].sni_hosts, ["*.api.example.com"]);
    assert_eq!(
        routes[1].backends,
        [
            backend("203.0.113.40", 8443, 75, &["203.0.113.40:8443"]),
            backend("203.0.113.41", 8443, 25, &["203.0.113.41:8443"])
        ]
    );
    assert!(routes.iter().all(|r| r.runs.place == Place::KernelSplice));
}

#[test]
fn egress_gateway_resolves_its_service_entry_by_dns() {
    let answer: IpAddr = "192.0.2.80".parse().unwrap_or_else(|e| panic!("{e}"));
    let dns = DnsAnswers {
        looked_up: true,
        addresses: BTreeMap::from([("edition.cnn.com".to_owned(), vec![answer])]),
    };
    let (plan, diagnostics) = compiled(&[example("egress.yaml")], &dns);
    assert_eq!(diagnostics, Vec::<String>::new());
    let egress = listener(&plan, 443);
    assert_eq!(
        (egress.protocol.as_str(), egress.runs.place),
        ("TLS", Place::KernelSplice)
    );
    let ListenerKind::SniRoute { routes } = &egress.kind else {
        panic!("{egress:#?}")
    };
    // The mesh-side rule (spec.tls[0], gateways: mesh) is for sidecars, not this gateway.
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].sni_hosts, ["edition.cnn.com"]);
    assert_eq!(
        routes[0].origin,
        origin(
            "VirtualService",
            "egress",
            "direct-cnn-through-egress-gateway",
            "spec.tls[1]"
        )
    );
    let mut cnn = backend("edition.cnn.com", 443, 100, &["192.0.2.80:443"]);
    cnn.load_balancer = "ROUND_ROBIN".into();
    assert_eq!(routes[0].backends, [cnn]);

    // When the name does not resolve, the route stays (its backend has no endpoints) and the
    // warning says why.
    let unresolved = DnsAnswers {
        looked_up: true,
        addresses: BTreeMap::new(),
    };
    let (plan, diagnostics) = compiled(&[example("egress.yaml")], &unresolved);
    assert_eq!(
        diagnostics,
        ["SLU0004 VirtualService egress/direct-cnn-through-egress-gateway spec"]
    );
    let ListenerKind::SniRoute { routes } = &plan.listeners[0].kind else {
        panic!()
    };
    assert!(routes[0].backends[0].endpoints.is_empty());
}

const AUTO: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: east-west, namespace: istio-system}
spec:
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 203.0.113.50, labels: {version: v1}}
  - {address: 203.0.113.51, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"#;

#[test]
fn auto_passthrough_serves_istio_outbound_sni_names() {
    let checked = check_text("auto.yaml", AUTO);
    assert_eq!(
        checked.count(Severity::Error),
        0,
        "{:#?}",
        checked.diagnostics
    );
    let plan = compile(&checked.objects, &DnsAnswers::default()).plan;
    let ListenerKind::SniRoute { routes } = &plan.listeners[0].kind else {
        panic!("{plan:#?}")
    };
    let names: Vec<(&str, Vec<String>)> = routes
        .iter()
        .map(|r| {
            (
                r.sni_hosts[0].as_str(),
                r.backends[0]
                    .endpoints
                    .iter()
                    .map(|e| e.address.to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "outbound_.9080_._.reviews.default.svc.cluster.local",
                vec![
                    "203.0.113.50:9080".to_owned(),
                    "203.0.113.51:9080".to_owned()
                ]
            ),
            (
                "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
                vec!["203.0.113.50:9080".to_owned()]
            ),
        ]
    );
    assert_eq!(routes[1].backends[0].subset.as_deref(), Some("v1"));
}

/// Cross-object problems are warnings; what they affect is left out and listed.
#[test]
fn cross_object_warnings_leave_out_what_they_affect() {
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: ns}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n";
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b, namespace: ns}\nspec:\n  hosts: [b.example.com]\n  ports: [{number: 80, name: http}, {number: 81, name: alt}]\n  resolution: STATIC\n  endpoints: [{address: 203.0.113.9}]\n";
    let vs = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n{spec}"
        )
    };
    let cases: Vec<(&str, String, Vec<&str>, usize)> = vec![
        (
            "unknown gateway",
            vs(
                "  hosts: [a.example.com]\n  gateways: [missing]\n  http: [{route: [{destination: {host: b.example.com, port: {number: 80}}}]}]\n",
            ),
            vec!["IST0101 VirtualService ns/vs spec.gateways[0]"],
            1,
        ),
        (
            "host not in the gateway",
            vs(
                "  hosts: [a.example.com, z.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b.example.com, port: {number: 80}}}]}]\n",
            ),
            vec!["IST0132 VirtualService ns/vs spec.hosts"],
            0,
        ),
        (
            "unknown destination host",
            vs(
                "  hosts: [a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: nowhere.example.com}}]}]\n",
            ),
            vec!["IST0101 VirtualService ns/vs spec.http[0].route[0].destination"],
            1,
        ),
        (
            "unknown subset",
            vs(
                "  hosts: [a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b.example.com, subset: v9, port: {number: 80}}}]}]\n",
            ),
            vec!["IST0101 VirtualService ns/vs spec.http[0].route[0].destination"],
            1,
        ),
        (
            "port needed for a multi-port service",
            vs(
                "  hosts: [a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b.example.com}}]}]\n",
            ),
            vec!["IST0112 VirtualService ns/vs spec.http[0].route[0].destination"],
            1,
        ),
        (
            "mesh only",
            vs(
                "  hosts: [a.example.com]\n  http: [{route: [{destination: {host: b.example.com}}]}]\n",
            ),
            vec!["SLU0002 VirtualService ns/vs spec.gateways"],
            0,
        ),
    ];
    for (description, vs, expected, left_out) in cases {
        let checked = check_text("c.yaml", &format!("{gateway}---\n{se}---\n{vs}"));
        assert_eq!(
            checked.count(Severity::Error),
            0,
            "{description}: {:#?}",
            checked.diagnostics
        );
        let out = compile(&checked.objects, &DnsAnswers::default());
        let got: Vec<String> = out.diagnostics.iter().map(summary).collect();
        assert_eq!(got, expected, "{description}");
        assert_eq!(
            out.plan.left_out.len(),
            left_out,
            "{description}: {:#?}",
            out.plan.left_out
        );
        let severity = if expected[0].starts_with("SLU0002") {
            Severity::Info
        } else {
            Severity::Warning
        };
        assert!(
            out.diagnostics.iter().all(|d| d.severity == severity),
            "{description}"
        );
    }
}

#[test]
fn conflicting_servers_first_declared_wins() {
    let gw = |name: &str, port: &str, hosts: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  servers:\n  - port: {port}\n    hosts: {hosts}\n{tls}---\n"
        )
    };
    let passthrough = "    tls: {mode: PASSTHROUGH}\n";
    let text = [
        gw(
            "first",
            "{number: 443, name: tls, protocol: TLS}",
            "[a.example.com]",
            passthrough,
        ),
        gw(
            "second",
            "{number: 443, name: tls, protocol: TLS}",
            "['*.example.com']",
            passthrough,
        ),
        gw(
            "third",
            "{number: 443, name: http, protocol: HTTP}",
            "[c.example.com]",
            "",
        ),
        gw(
            "fourth",
            "{number: 443, name: tls, protocol: TLS}",
            "[d.example.org]",
            passthrough,
        ),
    ]
    .concat();
    let checked = check_text("conflicts.yaml", &text);
    let out = compile(&checked.objects, &DnsAnswers::default());
    let codes: Vec<(&str, String)> = out
        .diagnostics
        .iter()
        .map(|d| {
            (
                d.code,
                d.object
                    .as_ref()
                    .map(|o| o.name.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("IST0145", "second".to_owned()),
            ("SLU0001", "third".to_owned())
        ]
    );
    assert_eq!(out.plan.listeners.len(), 1);
    let names: Vec<&str> = out.plan.listeners[0]
        .servers
        .iter()
        .map(|s| s.gateway.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["first", "fourth"],
        "non-overlapping passthrough servers share the port"
    );
    assert_eq!(out.plan.left_out.len(), 2);
}

#[test]
fn a_virtual_service_validated_alone_has_at_most_warnings() {
    let (_, diagnostics) = compiled(&[example("bookinfo.yaml")], &DnsAnswers::default());
    assert_eq!(
        diagnostics,
        ["IST0101 VirtualService bookinfo-namespace/bookinfo-rule spec.gateways[0]"]
    );
}

/// A passthrough port with SNI routes from two VirtualServices: Istio's gateway rules.
fn tls_routes(vs: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: ["*.example.com"]
  - port: {{number: 8443, name: tls-2, protocol: TLS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: ["*.example.com"]
---
{vs}
"#
    )
}

fn sni_names(plan: &Plan, port: u16) -> Vec<(Vec<String>, String)> {
    let ListenerKind::SniRoute { routes } = &listener(plan, port).kind else {
        panic!("port {port} is not an SNI listener: {plan:#?}")
    };
    routes
        .iter()
        .map(|r| (r.sni_hosts.clone(), r.origin.path.clone()))
        .collect()
}

#[test]
fn tls_matches_take_sni_hosts_as_written_and_skip_duplicates() {
    let text = tls_routes(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: edge}
spec:
  hosts: ["*.example.com"]
  gateways: [gw]
  tls:
  - match: [{sniHosts: [a.example.com, B.example.com]}]
    route: [{destination: {host: 203.0.113.2, port: {number: 443}}}]
  - match: [{sniHosts: [a.example.com], port: 443}, {sniHosts: [c.example.com], port: 8443}]
    route: [{destination: {host: 203.0.113.3, port: {number: 443}}}]
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: 203.0.113.4, port: {number: 443}}}]
"#,
    );
    let checked = check_text("tls.yaml", &text);
    assert_eq!(
        checked.count(Severity::Error),
        0,
        "{:#?}",
        checked.diagnostics
    );
    let compiled = compile(&checked.objects, &DnsAnswers::default());
    let plan = &compiled.plan;
    let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    // On 443 the second rule's only applying match repeats a.example.com: skipped, with
    // Istio's reason; the wildcard is not a duplicate of an exact name.
    assert_eq!(
        sni_names(plan, 443),
        [
            (s(&["a.example.com", "b.example.com"]), "spec.tls[0]".into()),
            (s(&["*.example.com"]), "spec.tls[2]".into()),
        ]
    );
    // On 8443 the second rule applies through its other match.
    assert_eq!(
        sni_names(plan, 8443),
        [
            (s(&["a.example.com", "b.example.com"]), "spec.tls[0]".into()),
            (s(&["c.example.com"]), "spec.tls[1]".into()),
            (s(&["*.example.com"]), "spec.tls[2]".into()),
        ]
    );
    let left: Vec<(&str, &str)> = plan
        .left_out
        .iter()
        .map(|l| (l.path.as_str(), l.reason.as_str()))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "spec.tls[1].match[0]");
    assert!(
        left[0]
            .1
            .contains("duplicate SNI host names [\"a.example.com\"]"),
        "{}",
        left[0].1
    );
}

#[test]
fn a_catch_all_only_passthrough_port_is_forwarded_by_the_kernel() {
    let text = tls_routes(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all, namespace: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  tls:
  - match: [{sniHosts: ["*"], port: 443}]
    route: [{destination: {host: 203.0.113.2, port: {number: 443}}}]
  - match: [{sniHosts: [a.example.com, "*"], port: 8443}]
    route: [{destination: {host: 203.0.113.3, port: {number: 443}}}]
  - match: [{sniHosts: [z.example.com], port: 8443}]
    route: [{destination: {host: 203.0.113.4, port: {number: 443}}}]
"#,
    );
    let checked = check_text("tls.yaml", &text);
    assert_eq!(
        checked.count(Severity::Error),
        0,
        "{:#?}",
        checked.diagnostics
    );
    let plan = compile(&checked.objects, &DnsAnswers::default()).plan;
    let only = listener(&plan, 443);
    assert_eq!(only.runs.place, Place::Kernel, "{}", only.runs.why);
    assert!(only.runs.why.contains("catch-all"), "{}", only.runs.why);
    let ListenerKind::L4Forward { route: Some(route) } = &only.kind else {
        panic!("{only:#?}")
    };
    assert_eq!(route.origin.path, "spec.tls[0]");
    assert_eq!(route.backends[0].endpoints, [endpoint("203.0.113.2:443")]);
    // A match holding `*` among other names is a catch-all too; with an exact route beside
    // it the port still needs the SNI.
    assert_eq!(
        sni_names(&plan, 8443),
        [
            (vec!["*".to_owned()], "spec.tls[1]".into()),
            (vec!["z.example.com".to_owned()], "spec.tls[2]".into()),
        ]
    );
    assert_eq!(listener(&plan, 8443).runs.place, Place::KernelSplice);
}

#[test]
fn istio_tls_and_http_examples_compile_without_warnings() {
    for file in [
        "ingress-sni-passthrough.yaml",
        "egress-gateway-tls-passthrough.yaml",
        "egress-wildcard-sni.yaml",
        "multicluster-east-west.yaml",
        "ingress-bookinfo.yaml",
        "ingress-httpbin.yaml",
        "ingress-httpbin-any-host.yaml",
        "ingress-helloworld.yaml",
        "secure-ingress.yaml",
        "secure-ingress-file-mount.yaml",
        "secure-ingress-mutual.yaml",
    ] {
        let checked = check(&[example(file)]);
        let compiled = compile(&checked.objects, &DnsAnswers::default());
        let problems: Vec<String> = checked
            .diagnostics
            .iter()
            .chain(&compiled.diagnostics)
            .filter(|d| d.severity != Severity::Info)
            .map(summary)
            .collect();
        assert!(problems.is_empty(), "{file}: {problems:?}");
        assert!(compiled.plan.left_out.is_empty(), "{file}");
        assert!(!compiled.plan.listeners.is_empty(), "{file}");
    }
}

/// The largest weights validation accepts (route 2^31-1, endpoint 2^32-1) compile and build
/// their Maglev tables: their product once overflowed and killed the daemon at start.
#[test]
fn the_largest_accepted_weights_compile_into_tables() {
    let text = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  servers:
  - port: {number: 7000, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: heavy, namespace: edge}
spec:
  hosts: [heavy.example]
  ports: [{number: 80, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 203.0.113.2, weight: 4294967295}
  - {address: 203.0.113.3, weight: 1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route:
    - {destination: {host: heavy.example, port: {number: 80}}, weight: 2147483647}
    - {destination: {host: 203.0.113.4, port: {number: 80}}, weight: 2147483647}
"#;
    let checked = check_text("heavy.yaml", text);
    assert_eq!(
        checked.count(Severity::Error),
        0,
        "{:#?}",
        checked.diagnostics
    );
    let plan = compile(&checked.objects, &DnsAnswers::default()).plan;
    let sets = gateway_user::select::BackendSets::for_plan(&plan);
    let only = listener(&plan, 7000);
    let ListenerKind::L4Forward { route: Some(route) } = &only.kind else {
        panic!("{plan:#?}")
    };
    assert_eq!(route.backends.len(), 2);
    let set = sets
        .get(only.address(), 0)
        .unwrap_or_else(|| panic!("no backend set"));
    // Both destinations weigh the same: the heavy endpoint (index 0) and the other
    // destination's (index 2) hold about half the table each.
    let heavy = set.table.iter().filter(|&&i| i == 0).count();
    let half = set.table.len() / 2;
    assert!(
        heavy.abs_diff(half) < half / 20,
        "{heavy} of {}",
        set.table.len()
    );
}

/// A Plan that needs more of the kernel than its maps hold says so: every kernel L4
/// listener is placed in userspace with the reason, before any sync would refuse it.
#[test]
fn a_plan_beyond_the_kernels_maps_runs_in_userspace() {
    let config = |ports: u16| {
        let servers: String = (0..ports)
            .map(|i| {
                format!(
                    "  - port: {{number: {}, name: tcp-{i}, protocol: TCP}}\n    hosts: ['*']\n",
                    7000 + i
                )
            })
            .collect();
        let routes: String = (0..ports)
            .map(|i| {
                format!(
                    "  - match: [{{port: {}}}]\n    route: [{{destination: {{host: 203.0.113.2, port: {{number: {}}}}}}}]\n",
                    7000 + i,
                    8000 + i
                )
            })
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: l4}}\nspec:\n  servers:\n{servers}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: l4}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  tcp:\n{routes}"
        )
    };
    let places = |ports: u16| {
        let checked = check_text("l4.yaml", &config(ports));
        assert_eq!(
            checked.count(Severity::Error),
            0,
            "{:#?}",
            checked.diagnostics
        );
        let plan = compile(&checked.objects, &DnsAnswers::default()).plan;
        plan.listeners
            .iter()
            .map(|l| (l.runs.place, l.runs.why.clone()))
            .collect::<Vec<_>>()
    };
    // 128 distinct tables fit.
    assert!(places(128).iter().all(|(place, _)| *place == Place::Kernel));
    let over = places(140);
    assert_eq!(over.len(), 140);
    for (place, why) in &over {
        assert_eq!(*place, Place::Userspace);
        assert!(
            why.contains("140 distinct backend sets (a Maglev table each), the kernel holds 128"),
            "{why}"
        );
    }
}

/// The egress origination examples compile to backends that originate TLS with what their
/// DestinationRules say per port, and ISTIO_MUTUAL takes a ServiceEntry's
/// `subjectAltNames` when its rule names none.
#[test]
fn tls_origination_per_port_and_the_service_entry_names() {
    let backends = |plan: &Plan, port: u16| -> Vec<Backend> {
        let ListenerKind::Https { virtual_hosts, .. } = &listener(plan, port).kind else {
            panic!("not HTTPS: {plan:#?}")
        };
        virtual_hosts[0]
            .routes
            .iter()
            .flat_map(|r| match &r.action {
                HttpAction::Route { backends } => backends.clone(),
                _ => Vec::new(),
            })
            .collect()
    };
    let (plan, _) = compiled(
        &[example("egress-tls-origination.yaml")],
        &DnsAnswers::default(),
    );
    let tls = backends(&plan, 80)[0]
        .tls
        .clone()
        .unwrap_or_else(|| panic!("no origination"));
    assert!(!tls.mutual && !tls.mesh, "{tls:?}");
    assert_eq!(tls.sni, "edition.cnn.com");
    let (plan, _) = compiled(
        &[example("egress-mtls-origination.yaml")],
        &DnsAnswers::default(),
    );
    let tls = backends(&plan, 443)[0]
        .tls
        .clone()
        .unwrap_or_else(|| panic!("no origination"));
    assert!(tls.mutual && !tls.mesh, "{tls:?}");
    assert_eq!(tls.credential_name.as_deref(), Some("client-credential"));

    let text = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ['*']
  gateways: [gw]
  http: [{route: [{destination: {host: api.mesh.test, port: {number: 8080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.mesh.test]
  subjectAltNames: ['spiffe://cluster.local/ns/api/sa/api']
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.mesh.test
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {number: 9090}, tls: {mode: DISABLE}}]
";
    let checked = check_text("mesh.yaml", text);
    assert!(
        checked.count(Severity::Error) == 0,
        "{:?}",
        checked.diagnostics
    );
    let plan = compile(&checked.objects, &DnsAnswers::default()).plan;
    let ListenerKind::Http { virtual_hosts } = &listener(&plan, 80).kind else {
        panic!("{plan:#?}")
    };
    let HttpAction::Route { backends } = &virtual_hosts[0].routes[0].action else {
        panic!("{plan:#?}")
    };
    let tls = backends[0]
        .tls
        .clone()
        .unwrap_or_else(|| panic!("no origination"));
    assert!(tls.mesh);
    assert_eq!(
        tls.subject_alt_names,
        ["spiffe://cluster.local/ns/api/sa/api"]
    );
    assert_eq!(tls.sni, "api.mesh.test");
}
