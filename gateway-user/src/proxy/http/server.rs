//! The HTTP gateway's listeners and connections: serves the Plan's `Http` and `Https`
//! listeners (HTTP/1.1 and HTTP/2, h2c by prior knowledge, TLS terminated with rustls and
//! ALPN) within the limits of [`HttpOptions`] (connections, requests in flight, header size
//! and read time, streams per connection, idle time), and hands each request to
//! [`super::request::handle`].
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicI64},
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::Acceptor;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::LazyConfigAcceptor;

use super::{
    access_log::{Entry, Logged},
    activity::{Activity, Counting, Request as ActiveRequest},
    body::{Body, Counted},
    certificates::CertificateStore,
    client_cert,
    metrics::{Gauged, HttpMetrics, RouteMetrics},
    origination::TlsSources,
    records::Records,
    request::{Peer, handle, local},
    server_names::ListenerTls,
    table::CompiledRoute,
    table::HttpTable,
    upstream::Clients,
};
use crate::{
    compile::plan::{ListenerKind, Plan},
    proxy::{
        listeners::{ListenerSet, accept_each},
        workers::Workers,
    },
};

/// Listeners that could not be served, and why.
type Failures = Vec<(SocketAddr, anyhow::Error)>;

/// How the server treats connections and requests.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where `credentialName` certificates live (`<dir>/<name>/tls.crt`, `tls.key`).
    pub credentials: PathBuf,
    /// The mesh workload identity's files (ISTIO_MUTUAL servers).
    pub mesh_identity: Option<PathBuf>,
    /// The CAs that verify upstreams a DestinationRule's `tls` names none for.
    pub upstream_ca_file: Option<PathBuf>,
    /// The longest a client may take to send a request's headers, and the TLS handshake
    /// before them (slowloris). An HTTP/1.1 connection waiting for its next request is
    /// closed after this long too.
    pub header_read_timeout: Duration,
    /// A connection without a request in progress for this long is closed (HTTP/2 with a
    /// GOAWAY).
    pub idle_timeout: Duration,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2) accepted; bigger ones
    /// are answered 431.
    pub max_header_bytes: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Requests in progress at once; more are answered 503 (`x-envoy-overloaded`).
    pub max_requests: usize,
    /// Write an access-log line per request.
    pub access_log: bool,
}

/// What every connection of the proxy shares.
struct Shared {
    options: HttpOptions,
    /// One per worker: a pooled upstream connection stays with the worker that made it.
    clients: Vec<Arc<Clients>>,
    metrics: Arc<HttpMetrics>,
    connections: Arc<Semaphore>,
    requests: Semaphore,
}

/// One listener: its routes and, for HTTPS, its servers' TLS.
pub struct HttpListener {
    name: String,
    table: HttpTable,
    /// Requests no route took.
    unrouted: RouteMetrics,
    /// Requests in progress.
    active: Gauge<i64, AtomicI64>,
    connections: Gauge<i64, AtomicI64>,
    tls: Option<ListenerTls>,
    port: u16,
}

pub struct HttpProxy {
    listeners: ListenerSet<HttpListener>,
    workers: Arc<Workers>,
    shared: Arc<Shared>,
    metrics: Arc<HttpMetrics>,
    certificates: Arc<CertificateStore>,
    /// What destinations keep across reloads (outlier records, circuit breakers), and where
    /// TLS origination finds its certificates.
    records: Records,
    /// HTTPS servers left out of the last update because their TLS did not load.
    unserved: Failures,
}

impl HttpProxy {
    /// The proxy, serving connections on `workers`.
    pub fn new(
        metrics: Arc<HttpMetrics>,
        options: HttpOptions,
        workers: Arc<Workers>,
    ) -> HttpProxy {
        let records = Records::new(TlsSources {
            credentials: options.credentials.clone(),
            ca_file: options.upstream_ca_file.clone(),
            mesh_identity: options.mesh_identity.clone(),
        });
        HttpProxy {
            records,
            listeners: ListenerSet::new("HTTP"),
            certificates: CertificateStore::new(
                options.credentials.clone(),
                options.mesh_identity.clone(),
                metrics.clone(),
            ),
            shared: Arc::new(Shared {
                connections: Arc::new(Semaphore::new(options.max_connections)),
                requests: Semaphore::new(options.max_requests),
                options,
                clients: (0..workers.count())
                    .map(|_| Arc::new(Clients::default()))
                    .collect(),
                metrics: metrics.clone(),
            }),
            workers,
            metrics,
            unserved: Vec::new(),
        }
    }

    /// Watches certificate files from now on (needs the tokio runtime); returns what
    /// advances when they change.
    pub fn watch_certificates(&self) -> anyhow::Result<watch::Receiver<u64>> {
        self.certificates.watch()?;
        Ok(self.certificates.subscribe())
    }

    /// The Plan's HTTP listeners. An HTTPS server whose TLS does not load is left out with
    /// the reason, and the listener serves the others.
    fn wanted(&self, plan: &Plan) -> (Vec<(SocketAddr, HttpListener)>, Failures) {
        let mut wanted = Vec::new();
        let mut failed = Vec::new();
        for l in &plan.listeners {
            let (virtual_hosts, tls) = match &l.kind {
                ListenerKind::Http { virtual_hosts } => (virtual_hosts, None),
                ListenerKind::Https {
                    certificates,
                    virtual_hosts,
                } => {
                    let mut servers = Vec::new();
                    for termination in certificates {
                        match self.certificates.get(termination) {
                            Ok(loaded) => servers.push((termination.hosts.clone(), loaded)),
                            Err(e) => failed.push((
                                l.address(),
                                e.context(format!(
                                    "the TLS of the server for {:?}",
                                    termination.hosts
                                )),
                            )),
                        }
                    }
                    if servers.is_empty() {
                        continue;
                    }
                    (virtual_hosts, Some(ListenerTls::new(servers)))
                }
                _ => continue,
            };
            let name = l.address().to_string();
            wanted.push((
                l.address(),
                HttpListener {
                    table: HttpTable::new(virtual_hosts, &self.metrics, &self.records, &name),
                    unrouted: self.metrics.route(&name, "-"),
                    active: self.metrics.active(&name),
                    connections: self.metrics.connections(&name),
                    name,
                    tls,
                    port: l.port,
                },
            ));
        }
        (wanted, failed)
    }

    pub async fn close_unwanted(&mut self, plan: &Plan) {
        let keep: Vec<SocketAddr> = plan
            .listeners
            .iter()
            .filter(|l| {
                matches!(
                    l.kind,
                    ListenerKind::Http { .. } | ListenerKind::Https { .. }
                )
            })
            .map(|l| l.address())
            .collect();
        self.listeners.close_unless(|a| keep.contains(a)).await;
    }

    /// Binds and routes the Plan's HTTP listeners; returns those that could not be bound.
    /// Servers whose TLS did not load are in [`HttpProxy::unserved`].
    pub async fn update(&mut self, plan: &Plan) -> Failures {
        let (wanted, unserved) = self.wanted(plan);
        self.unserved = unserved;
        let (shared, workers) = (self.shared.clone(), self.workers.clone());
        self.listeners
            .update(wanted, |listener, address, routes| {
                accept_on_workers(listener, address, routes, shared.clone(), workers.clone())
            })
            .await
    }

    /// Why servers of the last update are not served (their TLS did not load).
    pub fn unserved(&self) -> &[(SocketAddr, anyhow::Error)] {
        &self.unserved
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.addresses()
    }
}

/// Accepts on every worker (each with its own copy of the listening socket) until aborted.
async fn accept_on_workers(
    listener: TcpListener,
    address: SocketAddr,
    routes: watch::Receiver<Arc<HttpListener>>,
    shared: Arc<Shared>,
    workers: Arc<Workers>,
) {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%address, "the HTTP listener cannot move to the workers: {e}");
            return;
        }
    };
    let _accepting = workers.spawn_each(|worker| {
        let copy = listener.try_clone();
        let (routes, shared) = (routes.clone(), shared.clone());
        async move {
            match copy.and_then(TcpListener::from_std) {
                Ok(listener) => accept_loop(listener, address, routes, shared, worker).await,
                Err(e) => tracing::error!(%address, worker, "HTTP worker cannot accept: {e}"),
            }
        }
    });
    drop(listener);
    // Until the listener is closed (this task aborted), which ends the workers' loops.
    std::future::pending::<()>().await;
}

async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    routes: watch::Receiver<Arc<HttpListener>>,
    shared: Arc<Shared>,
    worker: usize,
) {
    accept_each(listener, address, |stream, peer| {
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            // Over --http-max-connections: closed at once, as Envoy's connection limit does.
            shared.metrics.overloaded("connections");
            return None;
        };
        let (routes, shared) = (routes.clone(), shared.clone());
        Some(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let listener = routes.borrow().clone();
            let _connected = Gauged::new(&listener.connections);
            let Some(tls) = &listener.tls else {
                return serve(
                    stream,
                    Peer::new(peer, None),
                    "http",
                    routes,
                    shared,
                    worker,
                )
                .await;
            };
            // The handshake has the header read timeout too: a slow ClientHello is slowloris.
            let handshake = tokio::time::timeout(shared.options.header_read_timeout, async {
                let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
                    .await
                    .map_err(|_| "handshake")?;
                let config = tls
                    .config(start.client_hello().server_name())
                    .ok_or("no_server")?;
                start
                    .into_stream(config)
                    .await
                    .map_err(|e| client_cert::refusal(&e))
            });
            match handshake.await {
                Ok(Ok(stream)) => {
                    // Who the client is, once per connection (MUTUAL, OPTIONAL_MUTUAL).
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(client_cert::forwarded_client_cert);
                    let peer = Peer::new(peer, identity);
                    serve(stream, peer, "https", routes, shared, worker).await
                }
                Ok(Err(reason)) => {
                    shared.metrics.tls_refused(&listener.name, reason);
                    tracing::debug!(%peer, reason, "TLS connection refused");
                }
                Err(_) => shared.metrics.tls_refused(&listener.name, "timeout"),
            }
        })
    })
    .await;
}

async fn serve<I>(
    io: I,
    client: Peer,
    scheme: &'static str,
    routes: watch::Receiver<Arc<HttpListener>>,
    shared: Arc<Shared>,
    worker: usize,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let options = &shared.options;
    let streams = Arc::new(Activity::default());
    let io = TokioIo::new(Counting::new(io, streams.clone()));
    let peer = client.address;
    let client = Arc::new(client);
    let service = service_fn({
        let (shared, streams) = (shared.clone(), streams.clone());
        move |request: Request<Incoming>| {
            // The routes in force when the request arrived: a reload changes the next one.
            let listener = routes.borrow().clone();
            let (shared, streams, client) = (shared.clone(), streams.clone(), client.clone());
            async move {
                let _stream = ActiveRequest::begin(&streams);
                // Boxed: the request's future is several KiB, and HTTP/2 spawns one per
                // stream; moving a pointer is cheaper than copying it.
                let responded = Box::pin(respond(
                    request, &listener, &shared, &client, scheme, worker,
                ));
                Ok::<_, Infallible>(responded.await)
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(options.max_header_bytes.max(MIN_BUF_SIZE));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_header_list_size(options.max_header_bytes as u32);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let idle_timeout = options.idle_timeout;
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drained: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // hyper's own header timeout would run while a kept-alive connection waits for its next
    // request: this one starts with the head's first byte (or the connection, for the first).
    let header_timeout = options.header_read_timeout;
    let mut head_check = tokio::time::interval((header_timeout / 4).max(Duration::from_millis(20)));
    head_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut head_since: Option<Instant> = Some(Instant::now());
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = head_check.tick() => {
                if !streams.head_due() {
                    head_since = None;
                } else if head_since.get_or_insert_with(Instant::now).elapsed() >= header_timeout {
                    tracing::debug!(%peer, "request head not complete within the header timeout");
                    return;
                }
            }
            _ = check.tick(), if drained.is_none() => {
                if streams.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                    // Envoy's idle timeout: no request for this long. HTTP/1.1 is closed,
                    // HTTP/2 gets a GOAWAY and the drain time to finish.
                    connection.as_mut().graceful_shutdown();
                    drained = Some(Box::pin(tokio::time::sleep(DRAIN_TIME)));
                }
            }
            _ = async { drained.as_mut()?.await; Some(()) }, if drained.is_some() => {
                tracing::debug!(%peer, "HTTP connection closed at the end of its drain time");
                return;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// How long an HTTP/2 client has after a GOAWAY before its connection is closed
/// (Envoy's `drain_timeout`).
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// hyper's smallest HTTP/1.1 read buffer.
const MIN_BUF_SIZE: usize = 8192;

/// One request through the listener's routes, counted and logged; over
/// `--http-max-requests` in flight, a 503 as Envoy's overload manager answers.
async fn respond(
    mut request: Request<Incoming>,
    listener: &HttpListener,
    shared: &Shared,
    peer: &Peer,
    scheme: &'static str,
    worker: usize,
) -> Response<Body> {
    let started = Instant::now();
    let entry = shared.options.access_log.then(|| {
        // The log names the request by the id the upstream sees.
        if !request.headers().contains_key("x-request-id") {
            request
                .headers_mut()
                .insert("x-request-id", super::request::request_id());
        }
        Entry::begin(&request, &listener.name, peer.address)
    });
    let Ok(_permit) = shared.requests.try_acquire() else {
        shared.metrics.overloaded("requests");
        let mut response = local(StatusCode::SERVICE_UNAVAILABLE, "envoy overloaded");
        response
            .headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        listener
            .unrouted
            .record(503, started.elapsed().as_secs_f64());
        return logged(response, entry, "OM", None, None);
    };
    let received = entry.as_ref().map(Entry::received);
    let request = request.map(|body| Counted::new(body, received));
    let in_flight = Gauged::new(&listener.active);
    let (response, outcome) = handle(
        request,
        &listener.table,
        listener.port,
        peer,
        scheme,
        &shared.clients[worker],
    )
    .await;
    drop(in_flight);
    let status = response.status().as_u16();
    outcome
        .route
        .map_or(&listener.unrouted, |r| &r.metrics)
        .record(status, started.elapsed().as_secs_f64());
    logged(
        response,
        entry,
        outcome.flags,
        outcome.upstream,
        outcome.route,
    )
}

/// `response`, writing its access-log line once sent when there is an entry.
fn logged(
    response: Response<Body>,
    entry: Option<Entry>,
    flags: &'static str,
    upstream: Option<SocketAddr>,
    route: Option<&CompiledRoute>,
) -> Response<Body> {
    let Some(entry) = entry else {
        return response;
    };
    let route = route.map_or_else(|| "-".to_owned(), |r| r.route.origin.to_string());
    let entry = entry.answered(response.status().as_u16(), flags, upstream, route);
    response.map(|body| http_body_util::BodyExt::boxed(Logged::new(body, entry)))
}
