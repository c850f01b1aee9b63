//! The userspace servers: the L4 forwarder (userspace mode, and the fallback for what the
//! kernel does not take) and, next, TLS passthrough by SNI.
/// How long connecting to a backend may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection to a backend, within [`CONNECT_TIMEOUT`] (`TimedOut` past it), with Nagle
/// off: what every userspace server opens towards backends.
pub async fn dial(backend: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    dial_within(backend, CONNECT_TIMEOUT).await
}

/// [`dial`] within `timeout`.
pub async fn dial_within(
    backend: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(backend))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    keepalive(&stream)?;
    Ok(stream)
}

/// TCP keepalive as a DestinationRule's `tcpKeepalive` sets it: idle time and probe interval
/// in seconds, and the probe count, each the kernel's default when not given.
pub fn keepalive_with(
    socket: &impl std::os::fd::AsFd,
    (idle, interval, probes): (Option<u32>, Option<u32>, Option<u32>),
) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    if let Some(idle) = idle {
        setsockopt(socket, sockopt::TcpKeepIdle, &idle)?;
    }
    if let Some(interval) = interval {
        setsockopt(socket, sockopt::TcpKeepInterval, &interval)?;
    }
    if let Some(probes) = probes {
        setsockopt(socket, sockopt::TcpKeepCount, &probes)?;
    }
    Ok(())
}

/// TCP keepalive as every userspace server sets it, on its listening sockets (accepted
/// connections inherit it) and on its connections to backends: a peer that vanished
/// (power loss, a dropped NAT entry) is found after 5 minutes of silence plus Linux's
/// probes (9 x 75 s) instead of never. Two calls per socket: the probe interval and count
/// are the kernel's defaults.
pub fn keepalive(socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS)?;
    Ok(())
}

/// Silence before the first keepalive probe.
const KEEPALIVE_IDLE_SECS: u32 = 300;

pub mod http;
pub mod l4;
pub mod listeners;
pub mod relay;
pub mod sni;
pub mod workers;
