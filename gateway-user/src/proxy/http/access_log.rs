//! The HTTP access log (`--access-log`): one line per request when its response has been
//! sent (or the client went away first), with Envoy's fields as Istio's default JSON access
//! log names them: start time, method, authority, path, protocol, response code, response
//! flags, bytes received and sent, duration, upstream host, route name, request id, user
//! agent, client address. Target `access`; JSON with `--log-format json`.
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Version, header};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::body::Body;

/// What the log line says of one request, gathered as it is served.
pub struct Entry {
    start: SystemTime,
    started: Instant,
    listener: String,
    client: SocketAddr,
    method: String,
    authority: String,
    path: String,
    protocol: &'static str,
    request_id: String,
    user_agent: String,
    received: Arc<AtomicU64>,
    status: u16,
    flags: &'static str,
    upstream: Option<SocketAddr>,
    route: String,
}

fn text(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

impl Entry {
    /// Starts the entry of `request`, received by `listener` from `client`.
    pub fn begin<B>(request: &Request<B>, listener: &str, client: SocketAddr) -> Entry {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| text(request.headers().get(header::HOST)));
        Entry {
            start: SystemTime::now(),
            started: Instant::now(),
            listener: listener.to_owned(),
            client,
            method: request.method().to_string(),
            authority,
            path: request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            protocol: match request.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request_id: text(request.headers().get("x-request-id")),
            user_agent: text(request.headers().get(header::USER_AGENT)),
            received: Arc::default(),
            status: 0,
            flags: "-",
            upstream: None,
            route: "-".to_owned(),
        }
    }

    /// The counter the request body adds its bytes to.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// What serving it decided.
    pub fn answered(
        mut self,
        status: u16,
        flags: &'static str,
        upstream: Option<SocketAddr>,
        route: String,
    ) -> Entry {
        self.status = status;
        self.flags = flags;
        self.upstream = upstream;
        self.route = route;
        self
    }

    fn write(&self, sent: u64, client_left: bool) {
        let flags = match (client_left, self.flags) {
            // Envoy's DC: the downstream connection ended before the response did.
            (true, "-") => "DC",
            (_, flags) => flags,
        };
        tracing::info!(
            target: "access",
            start_time = %humantime::format_rfc3339_millis(self.start),
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            protocol = self.protocol,
            response_code = self.status,
            response_flags = flags,
            bytes_received = self.received.load(Ordering::Relaxed),
            bytes_sent = sent,
            duration = self.started.elapsed().as_millis() as u64,
            upstream_host = %self.upstream.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            route_name = %self.route,
            x_request_id = %self.request_id,
            user_agent = %self.user_agent,
            downstream_remote_address = %self.client,
            listener = %self.listener,
            "http"
        );
    }
}

/// A response body that writes its request's log line once it has been sent, or dropped
/// unsent.
pub struct Logged {
    inner: Body,
    entry: Entry,
    sent: u64,
    written: bool,
}

impl Logged {
    pub fn new(inner: Body, entry: Entry) -> Logged {
        Logged {
            inner,
            entry,
            sent: 0,
            written: false,
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            None if !self.written => {
                self.written = true;
                self.entry.write(self.sent, false);
            }
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if !self.written {
            // hyper may drop a body it knows is empty without polling it to its end.
            let left = !self.inner.is_end_stream();
            self.entry.write(self.sent, left);
        }
    }
}
