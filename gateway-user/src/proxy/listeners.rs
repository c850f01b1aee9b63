//! The listening sockets of one userspace server and the route each one serves. A new Plan
//! closes the listeners it no longer has, binds the new ones and swaps the routes of the
//! others atomically; connections already accepted keep the route they started with.
use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
    task::JoinHandle,
};

/// Accept backlog of every listener.
const BACKLOG: u32 = 4096;

struct Running<R> {
    route: watch::Sender<Arc<R>>,
    accept: JoinHandle<()>,
}

/// Listeners of one kind (`kind` names them in logs) with routes of type `R`.
pub struct ListenerSet<R> {
    kind: &'static str,
    running: HashMap<SocketAddr, Running<R>>,
}

impl<R: Send + Sync + 'static> ListenerSet<R> {
    pub fn new(kind: &'static str) -> ListenerSet<R> {
        ListenerSet {
            kind,
            running: HashMap::new(),
        }
    }

    /// Closes the listeners `keep` rejects and waits until their sockets are closed, so
    /// another server can bind the address next. Accepted connections run to their end.
    pub async fn close_unless(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|address| !keep(address))
            .copied()
            .collect();
        for address in gone {
            if let Some(running) = self.running.remove(&address) {
                running.accept.abort();
                // Resolves once the task, and with it the listening socket, is dropped.
                let _ = running.accept.await;
                tracing::info!(%address, kind = self.kind, "listener closed");
            }
        }
    }

    /// Gives every address of `wanted` its route: running listeners get the new route,
    /// new ones are bound and served by `serve(listener, address, route)`. Returns the
    /// addresses that could not be bound, with why.
    pub async fn update<F, Fut>(
        &mut self,
        wanted: Vec<(SocketAddr, R)>,
        serve: F,
    ) -> Vec<(SocketAddr, anyhow::Error)>
    where
        F: Fn(TcpListener, SocketAddr, watch::Receiver<Arc<R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut failures = Vec::new();
        for (address, route) in wanted {
            let route = Arc::new(route);
            if let Some(running) = self.running.get(&address) {
                running.route.send_replace(route);
                continue;
            }
            match bind(address) {
                Ok(listener) => {
                    let (tx, rx) = watch::channel(route);
                    let accept = tokio::spawn(serve(listener, address, rx));
                    tracing::info!(%address, kind = self.kind, "listener bound");
                    self.running.insert(address, Running { route: tx, accept });
                }
                Err(e) => failures.push((address, e)),
            }
        }
        failures
    }

    /// The addresses being served, sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut addresses: Vec<SocketAddr> = self.running.keys().copied().collect();
        addresses.sort();
        addresses
    }
}

impl<R> Drop for ListenerSet<R> {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.accept.abort();
        }
    }
}

fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(|| format!("creating a socket for {address}"))?;
    // Rebinding a port whose old connections linger in TIME_WAIT must work across reloads.
    socket
        .set_reuseaddr(true)
        .with_context(|| format!("SO_REUSEADDR on {address}"))?;
    socket
        .bind(address)
        .with_context(|| format!("binding the listener {address}"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listening on {address}"))
}

/// Accepts connections until the task is aborted; a failed accept (e.g. out of file
/// descriptors) is logged and retried after a pause rather than spinning.
pub async fn accept_each<F, Fut>(listener: TcpListener, address: SocketAddr, mut handle: F)
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(task) = handle(stream, peer) {
                    tokio::spawn(task);
                }
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
