//! The TLS passthrough server: accepts on every `SniRoute` listener of the Plan, reads the
//! ClientHello without consuming it (within `--client-hello-timeout`), picks the route by
//! its server name and an endpoint with the same Maglev choice as the L4 path, connects,
//! and hands both sockets to the byte path. The ClientHello is still in the client's
//! receive queue, so the byte path delivers it to the backend like every later byte.
use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64},
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{MsgFlags, recv};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::Interest,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{
    client_hello::{self, ClientHello, MAX_CLIENT_HELLO, Parsed, Refusal},
    metrics::{BackendLabels, BytesLabels, FailureLabels, RouteLabels, SniMetrics},
    table::SniTable,
};
use crate::{
    compile::plan::{ListenerKind, Plan},
    proxy::{
        listeners::{ListenerSet, accept_each},
        relay::{self, Relayed},
    },
    select::{BackendSet, BackendSets},
};

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct SniOptions {
    /// The longest a client may take to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// The longest connecting to a backend may take.
    pub connect_timeout: Duration,
    /// How the bytes travel after the decision.
    pub mode: relay::Mode,
    /// Write an access-log line per connection (`--access-log`).
    pub access_log: bool,
}

/// One listener's routes, swapped whole on reload.
pub struct SniListener {
    table: SniTable,
    routes: Vec<Route>,
    /// Refusals by [`Failure::index`].
    failures: [Counter; Failure::COUNT],
}

struct Route {
    /// `namespace/name:path` of the rule, for metrics and the access log.
    label: String,
    backends: Option<Arc<BackendSet>>,
    active: Gauge<i64, AtomicI64>,
    /// The metrics of each endpoint of `backends`, in its order: resolved when the route is
    /// built, so a connection only increments atomics.
    endpoints: Vec<EndpointMetrics>,
}

struct EndpointMetrics {
    connections: Counter,
    connect_failures: Counter,
    upstream: Counter<u64, AtomicU64>,
    downstream: Counter<u64, AtomicU64>,
}

pub struct SniProxy {
    listeners: ListenerSet<SniListener>,
    metrics: Arc<SniMetrics>,
    options: SniOptions,
}

impl SniProxy {
    pub fn new(metrics: Arc<SniMetrics>, options: SniOptions) -> SniProxy {
        SniProxy {
            listeners: ListenerSet::new("SNI"),
            metrics,
            options,
        }
    }

    fn wanted(&self, plan: &Plan, sets: &BackendSets) -> Vec<(SocketAddr, SniListener)> {
        plan.listeners
            .iter()
            .filter_map(|l| {
                let ListenerKind::SniRoute { routes } = &l.kind else {
                    return None;
                };
                let address = l.address();
                let listener = SniListener {
                    table: SniTable::new(routes),
                    routes: routes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            self.route(address, r.origin.to_string(), sets.get(address, i))
                        })
                        .collect(),
                    failures: Failure::REASONS.map(|reason| {
                        let labels = FailureLabels {
                            listener: address.to_string(),
                            reason,
                        };
                        self.metrics
                            .handshake_failures
                            .get_or_create(&labels)
                            .clone()
                    }),
                };
                Some((address, listener))
            })
            .collect()
    }

    fn route(
        &self,
        listener: SocketAddr,
        label: String,
        backends: Option<Arc<BackendSet>>,
    ) -> Route {
        let metrics = &self.metrics;
        let route_labels = RouteLabels {
            listener: listener.to_string(),
            route: label.clone(),
        };
        let endpoints = backends
            .iter()
            .flat_map(|set| set.endpoints.iter())
            .map(|endpoint| {
                let labels = BackendLabels {
                    listener: route_labels.listener.clone(),
                    route: label.clone(),
                    backend: endpoint.to_string(),
                };
                let bytes = |direction| {
                    let labels = BytesLabels {
                        listener: labels.listener.clone(),
                        route: labels.route.clone(),
                        backend: labels.backend.clone(),
                        direction,
                    };
                    metrics.bytes.get_or_create(&labels).clone()
                };
                EndpointMetrics {
                    connections: metrics.connections.get_or_create(&labels).clone(),
                    connect_failures: metrics.connect_failures.get_or_create(&labels).clone(),
                    upstream: bytes("upstream"),
                    downstream: bytes("downstream"),
                }
            })
            .collect();
        Route {
            active: metrics.active.get_or_create(&route_labels).clone(),
            label,
            backends,
            endpoints,
        }
    }

    /// Closes the listeners `plan` no longer has.
    pub async fn close_unwanted(&mut self, plan: &Plan) {
        let keep: Vec<SocketAddr> = plan
            .listeners
            .iter()
            .filter(|l| matches!(l.kind, ListenerKind::SniRoute { .. }))
            .map(|l| l.address())
            .collect();
        self.listeners.close_unless(|a| keep.contains(a)).await;
    }

    /// Binds and routes the Plan's SNI listeners; returns those that could not be bound.
    pub async fn update(
        &mut self,
        plan: &Plan,
        sets: &BackendSets,
    ) -> Vec<(SocketAddr, anyhow::Error)> {
        let options = Arc::new(self.options.clone());
        let wanted = self.wanted(plan, sets);
        self.listeners
            .update(wanted, |listener, address, routes| {
                accept_loop(listener, address, routes, options.clone())
            })
            .await
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.addresses()
    }

    /// The byte path's name, as `/config_dump` shows it.
    pub fn byte_path(&self) -> String {
        format!("{:?}", self.options.mode)
    }
}

async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    routes: watch::Receiver<Arc<SniListener>>,
    options: Arc<SniOptions>,
) {
    accept_each(listener, address, |client, peer| {
        let routes = routes.borrow().clone();
        Some(serve(client, peer, address, routes, options.clone()))
    })
    .await;
}

/// Why a connection got no backend.
#[derive(Debug)]
enum Failure {
    Timeout,
    Closed,
    Refused(Refusal),
    NoSni,
    NoRoute,
    NoBackend,
    Io(io::Error),
}

impl Failure {
    const COUNT: usize = 8;
    /// The metric labels, by [`Failure::index`].
    const REASONS: [&'static str; Failure::COUNT] = [
        "timeout",
        "closed",
        "not_tls",
        "too_large",
        "malformed",
        "no_sni",
        "no_route",
        "no_backend",
    ];

    fn index(&self) -> usize {
        match self {
            Failure::Timeout => 0,
            Failure::Closed | Failure::Io(_) => 1,
            Failure::Refused(Refusal::NotTls) => 2,
            Failure::Refused(Refusal::TooLarge) => 3,
            Failure::Refused(Refusal::Malformed(_)) => 4,
            Failure::NoSni => 5,
            Failure::NoRoute => 6,
            Failure::NoBackend => 7,
        }
    }

    fn reason(&self) -> &'static str {
        Failure::REASONS[self.index()]
    }
}

/// One access-log record (target `access`): a line per connection.
struct Access<'a> {
    enabled: bool,
    client: SocketAddr,
    listener: SocketAddr,
    sni: Option<&'a str>,
    route: &'a str,
    backend: Option<SocketAddr>,
    started: Instant,
}

impl Access<'_> {
    fn log(&self, relayed: Option<&Relayed>, result: &str) {
        if !self.enabled {
            return;
        }
        let (up, down) = relayed.map_or((0, 0), |r| (r.upstream, r.downstream));
        tracing::info!(
            target: "access",
            client = %self.client,
            listener = %self.listener,
            sni = self.sni.unwrap_or("-"),
            route = self.route,
            backend = %self.backend.map_or_else(|| "-".to_owned(), |b| b.to_string()),
            bytes_upstream = up,
            bytes_downstream = down,
            duration_ms = self.started.elapsed().as_millis() as u64,
            result,
            "tls passthrough"
        );
    }
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    routes: Arc<SniListener>,
    options: Arc<SniOptions>,
) {
    let mut access = Access {
        enabled: options.access_log,
        client: peer,
        listener,
        sni: None,
        route: "-",
        backend: None,
        started: Instant::now(),
    };
    let refuse = |failure: Failure, access: &Access<'_>| {
        routes.failures[failure.index()].inc();
        if access.enabled {
            let result = match &failure {
                Failure::Refused(r) => format!("{}: {r}", failure.reason()),
                Failure::Io(e) => format!("closed: {e}"),
                _ => failure.reason().to_owned(),
            };
            access.log(None, &result);
        }
    };
    let hello = match tokio::time::timeout(options.hello_timeout, read_hello(&client)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(failure)) => return refuse(failure, &access),
        Err(_) => return refuse(Failure::Timeout, &access),
    };
    access.sni = hello.server_name.as_deref();
    let Some(index) = routes.table.lookup(access.sni) else {
        let failure = if access.sni.is_none() {
            Failure::NoSni
        } else {
            Failure::NoRoute
        };
        return refuse(failure, &access);
    };
    let Some(route) = routes.routes.get(index) else {
        return refuse(Failure::NoRoute, &access);
    };
    access.route = &route.label;
    // The kernel's pick first, then the next endpoints of the Maglev table when one
    // refuses (as the L4 forwarder does).
    let choices: Vec<(SocketAddr, &EndpointMetrics)> = route
        .backends
        .as_ref()
        .map(|set| {
            set.choice_indexes(peer, listener, CONNECT_ATTEMPTS)
                .into_iter()
                .filter_map(|i| Some((*set.endpoints.get(i)?, route.endpoints.get(i)?)))
                .collect()
        })
        .unwrap_or_default();
    if choices.is_empty() {
        return refuse(Failure::NoBackend, &access);
    }
    let mut connected = None;
    let mut failure = String::new();
    for (backend, metrics) in choices {
        access.backend = Some(backend);
        match tokio::time::timeout(options.connect_timeout, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => {
                connected = Some((stream, metrics));
                break;
            }
            Ok(Err(e)) => failure = format!("connect failed: {e}"),
            Err(_) => failure = "connect failed: timed out".to_owned(),
        }
        metrics.connect_failures.inc();
    }
    let Some((upstream, metrics)) = connected else {
        return access.log(None, &failure);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    metrics.connections.inc();
    route.active.inc();
    let relayed = relay::relay(client, upstream, &options.mode).await;
    route.active.dec();
    metrics.upstream.inc_by(relayed.upstream);
    metrics.downstream.inc_by(relayed.downstream);
    let result = relayed.error.as_deref().unwrap_or("closed");
    access.log(Some(&relayed), result);
}

/// Endpoints tried per connection before the client's is closed.
const CONNECT_ATTEMPTS: usize = 3;

/// Waits until the client's receive queue holds a whole ClientHello, without consuming
/// it. While incomplete, `SO_RCVLOWAT` is set to the length the parser needs next, so the
/// socket wakes the task once per record rather than per segment; it is reset before
/// returning, since the byte path reads from the same socket.
async fn read_hello(stream: &TcpStream) -> Result<ClientHello, Failure> {
    let mut buffer = vec![0u8; MAX_CLIENT_HELLO];
    let fd = stream.as_raw_fd();
    let mut low_water = 1usize;
    let result = loop {
        let ready = match stream.ready(Interest::READABLE).await {
            Ok(ready) => ready,
            Err(e) => break Err(Failure::Io(e)),
        };
        let step = stream.try_io(Interest::READABLE, || {
            let n = recv(fd, &mut buffer, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)?;
            if n == 0 {
                return Ok(Err(Failure::Closed));
            }
            match client_hello::parse(&buffer[..n]) {
                Ok(Parsed::Complete(hello)) => Ok(Ok(hello)),
                Err(refusal) => Ok(Err(Failure::Refused(refusal))),
                Ok(Parsed::Incomplete { .. }) if n >= MAX_CLIENT_HELLO => {
                    Ok(Err(Failure::Refused(Refusal::TooLarge)))
                }
                Ok(Parsed::Incomplete { needed }) => {
                    let needed = needed.min(MAX_CLIENT_HELLO);
                    if needed != low_water {
                        relay::set_rcvlowat(fd, needed)?;
                        low_water = needed;
                    }
                    // Clears the readiness: the task sleeps until more has arrived.
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
        });
        match step {
            Ok(outcome) => break outcome,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    break Err(Failure::Closed);
                }
            }
            Err(e) => break Err(Failure::Io(e)),
        }
    };
    if low_water != 1
        && let Err(e) = relay::set_rcvlowat(fd, 1)
    {
        return Err(Failure::Io(e));
    }
    result
}
