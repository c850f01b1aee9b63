//! An AF_PACKET tap that counts the frames an interface transmits, as an independent
//! reference for datapath counters (veth's own statistics differ by mode: its native-XDP
//! receive path counts frames without their Ethernet header).
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::{
    socket::{
        AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt, socket,
        sockopt,
    },
    time::TimeVal,
};

use crate::netns::NetNs;

/// `PACKET_OUTGOING` from linux/if_packet.h.
const PACKET_OUTGOING: u8 = 4;

pub struct TxTap {
    packets: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TxTap {
    /// Starts counting frames transmitted on `interface` in `ns`; returns once the socket is
    /// open, so nothing sent afterwards is missed.
    pub fn start(ns: &NetNs, interface: &str) -> TxTap {
        let ifindex = ns.run({
            let interface = interface.to_owned();
            move || {
                nix::net::if_::if_nametoindex(interface.as_str())
                    .unwrap_or_else(|e| panic!("{interface}: {e}"))
            }
        }) as usize;
        let (packets, bytes, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let dropped = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn({
            let (packets, bytes, stop) = (packets.clone(), bytes.clone(), stop.clone());
            let dropped = dropped.clone();
            move || {
                let fd = socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
                .unwrap_or_else(|e| panic!("AF_PACKET socket: {e}"));
                setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))
                    .unwrap_or_else(|e| panic!("SO_RCVTIMEO: {e}"));
                // Room for bursts while this thread waits for a CPU; drops are checked below.
                setsockopt(&fd, sockopt::RcvBufForce, &(64 << 20))
                    .unwrap_or_else(|e| panic!("SO_RCVBUFFORCE: {e}"));
                let _ = ready_tx.send(());
                // Large enough for a 64 KiB GSO frame, so lengths are never truncated.
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Acquire) {
                    match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                        Ok((len, Some(addr)))
                            if addr.ifindex() == ifindex && addr.pkttype() == PACKET_OUTGOING =>
                        {
                            packets.fetch_add(1, Ordering::AcqRel);
                            bytes.fetch_add(len as u64, Ordering::AcqRel);
                        }
                        Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => panic!("AF_PACKET recv: {e}"),
                    }
                }
                dropped.store(packet_drops(fd.as_raw_fd()), Ordering::Release);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("tap did not start: {e}"));
        TxTap {
            packets,
            bytes,
            dropped,
            stop,
            thread: Some(thread),
        }
    }

    /// Frames and bytes (whole frames, Ethernet header included) seen so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.packets.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

impl TxTap {
    /// Stops the tap and returns its final counts; panics if the kernel dropped frames
    /// before the tap read them, since the counts would then be short.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop_thread();
        let dropped = self.dropped.load(Ordering::Acquire);
        assert_eq!(
            dropped, 0,
            "the AF_PACKET tap dropped {dropped} frames: its counts are incomplete"
        );
        self.counts()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TxTap {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Frames the kernel dropped for this socket (`PACKET_STATISTICS`, struct tpacket_stats).
fn packet_drops(fd: std::os::fd::RawFd) -> u64 {
    let mut stats = [0u32; 2]; // tp_packets, tp_drops
    let mut len = std::mem::size_of_val(&stats) as libc::socklen_t;
    // SAFETY: stats is a writable buffer of `len` bytes, the layout of tpacket_stats.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_STATISTICS: {}",
        std::io::Error::last_os_error()
    );
    u64::from(stats[1])
}
