//! The Plan: what the gateway serves, one listener per (bind address, port), compiled from
//! the config by `compile`. Plain data: the datapath and the proxies are built from it, and
//! `sluice plan` / `/config_dump` print it.
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::config::{
    ObjectRef,
    model::{HeaderOperations, Headers, HttpMatchRequest, HttpRedirect},
};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Sorted by port, then bind address.
    pub listeners: Vec<Listener>,
    /// Servers and routes that the config declares but the Plan does not serve, and why.
    pub left_out: Vec<LeftOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub bind: IpAddr,
    pub port: u16,
    /// The servers' protocol, canonical upper case (`HTTP`, `HTTPS`, `TLS`, `TCP`, `MONGO`…).
    pub protocol: String,
    /// The Gateway servers this listener serves, first declared first.
    pub servers: Vec<ServerOrigin>,
    pub runs: Placement,
    #[serde(flatten)]
    pub kind: ListenerKind,
}

impl Listener {
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

/// Where traffic is handled, and why there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    #[serde(rename = "where")]
    pub place: Place,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// XDP/TC forwards every packet (full NAT, connection tracking).
    Kernel,
    /// Userspace decides once per connection, then the kernel splices the bytes (sockmap).
    KernelSplice,
    /// The userspace proxy handles every byte.
    Userspace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerOrigin {
    pub gateway: ObjectRef,
    /// Index in `spec.servers`.
    pub server: usize,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ListenerKind {
    /// Opaque TCP: one route, forwarded in the kernel.
    L4Forward { route: Option<L4Route> },
    /// TLS passthrough: the route is chosen by the ClientHello's SNI.
    SniRoute { routes: Vec<SniRoute> },
    /// Plain HTTP (HTTP/1.1, h2c, gRPC).
    Http { virtual_hosts: Vec<VirtualHost> },
    /// HTTPS terminated by the proxy, then routed as HTTP.
    Https {
        certificates: Vec<TlsTermination>,
        virtual_hosts: Vec<VirtualHost>,
    },
}

/// Which config rule a route came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteOrigin {
    /// The VirtualService (or, for AUTO_PASSTHROUGH, the ServiceEntry) the route comes from.
    pub object: ObjectRef,
    /// Field path of the rule, e.g. `spec.tcp[0]`.
    pub path: String,
}

/// `namespace/name:path`, the route label of metrics and logs.
impl std::fmt::Display for RouteOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}:{}",
            self.object.namespace, self.object.name, self.path
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct L4Route {
    pub origin: RouteOrigin,
    pub runs: Placement,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SniRoute {
    /// SNI names (exact or `*.` wildcard) this route serves.
    pub sni_hosts: Vec<String>,
    pub origin: RouteOrigin,
    pub runs: Placement,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualHost {
    /// Host names (exact or wildcard) matched against the request's authority.
    pub domains: Vec<String>,
    /// Answer every request with a 301 to https (the server's `tls.httpsRedirect`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// In order: the first route whose match applies wins.
    pub routes: Vec<HttpRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRoute {
    pub origin: RouteOrigin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub runs: Placement,
    /// Any of these matches (empty: every request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    pub action: HttpAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<crate::config::model::HttpRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOperations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOperations>,
    /// Destinations that get a copy of a share of the requests (`mirror`, `mirrors`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
}

/// A mirror: its destination, and the share of requests copied to it (0-100).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    pub backend: Backend,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HttpAction {
    Route {
        backends: Vec<Backend>,
    },
    Redirect(HttpRedirect),
    DirectResponse {
        status: u16,
        /// The body as sent: `body.string`, or `body.bytes` decoded from base64.
        #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_text")]
        body: Vec<u8>,
    },
}

/// A route's CORS policy as Envoy's CORS filter applies it: preflights from allowed origins
/// answered at the gateway, responses to allowed origins marked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cors {
    /// Origins allowed (`allowOrigin`'s exact strings among them; an exact `*` allows any).
    pub allow_origins: Vec<crate::config::model::StringMatch>,
    /// Header values as sent: comma-separated lists, empty when not set.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes on to the route (`unmatchedPreflights`
    /// unset or `FORWARD`), or is answered 200 without CORS headers (`IGNORE`).
    pub forward_unmatched_preflights: bool,
}

/// Faults injected into a route's requests before they are routed, as Envoy's fault filter:
/// first the delay, then the abort, each for its share of requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    pub fixed_ms: u64,
    /// Of requests, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    pub with: AbortWith,
    /// Of requests, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortWith {
    HttpStatus(u16),
    /// A gRPC status code (`grpc-status` of a trailers-only response).
    GrpcStatus(u8),
}

/// Bytes shown as text (invalid UTF-8 replaced) in `sluice plan` and `/config_dump`.
fn as_text<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retries {
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// A retry avoids the endpoints already tried.
    pub avoid_tried: bool,
}

/// One weighted destination of a route: a service port and the endpoints behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// The service port the route names.
    pub port: u16,
    /// Share of the route's traffic (the weights of a route need not add up to 100).
    pub weight: u32,
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`… from the DestinationRule.
    pub load_balancer: String,
    /// Session affinity from the DestinationRule's `consistentHash` (HTTP routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// Speak HTTP/2 to the endpoints: the service port's protocol is HTTP2 or GRPC, or the
    /// DestinationRule says `h2UpgradePolicy: UPGRADE` (HTTP routes).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// This destination's own header operations, applied after the route's (HTTP routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Passive outlier detection from the DestinationRule (HTTP routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierPolicy>,
    /// Circuit breakers and connection settings from the DestinationRule (HTTP routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolLimits>,
    /// TLS origination to the endpoints, from the DestinationRule (HTTP routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    pub endpoints: Vec<Endpoint>,
}

/// DestinationRule `tls` (SIMPLE or MUTUAL): how the gateway speaks TLS to the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpstreamTls {
    pub mutual: bool,
    /// ISTIO_MUTUAL: the mesh identity (`--mesh-identity-dir`) as client certificate and CA.
    pub mesh: bool,
    /// The client certificate and key files (MUTUAL), or a credential holding them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Verifies the endpoints' certificates; the system's CAs when none (nor a credential's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// The server name sent; the destination's host when not given.
    pub sni: String,
    pub insecure_skip_verify: bool,
}

/// DestinationRule `connectionPool` as Envoy's circuit breakers (per destination, over
/// every worker) and connection settings; Istio's defaults: no limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PoolLimits {
    /// Upstream HTTP/1.1 connections open at once (`tcp.maxConnections`).
    pub max_connections: u32,
    /// Requests waiting for one of them (`http.http1MaxPendingRequests`).
    pub max_pending: u32,
    /// Requests in progress (`http.http2MaxRequests`, Envoy's `max_requests`).
    pub max_requests: u32,
    /// Retries in progress (`http.maxRetries`).
    pub max_retries: u32,
    /// Requests one connection carries before it is closed; 0: no limit.
    pub max_requests_per_connection: u32,
    pub connect_timeout_ms: Option<u64>,
    /// An idle upstream connection is closed after this long (`http.idleTimeout`).
    pub idle_timeout_ms: Option<u64>,
    /// `tcp.tcpKeepalive`: idle time and probe interval in seconds, probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<(Option<u32>, Option<u32>, Option<u32>)>,
    /// `retryBudget` (in place of `max_retries`, as Envoy applies it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetLimit>,
}

impl PoolLimits {
    /// Istio's defaults: no limit.
    pub fn unlimited() -> PoolLimits {
        PoolLimits {
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: 0,
            connect_timeout_ms: None,
            idle_timeout_ms: None,
            keepalive: None,
            retry_budget: None,
        }
    }
}

/// Retries in progress may be `basis_points` hundredths of a percent of the requests in
/// progress, and always `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RetryBudgetLimit {
    pub basis_points: u32,
    pub min_retry_concurrency: u32,
}

/// DestinationRule `outlierDetection` with Istio's and Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierPolicy {
    /// Consecutive 5xx responses that eject an endpoint (connect failures, resets and
    /// timeouts count as 503/504 unless `split_local`); 0: not by 5xx.
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 and 504 responses (and local failures) that eject; 0: not used.
    pub consecutive_gateway: u32,
    /// Local failures counted apart from responses (`splitExternalLocalOriginErrors`),
    /// `consecutive_local` of them ejecting.
    pub split_local: bool,
    pub consecutive_local: u32,
    /// An endpoint's ejection count decays by one per interval without one.
    pub interval_ms: u64,
    /// An ejection lasts this times the endpoint's ejection count.
    pub base_ejection_ms: u64,
    /// At most this share of a destination's endpoints is ejected at once (one always may).
    pub max_ejection_percent: u32,
    /// Below this share of endpoints not ejected, every endpoint is used (panic); 0: never.
    pub min_health_percent: u32,
}

/// What a request is hashed on, and the structure the hash is looked up in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistentHash {
    pub key: HashKey,
    pub table: HashTable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    /// A cookie; with a `ttl`, a client without it is given one (Envoy's generated cookie).
    Cookie {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_s: Option<u64>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashTable {
    /// Ketama-style ring with at least this many points.
    Ring { minimum_size: u64 },
    /// Maglev lookup table of this many slots (a prime).
    Maglev { size: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TlsTermination {
    /// The SNI names this certificate serves (the server's hosts).
    pub hosts: Vec<String>,
    /// `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`.
    pub mode: String,
    /// One certificate, or two of different key types (`tlsCertificates`,
    /// `credentialNames`) chosen per handshake by what the client can verify.
    pub certificates: Vec<CertificateSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Client certificates are also checked against: revocation lists (a PEM file), and
    /// when any are given, one of these subject alternative names and one of the digests
    /// (both kinds validated: base64 SPKI, hex certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_spki: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_hash: Vec<String>,
    /// Lowest and highest TLS version, `1.2` or `1.3`.
    pub min_version: String,
    pub max_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    Files {
        certificate: String,
        private_key: String,
    },
    /// A named credential (`credentialName`), looked up by the daemon.
    Credential { name: String },
    /// The mesh workload identity (ISTIO_MUTUAL), files under `--mesh-identity-dir`.
    MeshIdentity,
}

/// A server or route the Plan does not serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub object: ObjectRef,
    pub path: String,
    pub code: &'static str,
    pub reason: String,
}
