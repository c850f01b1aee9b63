//! Istio's own HTTP ingress examples, as `config/examples` holds them, served end to end
//! with the userspace datapath and with the kernel datapath attached: the Bookinfo gateway,
//! the Ingress Gateways task (httpbin by host and prefix, and its any-host variant),
//! helloworld, and the Secure Gateways task (two hosts with their own `credentialName`, file
//! mounts, mutual TLS, and the task's credential rotation). Clients are curl and a rustls
//! client; upstreams report what they received. Status codes are the ones the docs show.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    example::{Example, Mode},
    http::{self, Got, HttpBackend},
    tls::{TestCa, TlsClient},
    topology,
};

const PRODUCTPAGE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const HTTPBIN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const HELLOWORLD_V1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 22);
const HELLOWORLD_V2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 23);
const RATINGS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 24);

fn backend(ex: &Example, address: Ipv4Addr, port: u16, id: &str) -> HttpBackend {
    HttpBackend::start(
        &ex.topology.backend,
        SocketAddr::new(address.into(), port),
        id,
    )
}

/// `curl -i <args> <url>` from the client host; panics with sluice's log when no response
/// came.
fn curl(ex: &Example, url: &str, args: &[&str]) -> Got {
    try_curl(ex, url, args).unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()))
}

fn try_curl(ex: &Example, url: &str, args: &[&str]) -> Result<Got, String> {
    let mut all = args.to_vec();
    all.push(url);
    http::curl(&ex.topology.client, &all)
}

/// `https://<host><path>` on port 443, `host` resolved to the gateway, verified with `ca`.
fn curl_https(
    ex: &Example,
    ca: &TestCa,
    host: &str,
    path: &str,
    args: &[&str],
) -> Result<Got, String> {
    let resolve = format!("{host}:443:{}", topology::GATEWAY_CLIENT_V4);
    let ca = ca.pem_path();
    let mut all = vec![
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().unwrap_or_default(),
    ];
    all.extend(args);
    try_curl(ex, &format!("https://{host}{path}"), &all)
}

/// Waits for `series` to reach `want` on the admin endpoint (the daemon's own signal that
/// it acted), for at most 10 s.
fn wait_metric(ex: &Example, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ex.sluice().metric(series) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{series} did not reach {want}: {:?}\n{}",
            ex.sluice().metric(series),
            ex.sluice().log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bookinfo(mode: Mode) {
    let mut ex = Example::network(&[PRODUCTPAGE], &[]);
    let productpage = backend(&ex, PRODUCTPAGE, 9080, "productpage");
    ex.serve("ingress-bookinfo.yaml", mode);
    // The docs: curl -s "http://${GATEWAY_URL}/productpage" with GATEWAY_URL the gateway's
    // address: hosts "*" takes any Host.
    let gateway = format!("http://{}:8080", topology::GATEWAY_CLIENT_V4);
    for path in [
        "/productpage",
        "/static/bootstrap/css/bootstrap.min.css",
        "/login",
        "/logout",
        "/api/v1/products/0/reviews",
    ] {
        let got = curl(&ex, &format!("{gateway}{path}"), &[]);
        assert_eq!(got.status, 200, "{path}");
        assert!(
            got.body.starts_with(&format!("productpage\nGET {path}\n")),
            "{path}: {}",
            got.body
        );
    }
    for path in ["/", "/reviews/0", "/productpage/x", "/loginx"] {
        assert_eq!(
            curl(&ex, &format!("{gateway}{path}"), &[]).status,
            404,
            "{path}"
        );
    }
    assert_eq!(productpage.requests(), 5);
}

tests::in_both_datapaths!(bookinfo: userspace_bookinfo_gateway_example, kernel_mode_bookinfo_gateway_example);

/// Istio's Fault Injection task on the gateway: `jason` gets the docs' HTTP 500 without
/// reaching ratings, `bill` is delayed 2 s and then served, `half` gets a 503 for about half
/// of 200 requests, everyone else is served at once.
fn fault_injection(mode: Mode) {
    let mut ex = Example::network(&[RATINGS], &[]);
    let ratings = backend(&ex, RATINGS, 9080, "ratings");
    ex.serve("ingress-fault-injection.yaml", mode);
    let url = format!("http://{}:8080/ratings/0", topology::GATEWAY_CLIENT_V4);

    let aborted = curl(&ex, &url, &["-H", "end-user: jason"]);
    assert_eq!(aborted.status, 500);
    assert_eq!(aborted.body, "fault filter abort");
    assert_eq!(ratings.requests(), 0, "an aborted request reached ratings");

    let started = Instant::now();
    let delayed = curl(&ex, &url, &["-H", "end-user: bill"]);
    let waited = started.elapsed();
    assert_eq!(delayed.status, 200);
    assert!(
        delayed.body.starts_with("ratings\nGET /ratings/0\n"),
        "{}",
        delayed.body
    );
    assert!(
        waited >= Duration::from_secs(2),
        "bill waited only {waited:?}"
    );

    let started = Instant::now();
    assert_eq!(curl(&ex, &url, &["-H", "end-user: alice"]).status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "alice was delayed"
    );
    assert_eq!(ratings.requests(), 2);

    // Half of 1000 aborted, half delayed, each within 5 points (the binomial's standard
    // deviation is 1.6 points), over one kept-alive connection.
    let gateway = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 8080);
    let statuses = http::statuses_kept_alive(
        &ex.topology.client,
        gateway,
        "/ratings/0",
        &[("end-user", "half")],
        1000,
    );
    let unavailable = statuses.iter().filter(|s| **s == 503).count();
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(unavailable + served, 1000, "{statuses:?}");
    assert!(
        (450..=550).contains(&unavailable),
        "{unavailable} of 1000 aborted"
    );
    assert_eq!(ratings.requests(), 2 + served);
    let route = "listener=\"0.0.0.0:8080\",route=\"default/ratings:spec.http[2]\"";
    let injected = |kind: &str| {
        ex.sluice()
            .metric(&format!(
                "sluice_http_faults_injected_total{{{route},kind=\"{kind}\"}}"
            ))
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} count\n{}",
                    ex.sluice().admin_get("/stats/prometheus").1
                )
            })
    };
    assert_eq!(injected("abort"), unavailable as f64);
    let delayed = injected("delay");
    assert!(
        (450.0..=550.0).contains(&delayed),
        "{delayed} of 1000 delayed"
    );
}

tests::in_both_datapaths!(fault_injection: userspace_fault_injection_example, kernel_mode_fault_injection_example);

fn httpbin(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    ex.serve("ingress-httpbin.yaml", mode);
    let gateway = format!("http://{}:80", topology::GATEWAY_CLIENT_V4);
    let host = ["-H", "Host: httpbin.example.com"];
    // The task: curl -s -I -HHost:httpbin.example.com "http://$INGRESS_HOST:$INGRESS_PORT/status/200"
    let got = curl(
        &ex,
        &format!("{gateway}/status/200"),
        &[&["-I"][..], &host].concat(),
    );
    assert_eq!((got.version.as_str(), got.status), ("HTTP/1.1", 200));
    // ... and /headers, not exposed, is a 404.
    let got = curl(
        &ex,
        &format!("{gateway}/headers"),
        &[&["-I"][..], &host].concat(),
    );
    assert_eq!((got.version.as_str(), got.status), ("HTTP/1.1", 404));
    // The other prefix, another status, and another host.
    let got = curl(&ex, &format!("{gateway}/delay/1"), &host);
    assert_eq!(got.status, 200);
    assert!(
        got.body.starts_with("httpbin\nGET /delay/1\n"),
        "{}",
        got.body
    );
    assert_eq!(
        curl(&ex, &format!("{gateway}/status/418"), &host).status,
        418
    );
    let other = ["-H", "Host: other.example.com"];
    assert_eq!(
        curl(&ex, &format!("{gateway}/status/200"), &other).status,
        404
    );
}

tests::in_both_datapaths!(httpbin: userspace_httpbin_ingress_example, kernel_mode_httpbin_ingress_example);

fn httpbin_any_host(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    ex.serve("ingress-httpbin-any-host.yaml", mode);
    // The task: http://$INGRESS_HOST:$INGRESS_PORT/headers in a browser, whatever its Host.
    let gateway = format!("http://{}", topology::GATEWAY_CLIENT_V4);
    for host in [
        None,
        Some("Host: anything.test"),
        Some("Host: httpbin.example.com"),
    ] {
        let args: Vec<&str> = host.iter().flat_map(|h| ["-H", *h]).collect();
        let got = curl(&ex, &format!("{gateway}/headers"), &args);
        assert_eq!(got.status, 200, "{host:?}");
        assert!(
            got.body.starts_with("httpbin\nGET /headers\n"),
            "{}",
            got.body
        );
        assert_eq!(
            curl(&ex, &format!("{gateway}/status/200"), &args).status,
            404
        );
    }
}

tests::in_both_datapaths!(httpbin_any_host: userspace_httpbin_any_host_example, kernel_mode_httpbin_any_host_example);

fn helloworld(mode: Mode) {
    let mut ex = Example::network(&[HELLOWORLD_V1, HELLOWORLD_V2], &[]);
    let v1 = backend(&ex, HELLOWORLD_V1, 5000, "helloworld-v1");
    let v2 = backend(&ex, HELLOWORLD_V2, 5000, "helloworld-v2");
    ex.serve("ingress-helloworld.yaml", mode);
    // The README: curl http://$GATEWAY_URL/hello, answered by both versions in turn.
    let url = format!("http://{}/hello", topology::GATEWAY_CLIENT_V4);
    for _ in 0..40 {
        let got = curl(&ex, &url, &[]);
        assert_eq!(got.status, 200);
        assert!(got.body.starts_with("helloworld-v"), "{}", got.body);
    }
    assert_eq!(v1.requests() + v2.requests(), 40);
    assert!(
        v1.requests() > 0 && v2.requests() > 0,
        "{} {}",
        v1.requests(),
        v2.requests()
    );
    // The match is exact.
    assert_eq!(curl(&ex, &format!("{url}/there"), &[]).status, 404);
}

tests::in_both_datapaths!(helloworld: userspace_helloworld_gateway_example, kernel_mode_helloworld_gateway_example);

/// A rustls connection from the client host to the gateway's 443 for `sni`.
fn connect_tls(ex: &Example, ca: &TestCa, sni: &str) -> std::io::Result<TlsClient> {
    let (config, sni) = (ca.client_config(), sni.to_owned());
    let target = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 443);
    ex.topology
        .client
        .run(move || TlsClient::connect(target, &sni, config))
}

fn secure_ingress(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN, HELLOWORLD_V1], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    let _helloworld = backend(&ex, HELLOWORLD_V1, 5000, "helloworld-v1");
    let credentials = ex.dir("credentials");
    // Only httpbin's Secret exists at first.
    ex.ca
        .issue(&["httpbin.example.com"])
        .mount(&credentials.join("httpbin-credential"), &[]);
    let dir = credentials.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_with(
        "secure-ingress.yaml",
        mode,
        &["--credentials-dir", &dir],
        |text| text,
    );
    // helloworld's certificate is missing: that server is not served, and says why.
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains("helloworld.example.com") && ready.contains("helloworld-credential/tls.crt"),
        "{ready}"
    );

    // The task: curl -v -HHost:httpbin.example.com --resolve ... --cacert example.com.crt
    // "https://httpbin.example.com:$SECURE_INGRESS_PORT/status/418" -> HTTP/2 418.
    let got = curl_https(&ex, &ex.ca, "httpbin.example.com", "/status/418", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!((got.version.as_str(), got.status), ("HTTP/2", 418));
    let (_, subject) = ex.curl_tls("httpbin.example.com", 443, "/status/200");
    assert_eq!(subject, "CN=httpbin.example.com");
    assert!(curl_https(&ex, &ex.ca, "helloworld.example.com", "/hello", &[]).is_err());

    // The Secret appears: served without a restart.
    ex.ca
        .issue(&["helloworld.example.com"])
        .mount(&credentials.join("helloworld-credential"), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ex.sluice().admin_get("/ready").0 != 200 {
        assert!(Instant::now() < deadline, "{}", ex.sluice().log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = curl_https(&ex, &ex.ca, "helloworld.example.com", "/hello", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!((got.version.as_str(), got.status), ("HTTP/2", 200));
    assert!(
        got.body.starts_with("helloworld-v1\nGET /hello\n"),
        "{}",
        got.body
    );
    let (_, subject) = ex.curl_tls("helloworld.example.com", 443, "/hello");
    assert_eq!(subject, "CN=helloworld.example.com");
    // httpbin still gets its teapot.
    let got = curl_https(&ex, &ex.ca, "httpbin.example.com", "/status/418", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.status, 418);

    // A name no server has is refused, as Envoy finds no filter chain for it (helloworld's
    // name was, while its certificate was missing).
    assert!(curl_https(&ex, &ex.ca, "other.example.com", "/", &[]).is_err());
    assert_eq!(
        ex.sluice()
            .metric("sluice_http_tls_refused_total{listener=\"0.0.0.0:443\",reason=\"no_server\"}"),
        Some(2.0)
    );

    // The task's rotation: httpbin-credential replaced by one from another CA. A connection
    // open before carries on; the next handshake shows the new certificate.
    let mut open =
        connect_tls(&ex, &ex.ca, "httpbin.example.com").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        open.request("httpbin.example.com", "/status/200")
            .unwrap_or_else(|e| panic!("{e}"))
            .0,
        200
    );
    let ca2 = TestCa::new();
    ca2.issue(&["httpbin.example.com"])
        .mount(&credentials.join("httpbin-credential"), &[]);
    wait_metric(
        &ex,
        "sluice_tls_certificate_reloads_total{result=\"ok\"}",
        1.0,
    );
    let got = curl_https(&ex, &ca2, "httpbin.example.com", "/status/418", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!(got.status, 418);
    let old = curl_https(&ex, &ex.ca, "httpbin.example.com", "/status/418", &[]);
    // Both CAs have one name, so OpenSSL fails checking the signature, as in the task
    // ("curl: (35) ... block type is not 01").
    assert!(
        old.as_ref().is_err_and(|e| e.contains("curl: (35)")),
        "the old CA still verifies: {old:?}"
    );
    let (status, body) = open
        .request("httpbin.example.com", "/status/200")
        .unwrap_or_else(|e| panic!("the open connection: {e}"));
    assert_eq!(status, 200, "{body}");
}

tests::in_both_datapaths!(secure_ingress: userspace_secure_ingress_example, kernel_mode_secure_ingress_example);

fn secure_ingress_file_mount(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    let certs = ex.dir("ingressgateway-certs");
    ex.ca.issue(&["httpbin.example.com"]).write(&certs);
    let certs = certs.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_with("secure-ingress-file-mount.yaml", mode, &[], |text| {
        text.replace("/etc/istio/ingressgateway-certs", &certs)
    });
    assert_eq!(status, 200, "{ready}");
    let got = curl_https(&ex, &ex.ca, "httpbin.example.com", "/status/418", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!((got.version.as_str(), got.status), ("HTTP/2", 418));
    let (_, subject) = ex.curl_tls("httpbin.example.com", 443, "/status/200");
    assert_eq!(subject, "CN=httpbin.example.com");
    // The file replaced in place (not through a symlink) is seen too.
    let ca2 = TestCa::new();
    ca2.issue(&["httpbin.example.com"]).write(Path::new(&certs));
    wait_metric(
        &ex,
        "sluice_tls_certificate_reloads_total{result=\"ok\"}",
        1.0,
    );
    let got = curl_https(&ex, &ca2, "httpbin.example.com", "/status/418", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!(got.status, 418);
}

tests::in_both_datapaths!(secure_ingress_file_mount: userspace_secure_ingress_file_mount_example, kernel_mode_secure_ingress_file_mount_example);

fn secure_ingress_mutual(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    let credentials = ex.dir("credentials");
    ex.ca.issue(&["httpbin.example.com"]).mount(
        &credentials.join("httpbin-credential"),
        &[("ca.crt", ex.ca.pem())],
    );
    let client = ex.ca.issue(&["client.example.com"]);
    let (cert, key) = client.write(&ex.dir("client"));
    let dir = credentials.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_with(
        "secure-ingress-mutual.yaml",
        mode,
        &["--credentials-dir", &dir],
        |text| text,
    );
    assert_eq!(status, 200, "{ready}");
    // The task: without a client certificate the handshake fails ...
    let refused = curl_https(&ex, &ex.ca, "httpbin.example.com", "/status/418", &[]);
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    // ... with --cert client.example.com.crt --key client.example.com.key, the teapot.
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let got = curl_https(
        &ex,
        &ex.ca,
        "httpbin.example.com",
        "/status/418",
        &["--cert", &cert, "--key", &key],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!(got.status, 418);
    // A certificate from another CA is refused.
    let stranger = TestCa::new().issue(&["client.example.com"]);
    let (cert, key) = stranger.write(&ex.dir("stranger"));
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let refused = curl_https(
        &ex,
        &ex.ca,
        "httpbin.example.com",
        "/status/418",
        &["--cert", &cert, "--key", &key],
    );
    assert!(refused.is_err(), "served a stranger: {refused:?}");
}

tests::in_both_datapaths!(secure_ingress_mutual: userspace_secure_ingress_mutual_example, kernel_mode_secure_ingress_mutual_example);

/// The mutual TLS task's gateway with the rest of Istio's client-certificate fields, one
/// server per host on port 443 (certificates chosen by SNI): MUTUAL with a revocation list,
/// OPTIONAL_MUTUAL, MUTUAL pinned to subject alternative names, and MUTUAL pinned to an
/// SPKI and a certificate digest, and ISTIO_MUTUAL with a mesh identity mounted as files
/// (the test CA standing in for the mesh's). Upstreams see the client as `x-forwarded-client-cert`
/// (never the client's own), and a route matches on it.
fn client_certificates(mode: Mode) {
    use base64::Engine as _;
    let sha256 = |bytes: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let _httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    let certs = ex.dir("certs");
    let (cert, key) = ex
        .ca
        .issue(&[
            "mutual.example.com",
            "optional.example.com",
            "names.example.com",
            "digests.example.com",
        ])
        .write(&certs.join("server"));
    let mesh = certs.join("mesh");
    let (chain, mesh_key) = ex.ca.issue(&["mesh.example.com"]).write(&mesh);
    std::fs::rename(chain, mesh.join("cert-chain.pem")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(mesh_key, mesh.join("key.pem")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(mesh.join("root-cert.pem"), ex.ca.pem()).unwrap_or_else(|e| panic!("{e}"));
    let ca = certs.join("ca.crt");
    std::fs::write(&ca, ex.ca.pem()).unwrap_or_else(|e| panic!("{e}"));
    let alice = ex.ca.issue(&["alice.example.com"]);
    let bob = ex.ca.issue(&["bob.example.com"]);
    let mallory = ex.ca.issue(&["mallory.example.com"]);
    let crl = certs.join("ca.crl");
    std::fs::write(&crl, ex.ca.crl(&[&mallory])).unwrap_or_else(|e| panic!("{e}"));
    let alice_hash = hex(sha256(alice.leaf()).as_ref()).to_uppercase();
    let bob_spki = base64::engine::general_purpose::STANDARD.encode(sha256(&bob.spki));
    let files = format!(
        "serverCertificate: {}, privateKey: {}, caCertificates: {}",
        cert.display(),
        key.display(),
        ca.display()
    );
    let server = |name: &str, tls: &str| {
        format!(
            "  - port: {{number: 443, name: https-{name}, protocol: HTTPS}}\n    hosts: [{name}.example.com]\n    tls: {{{files}, {tls}}}\n"
        )
    };
    let service_entry = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: '{HTTPBIN}', ports: {{http: 8080}}}}]
"
    );
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mygateway}}
spec:
  servers:
{}{}{}{}  - port: {{number: 443, name: https-mesh, protocol: HTTPS}}
    hosts: [mesh.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [mutual.example.com, optional.example.com, names.example.com, digests.example.com, mesh.example.com]
  gateways: [mygateway]
  http:
  - match: [{{headers: {{x-forwarded-client-cert: {{regex: '.*;DNS=alice\\.example\\.com(;.*)?'}}}}}}]
    headers: {{request: {{set: {{x-client: alice}}}}}}
    route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
  - route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]
---
{}",
        server("mutual", &format!("mode: MUTUAL, caCrl: {}", crl.display())),
        server("optional", "mode: OPTIONAL_MUTUAL"),
        server("names", "mode: MUTUAL, subjectAltNames: [alice.example.com]"),
        server(
            "digests",
            &format!(
                "mode: MUTUAL, verifyCertificateHash: ['{alice_hash}'], verifyCertificateSpki: ['{bob_spki}']"
            )
        ),
        service_entry
    );
    let mesh = mesh.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_text(
        "client-certificates.yaml",
        &config,
        mode,
        &["--mesh-identity-dir", &mesh],
    );
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());

    let written = |identity: &tests::tls::Identity, name: &str| {
        let (cert, key) = identity.write(&ex.dir(name));
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    };
    let stranger = TestCa::new().issue(&["alice.example.com"]);
    let clients = [
        ("none", None),
        ("alice", Some(written(&alice, "alice"))),
        ("bob", Some(written(&bob, "bob"))),
        ("mallory", Some(written(&mallory, "mallory"))),
        ("stranger", Some(written(&stranger, "stranger"))),
    ];
    let get = |host: &str, client: &str| {
        let (_, files) = clients
            .iter()
            .find(|(name, _)| *name == client)
            .unwrap_or_else(|| panic!("no client {client}"));
        let mut args = vec!["-H", "x-forwarded-client-cert: By=spoofed;Hash=00"];
        if let Some((cert, key)) = files {
            args.extend(["--cert", cert, "--key", key]);
        }
        curl_https(
            &ex,
            &ex.ca,
            &format!("{host}.example.com"),
            "/status/200",
            &args,
        )
    };
    // Who gets in where: MUTUAL needs a certificate of the CA that is not revoked;
    // OPTIONAL_MUTUAL admits no certificate but not a bad one; pins narrow MUTUAL further.
    let admitted = [
        ("mutual", [false, true, true, false, false]),
        ("optional", [true, true, true, true, false]),
        ("names", [false, true, false, false, false]),
        ("digests", [false, true, true, false, false]),
        ("mesh", [false, true, true, true, false]),
    ];
    for (host, want) in admitted {
        for ((client, _), want) in clients.iter().zip(want) {
            let got = get(host, client);
            assert_eq!(
                got.as_ref().map(|g| g.status).ok(),
                want.then_some(200),
                "{client} at {host}: {got:?}"
            );
        }
    }
    // The upstream sees who the client is, as Envoy writes it, and never the client's own.
    let got = get("mutual", "alice").unwrap_or_else(|e| panic!("{e}"));
    let line = got
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
        .unwrap_or_else(|| panic!("no x-forwarded-client-cert upstream:\n{}", got.body));
    let hash = hex(sha256(alice.leaf()).as_ref());
    assert!(
        line.starts_with(&format!(
            "Hash={hash};Cert=\"-----BEGIN%20CERTIFICATE-----%0A"
        )),
        "{line}"
    );
    assert!(
        line.ends_with("-----END%20CERTIFICATE-----%0A\";Subject=\"CN=alice.example.com\";URI=;DNS=alice.example.com"),
        "{line}"
    );
    assert_eq!(
        got.body.matches("x-forwarded-client-cert").count(),
        1,
        "{}",
        got.body
    );
    assert!(
        got.body.contains("\nx-client: alice\n"),
        "routed by identity:\n{}",
        got.body
    );
    let got = get("mutual", "bob").unwrap_or_else(|e| panic!("{e}"));
    assert!(!got.body.contains("x-client"), "{}", got.body);
    let got = get("optional", "none").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !got.body.contains("x-forwarded-client-cert"),
        "a client without a certificate passed its own header on:\n{}",
        got.body
    );
    // Each refusal above is counted with its reason: no certificate at the four mutual
    // servers, mallory's revocation at the one with the list, the stranger everywhere,
    // bob and mallory outside the names, mallory outside the digests.
    for (reason, count) in [
        ("client_certificate_missing", 4.0),
        ("client_certificate_revoked", 1.0),
        ("client_certificate_invalid", 5.0),
        ("client_certificate_not_pinned", 3.0),
    ] {
        let series = format!(
            "sluice_http_tls_refused_total{{listener=\"0.0.0.0:443\",reason=\"{reason}\"}}"
        );
        let got = ex.sluice().metric(&series).unwrap_or_default();
        assert_eq!(got, count, "{series}\n{}", ex.sluice().log());
    }
}

tests::in_both_datapaths!(client_certificates: userspace_client_certificates, kernel_mode_client_certificates);

/// Istio's Circuit Breaking task: one connection, one pending request, one request per
/// connection. Three requests at once to a slow path: one is served, one waits for the
/// connection and is served, the third overflows (503, `x-envoy-overloaded`, counted). Then
/// the task's load: clients in parallel, some 503s, each counted as an overflow and none
/// reaching httpbin.
fn circuit_breaking(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN], &[]);
    let httpbin = backend(&ex, HTTPBIN, 8080, "httpbin");
    // One worker: as in Envoy, each worker's pool may open a connection past the limit
    // when it has none, so the task's numbers hold for one.
    let (status, ready) = ex.serve_with("circuit-breaking.yaml", mode, &["--workers", "1"], |t| t);
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    let url = |path: &str| format!("http://{}:80{path}", topology::GATEWAY_CLIENT_V4);
    let host = ["-H", "Host: httpbin.example.com"];
    let overflows = "sluice_http_upstream_failures_total{upstream=\"outbound|8000||httpbin.default.svc.cluster.local\",reason=\"overflow\"}";
    let at_once = |clients: usize, each: usize, path: &str| -> Vec<(u16, bool)> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..clients)
                .map(|_| {
                    scope.spawn(|| {
                        (0..each)
                            .map(|_| {
                                let got = curl(&ex, &url(path), &host);
                                (got.status, got.header("x-envoy-overloaded") == Some("true"))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            runs.into_iter()
                .flat_map(|r| r.join().unwrap_or_else(|_| panic!("a client failed")))
                .collect()
        })
    };
    let mut got = at_once(3, 1, "/delay/600");
    got.sort_unstable();
    assert_eq!(
        got,
        [(200, false), (200, false), (503, true)],
        "{}",
        ex.sluice().log()
    );
    assert_eq!(ex.sluice().metric(overflows), Some(1.0));

    // fortio load -c 3 -n 30, on a path that takes a moment.
    let got = at_once(3, 10, "/delay/30");
    let refused = got.iter().filter(|(status, _)| *status == 503).count();
    assert!(
        got.iter()
            .all(|(status, overloaded)| (*status == 200 && !overloaded)
                || (*status == 503 && *overloaded)),
        "{got:?}"
    );
    assert!(refused > 0 && refused < 30, "{refused} of 30 refused");
    assert_eq!(ex.sluice().metric(overflows), Some(1.0 + refused as f64));
    // httpbin saw exactly the requests that were not refused.
    assert_eq!(httpbin.requests(), 2 + 30 - refused);
}

tests::in_both_datapaths!(circuit_breaking: userspace_circuit_breaking_example, kernel_mode_circuit_breaking_example);

const HTTPBIN_V2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 25);
const NOWHERE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 26);

/// Istio's Mirroring task: every request answered by v1 and copied to v2 with the `-shadow`
/// host; then, on the same route, a second mirror at an address where nothing listens and
/// a POST body: the client still gets v1's answers, v2 the copies with the body, and the
/// dead mirror's failures are only counted. Then `mirrors` at 50 % over 200 requests.
fn mirroring(mode: Mode) {
    let mut ex = Example::network(&[HTTPBIN, HTTPBIN_V2, NOWHERE], &[]);
    let v1 = backend(&ex, HTTPBIN, 8080, "v1");
    let v2 = backend(&ex, HTTPBIN_V2, 8080, "v2");
    ex.serve("mirroring.yaml", mode);
    let url = format!("http://{}:80/status/200", topology::GATEWAY_CLIENT_V4);
    let host = ["-H", "Host: httpbin.example.com"];
    // Until `backend` has answered `n` requests; what it saw.
    let wait_for = |backend: &HttpBackend, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = backend.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} has {} of {n} requests\n{}",
                backend.id,
                seen.len(),
                ex.sluice().log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for _ in 0..10 {
        let got = curl(&ex, &url, &host);
        assert_eq!(got.status, 200);
        assert!(got.body.starts_with("v1\n"), "{}", got.body);
    }
    let seen = wait_for(&v2, 10);
    assert_eq!(v1.requests(), 10);
    assert!(
        seen.iter().all(|(a, _)| a == "httpbin.example.com-shadow"),
        "{seen:?}"
    );

    // Two mirrors, one of them dead, and a body: the client sees nothing of either.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/mirroring.yaml");
    let text = std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{e}"));
    let text = text
        .replace(
            "    mirror:\n      host: httpbin\n      subset: v2\n    mirrorPercentage:\n      value: 100.0\n",
            "    mirrors:\n    - destination: {host: httpbin, subset: v2}\n    - destination: {host: httpbin, subset: v3}\n",
        )
        .replace(
            "  http:\n",
            "  http:\n  - match: [{uri: {prefix: /half}}]\n    route: [{destination: {host: httpbin, subset: v1}}]\n    mirrors: [{destination: {host: httpbin, subset: v2}, percentage: {value: 50}}]\n",
        )
        .replace(
            "  - name: v2\n    labels:\n      version: v2\n",
            "  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n",
        )
        .replace(
            "      http: 8080\n    labels:\n      version: v2\n",
            &format!("      http: 8080\n    labels:\n      version: v2\n  - address: {NOWHERE}\n    ports:\n      http: 8080\n    labels:\n      version: v3\n"),
        );
    tests::sluice::replace_config(&ex.dir("config").join("mirroring.yaml"), &text);
    wait_metric(&ex, "sluice_config_generation", 2.0);
    let dump = ex.sluice().config_dump().to_string();
    assert!(
        dump.contains("\"v3\""),
        "the edited config did not apply:\n{text}\n{dump}"
    );
    let before = v2.requests();
    let got = curl(&ex, &url, &[&host[..], &["-d", "mirrored body"]].concat());
    assert_eq!(got.status, 200);
    assert!(
        got.body.starts_with("v1\nPOST /status/200\n"),
        "{}",
        got.body
    );
    let seen = wait_for(&v2, before + 1);
    assert_eq!(
        seen[before],
        ("httpbin.example.com-shadow".to_owned(), 13),
        "the copy has the body"
    );
    let dead = "sluice_http_upstream_failures_total{upstream=\"outbound|8000|v3|httpbin.default.svc.cluster.local\",reason=\"connect_failure\"}";
    wait_metric(&ex, dead, 1.0);

    // 50 % of 200 requests, drawn at random: within five standard deviations.
    let before = v2.requests();
    let half = format!("http://{}:80/half", topology::GATEWAY_CLIENT_V4);
    for _ in 0..200 {
        assert_eq!(curl(&ex, &half, &host).status, 200);
    }
    // The last copy may still be on its way; the range allows for it.
    let copied = v2.requests() - before;
    assert!(
        (65..=135).contains(&copied),
        "{copied} of 200 mirrored at 50 %"
    );
}

tests::in_both_datapaths!(mirroring: userspace_mirroring_example, kernel_mode_mirroring_example);

/// The mesh identity a sidecar and the gateway hold (ISTIO_MUTUAL), issued by `ca` (the
/// mesh's), written as istio-agent writes it; returns the directory and a sidecar's
/// certificate and key files. The gateway's certificate also names `host`: a sidecar checks
/// the gateway's workload identity, curl (standing in for it) the name it asked for.
fn mesh_identity(ex: &Example, ca: &TestCa, host: &str) -> (String, String, String) {
    let mesh = ex.dir("mesh");
    let (chain, key) = ca
        .issue(&["istio-egressgateway.istio-system.svc.cluster.local", host])
        .write(&mesh);
    std::fs::rename(chain, mesh.join("cert-chain.pem")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(key, mesh.join("key.pem")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(mesh.join("root-cert.pem"), ca.pem()).unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = ca
        .issue(&["sleep.default.svc.cluster.local"])
        .write(&ex.dir("sidecar"));
    (
        mesh.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// What the sidecar sends the egress gateway: the application's request inside Istio
/// mutual TLS, with its workload certificate, to `host` on `port`.
fn through_sidecar(
    ex: &Example,
    mesh_ca: &TestCa,
    (cert, key): (&str, &str),
    host: &str,
    port: u16,
    path: &str,
) -> Result<Got, String> {
    let resolve = format!("{host}:{port}:{}", topology::GATEWAY_CLIENT_V4);
    let ca = mesh_ca.pem_path();
    let ca = ca.to_string_lossy();
    try_curl(
        ex,
        &format!("https://{host}:{port}{path}"),
        &[
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            "--cert",
            cert,
            "--key",
            key,
        ],
    )
}

/// Istio's Egress Gateways with TLS Origination task: the sidecar's request reaches the
/// gateway in Istio mutual TLS on port 80, and the gateway originates TLS to
/// edition.cnn.com:443 (SNI edition.cnn.com, its certificate verified): 200 and cnn's
/// answer. With `subjectAltNames` the site's certificate does not carry, a 503.
fn egress_tls_origination(mode: Mode) {
    let cnn = Ipv4Addr::new(203, 0, 113, 11);
    let mut ex = Example::network(&[cnn], &[("edition.cnn.com", cnn)]);
    let site = tests::tls::TlsBackend::start(
        &ex.topology.backend,
        SocketAddr::new(cnn.into(), 443),
        ex.ca.issue(&["edition.cnn.com"]),
        "cnn",
    );
    let (mesh, cert, key) = mesh_identity(&ex, &ex.ca, "edition.cnn.com");
    let public_cas = ex.ca.pem_path().to_string_lossy().into_owned();
    let (status, ready) = ex.serve_with(
        "egress-tls-origination.yaml",
        mode,
        &[
            "--mesh-identity-dir",
            &mesh,
            "--upstream-ca-file",
            &public_cas,
        ],
        |text| text,
    );
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    let politics = |ex: &Example| {
        through_sidecar(
            ex,
            &ex.ca,
            (&cert, &key),
            "edition.cnn.com",
            80,
            "/politics",
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()))
    };
    let got = politics(&ex);
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "cnn"),
        "{}",
        ex.sluice().log()
    );
    assert_eq!(site.server_names(), ["edition.cnn.com"]);
    // Without the sidecar's certificate the gateway (ISTIO_MUTUAL) refuses the handshake.
    let resolve = format!("edition.cnn.com:80:{}", topology::GATEWAY_CLIENT_V4);
    let refused = try_curl(
        &ex,
        "https://edition.cnn.com:80/politics",
        &["--resolve", &resolve, "--cacert", &public_cas],
    );
    assert!(refused.is_err(), "{refused:?}");

    // A name the site's certificate lacks: the origination fails, the sidecar gets a 503.
    let path = ex.dir("config").join("egress-tls-origination.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    tests::sluice::replace_config(
        &path,
        &text.replace(
            "        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com",
            "        mode: SIMPLE\n        subjectAltNames: [www.cnn.com]",
        ),
    );
    wait_metric(&ex, "sluice_config_generation", 2.0);
    let got = politics(&ex);
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(got.body.contains("connection failure"), "{}", got.body);
}

tests::in_both_datapaths!(egress_tls_origination: userspace_egress_tls_origination_example, kernel_mode_egress_tls_origination_example);

/// The same task's mutual TLS origination: nginx requires a client certificate of its own
/// CA; the gateway presents client-credential's and verifies nginx with its ca.crt. A
/// credential nginx does not trust (after a reload) is a 503.
fn egress_mtls_origination(mode: Mode) {
    let nginx = Ipv4Addr::new(203, 0, 113, 27);
    let name = "my-nginx.mesh-external.svc.cluster.local";
    let mut ex = Example::network(&[nginx], &[(name, nginx)]);
    let clients_ca = TestCa::new();
    let site = tests::tls::TlsBackend::start_verifying(
        &ex.topology.backend,
        SocketAddr::new(nginx.into(), 443),
        ex.ca.issue(&[name]),
        "Welcome to nginx!",
        Some(&clients_ca),
    );
    let (mesh, cert, key) = mesh_identity(&ex, &ex.ca, name);
    let credentials = ex.dir("credentials");
    clients_ca
        .issue(&["client.example.com"])
        .write(&credentials.join("client-credential"));
    std::fs::write(credentials.join("client-credential/ca.crt"), ex.ca.pem())
        .unwrap_or_else(|e| panic!("{e}"));
    let credentials = credentials.to_string_lossy().into_owned();
    let (status, ready) = ex.serve_with(
        "egress-mtls-origination.yaml",
        mode,
        &[
            "--mesh-identity-dir",
            &mesh,
            "--credentials-dir",
            &credentials,
        ],
        |text| text,
    );
    assert_eq!(status, 200, "{ready}\n{}", ex.sluice().log());
    let got = through_sidecar(&ex, &ex.ca, (&cert, &key), name, 443, "/")
        .unwrap_or_else(|e| panic!("{e}\n{}", ex.sluice().log()));
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "Welcome to nginx!"),
        "{}",
        ex.sluice().log()
    );
    assert_eq!(site.server_names(), [name]);

    // A client certificate of a CA nginx does not trust: refused, a 503.
    TestCa::new()
        .issue(&["client.example.com"])
        .write(&Path::new(&credentials).join("client-credential"));
    let path = ex.dir("config").join("egress-mtls-origination.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    tests::sluice::replace_config(&path, &format!("{text}# rotated\n"));
    wait_metric(&ex, "sluice_config_generation", 2.0);
    let got = through_sidecar(&ex, &ex.ca, (&cert, &key), name, 443, "/")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.status, 503, "{}", got.body);
    assert_eq!(
        site.handshakes(),
        1,
        "nginx completed a handshake with an untrusted client"
    );
}

tests::in_both_datapaths!(egress_mtls_origination: userspace_egress_mtls_origination_example, kernel_mode_egress_mtls_origination_example);

const REVIEWS_V2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 28);

/// Istio's Request Timeouts task and its retries with a retry budget: reviews answering in
/// 2 s gets a 504 after the route's 0.5 s; ratings' 503 is tried four times (one try and
/// three retries); four requests failing at once get one retry in progress between them
/// (the budget's minimum: 20 % of four is less than one), the others' retries refused and
/// counted.
fn timeouts_and_retries(mode: Mode) {
    let mut ex = Example::network(&[RATINGS, REVIEWS_V2], &[]);
    let reviews = backend(&ex, REVIEWS_V2, 9080, "reviews");
    let ratings = backend(&ex, RATINGS, 9080, "ratings");
    ex.serve("ingress-timeouts-retries.yaml", mode);
    let url = |path: &str| format!("http://{}:8080{path}", topology::GATEWAY_CLIENT_V4);

    let started = Instant::now();
    let got = curl(&ex, &url("/reviews/delay/2000"), &[]);
    let waited = started.elapsed();
    assert_eq!(
        (got.status, got.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert_eq!(reviews.requests(), 1);

    let got = curl(&ex, &url("/ratings/status/503"), &[]);
    assert_eq!(got.status, 503);
    assert_eq!(ratings.requests(), 4, "one try and three retries");

    let overflow = "sluice_http_upstream_retry_overflow_total{upstream=\"outbound|9080|v1|ratings.default.svc.cluster.local\"}";
    assert_eq!(ex.sluice().metric(overflow), Some(0.0));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| curl(&ex, &url("/ratings/delay/600/status/503"), &[]).status))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| panic!("a client failed")))
            .collect()
    });
    assert_eq!(statuses, [503; 4]);
    assert_eq!(
        ratings.requests(),
        4 + 4 + 3,
        "four tries, one request's three retries"
    );
    assert_eq!(ex.sluice().metric(overflow), Some(3.0));
}

tests::in_both_datapaths!(timeouts_and_retries: userspace_timeouts_and_retries_example, kernel_mode_timeouts_and_retries_example);
