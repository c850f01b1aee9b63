//! One worker's kept-alive HTTP/1.1 connections to upstream endpoints, on hyper's
//! `client::conn::http1` with a pool of our own: idle connections per endpoint, the most
//! recently used first; a connection goes back to the pool when its response's body has
//! ended (at once for a response without a body), and a request that an idle connection
//! closed under did not take is sent on the next one. Idle connections are closed after
//! [`IDLE_TIMEOUT`], and at most [`MAX_IDLE`] are kept per endpoint. The pool belongs to one
//! worker (a single-threaded runtime), so its lock is never contended; it is a lock only
//! because response bodies must be `Send` for HTTP/2 clients.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http1::{Builder, SendRequest},
};
use hyper_util::rt::TokioIo;

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::{
    body::{Body, Counted},
    circuit::Circuit,
    origination::ClientTls,
};
use crate::compile::plan::PoolLimits;

/// Idle connections older than this are closed (as the pool of hyper-util's client).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when their response ends.
pub const MAX_IDLE: usize = 512;
/// How often idle connections are looked over for age and closed peers.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the endpoint (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed or closed before a response.
    Upstream(hyper::Error),
    /// Over a circuit breaker: no connection could be opened and too many wait for one.
    Overflow,
}

/// A connection's sender and what it has carried.
struct Conn<B> {
    sender: SendRequest<B>,
    /// Requests sent on it so far.
    used: u32,
    /// Requests it may carry (DestinationRule `maxRequestsPerConnection`; 0: any number).
    cap: u32,
    /// Sweep ticks it may stay idle.
    idle_ticks: u64,
}

struct Idle<B> {
    conn: Conn<B>,
    /// The sweep tick it went idle in (ticks rather than clock reads on the request path).
    since: u64,
}

/// Idle for this many sweep ticks is idle too long.
const IDLE_TICKS: u64 = IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs();

/// FNV-1a: endpoint addresses are few and not chosen by clients, so SipHash's defence is
/// not needed on this path.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// An endpoint, and the TLS its connections speak (0: none; else the origination's id).
type Key = (SocketAddr, u64);

type ByEndpoint<B> = HashMap<Key, Vec<Idle<B>>, BuildHasherDefault<Fnv>>;

/// The pool; `B` is the request body (the proxy's is [`Counted`]).
pub struct Http1Pool<B = Counted> {
    idle: Mutex<ByEndpoint<B>>,
    sweeping: AtomicBool,
    /// Advanced by the sweep every [`SWEEP_EVERY`] while connections are idle.
    tick: AtomicU64,
    /// Woken when a connection goes idle, for requests waiting under a connection limit.
    returned: Notify,
    /// Requests waiting on `returned`: without any, a returned connection wakes no one (and
    /// takes no lock for it).
    waiting: AtomicUsize,
    /// Connections open per key, idle or busy (for the connection limit's progress rule).
    open: Mutex<HashMap<Key, usize, BuildHasherDefault<Fnv>>>,
}

impl<B> Default for Http1Pool<B> {
    fn default() -> Self {
        Http1Pool {
            idle: Mutex::default(),
            sweeping: AtomicBool::default(),
            tick: AtomicU64::default(),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            open: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Http1Pool<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `request` (origin-form URI, `Host` set) to `endpoint` on an idle connection, or
    /// a new one; under `circuit`'s connection limit, waits for either as a pending request
    /// (refused when too many wait), its place as one given up once it has a connection.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut request: Request<B>,
        circuit: Option<&Circuit>,
        tls: Option<&ClientTls>,
    ) -> Result<Response<Body>, SendError> {
        let endpoint = (endpoint, tls.map_or(0, |t| t.id));
        loop {
            request = match self.send_idle(endpoint, request).await {
                Ok(sent) => return sent,
                Err(request) => request,
            };
            let Some(circuit) = circuit else {
                return self.send_new(endpoint, request, None, None, tls).await;
            };
            if let Some(permit) = circuit.connection() {
                return self
                    .send_new(endpoint, request, Some(circuit), Some(permit), tls)
                    .await;
            }
            // Envoy's rule for progress: a pool with no connection to the endpoint may open
            // one past the limit (another worker's idle connections hold the places and
            // this one could never use them).
            if self.open_to(endpoint) == 0 {
                return self
                    .send_new(endpoint, request, Some(circuit), None, tls)
                    .await;
            }
            let Some(waiting) = circuit.pending() else {
                return Err(SendError::Overflow);
            };
            let _listening = Listening::new(&self.waiting);
            let permit = loop {
                let returned = self.returned.notified();
                if self.has_idle(endpoint) {
                    break None;
                }
                tokio::select! {
                    permit = circuit.connection_freed() => match permit {
                        Some(permit) => break Some(permit),
                        None => return Err(SendError::Overflow),
                    },
                    () = returned => {}
                }
            };
            drop(waiting);
            if let Some(permit) = permit {
                return self
                    .send_new(endpoint, request, Some(circuit), Some(permit), tls)
                    .await;
            }
            // A connection came back idle: the next round sends on it (the worker's
            // runtime runs nothing else between the look and the take).
        }
    }

    fn open_to(&self, endpoint: Key) -> usize {
        lock(&self.open).get(&endpoint).copied().unwrap_or(0)
    }

    fn has_idle(&self, endpoint: Key) -> bool {
        let now = self.tick.load(Ordering::Relaxed);
        lock(&self.idle).get(&endpoint).is_some_and(|list| {
            list.iter()
                .any(|e| !e.conn.sender.is_closed() && now - e.since < e.conn.idle_ticks)
        })
    }

    /// `request` on an idle connection to `endpoint`, or back when none took it.
    async fn send_idle(
        self: &Arc<Self>,
        endpoint: Key,
        mut request: Request<B>,
    ) -> Result<Result<Response<Body>, SendError>, Request<B>> {
        while let Some(mut conn) = self.take(endpoint) {
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(request).await {
                Ok(response) => return Ok(Ok(self.returning(endpoint, conn, response))),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under it. The next one takes it.
                    Some(back) => request = back,
                    None => return Ok(Err(SendError::Upstream(e.into_error()))),
                },
            }
        }
        Err(request)
    }

    /// `request` on a new connection, which holds `permit` while it is open.
    async fn send_new(
        self: &Arc<Self>,
        endpoint: Key,
        request: Request<B>,
        circuit: Option<&Circuit>,
        permit: Option<OwnedSemaphorePermit>,
        tls: Option<&ClientTls>,
    ) -> Result<Response<Body>, SendError> {
        let limits = circuit.map(|c| &c.limits);
        let held = Opened::new(self, endpoint, permit);
        let sender = connect(endpoint.0, limits, held, tls)
            .await
            .map_err(SendError::Connect)?;
        let mut conn = Conn {
            sender,
            used: 0,
            cap: limits.map_or(0, |l| l.max_requests_per_connection),
            idle_ticks: limits
                .and_then(|l| l.idle_timeout_ms)
                .map_or(IDLE_TICKS, |ms| {
                    ms.div_ceil(SWEEP_EVERY.as_millis() as u64).max(1)
                }),
        };
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(SendError::Upstream)?;
        Ok(self.returning(endpoint, conn, response))
    }

    /// The most recently idled connection to `endpoint` still open and young enough.
    fn take(&self, endpoint: Key) -> Option<Conn<B>> {
        let now = self.tick.load(Ordering::Relaxed);
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&endpoint)?;
        while let Some(entry) = list.pop() {
            if !entry.conn.sender.is_closed() && now - entry.since < entry.conn.idle_ticks {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, endpoint: Key, conn: Conn<B>) {
        if conn.sender.is_closed() || (conn.cap > 0 && conn.used >= conn.cap) {
            return;
        }
        {
            let mut idle = lock(&self.idle);
            let list = idle.entry(endpoint).or_default();
            if list.len() >= MAX_IDLE {
                return;
            }
            list.push(Idle {
                conn,
                since: self.tick.load(Ordering::Relaxed),
            });
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.returned.notify_waiters();
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// `response` with a body that gives the connection back once it has ended.
    fn returning(
        self: &Arc<Self>,
        endpoint: Key,
        mut conn: Conn<B>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        conn.used = conn.used.saturating_add(1);
        // After a 101 the connection belongs to the upgrade.
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let mut back = reusable.then(|| (self.clone(), endpoint, conn));
        if response.body().is_end_stream()
            && let Some((pool, endpoint, conn)) = back.take()
        {
            pool.put(endpoint, conn);
        }
        response.map(|body| Returning { body, back }.map_err(Into::into).boxed())
    }
}

/// Counts a request as waiting for a returned connection while it lives.
struct Listening<'a>(&'a AtomicUsize);

impl<'a> Listening<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Listening(count)
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes idle connections past their time or closed by the endpoint; ends when the pool
/// is empty or gone (and starts again with the next idle connection).
async fn sweep<B>(pool: Weak<Http1Pool<B>>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = lock(&pool.idle);
        idle.retain(|_, list| {
            list.retain(|e| !e.conn.sender.is_closed() && now - e.since < e.conn.idle_ticks);
            !list.is_empty()
        });
        if idle.is_empty() {
            pool.sweeping.store(false, Ordering::Release);
            return;
        }
    }
}

/// A connection that is open: its place under the connection limit (if it took one) and in
/// its pool's count, both given back when it closes.
struct Opened<B> {
    _permit: Option<OwnedSemaphorePermit>,
    pool: Weak<Http1Pool<B>>,
    key: Key,
}

impl<B> Opened<B> {
    fn new(pool: &Arc<Http1Pool<B>>, key: Key, permit: Option<OwnedSemaphorePermit>) -> Self {
        *lock(&pool.open).entry(key).or_default() += 1;
        Opened {
            _permit: permit,
            pool: Arc::downgrade(pool),
            key,
        }
    }
}

impl<B> Drop for Opened<B> {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut open = lock(&pool.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection to `endpoint` with the destination's connect timeout and keepalive; it
/// holds `held` (its place under the connection limit and in its pool's count) until it
/// closes.
async fn connect<B>(
    endpoint: SocketAddr,
    limits: Option<&PoolLimits>,
    held: Opened<B>,
    tls: Option<&ClientTls>,
) -> io::Result<SendRequest<B>>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let timeout = limits
        .and_then(|l| l.connect_timeout_ms)
        .map_or(crate::proxy::CONNECT_TIMEOUT, Duration::from_millis);
    let stream = crate::proxy::dial_within(endpoint, timeout).await?;
    if let Some(keepalive) = limits.and_then(|l| l.keepalive) {
        crate::proxy::keepalive_with(&stream, keepalive)?;
    }
    match tls {
        None => start(stream, endpoint, held).await,
        Some(tls) => {
            let stream = tls.connect(stream, timeout).await?;
            start(stream, endpoint, held).await
        }
    }
}

/// An HTTP/1.1 client connection over `io`, its task holding `held`.
async fn start<B, T>(io: T, endpoint: SocketAddr, held: Opened<B>) -> io::Result<SendRequest<B>>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _held = held;
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool when it ends; dropped before
/// its end, the connection is dropped too (hyper closes it).
struct Returning<B> {
    body: Incoming,
    back: Option<(Arc<Http1Pool<B>>, Key, Conn<B>)>,
}

impl<B> Returning<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn give_back(&mut self) {
        if let Some((pool, endpoint, conn)) = self.back.take() {
            pool.put(endpoint, conn);
        }
    }
}

impl<B> HttpBody for Returning<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            Some(Ok(_)) if self.body.is_end_stream() => self.give_back(),
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::atomic::AtomicUsize};

    use http_body_util::{Empty, Full};
    use hyper::service::service_fn;

    use super::*;

    /// An HTTP/1.1 server on loopback counting the connections it accepted; it asks the
    /// client to close after each response when `close` is set.
    async fn server(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        server_after(close, Duration::ZERO).await
    }

    /// [`server`], answering each request `delay` after it came.
    async fn server_after(close: bool, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let service = service_fn(move |_request: Request<Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if close {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                "close".parse().unwrap_or_else(|e| panic!("{e}")),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    fn request() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "pool.test")
            .body(Empty::new())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn get(pool: &Arc<Http1Pool<Empty<Bytes>>>, address: SocketAddr) -> Bytes {
        let response = pool
            .send(address, request(), None, None)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_ended() {
        let (address, accepted) = server(false).await;
        let pool = Arc::new(Http1Pool::default());
        for _ in 0..5 {
            assert_eq!(get(&pool, address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        // Two requests at once need two connections, both kept afterwards.
        let (a, b) = tokio::join!(get(&pool, address), get(&pool, address));
        assert_eq!((a, b), (Bytes::from("ok"), Bytes::from("ok")));
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert_eq!(lock(&pool.idle).get(&(address, 0)).map(Vec::len), Some(2));
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (address, accepted) = server(true).await;
        let pool = Arc::new(Http1Pool::default());
        for _ in 0..3 {
            assert_eq!(get(&pool, address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    }

    fn limits(connections: u32, pending: u32, per_connection: u32) -> PoolLimits {
        PoolLimits {
            max_connections: connections,
            max_pending: pending,
            max_requests_per_connection: per_connection,
            ..PoolLimits::unlimited()
        }
    }

    #[tokio::test]
    async fn a_connection_limit_queues_then_overflows() {
        let (address, accepted) = server_after(false, Duration::from_millis(200)).await;
        let pool: Arc<Http1Pool<Empty<Bytes>>> = Arc::new(Http1Pool::default());
        let circuit = Circuit::new(limits(1, 1, 0));
        let send = || async {
            match pool.send(address, request(), Some(&circuit), None).await {
                Ok(response) => {
                    let _ = response.into_body().collect().await;
                    "ok"
                }
                Err(SendError::Overflow) => "overflow",
                Err(e) => panic!("{e:?}"),
            }
        };
        // One connection at a time: the second waits for it, the third has no place.
        let (a, b, c) = tokio::join!(send(), send(), send());
        let mut outcomes = vec![a, b, c];
        outcomes.sort_unstable();
        assert_eq!(outcomes, ["ok", "ok", "overflow"]);
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "the waiting request took the idle one"
        );
    }

    #[tokio::test]
    async fn a_pool_without_a_connection_may_always_open_one() {
        let (address, accepted) = server(false).await;
        let circuit = Circuit::new(limits(1, 1, 0));
        let get = |pool: Arc<Http1Pool<Empty<Bytes>>>| {
            let circuit = &circuit;
            async move {
                let response = pool
                    .send(address, request(), Some(circuit), None)
                    .await
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let _ = response.into_body().collect().await;
            }
        };
        // One worker's pool keeps its connection idle, holding the only place ...
        let (one, two) = (
            Arc::new(Http1Pool::default()),
            Arc::new(Http1Pool::default()),
        );
        get(one.clone()).await;
        // ... and another worker's, with no connection, opens one rather than wait for it.
        tokio::time::timeout(Duration::from_secs(2), get(two.clone()))
            .await
            .unwrap_or_else(|_| panic!("the second pool waited for the first's connection"));
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert_eq!(two.open_to((address, 0)), 1);
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_its_requests() {
        let (address, accepted) = server(false).await;
        let pool: Arc<Http1Pool<Empty<Bytes>>> = Arc::new(Http1Pool::default());
        let circuit = Circuit::new(limits(u32::MAX, u32::MAX, 2));
        for _ in 0..6 {
            let response = pool
                .send(address, request(), Some(&circuit), None)
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
            let _ = response.into_body().collect().await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let pool: Arc<Http1Pool<Empty<Bytes>>> = Arc::new(Http1Pool::default());
        assert!(matches!(
            pool.send(address, request(), None, None).await,
            Err(SendError::Connect(_))
        ));
    }
}
