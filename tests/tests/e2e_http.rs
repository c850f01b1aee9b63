//! The HTTP gateway end to end, with the userspace datapath and with the kernel datapath
//! attached (HTTP listeners are passed to the stack by the kernel programs): curl as the
//! client (HTTP/1.1, h2c, HTTP/2 over TLS), test backends that report what they received.
//! VirtualService routing by path, header, host and method; weights; redirects, direct
//! responses, rewrites and header operations as the upstream and the client see them; 404
//! without a route; 503 when the endpoint refuses; 504 at the route's timeout; TLS
//! termination with certificate files and a `credentialName`, chosen by SNI; httpsRedirect.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use tests::{
    bpffs::TempBpffs,
    example::Mode,
    http::{self, HttpBackend},
    sluice::Sluice,
    tls::TestCa,
    topology::{self, Topology},
    websocket::WsEcho,
};

const HTTP: u16 = 8080;
const HTTPS: u16 = 8443;
const WS_PORT: u16 = 9090;

fn config(cert: &str, key: &str) -> String {
    let se = |name: &str, address: Ipv4Addr, port: u16| {
        tests::example::service_entry(name, &[address], port, "HTTP")
    };
    let mut text = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: web}}
spec:
  servers:
  - port: {{number: {HTTP}, name: http, protocol: HTTP}}
    hosts: [bookinfo.example.com, "*.apps.example.com"]
  - port: {{number: {HTTP}, name: http-redirect, protocol: HTTP}}
    hosts: [secure.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {HTTPS}, name: https, protocol: HTTPS}}
    hosts: [secure.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {HTTPS}, name: https-wild, protocol: HTTPS}}
    hosts: ["*.wild.example.com"]
    tls: {{mode: SIMPLE, credentialName: wild-cred}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: web}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{exact: /productpage}}}}, {{uri: {{prefix: /static}}}}]
    headers:
      request: {{set: {{x-route: productpage}}}}
      response: {{add: {{x-gateway: sluice}}}}
    route: [{{destination: {{host: productpage.web.test, port: {{number: 9080}}}}}}]
  - match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: reviews-v2.web.test}}}}]
  - match: [{{uri: {{prefix: /reviews}}}}]
    route:
    - {{destination: {{host: reviews-v1.web.test}}, weight: 80}}
    - {{destination: {{host: reviews-v2.web.test}}, weight: 20}}
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, redirectCode: 302}}
  - match: [{{uri: {{prefix: /api/v1}}}}]
    rewrite: {{uri: /v2}}
    route: [{{destination: {{host: productpage.web.test}}}}]
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: short and stout}}}}
  - match: [{{uri: {{prefix: /delay}}}}]
    timeout: 500ms
    route: [{{destination: {{host: productpage.web.test}}}}]
  - match: [{{uri: {{prefix: /dead}}}}]
    route: [{{destination: {{host: dead.web.test}}}}]
  - match: [{{uri: {{prefix: /ws}}}}]
    route: [{{destination: {{host: ws.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cors, namespace: web}}
spec:
  hosts: [cors.apps.example.com]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /strict}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://app.example.com"}}]
      unmatchedPreflights: IGNORE
    route: [{{destination: {{host: productpage.web.test}}}}]
  - corsPolicy:
      allowOrigins: [{{exact: "https://app.example.com"}}, {{regex: "https://[a-z]+[.]trusted[.]example"}}]
      allowMethods: [POST, GET]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-upstream]
      maxAge: 24h
      allowCredentials: true
    route: [{{destination: {{host: productpage.web.test}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: apps, namespace: web}}
spec:
  hosts: ["*.apps.example.com", secure.example.com, "*.wild.example.com"]
  gateways: [gw]
  http:
  - match: [{{method: {{exact: GET}}}}]
    route: [{{destination: {{host: reviews-v1.web.test}}}}]
"#
    );
    text += &se("productpage", topology::backend_v4(0), 9080);
    text += &se("reviews-v1", topology::backend_v4(1), 9080);
    text += &se("reviews-v2", topology::backend_v4(2), 9080);
    text += &se("dead", topology::backend_v4(0), 9999);
    text += &se("ws", topology::backend_v4(1), WS_PORT);
    text
}

struct Web {
    topology: Topology,
    ca: TestCa,
    _backends: Vec<HttpBackend>,
    _ws: WsEcho,
    _bpffs: TempBpffs,
    _dir: tempfile::TempDir,
    sluice: Sluice,
}

impl Web {
    fn start(mode: Mode) -> Web {
        Web::start_with(mode, &[])
    }

    /// With `extra` arguments for sluice.
    fn start_with(mode: Mode, extra: &[&str]) -> Web {
        let topology = Topology::builder()
            .backends(3)
            .ipv4_only()
            .default_offloads()
            .build();
        let backends = ["productpage", "reviews-v1", "reviews-v2"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                HttpBackend::start(
                    &topology.backend,
                    SocketAddr::new(topology::backend_v4(i).into(), 9080),
                    id,
                )
            })
            .collect();
        let ws = WsEcho::start(
            &topology.backend,
            SocketAddr::new(topology::backend_v4(1).into(), WS_PORT),
        );
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = ca
            .issue(&["secure.example.com"])
            .write(&dir.path().join("secure"));
        let credentials = dir.path().join("credentials");
        ca.issue(&["*.wild.example.com"])
            .write(&credentials.join("wild-cred"));
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            config_dir.join("web.yaml"),
            config(&cert.to_string_lossy(), &key.to_string_lossy()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bpffs = TempBpffs::new();
        let mut args: Vec<String> = [
            "-f",
            &config_dir.to_string_lossy(),
            "--credentials-dir",
            &credentials.to_string_lossy(),
            "--bpffs",
            &bpffs.path().to_string_lossy(),
            "--instance",
            "web",
            "--access-log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(mode.args().iter().chain(extra).map(|s| s.to_string()));
        let sluice = Sluice::start(&topology.gateway, &args);
        Web {
            topology,
            ca,
            _backends: backends,
            _ws: ws,
            _bpffs: bpffs,
            _dir: dir,
            sluice,
        }
    }

    /// `curl -i` from the client host, `host` resolved to the gateway.
    fn curl(&self, scheme: &str, host: &str, path: &str, extra: &[&str]) -> http::Got {
        let port = if scheme == "https" { HTTPS } else { HTTP };
        let url = format!("{scheme}://{host}:{port}{path}");
        let resolve = format!("{host}:{port}:{}", topology::GATEWAY_CLIENT_V4);
        let ca = self.ca.pem_path();
        let mut args = vec![
            "--cacert",
            ca.to_str().unwrap_or_default(),
            "--resolve",
            &resolve,
        ];
        args.extend(extra);
        args.push(&url);
        http::curl(&self.topology.client, &args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.sluice.log()))
    }
}

fn routes(mode: Mode) {
    let web = Web::start(mode);
    let host = "bookinfo.example.com";

    // A route by exact path and by prefix, with header operations both ways.
    let got = web.curl("http", host, "/productpage?u=1", &[]);
    assert_eq!(got.status, 200, "{}", web.sluice.log());
    assert!(
        got.body.starts_with("productpage\nGET /productpage?u=1\n"),
        "{}",
        got.body
    );
    for seen in [
        "x-route: productpage",
        "x-forwarded-for: 198.51.100.2",
        "x-forwarded-proto: http",
        &format!("host: {host}:{HTTP}"),
    ] {
        assert!(
            got.body.contains(seen),
            "upstream did not see {seen:?}:\n{}",
            got.body
        );
    }
    assert!(got.body.contains("x-request-id: "), "{}", got.body);
    assert_eq!(got.header("x-gateway"), Some("sluice"));
    assert!(
        web.curl("http", host, "/static/app.css", &[])
            .body
            .starts_with("productpage\n")
    );

    // Header match before the path rules.
    let got = web.curl("http", host, "/anything", &["-H", "x-canary: yes"]);
    assert!(got.body.starts_with("reviews-v2\n"), "{}", got.body);

    // 80/20 over 1000 requests on one kept-alive connection.
    let got = web.curl("http", host, "/reviews/[1-1000]", &[]);
    let text = got.body;
    let v1 = text.matches("reviews-v1\nGET /reviews/").count();
    let v2 = text.matches("reviews-v2\nGET /reviews/").count();
    assert_eq!(v1 + v2, 1000, "{v1} + {v2}");
    assert!(
        (750..=850).contains(&v1),
        "{v1} of 1000 on v1, want 800 ± 50"
    );

    // Redirect (the query string kept), direct response, rewrite.
    let got = web.curl("http", host, "/old/page?x=1", &[]);
    assert_eq!(got.status, 302);
    assert_eq!(
        got.header("location"),
        Some(&*format!("http://{host}:{HTTP}/new?x=1"))
    );
    let got = web.curl("http", host, "/teapot", &[]);
    assert_eq!((got.status, got.body.as_str()), (418, "short and stout"));
    let got = web.curl("http", host, "/api/v1/items?y=2", &[]);
    assert!(
        got.body.starts_with("productpage\nGET /v2/items?y=2\n"),
        "{}",
        got.body
    );

    // Upstream failures and no route.
    let started = std::time::Instant::now();
    let got = web.curl("http", host, "/delay/3000", &[]);
    assert_eq!(got.status, 504, "{}", got.body);
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    assert_eq!(web.curl("http", host, "/dead", &[]).status, 503);
    assert_eq!(web.curl("http", host, "/nothing-here", &[]).status, 404);
    assert_eq!(web.curl("http", "nope.example.com", "/", &[]).status, 404);

    // Wildcard host and method match.
    let got = web.curl("http", "a.apps.example.com", "/x", &[]);
    assert!(got.body.starts_with("reviews-v1\n"), "{}", got.body);
    assert_eq!(
        web.curl("http", "a.apps.example.com", "/x", &["-X", "POST"])
            .status,
        404
    );

    // h2c by prior knowledge.
    let got = web.curl("http", host, "/productpage", &["--http2-prior-knowledge"]);
    assert_eq!(got.status, 200);
    assert!(got.body.starts_with("productpage\n"), "{}", got.body);

    // httpsRedirect, then TLS terminated with the certificate of the name asked for.
    let got = web.curl("http", "secure.example.com", "/a?b=c", &[]);
    assert_eq!(got.status, 301);
    assert_eq!(
        got.header("location"),
        Some("https://secure.example.com/a?b=c")
    );
    for (name, subject) in [
        ("secure.example.com", "CN=secure.example.com"),
        ("x.wild.example.com", "CN=*.wild.example.com"),
    ] {
        let got = web.curl("https", name, "/tls", &[]);
        assert_eq!(got.status, 200, "{name}");
        assert!(got.body.starts_with("reviews-v1\n"), "{}", got.body);
        assert!(
            got.body.contains("x-forwarded-proto: https"),
            "{}",
            got.body
        );
        let out = web.topology.client.exec(
            "curl",
            &[
                "-sS",
                "-v",
                "-o",
                "/dev/null",
                "--http2",
                "--cacert",
                &web.ca.pem_path().to_string_lossy(),
                "--resolve",
                &format!("{name}:{HTTPS}:{}", topology::GATEWAY_CLIENT_V4),
                &format!("https://{name}:{HTTPS}/"),
            ],
        );
        let verbose = String::from_utf8_lossy(&out.stderr);
        assert!(
            verbose.contains(&format!("subject: {subject}")),
            "{verbose}"
        );
        assert!(verbose.contains("< HTTP/2 200"), "ALPN h2: {verbose}");
    }
    // A request body is counted in the access log.
    let body = "b".repeat(1000);
    let got = web.curl(
        "http",
        host,
        "/productpage?posted",
        &["--data-binary", &body],
    );
    assert!(
        got.body
            .starts_with("productpage\nPOST /productpage?posted\n"),
        "{}",
        got.body
    );

    // One access-log line per request, with Envoy's fields and response flags.
    let line = |path: &str| {
        web.sluice
            .wait_log(|l| l.contains("INFO access") && l.contains(&format!(" path={path} ")))
    };
    for (path, wanted) in [
        (
            "/teapot",
            &[
                "response_code=418",
                "response_flags=\"-\"",
                "route_name=web/bookinfo:spec.http[5]",
                "bytes_sent=15",
                "upstream_host=-",
            ][..],
        ),
        (
            "/nothing-here",
            &["response_code=404", "response_flags=\"NR\"", "route_name=-"],
        ),
        (
            "/dead",
            &[
                "response_code=503",
                // Istio's default retries tried twice more.
                "response_flags=\"UF,URX\"",
                "upstream_host=203.0.113.2:9999",
            ],
        ),
        (
            "/delay/3000",
            &["response_code=504", "response_flags=\"UT\""],
        ),
        (
            "/productpage?posted",
            &[
                "method=POST",
                "bytes_received=1000",
                "upstream_host=203.0.113.2:9080",
                "protocol=\"HTTP/1.1\"",
                "user_agent=curl/",
            ],
        ),
    ] {
        let line = line(path);
        for field in wanted {
            assert!(line.contains(field), "{path}: no {field} in {line}");
        }
        assert!(line.contains("x_request_id="), "{line}");
    }

    // WebSocket: the upgrade reaches the upstream with the route's path, then messages
    // flow both ways through the tunnel.
    let gateway = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), HTTP);
    let (handshake, echoed) = web
        .topology
        .client
        .run(move || -> Result<(String, Vec<String>), String> {
            let stream = TcpStream::connect(gateway).map_err(|e| e.to_string())?;
            let url = format!("ws://bookinfo.example.com:{HTTP}/ws/chat?room=1");
            let (mut socket, response) =
                tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
            if response.status() != 101 {
                return Err(format!("{response:?}"));
            }
            let first = socket.read().map_err(|e| e.to_string())?;
            let mut echoed = Vec::new();
            let big = "x".repeat(200_000);
            for text in ["hello", "world", big.as_str()] {
                socket
                    .send(tungstenite::Message::text(text))
                    .map_err(|e| e.to_string())?;
                let back = socket.read().map_err(|e| e.to_string())?;
                echoed.push(back.into_text().map_err(|e| e.to_string())?.to_string());
            }
            socket.close(None).map_err(|e| e.to_string())?;
            Ok((
                first.into_text().map_err(|e| e.to_string())?.to_string(),
                echoed,
            ))
        })
        .unwrap_or_else(|e| panic!("websocket: {e}\n{}", web.sluice.log()));
    assert!(handshake.starts_with("/ws/chat?room=1\n"), "{handshake}");
    for seen in [
        "upgrade: websocket",
        "x-forwarded-for: 198.51.100.2",
        "sec-websocket-key: ",
    ] {
        assert!(
            handshake.to_ascii_lowercase().contains(seen),
            "{seen}: {handshake}"
        );
    }
    assert_eq!(echoed[..2], ["hello", "world"]);
    assert_eq!(echoed[2].len(), 200_000);
    web.sluice.wait_log(|l| {
        l.contains("INFO access")
            && l.contains(" path=/ws/chat?room=1 ")
            && l.contains("response_code=101")
            && l.contains("upstream_host=203.0.113.3:9090")
    });

    // Counted by route and status class; nothing left in flight.
    let requests = |route: &str, class: &str| {
        web.sluice
            .metric(&format!(
                "sluice_http_requests_total{{listener=\"0.0.0.0:{HTTP}\",route=\"{route}\",code_class=\"{class}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(requests("web/bookinfo:spec.http[2]", "2xx"), 1000.0);
    assert_eq!(requests("web/bookinfo:spec.http[5]", "4xx"), 1.0);
    assert_eq!(requests("web/bookinfo:spec.http[3]", "3xx"), 1.0);
    assert_eq!(requests("web/bookinfo:spec.http[6]", "5xx"), 1.0);
    assert_eq!(requests("-", "4xx"), 3.0);
    assert_eq!(
        web.sluice.metric(&format!(
            "sluice_http_request_duration_seconds_count{{listener=\"0.0.0.0:{HTTP}\",route=\"web/bookinfo:spec.http[2]\"}}"
        )),
        Some(1000.0)
    );
    assert_eq!(
        web.sluice.metric(&format!(
            "sluice_http_active_requests{{listener=\"0.0.0.0:{HTTP}\"}}"
        )),
        Some(0.0)
    );
    // Per upstream service, named as Istio names Envoy's clusters.
    let upstream = |series: &str| web.sluice.metric(series).unwrap_or(0.0);
    let v1 = upstream(
        "sluice_http_upstream_requests_total{upstream=\"outbound|9080||reviews-v1.web.test\",code_class=\"2xx\"}",
    );
    let v2 = upstream(
        "sluice_http_upstream_requests_total{upstream=\"outbound|9080||reviews-v2.web.test\",code_class=\"2xx\"}",
    );
    // The 1000 split requests, the canary one, and the TLS ones on v1.
    assert!(v1 + v2 > 1000.0 && v1 > v2, "v1 {v1}, v2 {v2}");
    assert_eq!(
        upstream(
            "sluice_http_upstream_failures_total{upstream=\"outbound|9999||dead.web.test\",reason=\"connect_failure\"}"
        ),
        3.0,
        "a try and Istio's two default retries"
    );
    assert_eq!(
        upstream(
            "sluice_http_upstream_failures_total{upstream=\"outbound|9080||productpage.web.test\",reason=\"timeout\"}"
        ),
        1.0
    );
}

tests::in_both_datapaths!(routes: userspace_http_routes, kernel_mode_http_routes);

/// Reads from `stream` until the peer closes it (or 10 s pass): how long that took.
/// `corsPolicy` as Envoy's CORS filter applies it: a preflight from an allowed origin (exact
/// or regex) is answered at the gateway with what the policy allows, a response to an
/// allowed origin carries the origin, credentials and exposed headers, other origins get
/// nothing, and an unmatched preflight goes on to the upstream, or with `IGNORE` is answered
/// without CORS headers.
fn cors(mode: Mode) {
    let web = Web::start(mode);
    let host = "cors.apps.example.com";
    let preflight = |path: &str, origin: &str| {
        web.curl(
            "http",
            host,
            path,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: POST",
            ],
        )
    };

    let got = preflight("/api", "https://app.example.com");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "", "a preflight is answered at the gateway");
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(got.header("access-control-allow-methods"), Some("POST,GET"));
    assert_eq!(
        got.header("access-control-allow-headers"),
        Some("x-custom,content-type")
    );
    assert_eq!(got.header("access-control-max-age"), Some("86400"));
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    let got = preflight("/api", "https://shop.trusted.example");
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://shop.trusted.example")
    );

    // A preflight from another origin reaches the upstream, which answers it itself.
    let got = preflight("/api", "https://evil.example");
    assert!(
        got.body.starts_with("productpage\nOPTIONS /api\n"),
        "{}",
        got.body
    );
    assert_eq!(got.header("access-control-allow-origin"), None);
    // With IGNORE it is answered here, without CORS headers.
    let got = preflight("/strict/x", "https://evil.example");
    assert_eq!((got.status, got.body.as_str()), (200, ""));
    assert_eq!(got.header("access-control-allow-origin"), None);

    // Actual requests: an allowed origin's response is marked, another's is not.
    let got = web.curl(
        "http",
        host,
        "/api",
        &["-H", "Origin: https://app.example.com"],
    );
    assert!(
        got.body.starts_with("productpage\nGET /api\n"),
        "{}",
        got.body
    );
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        got.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    let got = web.curl(
        "http",
        host,
        "/api",
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(got.status, 200);
    assert_eq!(got.header("access-control-allow-origin"), None);
    assert_eq!(got.header("access-control-expose-headers"), None);
}

tests::in_both_datapaths!(cors: userspace_http_cors, kernel_mode_http_cors);

fn closed_after(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

/// Reads HTTP/2 frames from `stream` until the peer closes it (or 10 s pass): when a
/// GOAWAY came, and when the close.
fn goaway_and_close(mut stream: TcpStream) -> (Option<Duration>, Duration) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let (mut buffer, mut goaway) = (Vec::new(), None);
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
        // Frames: 3 bytes length, 1 type (GOAWAY is 7), 1 flags, 4 stream id, payload.
        while buffer.len() >= 9 {
            let length =
                usize::from(buffer[0]) << 16 | usize::from(buffer[1]) << 8 | usize::from(buffer[2]);
            if buffer.len() < 9 + length {
                break;
            }
            if buffer[3] == 7 {
                goaway.get_or_insert(started.elapsed());
            }
            buffer.drain(..9 + length);
        }
    }
    (goaway, started.elapsed())
}

fn connect(web: &Web) -> TcpStream {
    let target = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), HTTP);
    web.topology
        .client
        .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Protection: a slowloris client is cut at the header timeout while 50 others are served;
/// an oversized head is a 431; idle HTTP/2 connections get closed; connections and requests
/// over their limits are refused and counted.
fn limits(mode: Mode) {
    let web = Web::start_with(
        mode,
        &[
            "--http-header-timeout",
            "1s",
            "--http-idle-timeout",
            "600ms",
            "--http-max-requests",
            "50",
        ],
    );
    let host = "bookinfo.example.com";

    // A client that sends its request head one byte every 100 ms never finishes it.
    let slow = connect(&web);
    let slowloris = std::thread::spawn(move || {
        let mut writer = slow.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let drip = std::thread::spawn(move || {
            for byte in b"GET /productpage HTTP/1.1\r\nhost: bookinfo.example.com\r\nx-slow: " {
                if writer.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let closed = closed_after(slow);
        let _ = drip.join();
        closed
    });
    // Meanwhile 50 clients at once, each served.
    let got = web.curl(
        "http",
        host,
        "/productpage?n=[1-50]",
        &["--parallel", "--parallel-max", "50", "--parallel-immediate"],
    );
    let served = got.body.matches("productpage\nGET /productpage?n=").count();
    assert_eq!(served, 50, "{}", got.body);
    let closed = slowloris
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "slowloris closed after {closed:?}"
    );

    // A request head over the limit (60 KiB by default).
    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    assert_eq!(
        web.curl("http", host, "/productpage", &["-H", &big]).status,
        431
    );

    // An idle HTTP/2 connection (prior knowledge, no request) gets a GOAWAY at the idle
    // timeout, and is closed at the end of the drain time (5 s) as this client never
    // answers the server's PING.
    let mut h2 = connect(&web);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap_or_else(|e| panic!("{e}"));
    let (goaway, closed) = goaway_and_close(h2);
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY before the close ({closed:?})"));
    assert!(
        goaway >= Duration::from_millis(500) && goaway < Duration::from_secs(2),
        "GOAWAY after {goaway:?}"
    );
    assert!(
        closed > Duration::from_secs(5) && closed < Duration::from_secs(8),
        "closed after {closed:?}"
    );

    // Over --http-max-requests in flight: 503 with x-envoy-overloaded, counted.
    let got = web.curl(
        "http",
        host,
        "/delay/1000?n=[1-51]",
        &["--parallel", "--parallel-max", "51", "--parallel-immediate"],
    );
    let text = format!("{:?}\n{}", got.headers, got.body);
    assert_eq!(text.matches("x-envoy-overloaded").count(), 1, "{text}");
    assert_eq!(
        web.sluice
            .metric("sluice_http_overloaded_total{reason=\"requests\"}"),
        Some(1.0)
    );
    drop(web);

    // Over --http-max-connections: closed as accepted, counted; served again once the
    // first connection is gone.
    let web = Web::start_with(
        mode,
        &[
            "--http-max-connections",
            "1",
            "--http-header-timeout",
            "500ms",
        ],
    );
    let held = connect(&web);
    let refused = closed_after(connect(&web));
    assert!(refused < Duration::from_secs(1), "{refused:?}");
    assert_eq!(
        web.sluice
            .metric("sluice_http_overloaded_total{reason=\"connections\"}"),
        Some(1.0)
    );
    assert_eq!(
        web.sluice.metric(&format!(
            "sluice_http_active_connections{{listener=\"0.0.0.0:{HTTP}\"}}"
        )),
        Some(1.0)
    );
    drop(held);
    // The gateway's own count says when the one connection allowed is free again.
    let wait_until_free = || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while web.sluice.metric(&format!(
            "sluice_http_active_connections{{listener=\"0.0.0.0:{HTTP}\"}}"
        )) != Some(0.0)
        {
            assert!(
                Instant::now() < deadline,
                "the last connection is still counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until_free();
    assert_eq!(web.curl("http", host, "/productpage", &[]).status, 200);

    // The header timeout starts with a head's first byte: an HTTP/1.1 connection kept alive
    // between requests for longer than it is still served (Envoy closes it at the idle
    // timeout, an hour by default), while a head that stops half-way is still cut.
    let mut kept = connect(&web);
    let _ = kept.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /productpage HTTP/1.1\r\nhost: {host}\r\n\r\n");
    for round in 0..2 {
        kept.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("GET /productpage") {
            let n = kept
                .read(&mut buffer)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(
                n > 0,
                "round {round}: closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..n]);
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        // Idle for three header timeouts: the tested duration, not a wait for a signal.
        std::thread::sleep(Duration::from_millis(1500));
    }
    drop(kept);
    wait_until_free();
    let mut half = connect(&web);
    half.write_all(b"GET /productpage HTTP/1.1\r\nhost: ")
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = closed_after(half);
    assert!(
        cut >= Duration::from_millis(450) && cut < Duration::from_secs(2),
        "a half head was cut after {cut:?}"
    );
}

tests::in_both_datapaths!(limits: userspace_http_limits, kernel_mode_http_limits);
