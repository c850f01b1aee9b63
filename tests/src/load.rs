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

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::NetNs;

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

impl RrServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> RrServer {
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
                        let Ok(Ok((mut stream, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await
                        else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            let mut buf = [0u8; MESSAGE];
                            while stream.read_exact(&mut buf).await.is_ok() {
                                if stream.write_all(&buf).await.is_err() {
                                    break;
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
    workers: usize,
    duration: Duration,
) -> Outcome {
    run(ns, target, workers, duration, false)
}

/// Requests over `workers` kept-alive connections, for `duration`.
pub fn keep_alive(ns: &NetNs, target: SocketAddr, workers: usize, duration: Duration) -> Outcome {
    run(ns, target, workers, duration, true)
}

fn run(
    ns: &NetNs,
    target: SocketAddr,
    workers: usize,
    duration: Duration,
    keep_alive: bool,
) -> Outcome {
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
                                tokio::net::TcpStream::connect(target),
                            )
                            .await
                            {
                                Ok(Ok(s)) => {
                                    let _ = s.set_nodelay(true);
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
