//! Counters of the HTTP gateway: requests by route and status class, their latency, and
//! requests in flight. Each route's handles are resolved when its table is built, so a
//! request only increments atomics.
use std::sync::atomic::AtomicI64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    /// `namespace/name:path` of the VirtualService rule, `-` when no route matched.
    pub route: String,
    /// `1xx` .. `5xx`.
    pub code_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Latency buckets in seconds, 1 ms to 10 s.
fn buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    active: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    connections: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    overloaded: Family<ReasonLabels, Counter>,
    tls_refused: Family<RefusedLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            active: Family::default(),
            connections: Family::default(),
            overloaded: Family::default(),
            tls_refused: Family::default(),
            certificate_reloads: Family::default(),
        }
    }
}

/// One route's handles.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// By the status's first digit, 1 to 5.
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let http = registry.sub_registry_with_prefix("http");
        http.register(
            "requests",
            "HTTP requests answered, by listener, route and status class",
            self.requests.clone(),
        );
        http.register(
            "request_duration_seconds",
            "Time from a request's headers to its response's headers, by listener and route",
            self.duration.clone(),
        );
        http.register(
            "active_requests",
            "HTTP requests in progress, by listener",
            self.active.clone(),
        );
        http.register(
            "active_connections",
            "HTTP connections open, by listener",
            self.connections.clone(),
        );
        http.register(
            "overloaded",
            "Connections closed at accept (reason connections: --http-max-connections) and \
             requests answered 503 (reason requests: --http-max-requests) for overload",
            self.overloaded.clone(),
        );
        http.register(
            "tls_refused",
            "TLS connections refused before a request, by listener and reason (timeout, \
             no_server: no server takes the SNI, handshake: the handshake failed)",
            self.tls_refused.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Server certificates reloaded after their files changed, by result (ok, error: the \
             previous certificate stays)",
            self.certificate_reloads.clone(),
        );
    }

    /// The handles of `route` (`-` for requests no route took) on `listener`.
    pub fn route(&self, listener: &str, route: &str) -> RouteMetrics {
        let class = |code_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    code_class,
                })
                .clone()
        };
        RouteMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            duration: self
                .duration
                .get_or_create(&RouteLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                })
                .clone(),
        }
    }

    pub fn tls_refused(&self, listener: &str, reason: &'static str) {
        self.tls_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn overloaded(&self, reason: &'static str) {
        self.overloaded
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn connections(&self, listener: &str) -> Gauge<i64, AtomicI64> {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    pub fn certificate_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.certificate_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn active(&self, listener: &str) -> Gauge<i64, AtomicI64> {
        self.active
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }
}

/// Counts one (a request, a connection) in a gauge until dropped, also when the client
/// goes away first.
pub struct Gauged<'g>(&'g Gauge<i64, AtomicI64>);

impl<'g> Gauged<'g> {
    pub fn new(gauge: &'g Gauge<i64, AtomicI64>) -> Self {
        gauge.inc();
        Gauged(gauge)
    }
}

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
