//! A load generator and its backend for benchmarks: request/response over TCP, either one
//! request per connection (new connections per second, with latency) or many requests over
//! kept-alive connections (requests per second). Bounded in time and in count.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::netns::NetNs;

/// How the load generator talks to its target.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// TLS with this server name (a full handshake per connection: no resumption).
    Tls {
        config: Arc<rustls::ClientConfig>,
        server_name: String,
    },
}

impl Transport {
    /// TLS for `server_name`, verified against `config`'s roots, without session
    /// resumption, so every new connection is a full handshake.
    pub fn tls(config: &rustls::ClientConfig, server_name: &str) -> Transport {
        let mut config = config.clone();
        config.resumption = rustls::client::Resumption::disabled();
        Transport::Tls {
            config: Arc::new(config),
            server_name: server_name.to_owned(),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(target: SocketAddr, transport: &Transport) -> std::io::Result<Box<dyn Stream>> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    match transport {
        Transport::Plain => Ok(Box::new(tcp)),
        Transport::Tls {
            config,
            server_name,
        } => {
            let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                .map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
    }
}

/// Bytes of one request and of one response.
pub const MESSAGE: usize = 64;
/// No run makes more requests than this, however fast the path.
const MAX_REQUESTS: u64 = 20_000_000;

/// A server in `ns` on `addr` answering every `MESSAGE`-byte request with as many bytes,
/// until dropped.
pub struct RrServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The first byte of a bulk connection (requests are `0x5a` bytes).
const BULK: u8 = b'B';

impl RrServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> RrServer {
        RrServer::start_with(ns, addr, None)
    }

    /// The server behind TLS: every connection is accepted with `identity`'s certificate.
    pub fn start_tls(ns: &NetNs, addr: SocketAddr, identity: crate::tls::Identity) -> RrServer {
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .unwrap_or_else(|e| panic!("server config: {e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        RrServer::start_with(ns, addr, Some(acceptor))
    }

    fn start_with(
        ns: &NetNs,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> RrServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn({
            let stop = stop.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                    let _ = bound_tx.send(());
                    while !stop.load(Ordering::Acquire) {
                        let Ok(Ok((stream, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await
                        else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            match tls {
                                None => serve(stream).await,
                                Some(acceptor) => {
                                    if let Ok(stream) = acceptor.accept(stream).await {
                                        serve(stream).await;
                                    }
                                }
                            }
                        });
                    }
                });
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{addr} did not bind: {e}"));
        RrServer {
            stop,
            thread: Some(thread),
        }
    }
}

/// Answers requests, or drains a bulk upload and answers with its length.
async fn serve(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = [0u8; MESSAGE];
    if stream.read_exact(&mut buf).await.is_err() {
        return;
    }
    if buf[0] == BULK {
        let mut total = MESSAGE as u64;
        let mut chunk = vec![0u8; 256 * 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let _ = stream.write_all(&total.to_be_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    loop {
        if stream.write_all(&buf).await.is_err() || stream.read_exact(&mut buf).await.is_err() {
            break;
        }
    }
}

/// One stream sending as fast as it can for `duration`; the server's count of what
/// arrived, in Gbit/s.
pub fn bulk(ns: &NetNs, target: SocketAddr, transport: &Transport, duration: Duration) -> f64 {
    let transport = transport.clone();
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let mut stream = connect(target, &transport).await?;
            let start = Instant::now();
            let mut first = [0x5a_u8; MESSAGE];
            first[0] = BULK;
            stream.write_all(&first).await?;
            let chunk = vec![0x5a_u8; 64 * 1024];
            let mut sent = 0u64;
            while start.elapsed() < duration && sent < MAX_BULK_BYTES {
                stream.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            stream.shutdown().await?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count).await?;
            let received = u64::from_be_bytes(count);
            Ok::<_, std::io::Error>(received as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
        })
    })
    .unwrap_or_else(|e| {
        eprintln!("bulk to {target}: {e}");
        0.0
    })
}

/// No bulk run sends more than this, however fast the path.
const MAX_BULK_BYTES: u64 = 200 << 30;

impl Drop for RrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub completed: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Per-request latencies in microseconds (connect to response, for new connections).
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> u32 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// One request per connection, `workers` at a time, for `duration`, from `ns` to `target`.
pub fn new_connections(
    ns: &NetNs,
    target: SocketAddr,
    transport: &Transport,
    workers: usize,
    duration: Duration,
) -> Outcome {
    run(ns, target, transport, workers, duration, false)
}

/// Requests over `workers` kept-alive connections, for `duration`.
pub fn keep_alive(
    ns: &NetNs,
    target: SocketAddr,
    transport: &Transport,
    workers: usize,
    duration: Duration,
) -> Outcome {
    run(ns, target, transport, workers, duration, true)
}

fn run(
    ns: &NetNs,
    target: SocketAddr,
    transport: &Transport,
    workers: usize,
    duration: Duration,
    keep_alive: bool,
) -> Outcome {
    let transport = transport.clone();
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let start = Instant::now();
            let deadline = start + duration;
            let per_worker = MAX_REQUESTS / workers as u64;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..workers {
                let transport = transport.clone();
                tasks.spawn(async move {
                    let mut outcome = Outcome::default();
                    let request = [0x5a_u8; MESSAGE];
                    let mut response = [0u8; MESSAGE];
                    let mut stream = None;
                    while Instant::now() < deadline
                        && outcome.completed + outcome.errors < per_worker
                    {
                        let began = Instant::now();
                        if stream.is_none() {
                            match tokio::time::timeout(
                                Duration::from_secs(2),
                                connect(target, &transport),
                            )
                            .await
                            {
                                Ok(Ok(s)) => {
                                    stream = Some(s);
                                }
                                _ => {
                                    outcome.errors += 1;
                                    continue;
                                }
                            }
                        }
                        let Some(s) = stream.as_mut() else { continue };
                        let exchanged = async {
                            s.write_all(&request).await?;
                            s.read_exact(&mut response).await
                        };
                        match tokio::time::timeout(Duration::from_secs(2), exchanged).await {
                            Ok(Ok(_)) => {
                                outcome.completed += 1;
                                if !keep_alive || outcome.latencies_us.len() < 100_000 {
                                    outcome.latencies_us.push(
                                        began.elapsed().as_micros().min(u128::from(u32::MAX))
                                            as u32,
                                    );
                                }
                                if !keep_alive {
                                    stream = None; // closes it
                                }
                            }
                            _ => {
                                outcome.errors += 1;
                                stream = None;
                            }
                        }
                    }
                    outcome
                });
            }
            let mut total = Outcome::default();
            while let Some(done) = tasks.join_next().await {
                if let Ok(o) = done {
                    total.completed += o.completed;
                    total.errors += o.errors;
                    total.latencies_us.extend(o.latencies_us);
                }
            }
            total.elapsed = start.elapsed();
            total
        })
    })
}
