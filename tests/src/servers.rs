//! Backends for L4 tests: servers that name themselves, and a sink that digests what it
//! receives, so tests can tell which backend served a connection and whether bytes arrived
//! intact.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// FNV-1a over a byte stream: an independent digest for transfer checks.
#[derive(Clone, Copy)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn value(self) -> u64 {
        self.0
    }
}

/// A server in `ns` on `addr` that answers every connection with `name` and closes, until
/// dropped.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &str) -> NameServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        let thread = ns.spawn({
            let stop = stop.clone();
            move || {
                let listener =
                    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                listener
                    .set_nonblocking(true)
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = bound_tx.send(());
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(name.as_bytes());
                            let _ = stream.shutdown(Shutdown::Both);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{addr} did not bind: {e}"));
        NameServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `ns` to `addr` and returns what the server says before closing.
pub fn ask_name(ns: &NetNs, addr: SocketAddr, count: usize) -> Vec<String> {
    ns.run(move || {
        (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut name = String::new();
                stream
                    .read_to_string(&mut name)
                    .unwrap_or_else(|e| panic!("reading from {addr}: {e}"));
                name
            })
            .collect()
    })
}

/// A server in `ns` that reads one connection to its end and answers with the digest of
/// what it received; returns the byte count it saw.
pub fn digest_sink(ns: &NetNs, addr: SocketAddr) -> JoinHandle<u64> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let _ = bound_tx.send(());
        let (mut stream, _) = listener.accept().unwrap_or_else(|e| panic!("accept: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut digest, mut total, mut buf) = (Digest::default(), 0u64, vec![0u8; 256 * 1024]);
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => panic!("sink read: {e}"),
            }
        }
        stream
            .write_all(&digest.value().to_be_bytes())
            .unwrap_or_else(|e| panic!("sink reply: {e}"));
        total
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{addr} did not bind: {e}"));
    handle
}

/// Sends `len` bytes of a pseudo-random pattern from `ns` to `addr`, half-closes, and checks
/// the digest the sink answers with.
pub fn send_and_verify(ns: &NetNs, addr: SocketAddr, len: usize) {
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e}"));
        // A stalled path fails the test instead of hanging it.
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut digest, mut state, mut sent) = (Digest::default(), 0x1234_5678_u32, 0usize);
        let mut chunk = vec![0u8; 256 * 1024];
        while sent < len {
            let n = chunk.len().min(len - sent);
            for b in &mut chunk[..n] {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            stream
                .write_all(&chunk[..n])
                .unwrap_or_else(|e| panic!("sending: {e}"));
            digest.update(&chunk[..n]);
            sent += n;
        }
        stream
            .shutdown(Shutdown::Write)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut reply = [0u8; 8];
        stream
            .read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("reading the digest: {e}"));
        assert_eq!(
            u64::from_be_bytes(reply),
            digest.value(),
            "the backend received different bytes"
        );
    })
}

/// The outcome of one connection of a load loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The backend's name, and whether the test's marker was set when the connection began.
    Named {
        name: String,
        after_marker: bool,
    },
    Failed(String),
}

/// Makes `count` connections from `ns` to `addr` one after another (bounded by `count` and a
/// 60 s deadline), recording each outcome instead of failing; `progress` counts finished
/// connections and `marker` is read as each connection begins.
pub fn load(
    ns: &NetNs,
    addr: SocketAddr,
    count: usize,
    progress: Arc<std::sync::atomic::AtomicUsize>,
    marker: Arc<AtomicBool>,
) -> JoinHandle<Vec<Answer>> {
    ns.spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut answers = Vec::with_capacity(count);
        for _ in 0..count {
            if std::time::Instant::now() > deadline {
                answers.push(Answer::Failed("deadline".into()));
                break;
            }
            let after_marker = marker.load(Ordering::Acquire);
            let answer =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut name = String::new();
                    stream.read_to_string(&mut name)?;
                    Ok(name)
                });
            answers.push(match answer {
                Ok(name) if !name.is_empty() => Answer::Named { name, after_marker },
                Ok(_) => Answer::Failed("closed without an answer".into()),
                Err(e) => Answer::Failed(e.to_string()),
            });
            progress.fetch_add(1, Ordering::AcqRel);
        }
        answers
    })
}
