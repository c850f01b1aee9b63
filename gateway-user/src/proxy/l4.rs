//! The userspace L4 forwarder: serves every `L4Forward` listener of the Plan with tokio,
//! choosing backends exactly as the kernel does (same flow hash, same Maglev table). It runs
//! in userspace mode, and in kernel mode until the XDP NAT path takes over those listeners.
//! A new Plan binds new listeners, closes removed ones, and swaps routes atomically;
//! connections keep the backend they started with, or with `--l4-backend-removal reset` are
//! reset when it leaves their listener's route (or the listener goes), as in the kernel.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::os::fd::AsRawFd as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use super::{
    listeners::{ListenerSet, accept_each},
    relay::{self, RelayOptions},
};
use crate::{
    compile::plan::{ListenerKind, Plan},
    select::{BackendRemoval, BackendSet, BackendSets},
};

/// How the userspace forwarder treats connections (flags of `sluice run`).
#[derive(Debug, Clone, Copy)]
pub struct L4Options {
    /// What happens to connections whose backend leaves the route.
    pub removal: BackendRemoval,
    /// A connection with no byte moved either way for this long is closed.
    pub idle_timeout: std::time::Duration,
    /// Connections forwarded at once, over every listener; more are closed as accepted.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    pub listener: String,
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    pub backend: String,
    /// `upstream` (client to backend) or `downstream`.
    pub direction: String,
}

/// Counters of the userspace L4 forwarder.
#[derive(Debug, Default)]
pub struct L4Metrics {
    pub connections: Family<BackendLabels, Counter>,
    pub connect_failures: Family<BackendLabels, Counter>,
    pub reset: Family<BackendLabels, Counter>,
    pub no_route: Family<ListenerLabels, Counter>,
    pub active: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    pub bytes: Family<BytesLabels, Counter<u64, AtomicU64>>,
    pub overloaded: Family<ListenerLabels, Counter>,
    pub idle_closed: Family<ListenerLabels, Counter>,
}

impl L4Metrics {
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let l4 = registry.sub_registry_with_prefix("l4");
        l4.register(
            "connections",
            "Connections forwarded, by listener and backend",
            self.connections.clone(),
        );
        l4.register(
            "connect_failures",
            "Connections whose backend could not be reached",
            self.connect_failures.clone(),
        );
        l4.register(
            "connections_reset",
            "Connections reset because their backend left the route (--l4-backend-removal reset)",
            self.reset.clone(),
        );
        l4.register(
            "no_route",
            "Connections refused because the listener has no route or backend",
            self.no_route.clone(),
        );
        l4.register(
            "active_connections",
            "Connections open now, by listener",
            self.active.clone(),
        );
        l4.register(
            "bytes",
            "Bytes forwarded, by listener, backend and direction (counted as they move)",
            self.bytes.clone(),
        );
        l4.register(
            "overloaded",
            "Connections closed as accepted because --l4-max-connections were open",
            self.overloaded.clone(),
        );
        l4.register(
            "idle_closed",
            "Connections closed after --l4-idle-timeout without a byte either way",
            self.idle_closed.clone(),
        );
    }
}

/// What one listener forwards to; swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Route {
    backends: Option<Arc<BackendSet>>,
}

pub struct L4Proxy {
    listeners: ListenerSet<Route>,
    metrics: Arc<L4Metrics>,
    options: L4Options,
    /// One permit per open connection, over every listener.
    slots: Arc<Semaphore>,
}

impl L4Proxy {
    pub fn new(metrics: Arc<L4Metrics>, options: L4Options) -> L4Proxy {
        L4Proxy {
            listeners: ListenerSet::new("L4"),
            metrics,
            slots: Arc::new(Semaphore::new(options.max_connections)),
            options,
        }
    }

    /// The Plan's L4 listeners and their routes.
    fn wanted(plan: &Plan, sets: &BackendSets) -> Vec<(SocketAddr, Route)> {
        plan.listeners
            .iter()
            .filter(|l| matches!(l.kind, ListenerKind::L4Forward { .. }))
            .map(|l| {
                let route = Route {
                    backends: sets.get(l.address(), 0),
                };
                (l.address(), route)
            })
            .collect()
    }

    /// Closes the listeners `plan` no longer has (first, so another server may take their
    /// address).
    pub async fn close_unwanted(&mut self, plan: &Plan) {
        let wanted = Self::wanted(plan, &BackendSets::default());
        self.listeners
            .close_unless(|a| wanted.iter().any(|(w, _)| w == a))
            .await;
    }

    /// Binds and routes the Plan's L4 listeners. Returns the listeners that could not be
    /// bound (the others are served).
    pub async fn update(
        &mut self,
        plan: &Plan,
        sets: &BackendSets,
    ) -> Vec<(SocketAddr, anyhow::Error)> {
        let (metrics, options, slots) = (self.metrics.clone(), self.options, self.slots.clone());
        self.listeners
            .update(Self::wanted(plan, sets), |listener, address, route| {
                accept_loop(
                    listener,
                    address,
                    route,
                    metrics.clone(),
                    options,
                    slots.clone(),
                )
            })
            .await
    }

    /// The addresses being served.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.addresses()
    }
}

async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    route: watch::Receiver<Arc<Route>>,
    metrics: Arc<L4Metrics>,
    options: L4Options,
    slots: Arc<Semaphore>,
) {
    let listener_label = ListenerLabels {
        listener: address.to_string(),
    };
    accept_each(listener, address, |client, peer| {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.overloaded.get_or_create(&listener_label).inc();
            return None; // dropping the stream closes it
        };
        let current = route.borrow().clone();
        let choices = current
            .backends
            .as_ref()
            .map(|b| b.choices(peer, address, CONNECT_ATTEMPTS))
            .unwrap_or_default();
        if choices.is_empty() {
            metrics.no_route.get_or_create(&listener_label).inc();
            return None;
        }
        let metrics = metrics.clone();
        let listener_label = listener_label.clone();
        // Watched only when removals reset: otherwise nothing after the pick matters.
        let removed = (options.removal == BackendRemoval::Reset).then(|| route.clone());
        Some(async move {
            metrics.active.get_or_create(&listener_label).inc();
            forward(client, address, &choices, &metrics, removed, options).await;
            metrics.active.get_or_create(&listener_label).dec();
            drop(slot);
        })
    })
    .await;
}

/// Resolves when `backend` is no longer in the route, or the listener is gone.
async fn backend_removed(mut route: watch::Receiver<Arc<Route>>, backend: SocketAddr) {
    while route.changed().await.is_ok() {
        let gone = !route
            .borrow()
            .backends
            .as_ref()
            .is_some_and(|set| set.contains(backend));
        if gone {
            return;
        }
    }
}

/// Endpoints tried per connection: the kernel's choice, then the next ones in its Maglev
/// table (HAProxy's `retries` with `redispatch`; Envoy's tcp_proxy tries once by default).
const CONNECT_ATTEMPTS: usize = 3;

/// Connects to the first of `choices` that answers; each that does not is counted.
async fn connect_first(
    listener: SocketAddr,
    choices: &[SocketAddr],
    metrics: &L4Metrics,
) -> Option<(SocketAddr, TcpStream)> {
    for backend in choices {
        match super::dial(*backend).await {
            Ok(stream) => return Some((*backend, stream)),
            Err(e) => {
                tracing::debug!(%listener, %backend, error = %e, "backend connect failed");
                let labels = BackendLabels {
                    listener: listener.to_string(),
                    backend: backend.to_string(),
                };
                metrics.connect_failures.get_or_create(&labels).inc();
            }
        }
    }
    None
}

async fn forward(
    client: TcpStream,
    listener: SocketAddr,
    choices: &[SocketAddr],
    metrics: &L4Metrics,
    removed: Option<watch::Receiver<Arc<Route>>>,
    options: L4Options,
) {
    let Some((backend, upstream)) = connect_first(listener, choices, metrics).await else {
        return;
    };
    let labels = BackendLabels {
        listener: listener.to_string(),
        backend: backend.to_string(),
    };
    metrics.connections.get_or_create(&labels).inc();
    let _ = client.set_nodelay(true);
    let bytes = |direction: &str| {
        metrics
            .bytes
            .get_or_create(&BytesLabels {
                listener: labels.listener.clone(),
                backend: labels.backend.clone(),
                direction: direction.into(),
            })
            .clone()
    };
    let relay_options = RelayOptions {
        idle_timeout: Some(options.idle_timeout),
        shared: [Some(bytes("upstream")), Some(bytes("downstream"))],
    };
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let relayed = relay::relay_with(client, upstream, &relay::Mode::Copy, &relay_options);
    let ended = match removed {
        None => Some(relayed.await),
        Some(route) => tokio::select! {
            relayed = relayed => Some(relayed),
            () = async {
                backend_removed(route, backend).await;
                // Set while the relay still holds both sockets open: their close (when the
                // relay is dropped) then sends RST.
                for fd in fds {
                    let _ = relay::set_zero_linger(fd);
                }
            } => None,
        },
    };
    match ended {
        Some(relayed) => match relayed.error {
            Some(e) if e.starts_with("idle for") => {
                let listener_label = ListenerLabels {
                    listener: labels.listener.clone(),
                };
                metrics.idle_closed.get_or_create(&listener_label).inc();
                tracing::debug!(%listener, %backend, "closed: {e}");
            }
            Some(e) => {
                tracing::debug!(%listener, %backend, error = %e, "connection ended with an error")
            }
            None => {}
        },
        None => {
            metrics.reset.get_or_create(&labels).inc();
            tracing::debug!(%listener, %backend, "reset: the backend left the route");
        }
    }
}
