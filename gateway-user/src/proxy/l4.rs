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
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::listeners::{ListenerSet, accept_each};
use crate::{
    compile::plan::{ListenerKind, Plan},
    select::{BackendRemoval, BackendSet, BackendSets},
};

/// Bytes moved per read in each direction. tokio's default (8 KiB) made a bulk stream cost a
/// syscall pair per 8 KiB, a quarter of what the peers reach on one core (`cargo xtask bench`);
/// 64 KiB matches a GSO segment. Memory: 128 KiB per open connection.
const COPY_BUFFER: usize = 64 * 1024;

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
            "Bytes forwarded, by listener, backend and direction",
            self.bytes.clone(),
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
    removal: BackendRemoval,
}

impl L4Proxy {
    pub fn new(metrics: Arc<L4Metrics>, removal: BackendRemoval) -> L4Proxy {
        L4Proxy {
            listeners: ListenerSet::new("L4"),
            metrics,
            removal,
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
        let (metrics, removal) = (self.metrics.clone(), self.removal);
        self.listeners
            .update(Self::wanted(plan, sets), |listener, address, route| {
                accept_loop(listener, address, route, metrics.clone(), removal)
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
    removal: BackendRemoval,
) {
    let listener_label = ListenerLabels {
        listener: address.to_string(),
    };
    accept_each(listener, address, |client, peer| {
        let current = route.borrow().clone();
        let Some(backend) = current
            .backends
            .as_ref()
            .and_then(|b| b.pick(peer, address))
        else {
            metrics.no_route.get_or_create(&listener_label).inc();
            return None; // dropping the stream closes it
        };
        let metrics = metrics.clone();
        let listener_label = listener_label.clone();
        // Watched only when removals reset: otherwise nothing after the pick matters.
        let removed = (removal == BackendRemoval::Reset).then(|| route.clone());
        Some(async move {
            metrics.active.get_or_create(&listener_label).inc();
            forward(client, address, backend, &metrics, removed).await;
            metrics.active.get_or_create(&listener_label).dec();
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

async fn forward(
    mut client: TcpStream,
    listener: SocketAddr,
    backend: SocketAddr,
    metrics: &L4Metrics,
    removed: Option<watch::Receiver<Arc<Route>>>,
) {
    let labels = BackendLabels {
        listener: listener.to_string(),
        backend: backend.to_string(),
    };
    let mut upstream = match super::dial(backend).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%listener, %backend, error = %e, "backend connect failed");
            metrics.connect_failures.get_or_create(&labels).inc();
            return;
        }
    };
    metrics.connections.get_or_create(&labels).inc();
    let _ = client.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    );
    let copied = match removed {
        None => Some(copy.await),
        Some(route) => tokio::select! {
            copied = copy => Some(copied),
            () = backend_removed(route, backend) => None,
        },
    };
    let (up, down) = match copied {
        Some(Ok(counts)) => counts,
        Some(Err(e)) => {
            tracing::debug!(%listener, %backend, error = %e, "connection ended with an error");
            (0, 0)
        }
        None => {
            // A zero linger makes close send RST, as the kernel path's stack does for a
            // connection it no longer tracks. Bytes of a reset connection are not counted.
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
            metrics.reset.get_or_create(&labels).inc();
            tracing::debug!(%listener, %backend, "reset: the backend left the route");
            (0, 0)
        }
    };
    let bytes = |direction: &str| BytesLabels {
        listener: labels.listener.clone(),
        backend: labels.backend.clone(),
        direction: direction.into(),
    };
    metrics.bytes.get_or_create(&bytes("upstream")).inc_by(up);
    metrics
        .bytes
        .get_or_create(&bytes("downstream"))
        .inc_by(down);
}
