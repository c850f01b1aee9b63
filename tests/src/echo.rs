//! Real TCP peers for end-to-end tests: an echo server and a client that checks the echo.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// An echo server in `ns` on `addr` that serves exactly `connections` connections, then
/// returns how many bytes it echoed. Bound before this returns, so clients can connect.
pub fn serve(ns: &NetNs, addr: SocketAddr, connections: usize) -> JoinHandle<u64> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let _ = bound_tx.send(());
        let mut echoed = 0u64;
        for _ in 0..connections {
            let (mut stream, _) = listener
                .accept()
                .unwrap_or_else(|e| panic!("accept on {addr}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        stream
                            .write_all(&buf[..n])
                            .unwrap_or_else(|e| panic!("echo write: {e}"));
                        echoed += n as u64;
                    }
                    Err(e) => panic!("echo read: {e}"),
                }
            }
        }
        echoed
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("echo server on {addr} did not bind: {e}"));
    handle
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
