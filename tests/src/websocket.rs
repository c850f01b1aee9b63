//! A WebSocket echo server for tests (tungstenite, a thread per connection): its first
//! message tells what the handshake asked for (path and headers, one per line); every
//! message after is echoed back until the client closes.
use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

use crate::netns::NetNs;

pub struct WsEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WsEcho {
    /// Listens on `addr` in `ns`; returns once bound.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> WsEcho {
        let listener = ns
            .run(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            std::thread::spawn(move || echo(stream));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        WsEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(stream: std::net::TcpStream) {
    let mut seen = String::new();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |request: &Request, response: Response| {
        seen = format!("{}\n", request.uri());
        for (name, value) in request.headers() {
            seen += &format!("{name}: {}\n", value.to_str().unwrap_or("?"));
        }
        Ok(response)
    };
    let Ok(mut socket) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    if socket.send(Message::text(seen)).is_err() {
        return;
    }
    while let Ok(message) = socket.read() {
        let echo = matches!(message, Message::Text(_) | Message::Binary(_));
        if matches!(message, Message::Close(_)) || (echo && socket.send(message).is_err()) {
            return;
        }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
