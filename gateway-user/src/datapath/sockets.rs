//! The socket splice, userspace side: the `sk_skb` stream verdict attached to the
//! `SNI_SOCKETS` SOCKHASH, and the insertion of a connection's two sockets under each
//! other's tuple. Once both are in, the kernel moves the bytes of each direction from one
//! socket to the other (`gateway-ebpf/src/sockets.rs`); the entries leave the map by
//! themselves when a socket closes.
use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, SockHash},
    programs::SkSkb,
};
use gateway_common::{
    Counters, map_names, program_names,
    sockets::{AF_INET, AF_INET6, COUNT_LEN, SockKey},
};
use tokio::net::TcpStream;

pub struct SocketSplice {
    map: Mutex<SockHash<MapData, SockKey>>,
    counters: PerCpuArray<MapData, Counters>,
}

impl std::fmt::Debug for SocketSplice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketSplice")
    }
}

impl SocketSplice {
    /// Loads the verdict program and attaches it to the SOCKHASH (before any socket is in
    /// it: sockets take the program when they are inserted).
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Arc<SocketSplice>> {
        let map = ebpf
            .take_map(map_names::SNI_SOCKETS)
            .ok_or_else(|| anyhow!("the eBPF object has no {} map", map_names::SNI_SOCKETS))?;
        let map: SockHash<MapData, SockKey> =
            SockHash::try_from(map).context("SNI_SOCKETS has an unexpected type")?;
        let counters = ebpf
            .take_map(map_names::SNI_COUNTERS)
            .ok_or_else(|| anyhow!("the eBPF object has no {} map", map_names::SNI_COUNTERS))?;
        let counters = PerCpuArray::try_from(counters).context("SNI_COUNTERS")?;
        let program: &mut SkSkb = ebpf
            .program_mut(program_names::SOCKET_SPLICE)
            .ok_or_else(|| {
                anyhow!(
                    "the eBPF object has no program {}",
                    program_names::SOCKET_SPLICE
                )
            })?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the verifier rejected {}", program_names::SOCKET_SPLICE))?;
        program
            .attach(map.fd())
            .context("attaching the socket splice to its SOCKHASH")?;
        Ok(Arc::new(SocketSplice {
            map: Mutex::new(map),
            counters,
        }))
    }

    /// Hands `client` and `backend` to the kernel: bytes arriving on one leave by the other.
    /// The backend's socket goes in first, so that no byte of the client's (the ClientHello
    /// still queued on it) meets a missing peer. Nothing is moved until the client's queue
    /// is processed: the caller kicks it (`SO_RCVLOWAT`, which runs the socket's
    /// data-ready callback).
    pub fn insert(&self, client: &TcpStream, backend: &TcpStream) -> io::Result<()> {
        let client_key = key(client.local_addr()?, client.peer_addr()?);
        let backend_key = key(backend.local_addr()?, backend.peer_addr()?);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(client_key, backend.as_raw_fd(), 0)
            .map_err(io::Error::other)?;
        if let Err(e) = map.insert(backend_key, client.as_raw_fd(), 0) {
            let _ = map.remove(&client_key);
            return Err(io::Error::other(e));
        }
        Ok(())
    }

    /// Per kind (`sockets::COUNT_*`), summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<Counters>> {
        (0..COUNT_LEN)
            .map(|kind| {
                let per_cpu = self.counters.get(&kind, 0)?;
                Ok(per_cpu.iter().sum())
            })
            .collect()
    }
}

/// A socket's tuple as the verdict program reads it from its skbs.
pub fn key(local: SocketAddr, peer: SocketAddr) -> SockKey {
    let words = |address: SocketAddr| -> [u32; 4] {
        match address {
            SocketAddr::V4(a) => [u32::from_ne_bytes(a.ip().octets()), 0, 0, 0],
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                [w(0), w(4), w(8), w(12)]
            }
        }
    };
    SockKey {
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        local_port: u32::from(local.port()),
        remote_port: u32::from(peer.port()),
        _pad: 0,
        local: words(local),
        remote: words(peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_the_tuple_as_the_skb_shows_it() {
        let k = key(
            "198.51.100.1:8443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "198.51.100.2:40000"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(k.family, AF_INET);
        assert_eq!((k.local_port, k.remote_port), (8443, 40000));
        assert_eq!(k.local[0].to_ne_bytes(), [198, 51, 100, 1]);
        assert_eq!(k.remote[0].to_ne_bytes(), [198, 51, 100, 2]);
        assert_eq!(&k.local[1..], &[0, 0, 0]);
        let k6 = key(
            "[2001:db8:1::1]:8443"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "[::ffff:198.51.100.2]:40000"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(k6.family, AF_INET6);
        assert_eq!(k6.remote[3].to_ne_bytes(), [198, 51, 100, 2]);
        assert_eq!(k6.remote[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}
