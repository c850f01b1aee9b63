//! One worker's HTTP/2 connections to upstream endpoints (prior knowledge, for destinations
//! whose port says HTTP2 or GRPC), on hyper's `client::conn::http2`: one multiplexed
//! connection per endpoint, made on first use and again when it closed. The request's URI
//! carries the authority the client asked for (so the upstream sees it as `:authority`, as
//! behind Envoy), while the connection goes to the endpoint chosen.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, MutexGuard, PoisonError},
};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::{
    body::Body as HttpBody,
    client::conn::http2::{Builder, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex as AsyncMutex;

use super::{
    body::{Body, Counted},
    origination::ClientTls,
    pool::SendError,
};

/// The pool; `B` is the request body (the proxy's is [`Counted`]).
pub struct Http2Pool<B = Counted> {
    /// By endpoint and the TLS spoken to it (0: none; else the origination's id).
    connections: Mutex<HashMap<(SocketAddr, u64), SendRequest<B>>>,
    /// Held while connecting, so concurrent first requests share one connection.
    connecting: AsyncMutex<()>,
}

impl<B> Default for Http2Pool<B> {
    fn default() -> Self {
        Http2Pool {
            connections: Mutex::default(),
            connecting: AsyncMutex::new(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Http2Pool<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `request` (absolute-form URI: `http://<authority><path>`) to `endpoint`.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        request: Request<B>,
        tls: Option<&ClientTls>,
    ) -> Result<Response<Body>, SendError> {
        let key = (endpoint, tls.map_or(0, |t| t.id));
        let mut sender = self.sender(key, tls).await?;
        if sender.ready().await.is_err() {
            // Closed since: once more on a fresh connection.
            lock(&self.connections).remove(&key);
            sender = self.sender(key, tls).await?;
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Upstream)?;
        Ok(response.map(|b| b.map_err(Into::into).boxed()))
    }

    async fn sender(
        &self,
        key: (SocketAddr, u64),
        tls: Option<&ClientTls>,
    ) -> Result<SendRequest<B>, SendError> {
        if let Some(open) = self.open(key) {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(open) = self.open(key) {
            return Ok(open);
        }
        let endpoint = key.0;
        let stream = crate::proxy::dial(endpoint)
            .await
            .map_err(SendError::Connect)?;
        let sender = match tls {
            None => start(stream, endpoint).await?,
            Some(tls) => {
                let stream = tls
                    .connect(stream, crate::proxy::CONNECT_TIMEOUT)
                    .await
                    .map_err(SendError::Connect)?;
                start(stream, endpoint).await?
            }
        };
        lock(&self.connections).insert(key, sender.clone());
        Ok(sender)
    }

    fn open(&self, endpoint: (SocketAddr, u64)) -> Option<SendRequest<B>> {
        let mut connections = lock(&self.connections);
        match connections.get(&endpoint) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                connections.remove(&endpoint);
                None
            }
            None => None,
        }
    }
}

/// An HTTP/2 client connection over `io`, driven by a task of its own.
async fn start<B, T>(io: T, endpoint: SocketAddr) -> Result<SendRequest<B>, SendError>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Upstream)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use hyper::{body::Incoming, service::service_fn};

    use super::*;

    /// An h2c server on loopback answering with the `:authority` it saw, counting its
    /// connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
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
                    let service = service_fn(|request: Request<Incoming>| async move {
                        let authority = request.uri().authority().map(|a| a.to_string());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            authority.unwrap_or_default(),
                        ))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    #[tokio::test]
    async fn one_connection_carries_concurrent_requests_with_their_authority() {
        let (address, accepted) = server().await;
        let pool: Http2Pool<Empty<Bytes>> = Http2Pool::default();
        let get = |host: &'static str| {
            let request = Request::builder()
                .uri(format!("http://{host}/x"))
                .body(Empty::new())
                .unwrap_or_else(|e| panic!("{e}"));
            let pool = &pool;
            async move {
                let response = pool
                    .send(address, request, None)
                    .await
                    .unwrap_or_else(|e| panic!("{e:?}"));
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .to_bytes()
            }
        };
        let (a, b, c) = tokio::join!(get("a.test"), get("b.test:8080"), get("c.test"));
        assert_eq!(
            (a, b, c),
            (
                Bytes::from("a.test"),
                Bytes::from("b.test:8080"),
                Bytes::from("c.test")
            )
        );
        assert_eq!(get("d.test").await, "d.test");
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }
}
