//! Counters of the SNI passthrough server, per listener, route and backend.
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    /// `namespace/name:path` of the rule, e.g. `default/nginx:spec.tls[0]`.
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    pub listener: String,
    pub route: String,
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    pub route: String,
    pub backend: String,
    /// `upstream` (client to backend) or `downstream`.
    pub direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub listener: String,
    /// `timeout`, `closed`, `not_tls`, `too_large`, `malformed`, `no_sni`, `no_route`,
    /// `no_backend`.
    pub reason: &'static str,
}

#[derive(Debug, Default)]
pub struct SniMetrics {
    pub connections: Family<BackendLabels, Counter>,
    pub connect_failures: Family<BackendLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter<u64, AtomicU64>>,
    pub active: Family<RouteLabels, Gauge<i64, AtomicI64>>,
    pub handshake_failures: Family<FailureLabels, Counter>,
}

impl SniMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let sni = registry.sub_registry_with_prefix("sni");
        sni.register(
            "connections",
            "TLS passthrough connections forwarded, by listener, route and backend",
            self.connections.clone(),
        );
        sni.register(
            "connect_failures",
            "TLS passthrough connections whose backend could not be reached",
            self.connect_failures.clone(),
        );
        sni.register(
            "bytes",
            "Bytes forwarded, by listener, route, backend and direction",
            self.bytes.clone(),
        );
        sni.register(
            "active_connections",
            "TLS passthrough connections open now, by listener and route",
            self.active.clone(),
        );
        sni.register(
            "handshake_failures",
            "Connections closed before a backend was chosen, by reason: timeout (no complete \
             ClientHello in time), closed (the client left first), not_tls, too_large, \
             malformed, no_sni and no_route (no route for its server name), no_backend (the \
             route has no endpoint)",
            self.handshake_failures.clone(),
        );
    }
}
