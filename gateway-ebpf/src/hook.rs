//! What the NAT stage needs from the hook it runs in. XDP sees raw frames whose checksums
//! are complete and sends through `XDP_TX` or a devmap; TC sees skbs, whose TCP checksum may
//! be left to offload (`CHECKSUM_PARTIAL`: the field holds only the pseudo-header sum), so it
//! updates checksums through the kernel's helpers, which know the skb's checksum state, and
//! sends with `bpf_redirect`, or `bpf_redirect_neigh` when the next hop is not resolved yet.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head, bpf_skb_change_tail,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
};
use gateway_common::{
    PacketReason, Verdict,
    l4::{Flow, FlowKey},
};

use crate::{
    context::{Packet, TcPacket, XdpPacket, ptr_at_mut},
    csum,
    headers::{EthHdr, TCP_CHECK_OFFSET, TcpHdr},
    maps::{L4_DEVICES, L4_XDP_TX},
    parse::Tcp,
};

pub trait Hook: Packet {
    /// The device the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The program context, for helpers that take it (`bpf_fib_lookup`).
    fn context_ptr(&self) -> *mut core::ffi::c_void;
    /// The hook's return value for a reason's verdict (pass to the stack or drop).
    fn verdict_action(reason: PacketReason) -> i32;
    /// The length `bpf_fib_lookup` checks against the egress MTU (0: the kernel checks the
    /// skb itself).
    fn fib_tot_len(tcp: &Tcp) -> u16;
    /// Brings the TCP checksum in line after `flow` rewrote the addresses in `key` and the
    /// ports in `tcp`. Called after the headers were written.
    fn update_tcp_checksum(
        &self,
        tcp: &Tcp,
        key: &FlowKey,
        flow: &Flow,
    ) -> Result<(), PacketReason>;
    /// Replaces the 16-bit word at `offset` (in the TCP header, a frame offset) from `old`
    /// to `new` (both as read big-endian) and brings the TCP checksum in line.
    fn replace_tcp_word(
        &self,
        tcp: &Tcp,
        offset: usize,
        old: u16,
        new: u16,
    ) -> Result<(), PacketReason>;
    /// Sets the frame's MAC addresses and sends it out of `ifindex`.
    fn send(&self, ifindex: u32, dst: [u8; 6], src: [u8; 6]) -> Result<i32, PacketReason>;
    /// Sends out of `ifindex` towards a next hop without a neighbour entry: the kernel
    /// resolves it where the hook allows.
    fn send_unresolved(&self, ifindex: u32) -> Result<i32, PacketReason>;
    /// Adds `grow` bytes in front of the frame and then cuts it to `len` bytes (to answer
    /// a packet in its own buffer). Every packet pointer is stale afterwards.
    fn reshape(&self, grow: usize, len: usize) -> Result<(), PacketReason>;
    /// Sends the frame, MAC addresses already set, back out of the device it arrived on.
    fn bounce(&self) -> Result<i32, PacketReason>;
}

/// `drop` or `pass` as the reason's verdict says (a forward verdict is only returned with a
/// send action, never through here).
#[inline(always)]
fn by_verdict(reason: PacketReason, drop: i32, pass: i32) -> i32 {
    match reason.verdict() {
        Verdict::Drop => drop,
        Verdict::Pass | Verdict::Forward => pass,
    }
}

#[inline(always)]
fn set_macs<P: Packet>(packet: &P, dst: [u8; 6], src: [u8; 6]) -> Result<(), PacketReason> {
    let eth: *mut EthHdr = ptr_at_mut(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    // SAFETY: bounds-checked pointer into the packet; byte fields.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    Ok(())
}

/// A 16-bit field in the packet's byte order, as `bpf_l4_csum_replace` loads it.
#[inline(always)]
fn wire_word(value: u16) -> u64 {
    u64::from(u16::from_ne_bytes(value.to_be_bytes()))
}

impl Hook for XdpPacket<'_> {
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        self.ctx().ingress_ifindex() as u32
    }

    #[inline(always)]
    fn context_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx().as_ptr()
    }

    #[inline(always)]
    fn verdict_action(reason: PacketReason) -> i32 {
        by_verdict(
            reason,
            xdp_action::XDP_DROP as i32,
            xdp_action::XDP_PASS as i32,
        )
    }

    /// A frame is one packet: its IP length.
    #[inline(always)]
    fn fib_tot_len(tcp: &Tcp) -> u16 {
        tcp.ip_len
    }

    /// Incrementally (RFC 1624): one update over the sum of all four addresses, one per port.
    #[inline(always)]
    fn update_tcp_checksum(
        &self,
        tcp: &Tcp,
        key: &FlowKey,
        flow: &Flow,
    ) -> Result<(), PacketReason> {
        let th: *mut TcpHdr = ptr_at_mut(self, tcp.l4_off).ok_or(PacketReason::TruncatedL4)?;
        let (old, new) = csum::address_sums(&key.src, &key.dst, &flow.new_src, &flow.new_dst);
        // SAFETY: bounds-checked pointer into the packet; byte fields.
        unsafe {
            let mut check = csum::update16(u16::from_be_bytes((*th).check), old, new);
            check = csum::update16(check, tcp.src_port, flow.new_src_port);
            check = csum::update16(check, tcp.dst_port, flow.new_dst_port);
            (*th).check = check.to_be_bytes();
        }
        Ok(())
    }

    #[inline(always)]
    fn replace_tcp_word(
        &self,
        tcp: &Tcp,
        offset: usize,
        old: u16,
        new: u16,
    ) -> Result<(), PacketReason> {
        let th: *mut TcpHdr = ptr_at_mut(self, tcp.l4_off).ok_or(PacketReason::TruncatedL4)?;
        let word: *mut [u8; 2] = ptr_at_mut(self, offset).ok_or(PacketReason::TruncatedL4)?;
        // SAFETY: bounds-checked pointers into the packet; byte fields.
        unsafe {
            (*th).check = csum::update16(u16::from_be_bytes((*th).check), old, new).to_be_bytes();
            *word = new.to_be_bytes();
        }
        Ok(())
    }

    #[inline(always)]
    fn send(&self, ifindex: u32, dst: [u8; 6], src: [u8; 6]) -> Result<i32, PacketReason> {
        set_macs(self, dst, src)?;
        // Back out of the arrival device: `XDP_TX` where the daemon found it reliable (not
        // veth), the devmap otherwise.
        // SAFETY: a plain-data value, only tested for presence.
        if ifindex == self.ingress_ifindex() && unsafe { L4_XDP_TX.get(&ifindex) }.is_some() {
            return Ok(xdp_action::XDP_TX as i32);
        }
        L4_DEVICES
            .redirect(ifindex, 0)
            .map(|action| action as i32)
            .map_err(|_| PacketReason::L4Unroutable)
    }

    /// XDP cannot resolve neighbours, and a NATed frame cannot go to the stack: dropped and
    /// counted while the daemon keeps backends' neighbours warm.
    #[inline(always)]
    fn send_unresolved(&self, _ifindex: u32) -> Result<i32, PacketReason> {
        Err(PacketReason::L4NoNeighbour)
    }

    #[inline(always)]
    fn reshape(&self, grow: usize, len: usize) -> Result<(), PacketReason> {
        let ctx = self.ctx().ctx;
        // SAFETY: helpers on the program's own context; pointers are taken afresh after.
        if unsafe { bpf_xdp_adjust_head(ctx, -(grow as i32)) } != 0 {
            return Err(PacketReason::L4Unroutable);
        }
        let current = self.data_end() - self.data();
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_tail(ctx, len as i32 - current as i32) } != 0 {
            return Err(PacketReason::L4Unroutable);
        }
        Ok(())
    }

    /// Through the devmap to the arrival device rather than `XDP_TX`: veth does not wake
    /// its peer for `XDP_TX` frames unless the peer runs an XDP program itself (the frames
    /// wait in its ring), while a redirect flushes them.
    #[inline(always)]
    fn bounce(&self) -> Result<i32, PacketReason> {
        L4_DEVICES
            .redirect(self.ingress_ifindex(), 0)
            .map(|action| action as i32)
            .map_err(|_| PacketReason::L4Unroutable)
    }
}

impl Hook for TcPacket<'_> {
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the program's own skb context.
        unsafe { (*self.ctx().skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn context_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx().as_ptr()
    }

    #[inline(always)]
    fn verdict_action(reason: PacketReason) -> i32 {
        by_verdict(reason, TC_ACT_SHOT, TC_ACT_OK)
    }

    /// A GSO skb's IP length is the whole 64 KiB super-packet, over any MTU; with 0 the
    /// kernel checks the skb, segments included (`is_skb_forwardable`).
    #[inline(always)]
    fn fib_tot_len(_tcp: &Tcp) -> u16 {
        0
    }

    /// Through `bpf_l4_csum_replace`: addresses as a pseudo-header change (the only part of a
    /// `CHECKSUM_PARTIAL` field), ports as payload (left to the offload when partial); the
    /// helper also keeps a `CHECKSUM_COMPLETE` skb's sum right.
    #[inline(always)]
    fn update_tcp_checksum(
        &self,
        tcp: &Tcp,
        key: &FlowKey,
        flow: &Flow,
    ) -> Result<(), PacketReason> {
        let check_off = tcp.l4_off + TCP_CHECK_OFFSET;
        // SAFETY: both pointers cover 32 bytes (source then destination address) of map
        // memory; IPv4's `::ffff` prefix is the same on both sides and cancels.
        let diff = unsafe {
            bpf_csum_diff(
                key.src.as_ptr() as *mut u32,
                32,
                flow.new_src.as_ptr() as *mut u32,
                32,
                0,
            )
        };
        if diff < 0 {
            return Err(PacketReason::TruncatedL4);
        }
        let ctx = self.ctx();
        let port = wire_word;
        ctx.l4_csum_replace(check_off, 0, diff as u64, u64::from(BPF_F_PSEUDO_HDR))
            .and_then(|()| {
                ctx.l4_csum_replace(check_off, port(tcp.src_port), port(flow.new_src_port), 2)
            })
            .and_then(|()| {
                ctx.l4_csum_replace(check_off, port(tcp.dst_port), port(flow.new_dst_port), 2)
            })
            .map_err(|_| PacketReason::TruncatedL4)
    }

    /// The checksum through `bpf_l4_csum_replace` (as payload: left to the offload when
    /// partial), then the word through a fresh pointer (the helper invalidates old ones).
    #[inline(always)]
    fn replace_tcp_word(
        &self,
        tcp: &Tcp,
        offset: usize,
        old: u16,
        new: u16,
    ) -> Result<(), PacketReason> {
        self.ctx()
            .l4_csum_replace(
                tcp.l4_off + TCP_CHECK_OFFSET,
                wire_word(old),
                wire_word(new),
                2,
            )
            .map_err(|_| PacketReason::TruncatedL4)?;
        let word: *mut [u8; 2] = ptr_at_mut(self, offset).ok_or(PacketReason::TruncatedL4)?;
        // SAFETY: a bounds-checked pointer into the packet, taken after the helper ran.
        unsafe { *word = new.to_be_bytes() };
        Ok(())
    }

    #[inline(always)]
    fn send(&self, ifindex: u32, dst: [u8; 6], src: [u8; 6]) -> Result<i32, PacketReason> {
        set_macs(self, dst, src)?;
        // SAFETY: a helper without memory arguments.
        let action = unsafe { bpf_redirect(ifindex, 0) };
        if action == i64::from(TC_ACT_REDIRECT) {
            Ok(TC_ACT_REDIRECT)
        } else {
            Err(PacketReason::L4Unroutable)
        }
    }

    /// The kernel resolves the neighbour (and queues the packet meanwhile), as the stack
    /// would.
    #[inline(always)]
    fn send_unresolved(&self, ifindex: u32) -> Result<i32, PacketReason> {
        // SAFETY: no parameters passed (null, length 0): the helper looks the route up itself.
        let action = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
        if action == i64::from(TC_ACT_REDIRECT) {
            Ok(TC_ACT_REDIRECT)
        } else {
            Err(PacketReason::L4Unroutable)
        }
    }

    /// The kernel refuses to cut a `CHECKSUM_PARTIAL` skb (one a local or veth sender left
    /// its checksum to offload) short of the checksum it still owes: such packets are
    /// dropped, counted as `l4_unroutable`, unanswered.
    #[inline(always)]
    fn reshape(&self, grow: usize, len: usize) -> Result<(), PacketReason> {
        let skb = self.ctx().skb.skb;
        // SAFETY: helpers on the program's own skb; pointers are taken afresh after.
        if unsafe { bpf_skb_change_head(skb, grow as u32, 0) } != 0 {
            return Err(PacketReason::L4Unroutable);
        }
        // SAFETY: as above.
        if unsafe { bpf_skb_change_tail(skb, len as u32, 0) } != 0 {
            return Err(PacketReason::L4Unroutable);
        }
        Ok(())
    }

    /// Out of the arrival device (a redirect to its egress).
    #[inline(always)]
    fn bounce(&self) -> Result<i32, PacketReason> {
        // SAFETY: a helper without memory arguments.
        let action = unsafe { bpf_redirect(self.ingress_ifindex(), 0) };
        if action == i64::from(TC_ACT_REDIRECT) {
            Ok(TC_ACT_REDIRECT)
        } else {
            Err(PacketReason::L4Unroutable)
        }
    }
}
