//! The bodies the proxy passes on: [`Body`], what every response carries (the upstream's,
//! or one made here), and [`Counted`], a client's request body on its way upstream.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

/// A response body, boxed.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A request body that counts the bytes it carries when asked to; or one held in memory
/// (a retried request's, possibly empty).
pub struct Counted {
    inner: Option<Incoming>,
    /// The body when held: sent as one frame.
    held: Option<Bytes>,
    bytes: Option<Arc<AtomicU64>>,
}

impl Counted {
    pub fn new(inner: Incoming, bytes: Option<Arc<AtomicU64>>) -> Counted {
        Counted {
            inner: Some(inner),
            held: None,
            bytes,
        }
    }

    /// A body of `bytes`, already received (and counted).
    pub fn held(bytes: Bytes) -> Counted {
        Counted {
            inner: None,
            held: Some(bytes),
            bytes: None,
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            let held = self.held.take().filter(|b| !b.is_empty());
            return Poll::Ready(held.map(|b| Ok(Frame::data(b))));
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let (Some(Ok(frame)), Some(bytes)) = (&frame, &self.bytes)
            && let Some(data) = frame.data_ref()
        {
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.held.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(self.held.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A response body that holds `T` (a place under a limit) until it has ended or is dropped.
pub struct Holding<T> {
    inner: Body,
    held: Option<T>,
}

impl<T> Holding<T> {
    pub fn new(inner: Body, held: T) -> Holding<T> {
        Holding {
            inner,
            held: Some(held),
        }
    }
}

impl<T: Unpin> HttpBody for Holding<T> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            self.held = None;
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
