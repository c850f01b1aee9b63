//! Moving a connection's bytes between the client and the backend once the proxy has
//! decided where they go. `Copy` reads into a userspace buffer and writes it out (the
//! userspace datapath); `Splice` moves them socket -> pipe -> socket with splice(2), so they
//! never enter userspace; `Sockmap` hands both sockets to the kernel's socket splice (an
//! `sk_skb` program redirects every skb to the peer socket), so the daemon is not woken by
//! the bytes at all, only by each side's end. Copy and splice keep TCP's backpressure
//! (nothing more is read than one buffer or pipe that could not be written yet); the
//! socket splice has none (see docs/datapath.md). All pass a half-close on in either
//! direction, end both directions when one fails, and count what they moved.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

/// Bytes moved per read in copy mode once a stream is bulk: tokio's default (8 KiB) made a
/// bulk stream cost a syscall pair per 8 KiB (`cargo xtask bench`); 64 KiB matches a GSO
/// segment.
const COPY_BUFFER: usize = 64 * 1024;
/// The first buffer of a direction: a TLS record's worth.
const FIRST_BUFFER: usize = 16 * 1024;
/// Pipe capacity per direction in splice mode (the kernel's default): the most one splice
/// moves.
const PIPE_SIZE: usize = 64 * 1024;

/// How the bytes travel.
#[derive(Clone)]
pub enum Mode {
    Copy,
    Splice,
    Sockmap(Arc<dyn Splicer>),
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Copy => "Copy",
            Mode::Splice => "Splice",
            Mode::Sockmap(_) => "Sockmap",
        })
    }
}

/// Hands a connection's two sockets to the kernel's socket splice (the kernel datapath
/// implements it): bytes arriving on either leave by the other.
pub trait Splicer: Send + Sync {
    fn insert(&self, client: &TcpStream, backend: &TcpStream) -> io::Result<()>;
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

/// A shared byte counter (a metric) that sees a direction's bytes as they move.
pub type SharedCounter = prometheus_client::metrics::counter::Counter<u64, AtomicU64>;

/// What a relay does beyond moving bytes.
#[derive(Default)]
pub struct RelayOptions {
    /// A connection with no byte moved either way for this long is closed (the socket
    /// splice, which the daemon does not see, ignores it).
    pub idle_timeout: Option<Duration>,
    /// Counters that see each direction's bytes as they move (client to backend, backend
    /// to client), so a long transfer shows before it ends.
    pub shared: [Option<SharedCounter>; 2],
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// One direction's count.
struct Meter<'a> {
    moved: AtomicU64,
    shared: Option<&'a SharedCounter>,
    activity: &'a Activity,
}

impl Meter<'_> {
    fn add(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(shared) = self.shared {
            shared.inc_by(n as u64);
        }
        self.activity.touch();
    }
}

/// Relays until both directions have ended (or one failed).
pub async fn relay(client: TcpStream, backend: TcpStream, mode: &Mode) -> Relayed {
    relay_with(client, backend, mode, &RelayOptions::default()).await
}

/// [`relay`] with an idle timeout and live byte counters.
pub async fn relay_with(
    client: TcpStream,
    backend: TcpStream,
    mode: &Mode,
    options: &RelayOptions,
) -> Relayed {
    if let Mode::Sockmap(splicer) = mode {
        match splicer.insert(&client, &backend) {
            Ok(()) => return sockmap(client, backend).await,
            // A socket that is already closing cannot be inserted: copying still works.
            Err(e) => tracing::debug!(error = %e, "socket splice refused the pair; copying"),
        }
    }
    let activity = Activity::new();
    let [shared_up, shared_down] = &options.shared;
    let up = Meter {
        moved: AtomicU64::new(0),
        shared: shared_up.as_ref(),
        activity: &activity,
    };
    let down = Meter {
        moved: AtomicU64::new(0),
        shared: shared_down.as_ref(),
        activity: &activity,
    };
    // Borrowed halves: unlike owned ones they do not send FIN when dropped, so a relay
    // dropped after its caller set a zero linger closes with RST only.
    let (mut client, mut backend) = (client, backend);
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let transfer = async {
        match mode {
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
            Mode::Copy | Mode::Sockmap(_) => {
                both(
                    copy_one_way(client_read, backend_write, &up),
                    copy_one_way(backend_read, client_write, &down),
                )
                .await
            }
        }
    };
    let result = match options.idle_timeout {
        None => transfer.await,
        Some(limit) => tokio::select! {
            result = transfer => result,
            () = activity.idle(limit) => Err(format!("idle for {}s", limit.as_secs_f64())),
        },
    };
    Relayed {
        upstream: up.moved.load(Ordering::Relaxed),
        downstream: down.moved.load(Ordering::Relaxed),
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
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    moved: &Meter<'_>,
) -> io::Result<()> {
    // Allocated at the first byte, small until a read fills it: an idle connection holds
    // no buffer, a request/response one 16 KiB per direction, a bulk one 64 KiB.
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if buffer.is_empty() {
            from.readable().await?;
            buffer = vec![0u8; FIRST_BUFFER];
        }
        // `read` (not `try_read`): a short read clears the readiness it was woken with, so
        // a message costs one read, not a read and an EAGAIN.
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            // EOF: pass the half-close on; the other direction carries on.
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        moved.add(n);
        if n == buffer.len() && buffer.len() < COPY_BUFFER {
            buffer.resize(COPY_BUFFER, 0);
        }
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
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    pipe: Pipe,
    moved: &Meter<'_>,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let source: &TcpStream = from.as_ref();
    loop {
        // The pipe is filled only when empty, so at most one pipe's worth is in flight.
        source.readable().await?;
        let mut filled = None;
        let spliced = source.try_io(Interest::READABLE, || {
            let n = splice(source, None, &pipe.write, None, PIPE_SIZE, flags)?;
            filled = Some(n);
            // Less than asked for: the socket is drained. Saying WouldBlock clears the
            // readiness it was woken with (safely: the snapshot is from before the call),
            // so the next message costs one splice, not a splice and an EAGAIN.
            if n > 0 && n < PIPE_SIZE {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (spliced, filled) {
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            // EAGAIN: readiness cleared, wait again.
            (_, None) => continue,
            // EOF: pass the half-close on; the other direction carries on.
            (_, Some(0)) => return to.shutdown().await,
            (_, Some(_)) => {}
        }
        let sink: &TcpStream = to.as_ref();
        let mut left = filled.unwrap_or(0);
        while left > 0 {
            let sent = sink
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, sink, None, left, flags).map_err(io::Error::from)
                })
                .await?;
            left -= sent;
            moved.add(sent);
        }
    }
}

/// Both sockets are in the socket splice: the daemon only waits for each side's end and
/// passes it on once everything that side sent has been handed to the other.
async fn sockmap(client: TcpStream, backend: TcpStream) -> Relayed {
    // The ClientHello still queued on the client's socket goes through the verdict now
    // (SO_RCVLOWAT runs the socket's data_ready, which the splice took over).
    if let Err(e) = set_rcvlowat(client.as_raw_fd(), 1) {
        return Relayed {
            upstream: 0,
            downstream: 0,
            error: Some(format!("starting the socket splice: {e}")),
        };
    }
    let result = both(
        sockmap_one_way(&client, &backend),
        sockmap_one_way(&backend, &client),
    )
    .await;
    // Counted by the kernel: what each side received (its FIN aside, once seen).
    let received = |s: &TcpStream, ended: bool| {
        tcp_counts(s.as_raw_fd()).map_or(0, |c| c.received.saturating_sub(u64::from(ended)))
    };
    let ended = result.is_ok();
    Relayed {
        upstream: received(&client, ended),
        downstream: received(&backend, ended),
        error: result.err(),
    }
}

/// How long a side's last bytes may take to be handed to the other after its EOF.
const SPLICE_DRAIN: Duration = Duration::from_secs(30);

/// Waits for `from`'s EOF, then for the kernel to have queued all `from` received on `to`,
/// then half-closes `to`.
async fn sockmap_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    loop {
        let ready = from.ready(Interest::READABLE).await?;
        if ready.is_read_closed() {
            break;
        }
        // Woken without an EOF: an error, or bytes the splice left with `from` because
        // its peer had gone. Neither can be carried on.
        let mut byte = [0u8; 1];
        let peeked = from.try_io(Interest::READABLE, || {
            nix::sys::socket::recv(
                from.as_raw_fd(),
                &mut byte,
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => break,
            Ok(_) => return Err(io::Error::other("bytes left behind by the socket splice")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    // No readiness says when the kernel has queued the last bytes on `to`: compare what
    // `from` received (its FIN counts one) with what `to` took (acknowledged + queued).
    let deadline = Instant::now() + SPLICE_DRAIN;
    loop {
        let received = tcp_counts(from.as_raw_fd())?.received.saturating_sub(1);
        if tcp_counts(to.as_raw_fd())?.taken >= received {
            break;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the socket splice did not drain",
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .map_err(io::Error::from)
}

/// What the kernel counted on one TCP socket.
struct TcpCounts {
    /// Bytes received (a FIN counts one).
    received: u64,
    /// Bytes written into the socket: acknowledged by the peer, or still queued.
    taken: u64,
}

fn tcp_counts(fd: RawFd) -> io::Result<TcpCounts> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<nix::libc::tcp_info>() as nix::libc::socklen_t;
    // SAFETY: `fd` is an open socket; `info` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        nix::libc::getsockopt(
            fd,
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut queued: nix::libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int to the pointer given.
    let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCOUTQ, &raw mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpCounts {
        received: info.tcpi_bytes_received,
        taken: info.tcpi_bytes_acked + u64::try_from(queued).unwrap_or(0),
    })
}

/// `SO_RCVLOWAT`: the bytes a TCP socket must hold before it reads as readable; setting it
/// also runs the socket's data_ready callback (nix has no wrapper for it).
pub fn set_rcvlowat(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = nix::libc::c_int::try_from(bytes).unwrap_or(nix::libc::c_int::MAX);
    set_socket_option(fd, nix::libc::SO_RCVLOWAT, &value)
}

/// Makes the socket's close send RST rather than FIN (SO_LINGER with a zero timeout): what
/// the kernel's stack answers for a connection it no longer tracks.
pub fn set_zero_linger(fd: RawFd) -> io::Result<()> {
    let value = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(fd, nix::libc::SO_LINGER, &value)
}

/// `setsockopt(fd, SOL_SOCKET, name, value)` on a descriptor the caller keeps open.
fn set_socket_option<T>(fd: RawFd, name: nix::libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed for the call; the option value is a `T` that
    // lives across it, with its size passed alongside.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
        let relay = tokio::spawn(async move { relay(client_side, backend_side, &mode).await });
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
            let name = format!("{mode:?}");
            let (client_side, client) = pair().await;
            let (backend, backend_side) = pair().await;
            let relay = tokio::spawn(async move { relay(client_side, backend_side, &mode).await });
            // The client resets; the backend stays silent and open.
            client.set_zero_linger().unwrap_or_else(|e| panic!("{e}"));
            drop(client);
            let relayed = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
                .await
                .unwrap_or_else(|_| panic!("{name}: the relay outlived a reset"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(relayed.error.is_some(), "{name}: {relayed:?}");
            drop(backend);
        }
    }

    /// Bytes show on the shared counters while the connection is open; a connection quiet
    /// for the idle timeout is closed, a busy one is not.
    #[tokio::test]
    async fn live_counts_and_an_idle_timeout() {
        for mode in [Mode::Copy, Mode::Splice] {
            let name = format!("{mode:?}");
            let (client_side, mut client) = pair().await;
            let (mut backend, backend_side) = pair().await;
            let (up, down) = (SharedCounter::default(), SharedCounter::default());
            let options = RelayOptions {
                idle_timeout: Some(Duration::from_millis(400)),
                shared: [Some(up.clone()), Some(down.clone())],
            };
            let relay = tokio::spawn(async move {
                relay_with(client_side, backend_side, &mode, &options).await
            });
            let mut got = [0u8; 5];
            for _ in 0..3 {
                // Busy: 150 ms apart, under the 400 ms limit (the relay's own clock).
                tokio::time::sleep(Duration::from_millis(150)).await;
                client
                    .write_all(b"hello")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                backend
                    .read_exact(&mut got)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                backend
                    .write_all(b"world")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                client
                    .read_exact(&mut got)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(
                (up.get(), down.get()),
                (15, 15),
                "{name}: counted while open"
            );
            assert!(!relay.is_finished(), "{name}: a busy connection stays");
            let relayed = relay.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(relayed.error.as_deref(), Some("idle for 0.4s"), "{name}");
            assert_eq!((relayed.upstream, relayed.downstream), (15, 15));
            let mut rest = Vec::new();
            assert_eq!(
                client.read_to_end(&mut rest).await.ok(),
                Some(0),
                "{name}: closed"
            );
        }
    }
}
