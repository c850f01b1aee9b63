//! Where the HTTP gateway sends a request and how, end to end in both datapaths: a
//! `uriRegexRewrite` seen by the upstream, header operations per destination seen both
//! ways, a `delegate` VirtualService's routes under its root's match, `consistentHash`
//! affinity on a header and on a generated cookie, HTTP/2 upstreams (`h2UpgradePolicy`) and
//! gRPC through a GRPC port (unary, an error status in trailers, a 1 MiB message, a
//! bidirectional stream in lockstep) with tonic on both ends, CONNECT tunnelled to the
//! route's endpoint, and `tlsCertificates` /
//! `credentialNames` serving the RSA or the ECDSA certificate by what the client verifies.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use rustls::SignatureAlgorithm;
use tests::{
    example::{Example, Mode, service_entry},
    grpc::{self, GrpcEcho},
    http::{self, Got, HttpBackend},
    tls::TlsClient,
    topology,
};

const A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 31);
const C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 32);
const HTTP: u16 = 8080;
const GRPC: u16 = 8081;
const HTTPS: u16 = 8443;

fn config(rsa: (&str, &str), ecdsa: (&str, &str)) -> String {
    let rule = |name: &str, policy: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  host: {name}.web.test\n  trafficPolicy: {policy}\n"
        )
    };
    let mut text = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: web}}
spec:
  servers:
  - port: {{number: {HTTP}, name: http, protocol: HTTP}}
    hosts: [shop.example.com, tunnel.example.com, retry.example.com]
  - port: {{number: {GRPC}, name: grpc, protocol: GRPC}}
    hosts: [grpc.example.com]
  - port: {{number: {HTTPS}, name: https-dual, protocol: HTTPS}}
    hosts: [dual.example.com]
    tls:
      mode: SIMPLE
      tlsCertificates:
      - {{serverCertificate: {}, privateKey: {}}}
      - {{serverCertificate: {}, privateKey: {}}}
  - port: {{number: {HTTPS}, name: https-creds, protocol: HTTPS}}
    hosts: [creds.example.com]
    tls: {{mode: SIMPLE, credentialNames: [creds-rsa, creds-ecdsa]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: web}}
spec:
  hosts: [shop.example.com, dual.example.com, creds.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /svc/}}}}]
    rewrite:
      uriRegexRewrite: {{match: '^/svc/([^/]+)(/.*)$', rewrite: '\2/instance/\1'}}
    route: [{{destination: {{host: a.web.test}}}}]
  - match: [{{uri: {{prefix: /split}}}}]
    headers: {{request: {{set: {{x-route: split}}}}}}
    route:
    - destination: {{host: a.web.test}}
      weight: 50
      headers: {{request: {{set: {{x-dest: a}}}}, response: {{add: {{x-dest-seen: a}}}}}}
    - destination: {{host: b.web.test}}
      weight: 50
      headers: {{request: {{set: {{x-dest: b}}, remove: [x-route]}}, response: {{add: {{x-dest-seen: b}}}}}}
  - match: [{{uri: {{prefix: /reviews}}}}]
    delegate: {{name: reviews}}
  - match: [{{uri: {{prefix: /sticky}}}}]
    route: [{{destination: {{host: sticky.web.test}}}}]
  - match: [{{uri: {{prefix: /cookie}}}}]
    route: [{{destination: {{host: cookie.web.test}}}}]
  - match: [{{uri: {{prefix: /h2}}}}]
    route: [{{destination: {{host: h2.web.test}}}}]
  - route: [{{destination: {{host: c.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: web}}
spec:
  http:
  - match: [{{uri: {{prefix: /reviews/v2}}}}]
    route: [{{destination: {{host: b.web.test}}}}]
  - match: [{{uri: {{prefix: /ratings}}}}]
    route: [{{destination: {{host: a.web.test}}}}]
  - route: [{{destination: {{host: c.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: retries, namespace: web}}
spec:
  hosts: [retry.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /once}}}}]
    retries: {{attempts: 0}}
    route: [{{destination: {{host: flaky.web.test}}}}]
  - match: [{{uri: {{prefix: /status}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
    route: [{{destination: {{host: a.web.test}}}}]
  - route: [{{destination: {{host: flaky.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: flaky, namespace: web}}
spec:
  hosts: [flaky.web.test]
  ports: [{{number: 9080, name: p, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: '{A}'}}, {{address: '{B}', ports: {{p: 9999}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: flaky, namespace: web}}
spec:
  host: flaky.web.test
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tunnel, namespace: web}}
spec:
  hosts: [tunnel.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: a.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc, namespace: web}}
spec:
  hosts: [grpc.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /sluice.test.Echo/}}}}]
    route: [{{destination: {{host: echo.web.test}}}}]
"#,
        rsa.0, rsa.1, ecdsa.0, ecdsa.1
    );
    for (name, address) in [("a", A), ("b", B), ("c", C)] {
        text += &service_entry(name, &[address], 9080, "HTTP");
    }
    text += &service_entry("sticky", &[A, B, C], 9080, "HTTP");
    text += &service_entry("cookie", &[A, B, C], 9080, "HTTP");
    text += &service_entry("h2", &[C], 9080, "HTTP");
    text += &service_entry("echo", &[A], 50051, "GRPC");
    text += &rule(
        "sticky",
        "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
    );
    text += &rule(
        "cookie",
        "{loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}, maglev: {tableSize: 65537}}}}",
    );
    text += &rule("h2", "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}");
    text
}

fn curl(ex: &Example, path: &str, args: &[&str]) -> Got {
    curl_host(ex, "shop.example.com", path, args)
}

fn curl_host(ex: &Example, host: &str, path: &str, args: &[&str]) -> Got {
    let url = format!("http://{host}:{HTTP}{path}");
    let resolve = format!("{host}:{HTTP}:{}", topology::GATEWAY_CLIENT_V4);
    let mut all = vec!["--resolve", resolve.as_str()];
    all.extend(args);
    all.push(&url);
    http::curl(&ex.topology.client, &all).unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()))
}

fn destinations(mode: Mode) {
    let mut ex = Example::network(&[A, B, C], &[]);
    let _backends: Vec<HttpBackend> = [(A, "a"), (B, "b"), (C, "c")]
        .iter()
        .map(|(address, id)| {
            HttpBackend::start(
                &ex.topology.backend,
                SocketAddr::new((*address).into(), 9080),
                id,
            )
        })
        .collect();
    let _echo = GrpcEcho::start(&ex.topology.backend, SocketAddr::new(A.into(), 50051));
    let files = ex.dir("certificates");
    let rsa = ex.ca.issue_rsa(&["dual.example.com"]);
    let ecdsa = ex.ca.issue(&["dual.example.com"]);
    let (rsa_cert, rsa_key) = rsa.write(&files.join("rsa"));
    let (ec_cert, ec_key) = ecdsa.write(&files.join("ecdsa"));
    let credentials = ex.dir("credentials");
    let creds_rsa = ex.ca.issue_rsa(&["creds.example.com"]);
    let creds_ecdsa = ex.ca.issue(&["creds.example.com"]);
    creds_rsa.mount(&credentials.join("creds-rsa"), &[]);
    creds_ecdsa.mount(&credentials.join("creds-ecdsa"), &[]);
    let text = config(
        (&rsa_cert.to_string_lossy(), &rsa_key.to_string_lossy()),
        (&ec_cert.to_string_lossy(), &ec_key.to_string_lossy()),
    );
    let dir = credentials.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_text(
        "destinations.yaml",
        &text,
        mode,
        &["--credentials-dir", &dir, "--access-log"],
    );
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());

    // uriRegexRewrite: every match in the path replaced, the query kept.
    let got = curl(&ex, "/svc/foo/v1/api?x=1", &[]);
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(
        got.body.starts_with("a\nGET /v1/api/instance/foo?x=1\n"),
        "{}",
        got.body
    );

    // Header operations per destination, after the route's, both ways.
    let mut seen = HashSet::new();
    for i in 0..24 {
        let got = curl(&ex, &format!("/split/{i}"), &[]);
        let backend = got.header("x-backend").unwrap_or_default().to_owned();
        assert_eq!(got.header("x-dest-seen"), Some(backend.as_str()), "{got:?}");
        assert!(
            got.body.contains(&format!("x-dest: {backend}\n")),
            "{}",
            got.body
        );
        // b's operations remove the route's header; a keeps it.
        assert_eq!(
            got.body.contains("x-route: split\n"),
            backend == "a",
            "{}",
            got.body
        );
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "50/50 over 24 requests reached {seen:?}");

    // A delegate's routes under the root's prefix; its /ratings rule conflicts with the
    // root's /reviews and is dropped, so nothing reaches a through it.
    let to = |path: &str| curl(&ex, path, &[]).header("x-backend").map(str::to_owned);
    assert_eq!(to("/reviews/v2/1").as_deref(), Some("b"));
    assert_eq!(to("/reviews/1").as_deref(), Some("c"));
    assert_eq!(to("/ratings").as_deref(), Some("c"));

    // consistentHash on a header: each user always on one endpoint, the users spread.
    let mut by_user = HashMap::new();
    for user in 0..12 {
        let header = format!("x-user: user-{user}");
        let endpoints: HashSet<String> = (0..4)
            .map(|_| to_with(&ex, "/sticky", &["-H", &header]))
            .collect();
        assert_eq!(endpoints.len(), 1, "user-{user} moved: {endpoints:?}");
        by_user.insert(user, endpoints.into_iter().next());
    }
    let spread: HashSet<_> = by_user.values().collect();
    assert!(spread.len() >= 2, "12 users all on {spread:?}");

    // A cookie the client lacks is handed out, and it keeps the client on one endpoint.
    let first = curl(&ex, "/cookie", &[]);
    let set = first
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no set-cookie: {first:?}"))
        .to_owned();
    assert!(
        set.starts_with("session=\"") && set.contains("Max-Age=60") && set.contains("Path=/"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    let endpoint = first.header("x-backend").unwrap_or_default().to_owned();
    for _ in 0..6 {
        let got = curl(&ex, "/cookie", &["-H", &format!("cookie: {cookie}")]);
        assert_eq!(got.header("x-backend"), Some(endpoint.as_str()));
        assert_eq!(got.header("set-cookie"), None);
    }

    // HTTP/2 to the upstream where the DestinationRule upgrades, HTTP/1.1 elsewhere.
    let got = curl(&ex, "/h2", &[]);
    assert_eq!(
        got.header("x-backend-protocol"),
        Some("HTTP/2.0"),
        "{got:?}"
    );
    assert!(got.body.starts_with("c\nGET /h2\n"), "{}", got.body);
    // The authority the client asked for, as `:authority`, not the endpoint's address.
    assert_eq!(
        got.header("x-backend-authority"),
        Some(&*format!("shop.example.com:{HTTP}")),
        "{got:?}"
    );
    assert_eq!(
        curl(&ex, "/other", &[]).header("x-backend-protocol"),
        Some("HTTP/1.1")
    );

    // /config_dump shows the HTTP routes as compiled: the delegate's rules under the root's
    // match (the conflicting one left out), the hash and the HTTP/2 upstream.
    let dump = ex.sluice().config_dump();
    let listeners = dump["config"]["plan"]["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let http = listeners
        .iter()
        .find(|l| l["port"] == HTTP)
        .unwrap_or_else(|| panic!("no listener {HTTP}: {dump:#}"));
    let routes = http["virtual_hosts"][0]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let origins: Vec<String> = routes
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["origin"]["object"]["name"].as_str().unwrap_or("?"),
                r["origin"]["path"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        origins,
        [
            "shop:spec.http[0]",
            "shop:spec.http[1]",
            "reviews:spec.http[0]",
            "reviews:spec.http[2]",
            "shop:spec.http[3]",
            "shop:spec.http[4]",
            "shop:spec.http[5]",
            "shop:spec.http[6]"
        ],
        "{http:#}"
    );
    let left_out = dump["config"]["plan"]["left_out"].to_string();
    assert!(
        left_out.contains("\"path\":\"spec.http[1]\"")
            && left_out.contains("conflicts with the delegating rule"),
        "{left_out}"
    );
    assert_eq!(routes[2]["matches"][0]["uri"]["prefix"], "/reviews/v2");
    assert_eq!(routes[3]["matches"][0]["uri"]["prefix"], "/reviews");
    let backend = |i: usize| &routes[i]["action"]["backends"][0];
    assert_eq!(
        backend(4)["consistent_hash"]["key"]["header"],
        "x-user",
        "{:#}",
        routes[4]
    );
    assert_eq!(
        backend(4)["consistent_hash"]["table"]["ring"]["minimum_size"],
        1024
    );
    assert_eq!(backend(6)["http2"], true);
    assert_eq!(
        routes[1]["action"]["backends"][1]["headers"]["request"]["remove"][0],
        "x-route"
    );

    // CONNECT ends at the gateway: the route's endpoint is dialled and the bytes flow.
    let proxy = format!("http://{}:{HTTP}", topology::GATEWAY_CLIENT_V4);
    let out = ex.topology.client.exec(
        "curl",
        &[
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--proxytunnel",
            "--proxy",
            &proxy,
            "http://tunnel.example.com:9080/through?the=tunnel",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\n\na\nGET /through?the=tunnel\n"),
        "the tunnelled request did not reach a: {text}"
    );
    ex.sluice().wait_log(|l| {
        l.contains("INFO access")
            && l.contains("method=CONNECT")
            && l.contains(&format!("upstream_host={A}:9080"))
    });

    retries(&ex);
    grpc_through_the_gateway(&ex);
    two_certificates(&ex, "dual.example.com", (&rsa, &ecdsa));
    two_certificates(&ex, "creds.example.com", (&creds_rsa, &creds_ecdsa));
}

fn to_with(ex: &Example, path: &str, args: &[&str]) -> String {
    curl(ex, path, args)
        .header("x-backend")
        .unwrap_or_default()
        .to_owned()
}

/// Istio's default retries take a request whose endpoint refuses to the other endpoint,
/// small bodies included; without retries (or with a body too long to hold) half the
/// requests fail; a 5xx retried runs out (URX).
fn retries(ex: &Example) {
    let host = "retry.example.com";
    let statuses = |path: &str| -> Vec<u16> {
        (0..10)
            .map(|i| curl_host(ex, host, &format!("{path}/{i}"), &[]).status)
            .collect()
    };
    assert_eq!(statuses("/default"), [200; 10], "{}", ex.sluice().log());
    // A small body is held and sent again; a body over 64 KiB is streamed and sent once.
    let small: Vec<(u16, bool)> = (0..10)
        .map(|i| {
            let got = curl_host(ex, host, &format!("/post/{i}"), &["--data-binary", "hello"]);
            (got.status, got.header("x-backend-body-bytes") == Some("5"))
        })
        .collect();
    assert_eq!(small, [(200, true); 10]);
    let retries_now = || {
        ex.sluice()
            .metric(
                "sluice_http_upstream_retries_total{upstream=\"outbound|9080||flaky.web.test\"}",
            )
            .unwrap_or(0.0)
    };
    let before = retries_now();
    let big = "b".repeat(100 * 1024);
    let mut big_failed = 0;
    for i in 0..10 {
        let got = curl_host(ex, host, &format!("/big/{i}"), &["--data-binary", &big]);
        match got.status {
            503 => big_failed += 1,
            status => {
                assert_eq!(status, 200);
                assert_eq!(got.header("x-backend-body-bytes"), Some("102400"));
            }
        }
    }
    // Round robin sends half to the refusing endpoint, and none is tried again.
    assert_eq!(big_failed, 5);
    assert_eq!(retries_now(), before, "a 100 KiB body was sent again");
    let once = statuses("/once");
    let failed = once.iter().filter(|s| **s == 503).count();
    // Round robin over one live and one refusing endpoint.
    assert_eq!(failed, 5, "{once:?}");
    let retried = ex
        .sluice()
        .metric("sluice_http_upstream_retries_total{upstream=\"outbound|9080||flaky.web.test\"}");
    assert!(retried.is_some_and(|n| n >= 5.0), "{retried:?}");
    let got = curl_host(ex, host, "/status/500", &[]);
    assert_eq!(got.status, 500);
    ex.sluice().wait_log(|l| {
        l.contains("INFO access")
            && l.contains(" path=/status/500 ")
            && l.contains("response_flags=\"URX\"")
    });
    assert_eq!(
        ex.sluice().metric(
            "sluice_http_upstream_requests_total{upstream=\"outbound|9080||a.web.test\",code_class=\"5xx\"}"
        ),
        Some(4.0),
        "one try and three retries"
    );
}

/// tonic to tonic through the GRPC port: h2c from the client, HTTP/2 to the GRPC service
/// port, trailers carried both ways.
fn grpc_through_the_gateway(ex: &Example) {
    let gateway = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), GRPC);
    let outcome = ex.topology.client.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let authority = format!("grpc.example.com:{GRPC}");
            let mut client = grpc::connect(gateway, &authority)
                .await
                .map_err(|e| e.to_string())?;
            let hello = grpc::unary(&mut client, grpc::UNARY, Bytes::from_static(b"hello"))
                .await
                .map_err(|e| format!("unary: {e}"))?;
            let failed = grpc::unary(&mut client, grpc::FAIL, Bytes::new()).await;
            let big = Bytes::from(vec![7u8; 1 << 20]);
            let big_back = grpc::unary(&mut client, grpc::UNARY, big.clone())
                .await
                .map_err(|e| format!("1 MiB unary: {e}"))?;
            let messages: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i}"))).collect();
            let streamed = tokio::time::timeout(
                Duration::from_secs(10),
                grpc::stream_lockstep(&mut client, messages.clone()),
            )
            .await
            .map_err(|_| "the stream did not flow message by message".to_owned())?
            .map_err(|e| format!("stream: {e}"))?;
            Ok::<_, String>((
                hello,
                failed,
                big_back == grpc::echoed(&big),
                messages,
                streamed,
            ))
        })
    });
    let (hello, failed, big_ok, messages, streamed) =
        outcome.unwrap_or_else(|e| panic!("gRPC: {e}\n{}", ex.sluice().log()));
    assert_eq!(hello, grpc::echoed(b"hello"));
    let status = failed.err().unwrap_or_else(|| panic!("Fail succeeded"));
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "asked to fail");
    assert!(big_ok, "the 1 MiB message came back changed");
    let want: Vec<Bytes> = messages.iter().map(|m| grpc::echoed(m)).collect();
    assert_eq!(streamed, want);
    ex.sluice().wait_log(|l| {
        l.contains("INFO access")
            && l.contains("path=/sluice.test.Echo/Stream")
            && l.contains("protocol=\"HTTP/2\"")
            && l.contains(&format!("upstream_host={A}:50051"))
    });
}

/// The server's two certificates (RSA, ECDSA): a client that verifies only RSA gets the RSA
/// one, a client that verifies ECDSA gets the ECDSA one; both are served HTTP.
fn two_certificates(
    ex: &Example,
    name: &'static str,
    (rsa, ecdsa): (&tests::tls::Identity, &tests::tls::Identity),
) {
    for (algorithm, want) in [
        (SignatureAlgorithm::RSA, rsa.leaf()),
        (SignatureAlgorithm::ECDSA, ecdsa.leaf()),
    ] {
        let config = ex.ca.client_config_verifying(algorithm);
        let target = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), HTTPS);
        let (certificate, answer) = ex
            .topology
            .client
            .run(move || {
                let mut client = TlsClient::connect(target, name, config)?;
                let certificate = client.peer_certificate();
                Ok::<_, std::io::Error>((certificate, client.request(name, "/tls")?))
            })
            .unwrap_or_else(|e| panic!("{name} {algorithm:?}: {e}\n{}", ex.sluice().log()));
        assert_eq!(certificate.as_ref(), Some(want), "{name}: {algorithm:?}");
        assert_eq!(answer.0, 200, "{name}: {}", answer.1);
        assert!(answer.1.starts_with("c\n"), "{}", answer.1);
    }
}

tests::in_both_datapaths!(destinations: userspace_http_destinations, kernel_mode_http_destinations);

/// DestinationRule `outlierDetection`: of three endpoints behind a round-robin destination,
/// one refuses connections; two failures in a row eject it (its clients still get 200s, by
/// Istio's default retry on connect failure), and while ejected it gets no request even
/// once it serves again; when its ejection ends it gets requests again.
fn outlier_detection(mode: Mode) {
    const PORT: u16 = 9090;
    let mut ex = Example::network(&[A, B, C], &[]);
    let up = |ex: &Example, address: Ipv4Addr, id: &str| {
        HttpBackend::start(
            &ex.topology.backend,
            SocketAddr::new(address.into(), PORT),
            id,
        )
    };
    let _a = up(&ex, A, "a");
    let _b = up(&ex, B, "b");
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: web}}
spec:
  servers:
  - port: {{number: {HTTP}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pool, namespace: web}}
spec:
  hosts: ['*']
  gateways: [gw]
  http: [{{route: [{{destination: {{host: pool.web.test}}}}]}}]
{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool, namespace: web}}
spec:
  host: pool.web.test
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}}
",
        service_entry("pool", &[A, B, C], PORT, "HTTP")
    );
    let (status, ready) = ex.serve_text("outliers.yaml", &config, mode, &[]);
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    let ejections =
        "sluice_http_upstream_ejections_total{upstream=\"outbound|9090||pool.web.test\"}";
    let get = || {
        let got = curl(&ex, "/", &[]);
        assert_eq!(got.status, 200, "{}\n{}", got.body, ex.sluice().log());
    };
    // Round robin reaches C every third try: a dozen requests fail on it twice in a row.
    for _ in 0..12 {
        get();
        if ex.sluice().metric(ejections) == Some(1.0) {
            break;
        }
    }
    assert_eq!(
        ex.sluice().metric(ejections),
        Some(1.0),
        "{}",
        ex.sluice().log()
    );
    let ejected_by = std::time::Instant::now();
    // C serves from now on, but its ejection (3 s) keeps every request away for its length.
    let c = up(&ex, C, "c");
    while ejected_by.elapsed() < Duration::from_secs(2) {
        get();
    }
    assert_eq!(c.requests(), 0, "an ejected endpoint got requests");
    // Then it is back.
    while c.requests() == 0 {
        assert!(
            ejected_by.elapsed() < Duration::from_secs(10),
            "the endpoint did not return after its ejection\n{}",
            ex.sluice().log()
        );
        get();
    }
    assert_eq!(ex.sluice().metric(ejections), Some(1.0));
}

tests::in_both_datapaths!(outlier_detection: userspace_outlier_detection, kernel_mode_outlier_detection);

/// `exportTo` read against the namespace the gateway runs in: a VirtualService exported to
/// its own namespace only (`shop`) is not used by a gateway in istio-system, one exported
/// to istio-system is; a ServiceEntry kept to its namespace leaves its route without a
/// destination. Run in `shop` instead, the gateway sees the first and not the second.
fn export_to(mode: Mode) {
    const PORT: u16 = 9090;
    let mut ex = Example::network(&[A, B], &[]);
    let _a = HttpBackend::start(&ex.topology.backend, SocketAddr::new(A.into(), PORT), "a");
    let _b = HttpBackend::start(&ex.topology.backend, SocketAddr::new(B.into(), PORT), "b");
    let route = |name: &str, export: &str, host: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.example.com]
  gateways: [istio-system/gw]
  exportTo: {export}
  http: [{{route: [{{destination: {{host: {host}}}}}]}}]
"
        )
    };
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  servers:
  - port: {{number: {HTTP}, name: http, protocol: HTTP}}
    hosts: ['*/*.example.com']
{}{}{}{}{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: kept, namespace: web}}
spec:
  hosts: [kept.web.test]
  exportTo: ['.']
  ports: [{{number: {PORT}, name: p, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: '{B}'}}]
",
        route("private", "['.']", "a.web.test"),
        route("shared", "[istio-system]", "b.web.test"),
        route("unseen", "['*']", "kept.web.test"),
        service_entry("a", &[A], PORT, "HTTP"),
        service_entry("b", &[B], PORT, "HTTP"),
    );
    let statuses = |ex: &Example| -> Vec<(u16, String)> {
        ["private", "shared", "unseen"]
            .iter()
            .map(|name| {
                let got = curl_host(ex, &format!("{name}.example.com"), "/", &[]);
                (got.status, got.body.lines().next().unwrap_or("").to_owned())
            })
            .collect()
    };
    let (status, ready) = ex.serve_text("export.yaml", &config, mode, &[]);
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    assert_eq!(
        statuses(&ex),
        [
            (404, String::new()),
            (200, "b".into()),
            (404, String::new())
        ],
        "{}",
        ex.sluice().log()
    );
    assert!(
        ex.sluice().log().contains("SLU0005"),
        "no info for the hidden objects\n{}",
        ex.sluice().log()
    );
    ex.stop();
    let (status, ready) = ex.serve_text(
        "export.yaml",
        &config,
        mode,
        &["--gateway-namespace", "shop"],
    );
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    assert_eq!(
        statuses(&ex),
        [
            (200, "a".into()),
            (404, String::new()),
            (404, String::new())
        ],
        "{}",
        ex.sluice().log()
    );
}

tests::in_both_datapaths!(export_to: userspace_export_to, kernel_mode_export_to);

/// Istio's default retry policy includes `refused-stream`: an HTTP/2 upstream that resets a
/// stream with REFUSED_STREAM (it did not process it) gets the request again, and the
/// client sees the answer; with `retryOn: retriable-4xx` only, the refusal is the client's 503.
fn refused_streams_are_retried(mode: Mode) {
    const PORT: u16 = 9092;
    let mut ex = Example::network(&[C], &[]);
    let upstream =
        http::RefusingH2::start(&ex.topology.backend, SocketAddr::new(C.into(), PORT), 1);
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: web}}
spec:
  servers:
  - port: {{number: {HTTP}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: h2, namespace: web}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /no-retry}}}}]
    route: [{{destination: {{host: h2.web.test}}}}]
    retries: {{attempts: 2, retryOn: retriable-4xx}}
  - route: [{{destination: {{host: h2.web.test}}}}]
{}",
        service_entry("h2", &[C], PORT, "HTTP2")
    );
    let (status, ready) = ex.serve_text("refused.yaml", &config, mode, &[]);
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    let got = curl(&ex, "/", &[]);
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "ok"),
        "{}",
        ex.sluice().log()
    );
    assert_eq!(upstream.streams(), 2, "the refused stream and its retry");
    // Served from now on: a refusal needs a fresh upstream. Restart it refusing again.
    drop(upstream);
    let upstream =
        http::RefusingH2::start(&ex.topology.backend, SocketAddr::new(C.into(), PORT), 1);
    let got = curl(&ex, "/no-retry", &[]);
    assert_eq!(got.status, 503, "{}", got.body);
    assert_eq!(upstream.streams(), 1);
}

tests::in_both_datapaths!(refused_streams_are_retried: userspace_refused_streams_are_retried, kernel_mode_refused_streams_are_retried);
