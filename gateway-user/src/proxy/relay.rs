//! Moving a connection's bytes between the client and the backend once the proxy has
//! decided where they go. `Copy` reads into a userspace buffer and writes it out (the
//! userspace datapath); `Splice` moves them socket -> pipe -> socket with splice(2), so they
//! never enter userspace. Both keep TCP's backpressure (nothing more is read than one
//! buffer or pipe that could not be written yet), pass a half-close on in either direction,
//! end both directions when one fails, and count what they moved.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// Bytes moved per read in copy mode: tokio's default (8 KiB) made a bulk stream cost a
/// syscall pair per 8 KiB (`cargo xtask bench`); 64 KiB matches a GSO segment.
const COPY_BUFFER: usize = 64 * 1024;
/// Pipe capacity per direction in splice mode (the kernel's default): the most one splice
/// moves.
const PIPE_SIZE: usize = 64 * 1024;

/// How the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Copy,
    Splice,
}

/// How a relayed connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Client to backend.
    pub upstream: u64,
    /// Backend to client.
    pub downstream: u64,
    /// `None` when both sides closed cleanly, else what ended it.
    pub error: Option<String>,
}

/// Relays until both directions have ended (or one failed).
pub async fn relay(client: TcpStream, backend: TcpStream, mode: Mode) -> Relayed {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (client_read, client_write) = client.into_split();
    let (backend_read, backend_write) = backend.into_split();
    let result = match mode {
        Mode::Splice => match (Pipe::new(), Pipe::new()) {
            (Ok(a), Ok(b)) => {
                both(
                    splice_one_way(client_read, backend_write, a, &up),
                    splice_one_way(backend_read, client_write, b, &down),
                )
                .await
            }
            (Err(e), _) | (_, Err(e)) => {
                // Out of file descriptors or pipe memory: copying still works.
                tracing::debug!(error = %e, "no pipe for splice; copying instead");
                both(
                    copy_one_way(client_read, backend_write, &up),
                    copy_one_way(backend_read, client_write, &down),
                )
                .await
            }
        },
        Mode::Copy => {
            both(
                copy_one_way(client_read, backend_write, &up),
                copy_one_way(backend_read, client_write, &down),
            )
            .await
        }
    };
    Relayed {
        upstream: up.load(Ordering::Relaxed),
        downstream: down.load(Ordering::Relaxed),
        error: result.err(),
    }
}

/// Runs both directions; the first failure ends the other (its sockets close on return).
async fn both(
    up: impl Future<Output = io::Result<()>>,
    down: impl Future<Output = io::Result<()>>,
) -> Result<(), String> {
    tokio::pin!(up, down);
    tokio::select! {
        result = &mut up => match result {
            Ok(()) => down.await.map_err(|e| format!("backend to client: {e}")),
            Err(e) => Err(format!("client to backend: {e}")),
        },
        result = &mut down => match result {
            Ok(()) => up.await.map_err(|e| format!("client to backend: {e}")),
            Err(e) => Err(format!("backend to client: {e}")),
        },
    }
}

async fn copy_one_way(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    moved: &AtomicU64,
) -> io::Result<()> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            // EOF: pass the half-close on; the other direction carries on.
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A pipe both of whose ends are non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // The default already; set so that a changed system default changes nothing here.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Ok(Pipe { read, write })
    }
}

async fn splice_one_way(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pipe: Pipe,
    moved: &AtomicU64,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let source: &TcpStream = from.as_ref();
    loop {
        // The pipe is filled only when empty, so at most one pipe's worth is in flight.
        let filled = source
            .async_io(Interest::READABLE, || {
                splice(source, None, &pipe.write, None, PIPE_SIZE, flags).map_err(io::Error::from)
            })
            .await?;
        if filled == 0 {
            return to.shutdown().await;
        }
        let sink: &TcpStream = to.as_ref();
        let mut left = filled;
        while left > 0 {
            let sent = sink
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, sink, None, left, flags).map_err(io::Error::from)
                })
                .await?;
            left -= sent;
            moved.fetch_add(sent as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (accepted, connected).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (
            accepted.unwrap_or_else(|e| panic!("{e}")).0,
            connected.unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// client -> [relay] -> backend: bytes both ways, each half-close passed on.
    async fn round_trip(mode: Mode) {
        let (client_side, mut client) = pair().await;
        let (mut backend, backend_side) = pair().await;
        let relay = tokio::spawn(relay(client_side, backend_side, mode));
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client_read, mut client_write) = client.split();
        let send = async {
            client_write.write_all(&request).await?;
            client_write.shutdown().await
        };
        let serve = async {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await?;
            backend.write_all(&got[..1000]).await?;
            backend.shutdown().await?;
            Ok::<_, io::Error>(got)
        };
        let receive = async {
            let mut got = Vec::new();
            client_read.read_to_end(&mut got).await.map(|_| got)
        };
        let (sent, served, received) = tokio::join!(send, serve, receive);
        sent.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(served.unwrap_or_else(|e| panic!("{e}")), request);
        assert_eq!(received.unwrap_or_else(|e| panic!("{e}")), request[..1000]);
        let relayed = relay.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            relayed,
            Relayed {
                upstream: 300_000,
                downstream: 1000,
                error: None
            }
        );
    }

    #[tokio::test]
    async fn copy_carries_both_directions_and_half_closes() {
        round_trip(Mode::Copy).await;
    }

    #[tokio::test]
    async fn splice_carries_both_directions_and_half_closes() {
        round_trip(Mode::Splice).await;
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions() {
        for mode in [Mode::Copy, Mode::Splice] {
            let (client_side, client) = pair().await;
            let (backend, backend_side) = pair().await;
            let relay = tokio::spawn(relay(client_side, backend_side, mode));
            // The client resets; the backend stays silent and open.
            client.set_zero_linger().unwrap_or_else(|e| panic!("{e}"));
            drop(client);
            let relayed = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
                .await
                .unwrap_or_else(|_| panic!("{mode:?}: the relay outlived a reset"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(relayed.error.is_some(), "{mode:?}: {relayed:?}");
            drop(backend);
        }
    }
}
