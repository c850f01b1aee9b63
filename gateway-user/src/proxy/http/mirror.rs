//! Request mirroring (VirtualService `mirror`, `mirrors`) as Envoy shadows requests: for
//! each mirror whose percentage the request falls in, a copy goes to the mirror's
//! destination with `-shadow` appended to its host (before any port), fire and forget: the
//! copy runs on its own task, its response is read and dropped, and nothing about it (a
//! failure, a slow mirror) reaches the client. The copy carries the body when the request
//! has none or one of known length up to `MAX_HELD_BODY` (held in memory, as for retries);
//! a longer or streamed body is not mirrored (Envoy copies it as it streams), and is
//! counted.
use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderValue, Request, header};
use http_body_util::BodyExt as _;
use prometheus_client::metrics::counter::Counter;

use super::{
    body::Counted,
    metrics::UpstreamFailure,
    retry::Template,
    upstream::{Clients, Destinations, HashInput},
};

/// The longest a copy may take when the route has no timeout of its own.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Copies in flight to one mirror at most; more are skipped (and counted), so a slow
/// mirror cannot gather tasks without bound.
pub const MAX_IN_FLIGHT: usize = 1024;

/// A compiled mirror: its destination, the share of requests it gets, its copies in flight.
#[derive(Debug)]
pub struct CompiledMirror {
    pub destinations: Arc<Destinations>,
    pub percent: f64,
    pub in_flight: Arc<AtomicUsize>,
}

/// The mirrors this request goes to, each drawn by its percentage.
pub fn chosen(mirrors: &[CompiledMirror]) -> Vec<&CompiledMirror> {
    mirrors
        .iter()
        .filter(|m| m.percent >= 100.0 || fastrand::f64() * 100.0 < m.percent)
        .collect()
}

/// A copy's place among its mirror's copies in flight.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `host` as Envoy shadows it: `-shadow` after the name, before the port.
pub fn shadow_host(host: &str) -> String {
    let port_at = match host.rfind(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some(i)
            if !host[i..].contains(']') && (!host.starts_with('[') || host[..i].ends_with(']')) =>
        {
            Some(i)
        }
        _ => None,
    };
    match port_at {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// Sends a copy of `template` to each of `targets`, each on its own task; a mirror with
/// [`MAX_IN_FLIGHT`] copies on their way gets none (counted in `skipped`).
pub fn send_copies(
    template: &Template,
    targets: Vec<&CompiledMirror>,
    clients: &Arc<Clients>,
    source: IpAddr,
    timeout: Duration,
    skipped: &Counter,
) {
    for mirror in targets {
        if mirror.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            mirror.in_flight.fetch_sub(1, Ordering::Relaxed);
            skipped.inc();
            continue;
        }
        let in_flight = InFlight(mirror.in_flight.clone());
        let target = mirror.destinations.clone();
        let mut request = template.request();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(shadow_host);
        if let Some(value) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            request.headers_mut().insert(header::HOST, value);
        }
        let clients = clients.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            copy(request, &target, &clients, source, timeout).await;
        });
    }
}

async fn copy(
    mut request: Request<Counted>,
    target: &Destinations,
    clients: &Clients,
    source: IpAddr,
    timeout: Duration,
) {
    let input = HashInput {
        headers: request.headers(),
        query: request.uri().query(),
        source,
    };
    let picked = match target.pick(&input) {
        Ok(picked) => picked,
        Err(destination) => {
            if let Some(d) = destination {
                d.metrics.failed(UpstreamFailure::NoHealthy);
            }
            return;
        }
    };
    let destination = picked.destination;
    *request.version_mut() = if destination.http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let exchange = async {
        let response = clients.send(destination, picked.endpoint, request).await;
        match response {
            Ok(response) => {
                destination.metrics.response(response.status().as_u16());
                // Read to its end (a frame at a time, dropped), so the connection goes
                // back to the pool.
                let mut body = response.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            }
            Err(e) => destination
                .metrics
                .failed(super::retry::Failure::Send(e).counted_as()),
        }
    };
    if tokio::time::timeout(timeout, exchange).await.is_err() {
        destination.metrics.failed(UpstreamFailure::Timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_as_envoy_writes_them() {
        for (host, want) in [
            ("httpbin", "httpbin-shadow"),
            ("httpbin:8000", "httpbin-shadow:8000"),
            ("a.example.com", "a.example.com-shadow"),
            ("[2001:db8::1]:80", "[2001:db8::1]-shadow:80"),
            ("[2001:db8::1]", "[2001:db8::1]-shadow"),
        ] {
            assert_eq!(shadow_host(host), want, "{host}");
        }
    }
}
