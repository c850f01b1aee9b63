//! The TLS passthrough server: accepts on every `SniRoute` listener of the Plan, reads the
//! ClientHello without consuming it (within `--client-hello-timeout`), picks the route by
//! its server name and an endpoint with the same Maglev choice as the L4 path, connects,
//! and hands both sockets to the byte path. The ClientHello is still in the client's
//! receive queue, so the byte path delivers it to the backend like every later byte.
use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::socket::{MsgFlags, recv};
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
    compile::plan::{ListenerKind, Plan, RouteOrigin},
    proxy::{
        listeners::{ListenerSet, accept_each},
        relay::{self, Relayed},
    },
    select::{BackendSet, BackendSets},
};

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct SniOptions {
    /// The longest a client may take to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// The longest connecting to a backend may take.
    pub connect_timeout: Duration,
    /// How the bytes travel after the decision.
    pub mode: relay::Mode,
}

/// One listener's routes, swapped whole on reload.
#[derive(Debug, Default)]
pub struct SniListener {
    table: SniTable,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    /// `namespace/name:path` of the rule, for metrics and the access log.
    label: String,
    backends: Option<Arc<BackendSet>>,
}

pub fn route_label(origin: &RouteOrigin) -> String {
    format!(
        "{}/{}:{}",
        origin.object.namespace, origin.object.name, origin.path
    )
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

    fn wanted(plan: &Plan, sets: &BackendSets) -> Vec<(SocketAddr, SniListener)> {
        plan.listeners
            .iter()
            .filter_map(|l| {
                let ListenerKind::SniRoute { routes } = &l.kind else {
                    return None;
                };
                let listener = SniListener {
                    table: SniTable::new(routes),
                    routes: routes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| Route {
                            label: route_label(&r.origin),
                            backends: sets.get(l.address(), i),
                        })
                        .collect(),
                };
                Some((l.address(), listener))
            })
            .collect()
    }

    /// Closes the listeners `plan` no longer has.
    pub async fn close_unwanted(&mut self, plan: &Plan) {
        let wanted = Self::wanted(plan, &BackendSets::default());
        self.listeners
            .close_unless(|a| wanted.iter().any(|(w, _)| w == a))
            .await;
    }

    /// Binds and routes the Plan's SNI listeners; returns those that could not be bound.
    pub async fn update(
        &mut self,
        plan: &Plan,
        sets: &BackendSets,
    ) -> Vec<(SocketAddr, anyhow::Error)> {
        let (metrics, options) = (self.metrics.clone(), self.options);
        self.listeners
            .update(Self::wanted(plan, sets), |listener, address, routes| {
                accept_loop(listener, address, routes, metrics.clone(), options)
            })
            .await
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.addresses()
    }
}

async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    routes: watch::Receiver<Arc<SniListener>>,
    metrics: Arc<SniMetrics>,
    options: SniOptions,
) {
    accept_each(listener, address, |client, peer| {
        let routes = routes.borrow().clone();
        Some(serve(
            client,
            peer,
            address,
            routes,
            metrics.clone(),
            options,
        ))
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
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed | Failure::Io(_) => "closed",
            Failure::Refused(r) => r.label(),
            Failure::NoSni => "no_sni",
            Failure::NoRoute => "no_route",
            Failure::NoBackend => "no_backend",
        }
    }
}

/// One access-log record (target `access`): a line per connection.
struct Access<'a> {
    client: SocketAddr,
    listener: SocketAddr,
    sni: Option<&'a str>,
    route: &'a str,
    backend: Option<SocketAddr>,
    started: Instant,
}

impl Access<'_> {
    fn log(&self, relayed: Option<&Relayed>, result: &str) {
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
    metrics: Arc<SniMetrics>,
    options: SniOptions,
) {
    let mut access = Access {
        client: peer,
        listener,
        sni: None,
        route: "-",
        backend: None,
        started: Instant::now(),
    };
    let refuse = |failure: Failure, access: &Access<'_>| {
        metrics
            .handshake_failures
            .get_or_create(&FailureLabels {
                listener: listener.to_string(),
                reason: failure.reason(),
            })
            .inc();
        let result = match &failure {
            Failure::Refused(r) => format!("{}: {r}", failure.reason()),
            Failure::Io(e) => format!("closed: {e}"),
            _ => failure.reason().to_owned(),
        };
        access.log(None, &result);
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
    let Some(backend) = route
        .backends
        .as_ref()
        .and_then(|set| set.pick(peer, listener))
    else {
        return refuse(Failure::NoBackend, &access);
    };
    access.backend = Some(backend);
    let labels = BackendLabels {
        listener: listener.to_string(),
        route: route.label.clone(),
        backend: backend.to_string(),
    };
    let upstream =
        match tokio::time::timeout(options.connect_timeout, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics.connect_failures.get_or_create(&labels).inc();
                return access.log(None, &format!("connect failed: {e}"));
            }
            Err(_) => {
                metrics.connect_failures.get_or_create(&labels).inc();
                return access.log(None, "connect failed: timed out");
            }
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    metrics.connections.get_or_create(&labels).inc();
    let active = RouteLabels {
        listener: labels.listener.clone(),
        route: labels.route.clone(),
    };
    metrics.active.get_or_create(&active).inc();
    let relayed = relay::relay(client, upstream, options.mode).await;
    metrics.active.get_or_create(&active).dec();
    for (direction, bytes) in [
        ("upstream", relayed.upstream),
        ("downstream", relayed.downstream),
    ] {
        let labels = BytesLabels {
            listener: labels.listener.clone(),
            route: labels.route.clone(),
            backend: labels.backend.clone(),
            direction,
        };
        metrics.bytes.get_or_create(&labels).inc_by(bytes);
    }
    let result = relayed.error.as_deref().unwrap_or("closed");
    access.log(Some(&relayed), result);
}

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
                        set_rcvlowat(fd, needed)?;
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
        && let Err(e) = set_rcvlowat(fd, 1)
    {
        return Err(Failure::Io(e));
    }
    result
}

/// `SO_RCVLOWAT`: the bytes a TCP socket must hold before it reads as readable (nix has no
/// wrapper for it).
fn set_rcvlowat(fd: std::os::fd::RawFd, bytes: usize) -> io::Result<()> {
    let value = nix::libc::c_int::try_from(bytes).unwrap_or(nix::libc::c_int::MAX);
    // SAFETY: `fd` is an open socket borrowed for the call; the option value is a c_int
    // that lives across it, with its size passed alongside.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            nix::libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
