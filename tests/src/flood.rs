//! A spoofed SYN flood, bounded in rate, count and time: what an attacker without a
//! return path sends. Sources are drawn from 192.0.2.0/24 (TEST-NET-1), each SYN from its
//! own (address, port), so every one is a new handshake to the gateway.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway_common::proto::{ETH_HDR_LEN, tcp_flags};

use crate::{netns::NetNs, packets::PacketBuilder};

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// SYNs per second actually sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `rate` SYNs a second to `target` from `ns` for `duration` (at most `rate` x
/// `duration` packets), through a raw socket, in 10 ms batches; returns at once, the
/// thread reports what it sent.
pub fn syn_flood(
    ns: &NetNs,
    target: SocketAddrV4,
    rate: u32,
    duration: Duration,
) -> JoinHandle<FloodReport> {
    ns.spawn(move || {
        let socket = RawSocket::open();
        let batch = u64::from(rate / 100).max(1);
        let limit = (f64::from(rate) * duration.as_secs_f64()) as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut attempts = 0u32;
        let mut tick = 0u32;
        while sent < limit && start.elapsed() < duration {
            for _ in 0..batch.min(limit - sent) {
                let n = attempts;
                attempts = attempts.wrapping_add(1);
                // 254 hosts x 60,000 ports: distinct for far more than any flood here.
                let source = Ipv4Addr::new(192, 0, 2, 1 + (n % 254) as u8);
                let port = 1024 + ((n / 254) % 60_000) as u16;
                let frame = PacketBuilder::tcp(
                    IpAddr::V4(source),
                    IpAddr::V4(*target.ip()),
                    port,
                    target.port(),
                    tcp_flags::SYN,
                )
                .seq(n.wrapping_mul(2_654_435_761))
                .build();
                // A full socket buffer (ENOBUFS) loses the packet, as in a real flood.
                if socket.send(&frame[ETH_HDR_LEN..], *target.ip()).is_ok() {
                    sent += 1;
                }
            }
            tick += 1;
            let next = start + Duration::from_millis(10) * tick;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        FloodReport {
            sent,
            elapsed: start.elapsed(),
        }
    })
}

/// An `IPPROTO_RAW` IPv4 socket: the packets carry their own IP header (and may claim any
/// source address).
pub struct RawSocket(libc::c_int);

impl RawSocket {
    /// Opens one in the calling thread's network namespace.
    pub fn open() -> RawSocket {
        // SAFETY: plain socket(2); the descriptor is owned by the value returned.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        RawSocket(fd)
    }

    /// Sends one IP packet, whole.
    pub fn send(&self, packet: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto(2) on an owned descriptor, with a buffer and a sockaddr_in that
        // live across the call.
        let sent = unsafe {
            libc::sendto(
                self.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        match sent {
            n if n == packet.len() as isize => Ok(()),
            n if n >= 0 => Err(std::io::Error::other(format!(
                "sent {n} of {} bytes",
                packet.len()
            ))),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns, once.
        unsafe { libc::close(self.0) };
    }
}
