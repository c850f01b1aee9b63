//! A real gRPC server and client (tonic, no protobuf code generation: messages are raw
//! bytes, framed, trailed with `grpc-status` and carried over HTTP/2 by tonic exactly as
//! protobuf messages would be). Service `sluice.test.Echo`: `Unary` answers `echo:` + the
//! request, `Fail` answers FAILED_PRECONDITION (a trailers-only response), `Stream` answers
//! each message of a bidirectional stream as it arrives.
use std::{
    convert::Infallible,
    future::{Ready, ready},
    net::SocketAddr,
    pin::Pin,
    sync::mpsc as std_mpsc,
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{NamedService, StreamingService, UnaryService},
    transport::{Channel, Endpoint, Server, server::TcpIncoming},
};

use crate::netns::NetNs;

pub const UNARY: &str = "/sluice.test.Echo/Unary";
pub const FAIL: &str = "/sluice.test.Echo/Fail";
pub const STREAM: &str = "/sluice.test.Echo/Stream";

/// What the server answers to `message`.
pub fn echoed(message: &[u8]) -> Bytes {
    [b"echo:".as_slice(), message].concat().into()
}

/// Messages are their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // One whole message (tonic strips the framing); an empty one is still a message.
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;
type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

struct UnaryEcho {
    fail: bool,
}

impl UnaryService<Bytes> for UnaryEcho {
    type Response = Bytes;
    type Future = Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        if self.fail {
            return ready(Err(Status::failed_precondition("asked to fail")));
        }
        let response = Response::new(echoed(request.get_ref()));
        ready(Ok(response))
    }
}

struct StreamEcho;

impl StreamingService<Bytes> for StreamEcho {
    type Response = Bytes;
    type ResponseStream = Replies;
    type Future = Ready<Result<Response<Replies>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let replies = request
            .into_inner()
            .map(|message| message.map(|m| echoed(&m)));
        ready(Ok(Response::new(Box::pin(replies) as Replies)))
    }
}

/// The service as tonic's code generation would write it: dispatch on the path.
#[derive(Debug, Clone, Copy, Default)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = "sluice.test.Echo";
}

impl tower_service::Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        match request.uri().path() {
            path @ (UNARY | FAIL) => {
                let fail = path == FAIL;
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(RawCodec);
                    Ok(grpc.unary(UnaryEcho { fail }, request).await)
                })
            }
            STREAM => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                Ok(grpc.streaming(StreamEcho, request).await)
            }),
            _ => Box::pin(ready(Ok(
                Status::unimplemented("no such method").into_http::<Body>()
            ))),
        }
    }
}

/// The echo server on its own thread and runtime; stopped when dropped.
pub struct GrpcEcho {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcEcho {
    /// Listens on `addr` in `ns` (h2c); returns once bound.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> GrpcEcho {
        let listener = ns
            .run(move || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let _ = ready_tx.send(());
                let served = Server::builder().serve_with_incoming_shutdown(
                    EchoService,
                    incoming,
                    async move {
                        let _ = stopped.await;
                    },
                );
                // Connections the proxy keeps open would hold a graceful stop: bounded.
                let _ = tokio::time::timeout(Duration::from_secs(600), served).await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("gRPC server on {addr}: {e}"));
        GrpcEcho {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The runtime ends with the thread; open connections do not outlive the test.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub type Client = tonic::client::Grpc<Channel>;

/// An h2c gRPC client to `addr` sending `authority` as `:authority`.
pub async fn connect(addr: SocketAddr, authority: &str) -> Result<Client, Status> {
    let origin = http::Uri::try_from(format!("http://{authority}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connecting to {addr}: {e:?}")))?;
    Ok(tonic::client::Grpc::new(channel))
}

/// A unary call to `path`.
pub async fn unary(client: &mut Client, path: &str, message: Bytes) -> Result<Bytes, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e:?}")))?;
    let path = PathAndQuery::try_from(path).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(client
        .unary(Request::new(message), path, RawCodec)
        .await?
        .into_inner())
}

/// A bidirectional stream in lockstep: each message sent only after the reply to the one
/// before arrived, so a proxy that buffers a body whole makes it hang (bound it with a
/// timeout).
pub async fn stream_lockstep(
    client: &mut Client,
    messages: Vec<Bytes>,
) -> Result<Vec<Bytes>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e:?}")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let closed = || Status::internal("request stream closed");
    let mut messages = messages.into_iter();
    let Some(first) = messages.next() else {
        return Ok(Vec::new());
    };
    tx.send(first).await.map_err(|_| closed())?;
    let response = client
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(STREAM),
            RawCodec,
        )
        .await?;
    let mut replies = response.into_inner();
    let early = || Status::internal("the stream ended early");
    let mut out = vec![replies.message().await?.ok_or_else(early)?];
    for message in messages {
        tx.send(message).await.map_err(|_| closed())?;
        out.push(replies.message().await?.ok_or_else(early)?);
    }
    drop(tx);
    if replies.message().await?.is_some() {
        return Err(Status::internal("more replies than messages"));
    }
    Ok(out)
}
