//! The HTTP gateway end to end, with the userspace datapath and with the kernel datapath
//! attached (HTTP listeners are passed to the stack by the kernel programs): curl as the
//! client (HTTP/1.1, h2c, HTTP/2 over TLS), test backends that report what they received.
//! VirtualService routing by path, header, host and method; weights; redirects, direct
//! responses, rewrites and header operations as the upstream and the client see them; 404
//! without a route; 503 when the endpoint refuses; 504 at the route's timeout; TLS
//! termination with certificate files and a `credentialName`, chosen by SNI; httpsRedirect.
use std::net::{Ipv4Addr, SocketAddr};

use tests::{
    bpffs::TempBpffs,
    http::{self, HttpBackend},
    root,
    sluice::Sluice,
    tls::TestCa,
    topology::{self, Topology},
};

const HTTP: u16 = 8080;
const HTTPS: u16 = 8443;

fn config(cert: &str, key: &str) -> String {
    let se = |name: &str, address: Ipv4Addr, port: u16| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  hosts: [{name}.web.test]\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: '{address}'}}]\n"
        )
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
    text
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Userspace,
    Kernel,
}

struct Web {
    topology: Topology,
    ca: TestCa,
    _backends: Vec<HttpBackend>,
    _bpffs: TempBpffs,
    _dir: tempfile::TempDir,
    sluice: Sluice,
}

impl Web {
    fn start(mode: Mode) -> Web {
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
        let datapath: &[&str] = match mode {
            Mode::Userspace => &["--datapath", "userspace"],
            Mode::Kernel => topology::SLUICE_TC_ARGS,
        };
        args.extend(datapath.iter().map(|s| s.to_string()));
        let sluice = Sluice::start(&topology.gateway, &args);
        Web {
            topology,
            ca,
            _backends: backends,
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

fn routes(test: &str, mode: Mode) {
    if !root::can_run(test) {
        return;
    }
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
    let log = web.sluice.log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO access") && l.contains("status=418")),
        "{log}"
    );

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
}

#[test]
fn userspace_http_routes() {
    routes("userspace_http_routes", Mode::Userspace);
}

#[test]
fn kernel_mode_http_routes() {
    routes("kernel_mode_http_routes", Mode::Kernel);
}
