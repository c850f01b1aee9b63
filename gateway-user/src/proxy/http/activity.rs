//! What a connection is doing, for the timeouts hyper cannot tell apart: requests in
//! progress and since when it has had none (Envoy's idle timeout), and whether a request
//! head is arriving (the header read timeout, started by the head's first byte, so an
//! HTTP/1.1 connection kept alive between requests waits for the idle timeout, as behind
//! Envoy, instead of being cut at the header timeout). The connection's reads are counted
//! by [`Counting`], which also tells HTTP/2 (its connection preface) from HTTP/1.1.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct Activity {
    active: AtomicUsize,
    /// Requests begun.
    begun: AtomicU64,
    /// Milliseconds since `epoch`.
    idle_since: AtomicU64,
    /// Bytes read from the client, and how many had been when the last request ended.
    read: AtomicU64,
    read_at_idle: AtomicU64,
    http2: AtomicBool,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            read: AtomicU64::new(0),
            read_at_idle: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How long the connection has had no request in progress, if it has none.
    pub fn idle_for(&self) -> Option<Duration> {
        (self.active.load(Ordering::Acquire) == 0).then(|| {
            Duration::from_millis(
                self.now()
                    .saturating_sub(self.idle_since.load(Ordering::Acquire)),
            )
        })
    }

    /// Whether an HTTP/1.1 request head is due: none served yet (the first must come), or
    /// bytes arrived since the last request ended. Never for HTTP/2, whose frames between
    /// requests (PING, SETTINGS) are not a head.
    pub fn head_due(&self) -> bool {
        !self.http2.load(Ordering::Acquire)
            && self.active.load(Ordering::Acquire) == 0
            && (self.begun.load(Ordering::Acquire) == 0
                || self.read.load(Ordering::Acquire) > self.read_at_idle.load(Ordering::Acquire))
    }
}

/// One request on a connection's [`Activity`], until dropped.
pub struct Request<'a>(&'a Activity);

impl<'a> Request<'a> {
    pub fn begin(activity: &'a Activity) -> Self {
        activity.begun.fetch_add(1, Ordering::AcqRel);
        activity.active.fetch_add(1, Ordering::AcqRel);
        Request(activity)
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        let a = self.0;
        a.read_at_idle
            .store(a.read.load(Ordering::Acquire), Ordering::Release);
        a.idle_since.store(a.now(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's transport, its reads counted into an [`Activity`].
pub struct Counting<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes of the HTTP/2 preface matched so far; `None` once decided.
    preface: Option<usize>,
}

impl<I> Counting<I> {
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        Counting {
            inner,
            activity,
            preface: Some(0),
        }
    }

    fn received(&mut self, bytes: &[u8]) {
        self.activity
            .read
            .fetch_add(bytes.len() as u64, Ordering::AcqRel);
        let Some(matched) = self.preface else { return };
        let take = bytes.len().min(PREFACE.len() - matched);
        if bytes[..take] != PREFACE[matched..matched + take] {
            self.preface = None;
        } else if matched + take == PREFACE.len() {
            self.activity.http2.store(true, Ordering::Release);
            self.preface = None;
        } else {
            self.preface = Some(matched + take);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counting<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.received(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counting<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_due_for_the_first_request_and_after_bytes_between_requests() {
        let activity = Arc::new(Activity::default());
        let mut io = Counting::new((), activity.clone());
        assert!(activity.head_due(), "the first request must come");
        io.received(b"GET / HTTP/1.1\r\n\r\n");
        let request = Request::begin(&activity);
        assert!(!activity.head_due(), "a request in progress");
        drop(request);
        assert!(!activity.head_due(), "kept alive, nothing arriving");
        assert!(activity.idle_for().is_some());
        io.received(b"G");
        assert!(activity.head_due(), "the next head started");
    }

    #[test]
    fn http2_is_told_by_its_preface_even_in_pieces() {
        let activity = Arc::new(Activity::default());
        let mut io = Counting::new((), activity.clone());
        io.received(&PREFACE[..5]);
        io.received(&PREFACE[5..]);
        assert!(!activity.head_due(), "HTTP/2 has no head timeout here");
        let activity = Arc::new(Activity::default());
        let mut io = Counting::new((), activity.clone());
        io.received(b"PRI * HTTP/1.1\r\n");
        assert!(activity.head_due());
    }
}
