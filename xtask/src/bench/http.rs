//! The HTTP suite: an L7 proxy in front of one fast static server (nginx returning a short
//! body, HTTP/1.1 and h2c and TLS, in the backend namespace). wrk measures HTTP/1.1 over
//! kept-alive connections (requests per second, p50/p99), a new connection per request,
//! HTTPS (TLS terminated by the contestant, ECDSA P-256) kept alive and with a new handshake
//! per request; h2load measures h2c by prior knowledge. Every proxy runs one worker and
//! speaks HTTP/1.1 to the backend over pooled connections.
use std::{net::SocketAddr, path::Path, time::Duration};

use ::tests::{
    bpffs::TempBpffs,
    netns::NetNs,
    sluice::Sluice,
    tls::TestCa,
    topology::{self, Topology},
};
use anyhow::{Context as _, bail};

use super::{
    BenchArgs, Column, Contestant, Profile, Running, WORKERS, netns_inode, render, spawn_in,
    wait_listening,
};

/// Contestants listen on HTTP (HTTP/1.1), H2C (HTTP/2 by prior knowledge) and TLS; the
/// backend on the same ports plus 1000.
const HTTP: u16 = 8080;
const H2C: u16 = 8081;
const TLS: u16 = 8443;
const BACKEND_OFFSET: u16 = 1000;
/// The backend's answer: 128 bytes.
const BODY: &str = "Sluice benchmark body: a short static answer, as a health check or a small API response would be, 128 bytes long..........\n";
/// HTTP/2 streams per h2load connection.
const H2_STREAMS: usize = 4;

const CONTESTANTS: [Contestant; 6] = [
    Contestant::Direct,
    Contestant::SluiceTc,
    Contestant::SluiceUserspace,
    Contestant::Nginx,
    Contestant::Haproxy,
    Contestant::Envoy,
];

fn name(contestant: Contestant) -> &'static str {
    match contestant {
        Contestant::Direct => "direct (the backend, no proxy)",
        Contestant::SluiceTc => "Sluice, TC datapath attached (1 worker)",
        Contestant::SluiceUserspace => "Sluice, userspace datapath (1 worker)",
        Contestant::Nginx => "nginx proxy_pass (1 worker)",
        Contestant::Haproxy => "HAProxy mode http (1 thread)",
        Contestant::Envoy => "Envoy http_connection_manager (1 worker)",
        Contestant::SluiceXdp | Contestant::SluiceSockmap | Contestant::Nftables => "-",
    }
}

#[derive(Default, Clone)]
struct Sample {
    keep_rps: f64,
    keep_p50_us: f64,
    keep_p99_us: f64,
    close_rps: f64,
    h2c_rps: f64,
    tls_keep_rps: f64,
    tls_keep_p99_us: f64,
    tls_new_rps: f64,
    outside_cpu_pct: f64,
}

pub(super) fn run(args: &BenchArgs, envoy: &Path) -> anyhow::Result<String> {
    let (results, profiles) = super::measure_each(args, "http", &CONTESTANTS, name, |c| {
        measure(c, args, envoy)
    })?;
    let columns: [Column<Sample>; 9] = [
        ("HTTP/1.1 keep-alive req/s", |s| s.keep_rps, 0, true),
        ("p50 µs", |s| s.keep_p50_us, 0, false),
        ("p99 µs", |s| s.keep_p99_us, 0, false),
        ("new connection req/s", |s| s.close_rps, 0, true),
        ("h2c req/s", |s| s.h2c_rps, 0, true),
        ("HTTPS keep-alive req/s", |s| s.tls_keep_rps, 0, true),
        ("HTTPS p99 µs", |s| s.tls_keep_p99_us, 0, false),
        ("HTTPS new handshake req/s", |s| s.tls_new_rps, 0, true),
        ("CPU outside %", |s| s.outside_cpu_pct, 1, false),
    ];
    let title = format!(
        "\nSluice benchmark, HTTP: medians of {} runs of {:.0?} each (min-max), ratio to the direct path in brackets.\n\
         wrk -t1 -c{WORKERS} (HTTP/1.1; `Connection: close` for new connections), h2load -t1 -c{WORKERS} -m{H2_STREAMS} (h2c); \
         GET / answered with {} bytes by nginx in the backend namespace; TLS 1.3, ECDSA P-256, full handshakes.",
        args.runs,
        args.duration,
        BODY.len()
    );
    Ok(render(&title, &results, &columns) + &profiles)
}

fn measure(
    contestant: Contestant,
    args: &BenchArgs,
    envoy: &Path,
) -> anyhow::Result<(Vec<Sample>, String)> {
    let topology = Topology::builder()
        .static_neighbours()
        .default_offloads()
        .build();
    for ns in [&topology.client, &topology.gateway] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
    let ca = TestCa::new();
    let certs = tempfile::tempdir()?;
    let identity = ca.issue(&["bench.example.com"]);
    let (cert, key) = identity.write(certs.path());
    let bundle = certs.path().join("bundle.pem");
    std::fs::write(&bundle, identity.chain_pem.clone() + &identity.key_pem)?;
    let files = Certificates {
        cert: cert.to_string_lossy().into_owned(),
        key: key.to_string_lossy().into_owned(),
        bundle: bundle.to_string_lossy().into_owned(),
    };
    let backend = SocketAddr::new(topology::backend_v4(0).into(), HTTP + BACKEND_OFFSET);
    let _backend = start_backend(&topology.backend, backend, &files)?;
    let (running, host) = start(contestant, &topology, backend, &files, envoy)?;
    let port = |p: u16| {
        if contestant == Contestant::Direct {
            p + BACKEND_OFFSET
        } else {
            p
        }
    };
    let url = |scheme: &str, p: u16| format!("{scheme}://{host}:{}/", port(p));
    let ours = [&topology.client, &topology.gateway, &topology.backend]
        .map(|ns| netns_inode(&format!("/run/netns/{}", ns.name)));
    let mut profile = String::new();
    let samples = super::sampled(args, &ours, |run| {
        let perf = (args.perf && run == 1)
            .then(|| Profile::start(name(contestant), args.duration))
            .transpose()?;
        let keep = wrk(&topology.client, &url("http", HTTP), false, args.duration)?;
        if let Some(perf) = perf {
            profile = perf.summary(name(contestant), "HTTP/1.1 kept-alive requests", running.pid())?;
        }
        let close = wrk(&topology.client, &url("http", HTTP), true, args.duration)?;
        let h2c = h2load(&topology.client, &url("http", H2C), args.duration)?;
        let tls_keep = wrk(&topology.client, &url("https", TLS), false, args.duration)?;
        let perf = (args.perf && run == 1)
            .then(|| Profile::start(&format!("{} TLS", name(contestant)), args.duration))
            .transpose()?;
        let tls_new = wrk(&topology.client, &url("https", TLS), true, args.duration)?;
        if let Some(perf) = perf {
            profile += &perf.summary(name(contestant), "HTTPS, a new handshake per request", running.pid())?;
        }
        let line = format!(
            "keep-alive {:.0} req/s ({} errors), new connections {:.0} ({}), h2c {:.0} ({}), HTTPS {:.0} ({}), HTTPS new {:.0} ({})",
            keep.rps,
            keep.errors,
            close.rps,
            close.errors,
            h2c.rps,
            h2c.errors,
            tls_keep.rps,
            tls_keep.errors,
            tls_new.rps,
            tls_new.errors
        );
        let sample = Sample {
            keep_rps: keep.rps,
            keep_p50_us: keep.p50_us,
            keep_p99_us: keep.p99_us,
            close_rps: close.rps,
            h2c_rps: h2c.rps,
            tls_keep_rps: tls_keep.rps,
            tls_keep_p99_us: tls_keep.p99_us,
            tls_new_rps: tls_new.rps,
            outside_cpu_pct: 0.0,
        };
        Ok((sample, line))
    })?
    .into_iter()
    .map(|(sample, outside_cpu_pct)| Sample {
        outside_cpu_pct,
        ..sample
    })
    .collect();
    if let Some(sluice) = &running.sluice {
        let (_, metrics) = sluice.admin_get("/stats/prometheus");
        let notable = |l: &&str| {
            (l.starts_with("sluice_http_overloaded_total")
                || l.starts_with("sluice_http_tls_refused_total")
                || (l.starts_with("sluice_http_requests_total") && !l.contains("2xx")))
                && !l.ends_with(" 0")
        };
        for line in metrics.lines().filter(notable) {
            eprintln!("bench:   {line}");
        }
    }
    Ok((samples, profile))
}

struct Certificates {
    cert: String,
    key: String,
    /// Chain and key in one file (HAProxy).
    bundle: String,
}

/// nginx as the origin: `GET /` answered with [`BODY`] over HTTP/1.1, h2c and TLS. Debian's
/// nginx 1.22 offers TLS 1.2 at most unless `ssl_protocols` says otherwise; every TLS
/// endpoint here speaks TLS 1.3, as rustls, HAProxy and Envoy do by default.
fn start_backend(
    ns: &NetNs,
    address: SocketAddr,
    files: &Certificates,
) -> anyhow::Result<(Running, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_string_lossy().into_owned();
    let ip = address.ip();
    let (h1, h2c, tls) = (
        HTTP + BACKEND_OFFSET,
        H2C + BACKEND_OFFSET,
        TLS + BACKEND_OFFSET,
    );
    let cfg = format!(
        "worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\npid {path}/nginx.pid;\nerror_log {path}/error.log;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
         ssl_protocols TLSv1.3;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
         server {{\n    listen {ip}:{h1} backlog=4096 reuseport;\n    listen {ip}:{tls} ssl http2 backlog=4096;\n    location / {{ default_type text/plain; return 200 '{BODY}'; }}\n  }}\n\
         server {{\n    listen {ip}:{h2c} http2 backlog=4096;\n    location / {{ default_type text/plain; return 200 '{BODY}'; }}\n  }}\n}}\n",
        cert = files.cert,
        key = files.key,
    );
    let file = dir.path().join("backend.conf");
    std::fs::write(&file, cfg)?;
    let process = spawn_in(
        ns,
        "nginx",
        &[
            "-c",
            &file.to_string_lossy(),
            "-p",
            &path,
            "-e",
            &format!("{path}/error.log"),
        ],
    )?;
    let mut running = Running::default();
    running.process = Some(process);
    for port in [h1, h2c, tls] {
        wait_listening(ns, port)?;
    }
    Ok((running, dir))
}

/// Starts `contestant` on the gateway; returns what to stop afterwards and the address
/// clients use.
fn start(
    contestant: Contestant,
    topology: &Topology,
    backend: SocketAddr,
    files: &Certificates,
    envoy: &Path,
) -> anyhow::Result<(Running, std::net::IpAddr)> {
    let gateway = topology::GATEWAY_CLIENT_V4;
    let mut running = Running::default();
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_string_lossy().into_owned();
    match contestant {
        Contestant::Direct => return Ok((running, backend.ip())),
        Contestant::SluiceTc | Contestant::SluiceUserspace => {
            std::fs::write(dir.path().join("bench.yaml"), sluice_config(backend, files))?;
            let bpffs = TempBpffs::new();
            let bpffs_arg = bpffs.path().to_string_lossy().into_owned();
            let mut args = vec![
                "-f",
                &path,
                "--bpffs",
                &bpffs_arg,
                "--instance",
                "bench",
                "--workers",
                "1",
            ];
            if contestant == Contestant::SluiceTc {
                args.extend(topology::SLUICE_TC_ARGS);
            } else {
                args.extend(["--datapath", "userspace"]);
            }
            running.sluice = Some(Sluice::start_with(
                &topology.gateway,
                &["env", "TOKIO_WORKER_THREADS=1"],
                ::tests::sluice::ADMIN_ADDR,
                &args,
            ));
            running._bpffs = Some(bpffs);
        }
        Contestant::Nginx => {
            let location = "location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }";
            let cfg = format!(
                "worker_processes 1;\nworker_rlimit_nofile 65536;\ndaemon off;\npid {path}/nginx.pid;\nerror_log {path}/error.log;\n\
                 events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
                 upstream b {{ server {backend}; keepalive 256; keepalive_requests 10000000; }}\n\
                 ssl_protocols TLSv1.3;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
                 server {{\n    listen {gateway}:{HTTP} backlog=4096;\n    listen {gateway}:{TLS} ssl http2 backlog=4096;\n    {location}\n  }}\n\
                 server {{\n    listen {gateway}:{H2C} http2 backlog=4096;\n    {location}\n  }}\n}}\n",
                cert = files.cert,
                key = files.key,
            );
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "nginx",
                &[
                    "-c",
                    &file.to_string_lossy(),
                    "-p",
                    &path,
                    "-e",
                    &format!("{path}/error.log"),
                ],
            )?);
        }
        Contestant::Haproxy => {
            let cfg = format!(
                "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n\
                 frontend f\n  bind {gateway}:{HTTP} backlog 4096\n  bind {gateway}:{H2C} proto h2 backlog 4096\n  bind {gateway}:{TLS} ssl crt {bundle} alpn h2,http/1.1 backlog 4096\n  default_backend b\n\
                 backend b\n  server b {backend}\n",
                bundle = files.bundle
            );
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, cfg)?;
            running.process = Some(spawn_in(
                &topology.gateway,
                "haproxy",
                &["-f", &file.to_string_lossy(), "-db"],
            )?);
        }
        Contestant::Envoy => {
            let file = dir.path().join("envoy.yaml");
            std::fs::write(&file, envoy_config(gateway.into(), backend, files))?;
            running.process = Some(spawn_in(
                &topology.gateway,
                &envoy.to_string_lossy(),
                &[
                    "-c",
                    &file.to_string_lossy(),
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "error",
                ],
            )?);
        }
        Contestant::SluiceXdp | Contestant::SluiceSockmap | Contestant::Nftables => {
            bail!("{} is not an HTTP proxy", name(contestant))
        }
    }
    if running.process.is_some() {
        for port in [HTTP, H2C, TLS] {
            wait_listening(&topology.gateway, port)?;
        }
    }
    running._config = Some(dir);
    Ok((running, gateway.into()))
}

fn sluice_config(backend: SocketAddr, files: &Certificates) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  servers:\n\
         \x20 - port: {{number: {HTTP}, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         \x20 - port: {{number: {H2C}, name: h2c, protocol: HTTP2}}\n    hosts: ['*']\n\
         \x20 - port: {{number: {TLS}, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, serverCertificate: '{}', privateKey: '{}'}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  hosts: ['*']\n  gateways: [bench]\n  http:\n\
         \x20 - route: [{{destination: {{host: '{}', port: {{number: {}}}}}}}]\n",
        files.cert,
        files.key,
        backend.ip(),
        backend.port()
    )
}

fn envoy_config(gateway: std::net::IpAddr, backend: SocketAddr, files: &Certificates) -> String {
    let hcm = "filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
               '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
               stat_prefix: h\n          codec_type: AUTO\n          \
               route_config: {virtual_hosts: [{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: b}}]}]}\n          \
               http_filters: [{name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]\n";
    let listener = |name: &str, port: u16, tls: &str| {
        format!(
            "  - name: {name}\n    address: {{socket_address: {{address: '{gateway}', port_value: {port}}}}}\n    tcp_backlog_size: 4096\n    \
             filter_chains:\n    - {hcm}{tls}"
        )
    };
    let tls = format!(
        "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \
         '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
         common_tls_context:\n            alpn_protocols: [h2, http/1.1]\n            \
         tls_certificates: [{{certificate_chain: {{filename: '{}'}}, private_key: {{filename: '{}'}}}}]\n",
        files.cert, files.key
    );
    format!(
        "static_resources:\n  listeners:\n{}{}{}  clusters:\n  - name: b\n    type: STATIC\n    connect_timeout: 5s\n    \
         circuit_breakers: {{thresholds: [{{priority: DEFAULT, max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}}]}}\n    \
         load_assignment:\n      cluster_name: b\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}\n",
        listener("http", HTTP, ""),
        listener("h2c", H2C, ""),
        listener("https", TLS, &tls),
        backend.ip(),
        backend.port()
    )
}

/// What one load run measured.
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Socket errors and non-2xx answers.
    errors: u64,
}

/// `wrk -t1 -c WORKERS --latency` against `url`, with `Connection: close` when `close`.
fn wrk(ns: &NetNs, url: &str, close: bool, duration: Duration) -> anyhow::Result<Load> {
    let seconds = format!("{}s", duration.as_secs().max(1));
    let connections = WORKERS.to_string();
    let mut args = vec![
        "-t1",
        "-c",
        &connections,
        "-d",
        &seconds,
        "--latency",
        "--timeout",
        "5s",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = ns
        .command("wrk")
        .args(&args)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text)
        .with_context(|| format!("wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

fn parse_wrk(text: &str) -> Option<Load> {
    let value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = value("Requests/sec:")?.parse().ok()?;
    let latency = |percent: &str| value(percent).and_then(duration_us);
    let socket_errors: u64 = value("Socket errors:")
        .map(|l| {
            l.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx: u64 = value("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(Load {
        rps,
        p50_us: latency("50%")?,
        p99_us: latency("99%")?,
        errors: socket_errors + non_2xx,
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.01s` in microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        "m" => number * 60e6,
        _ => return None,
    })
}

/// `h2load` (h2c by prior knowledge) against `url`.
fn h2load(ns: &NetNs, url: &str, duration: Duration) -> anyhow::Result<Load> {
    let seconds = duration.as_secs().max(1).to_string();
    let (connections, streams) = (WORKERS.to_string(), H2_STREAMS.to_string());
    let out = ns
        .command("h2load")
        .args([
            "-t1",
            "-c",
            &connections,
            "-m",
            &streams,
            "-D",
            &seconds,
            url,
        ])
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load(&text).with_context(|| {
        format!(
            "h2load {url}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn parse_h2load(text: &str) -> Option<Load> {
    // "finished in 3.00s, 48862.33 req/s, 5.30MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let errors = requests
        .split(", ")
        .filter(|part| {
            part.ends_with(" failed") || part.ends_with(" errored") || part.ends_with(" timeout")
        })
        .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(Load {
        rps,
        p50_us: 0.0,
        p99_us: 0.0,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 3s test @ http://198.51.100.1:8080/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.10ms  250.00us   9.00ms   90.00%\n  Latency Distribution\n     50%  1.02ms\n     75%    1.20ms\n     90%    1.40ms\n     99%  812.00us\n  90000 requests in 3.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  30000.50\nTransfer/sec:      6.67MB\n";
        let load = parse_wrk(text).unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(load.rps, 30000.5);
        assert_eq!(load.p50_us, 1020.0);
        assert_eq!(load.p99_us, 812.0);
        assert_eq!(load.errors, 7);
    }

    #[test]
    fn h2load_output_is_read() {
        let text = "finished in 3.00s, 48862.33 req/s, 5.30MB/s\nrequests: 146587 total, 146587 started, 146587 done, 146580 succeeded, 5 failed, 2 errored, 0 timeout\n";
        let load = parse_h2load(text).unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(load.rps, 48862.33);
        assert_eq!(load.errors, 7);
    }
}
