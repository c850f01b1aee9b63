//! Real TCP peers for end-to-end tests: an echo server and a client that checks the echo.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// An echo server in `ns` on `addr` that serves exactly `connections` connections, one after
/// the other, then returns how many bytes it echoed. Bound before this returns, so clients
/// can connect.
pub fn serve(ns: &NetNs, addr: SocketAddr, connections: usize) -> JoinHandle<u64> {
    listen(ns, addr, move |listener| {
        (0..connections)
            .map(|_| {
                echo_until_eof(accept(&listener, addr), Duration::from_secs(10))
                    .unwrap_or_else(|(_, e)| panic!("echo on {addr}: {e}"))
            })
            .sum()
    })
}

/// Like [`serve`], but each connection is echoed on its own thread, so a long-lived
/// connection does not hold up the others. Returns the bytes echoed over all of them; a
/// connection that fails (reset, silent for a minute) ends with what it echoed, so tests
/// that reset connections on purpose assert on the client's side.
pub fn serve_concurrently(ns: &NetNs, addr: SocketAddr, connections: usize) -> JoinHandle<u64> {
    listen(ns, addr, move |listener| {
        let echoers: Vec<JoinHandle<u64>> = (0..connections)
            .map(|_| {
                let stream = accept(&listener, addr);
                std::thread::spawn(move || {
                    echo_until_eof(stream, Duration::from_secs(60)).unwrap_or_else(|(n, _)| n)
                })
            })
            .collect();
        echoers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    })
}

/// Binds `addr` in `ns`, then runs `serve` on the listener in a thread; returns once bound.
fn listen(
    ns: &NetNs,
    addr: SocketAddr,
    serve: impl FnOnce(TcpListener) -> u64 + Send + 'static,
) -> JoinHandle<u64> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let _ = bound_tx.send(());
        serve(listener)
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("echo server on {addr} did not bind: {e}"));
    handle
}

fn accept(listener: &TcpListener, addr: SocketAddr) -> TcpStream {
    let (stream, _) = listener
        .accept()
        .unwrap_or_else(|e| panic!("accept on {addr}: {e}"));
    stream
}

/// Echoes until the peer half-closes; returns the bytes echoed, or them and the error that
/// ended it early (a silence longer than `timeout` is one).
fn echo_until_eof(mut stream: TcpStream, timeout: Duration) -> Result<u64, (u64, std::io::Error)> {
    stream.set_read_timeout(Some(timeout)).map_err(|e| (0, e))?;
    let mut buf = [0u8; 16 * 1024];
    let mut echoed = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(echoed),
            Ok(n) => {
                stream.write_all(&buf[..n]).map_err(|e| (echoed, e))?;
                echoed += n as u64;
            }
            Err(e) => return Err((echoed, e)),
        }
    }
}

/// A connection held open from `ns` to `addr`, exchanging a message whenever asked: proves
/// that one established connection keeps working across whatever happens in between.
pub struct HeldConnection {
    ask: Option<std::sync::mpsc::Sender<u8>>,
    answers: std::sync::mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

impl HeldConnection {
    pub fn open(ns: &NetNs, addr: SocketAddr) -> HeldConnection {
        let (ask, asked) = std::sync::mpsc::channel::<u8>();
        let (answer, answers) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
            let mut stream = match connected {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = answer.send(Err(format!("connecting to {addr}: {e}")));
                    return;
                }
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = answer.send(Ok(()));
            while let Ok(round) = asked.recv() {
                let sent = [round; 1000];
                let mut received = [0u8; 1000];
                let result = stream
                    .write_all(&sent)
                    .and_then(|()| stream.read_exact(&mut received))
                    .map_err(|e| format!("round {round}: {e}"))
                    .and_then(|()| {
                        (received == sent)
                            .then_some(())
                            .ok_or_else(|| format!("round {round}: the echo differs"))
                    });
                let _ = answer.send(result);
            }
        });
        let held = HeldConnection {
            ask: Some(ask),
            answers,
            thread: Some(thread),
        };
        held.answer();
        held
    }

    /// Sends 1000 bytes and checks the echo; panics with the reason when it fails.
    pub fn exchange(&self, round: u8) {
        if let Err(e) = self.try_exchange(round) {
            panic!("held connection: {e}");
        }
    }

    /// Like [`HeldConnection::exchange`], returning what went wrong.
    pub fn try_exchange(&self, round: u8) -> Result<(), String> {
        if let Some(ask) = &self.ask {
            let _ = ask.send(round);
        }
        self.try_answer()
    }

    fn answer(&self) {
        if let Err(e) = self.try_answer() {
            panic!("held connection: {e}");
        }
    }

    fn try_answer(&self) -> Result<(), String> {
        match self.answers.recv_timeout(Duration::from_secs(15)) {
            Ok(result) => result,
            Err(e) => Err(format!("no answer: {e}")),
        }
    }
}

impl Drop for HeldConnection {
    /// Closes the connection (dropping the sender ends the client's loop).
    fn drop(&mut self) {
        self.ask.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `ns` to `addr`, sends `len` bytes of a known pattern, half-closes, and
/// checks that exactly the same bytes come back.
pub fn roundtrip(ns: &NetNs, addr: SocketAddr, len: usize) {
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{e}"));
        let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut stream = stream.try_clone().unwrap_or_else(|e| panic!("{e}"));
            let sent = sent.clone();
            std::thread::spawn(move || {
                stream
                    .write_all(&sent)
                    .unwrap_or_else(|e| panic!("sending: {e}"));
                stream
                    .shutdown(Shutdown::Write)
                    .unwrap_or_else(|e| panic!("shutdown: {e}"));
            })
        };
        let mut received = Vec::with_capacity(len);
        stream
            .read_to_end(&mut received)
            .unwrap_or_else(|e| panic!("receiving from {addr}: {e}"));
        writer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert_eq!(received.len(), sent.len(), "echo length from {addr}");
        assert!(
            received == sent,
            "echo from {addr} differs from what was sent"
        );
    })
}
