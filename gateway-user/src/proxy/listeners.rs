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
    super::keepalive(&socket).with_context(|| format!("TCP keepalive on {address}"))?;
    socket
        .bind(address)
        .with_context(|| format!("binding the listener {address}"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listening on {address}"))
}

/// Accepts connections until the task is aborted. A failed accept (out of file
/// descriptors, out of memory) is retried after a pause that doubles up to a second, and
/// logged once per run of failures rather than each time.
pub async fn accept_each<F, Fut>(listener: TcpListener, address: SocketAddr, mut handle: F)
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded(address);
                if let Some(task) = handle(stream, peer) {
                    tokio::spawn(task);
                }
            }
            Err(e) => tokio::time::sleep(backoff.failed(address, &e)).await,
        }
    }
}

/// The pause after failed accepts: 10 ms, doubling to 1 s while they keep failing. A
/// warning is logged at most every 10 s (with the failures since the last one), however
/// often accepts fail and succeed in between.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: std::time::Duration,
    /// Failures not yet in a warning.
    unreported: u64,
    warned: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const LONGEST: std::time::Duration = std::time::Duration::from_secs(1);
    const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Records a failure; returns how long to wait before accepting again.
    pub fn failed(&mut self, address: SocketAddr, error: &std::io::Error) -> std::time::Duration {
        self.unreported += 1;
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Self::WARN_EVERY)
        {
            tracing::warn!(%address, %error, failures = self.unreported, "accept failed; backing off until it succeeds again");
            self.warned = Some(std::time::Instant::now());
            self.unreported = 0;
        }
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::LONGEST);
        self.pause
    }

    /// Records a success: the next failure waits the shortest pause again.
    pub fn succeeded(&mut self, address: SocketAddr) {
        if !self.pause.is_zero() {
            tracing::info!(%address, "accepting again");
            self.pause = std::time::Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections inherit the listener's keepalive (no call per connection).
    #[tokio::test]
    async fn accepted_connections_have_tcp_keepalive() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        let _client = client.unwrap_or_else(|e| panic!("{e}"));
        let (accepted, _) = accepted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(getsockopt(&accepted, sockopt::KeepAlive).ok(), Some(true));
        assert_eq!(getsockopt(&accepted, sockopt::TcpKeepIdle).ok(), Some(300));
    }

    #[test]
    fn accept_pauses_double_to_a_second_and_reset() {
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10)
            .map(|_| backoff.failed(address, &error).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.succeeded(address);
        assert_eq!(backoff.failed(address, &error).as_millis(), 10);
        // Warned once; the failures since are reported with the next warning.
        assert_eq!(backoff.unreported, 10);
    }
}
