//! Counters of the HTTP gateway: requests by route and status class, their latency, and
//! requests in flight; per upstream service (named as Istio names Envoy's clusters,
//! `outbound|<port>|<subset>|<host>`), its responses by status class and its failures.
//! Each route's and upstream's handles are resolved when its table is built, so a request
//! only increments atomics.
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
pub struct FaultLabels {
    pub listener: String,
    pub route: String,
    /// `delay` or `abort`.
    pub kind: &'static str,
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
pub struct UpstreamLabels {
    pub upstream: String,
    pub code_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamFailureLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabelsOnly {
    pub upstream: String,
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
    mirror_skipped: Family<RouteLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    active: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    connections: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    overloaded: Family<ReasonLabels, Counter>,
    tls_refused: Family<RefusedLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_failures: Family<UpstreamFailureLabels, Counter>,
    upstream_retries: Family<UpstreamLabelsOnly, Counter>,
    upstream_ejections: Family<UpstreamLabelsOnly, Counter>,
    upstream_retry_overflow: Family<UpstreamLabelsOnly, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            mirror_skipped: Family::default(),
            faults: Family::default(),
            active: Family::default(),
            connections: Family::default(),
            overloaded: Family::default(),
            tls_refused: Family::default(),
            certificate_reloads: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_retries: Family::default(),
            upstream_ejections: Family::default(),
            upstream_retry_overflow: Family::default(),
        }
    }
}

/// One route's handles.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// By the status's first digit, 1 to 5.
    by_class: [Counter; 5],
    duration: Histogram,
    /// Faults injected: delays, aborts.
    faults: [Counter; 2],
}

impl RouteMetrics {
    /// Fault injection delayed a request.
    pub fn delayed(&self) {
        self.faults[0].inc();
    }

    /// Fault injection aborted a request.
    pub fn aborted(&self) {
        self.faults[1].inc();
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

/// Why a request got no response from an upstream, as Envoy's response flags say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// `UH`: the destination has no endpoint.
    NoHealthy,
    /// `UF`: the connection to the endpoint failed.
    ConnectFailure,
    /// `UC`: the connection ended before a response.
    Reset,
    /// `UT`: the route's timeout passed.
    Timeout,
    /// `UO`: a circuit breaker (DestinationRule `connectionPool`) refused it.
    Overflow,
}

/// One upstream service's handles.
#[derive(Debug, Clone, Default)]
pub struct UpstreamMetrics {
    by_class: [Counter; 5],
    /// By [`UpstreamFailure`], in its order.
    failures: [Counter; 5],
    retries: Counter,
    ejections: Counter,
    retry_overflow: Counter,
}

impl UpstreamMetrics {
    /// A retry the policy wanted was not made: over `maxRetries` or the retry budget.
    pub fn retry_overflowed(&self) {
        self.retry_overflow.inc();
    }

    /// Outlier detection ejected one of its endpoints.
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// A response came back from the upstream.
    pub fn response(&self, status: u16) {
        self.by_class[usize::from((status / 100).clamp(1, 5)) - 1].inc();
    }

    pub fn failed(&self, failure: UpstreamFailure) {
        self.failures[failure as usize].inc();
    }

    pub fn retried(&self) {
        self.retries.inc();
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
             no_server: no server takes the SNI, client_certificate_missing, \
             client_certificate_invalid: not signed by the CA or expired, \
             client_certificate_revoked, client_certificate_not_pinned: outside the \
             server's subjectAltNames or digests, handshake: any other failure)",
            self.tls_refused.clone(),
        );
        http.register(
            "upstream_requests",
            "Responses from upstream services (outbound|port|subset|host), by status class \
             (each try counts)",
            self.upstream_requests.clone(),
        );
        http.register(
            "upstream_failures",
            "Tries an upstream service did not answer (each retry counts), by reason \
             (no_healthy: no endpoint, connect_failure, reset: closed before a response, \
             timeout: the route's timeout or perTryTimeout, overflow: over a connectionPool \
             limit)",
            self.upstream_failures.clone(),
        );
        http.register(
            "upstream_retries",
            "Requests sent again to an upstream service after a try its retry policy retries",
            self.upstream_retries.clone(),
        );
        http.register(
            "faults_injected",
            "Requests fault injection delayed or aborted, by listener, route and kind (delay, \
             abort), as Envoy's fault filter counts delays_injected and aborts_injected",
            self.faults.clone(),
        );
        http.register(
            "mirror_skipped",
            "Requests a mirror was chosen for but not copied to it: a body longer than 64 KiB \
             or of unknown length, by listener and route",
            self.mirror_skipped.clone(),
        );
        http.register(
            "upstream_retry_overflow",
            "Retries not made because the upstream service's maxRetries or retry budget was \
             used up (Envoy's upstream_rq_retry_overflow)",
            self.upstream_retry_overflow.clone(),
        );
        http.register(
            "upstream_ejections",
            "Endpoints of an upstream service ejected by outlier detection (DestinationRule \
             outlierDetection)",
            self.upstream_ejections.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Server certificates reloaded after their files changed, by result (ok, error: the \
             previous certificate stays)",
            self.certificate_reloads.clone(),
        );
    }

    /// Requests of `route` on `listener` whose mirror copy was skipped.
    pub fn mirror_skipped(&self, listener: &str, route: &str) -> Counter {
        self.mirror_skipped
            .get_or_create(&RouteLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
            })
            .clone()
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
        let fault = |kind| {
            self.faults
                .get_or_create(&FaultLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    kind,
                })
                .clone()
        };
        RouteMetrics {
            faults: ["delay", "abort"].map(fault),
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

    /// The handles of upstream service `name`.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let class = |code_class| {
            self.upstream_requests
                .get_or_create(&UpstreamLabels {
                    upstream: name.to_owned(),
                    code_class,
                })
                .clone()
        };
        let failure = |reason| {
            self.upstream_failures
                .get_or_create(&UpstreamFailureLabels {
                    upstream: name.to_owned(),
                    reason,
                })
                .clone()
        };
        UpstreamMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            failures: [
                "no_healthy",
                "connect_failure",
                "reset",
                "timeout",
                "overflow",
            ]
            .map(failure),
            retries: self
                .upstream_retries
                .get_or_create(&UpstreamLabelsOnly {
                    upstream: name.to_owned(),
                })
                .clone(),
            ejections: self
                .upstream_ejections
                .get_or_create(&UpstreamLabelsOnly {
                    upstream: name.to_owned(),
                })
                .clone(),
            retry_overflow: self
                .upstream_retry_overflow
                .get_or_create(&UpstreamLabelsOnly {
                    upstream: name.to_owned(),
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
