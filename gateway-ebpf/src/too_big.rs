//! A client's segment that does not fit the route towards its backend (the path MTU shrank
//! after the handshake clamped the MSS) is answered as a router would: ICMP "fragmentation
//! needed" (IPv4, only with DF set) or ICMPv6 "packet too big", with the next hop's MTU. The
//! frame itself becomes the error, before the NAT rewrote it: it quotes its own IP header
//! and the first 8 bytes of TCP as the client sent them (so the client's stack finds its
//! socket), comes from the address the client connected to, and leaves by the device it
//! arrived on.
use gateway_common::{
    PacketReason,
    l4::{FAMILY_IPV4, FlowKey},
    proto::{
        ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HDR_LEN,
        IPV6_HDR_LEN, icmp, icmpv6,
    },
};

use crate::{
    context::{ptr_at_mut, read_at},
    csum,
    headers::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
    hook::Hook,
    parse::Tcp,
};

/// Bytes of the transport header an ICMP error quotes (RFC 792: the ports and sequence).
const QUOTED_TCP: usize = 8;
const ICMP_LEN: usize = core::mem::size_of::<IcmpHdr>();
/// The IPv4 "don't fragment" flag.
const DONT_FRAGMENT: u16 = 0x4000;
/// TTL and hop limit of the errors, Linux's default.
const HOP_LIMIT: u8 = 64;

/// Turns the packet into the error and sends it back: `(reason, the hook's action)`.
/// `key` holds the packet's addresses as they arrived (the NAT's scratch copy: the 512-byte
/// stack has no room for the headers).
// Out of line: inlined, its temporaries pushed the NAT stage's frame and `new_flow`'s past
// the verifier's 512 bytes for the call chain. It reaches the packet through the hook (the
// context), never through a packet pointer handed over.
#[inline(never)]
pub fn answer<H: Hook>(packet: &H, tcp: &Tcp, key: &FlowKey, mtu: u32) -> (PacketReason, i32) {
    let built = if tcp.family == FAMILY_IPV4 {
        ipv4(packet, key, mtu)
    } else {
        ipv6(packet, key, mtu)
    };
    match built.and_then(|()| packet.bounce()) {
        Ok(action) => (PacketReason::L4TooBig, action),
        Err(reason) => (reason, H::verdict_action(reason)),
    }
}

/// Ethernet, IPv4, ICMP, then the quote: the client's IP header and 8 bytes of TCP.
#[inline(always)]
fn ipv4<H: Hook>(packet: &H, key: &FlowKey, mtu: u32) -> Result<(), PacketReason> {
    const ICMP_OFF: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
    const MESSAGE: usize = ICMP_LEN + IPV4_HDR_LEN + QUOTED_TCP;
    let macs: [u8; 12] = read_at(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    let frag_off: [u8; 2] = read_at(
        packet,
        ETH_HDR_LEN + core::mem::offset_of!(Ipv4Hdr, frag_off),
    )
    .ok_or(PacketReason::TruncatedIp)?;
    if u16::from_be_bytes(frag_off) & DONT_FRAGMENT == 0 {
        // A router would fragment it; the NAT cannot.
        return Err(PacketReason::L4Unroutable);
    }
    // The new headers go in front: the old IP header lands where the quote starts.
    packet.reshape(IPV4_HDR_LEN + ICMP_LEN, ICMP_OFF + MESSAGE)?;
    let out_eth: *mut EthHdr = ptr_at_mut(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    let out_ip: *mut Ipv4Hdr = ptr_at_mut(packet, ETH_HDR_LEN).ok_or(PacketReason::TruncatedIp)?;
    let message: *mut [u8; MESSAGE] =
        ptr_at_mut(packet, ICMP_OFF).ok_or(PacketReason::TruncatedL4)?;
    // SAFETY: bounds-checked pointers into the reshaped packet; byte fields.
    unsafe {
        // Field by field: whole-struct stores become `memcpy` calls on this target.
        set_macs(&mut *out_eth, &macs);
        (*out_eth).ether_type = ETH_P_IP.to_be_bytes();
        (*out_ip).version_ihl = 0x45;
        // Internetwork control, as Linux marks its ICMP errors.
        (*out_ip).tos = 0xc0;
        (*out_ip).tot_len = ((IPV4_HDR_LEN + MESSAGE) as u16).to_be_bytes();
        (*out_ip).id = [0; 2];
        (*out_ip).frag_off = [0; 2];
        (*out_ip).ttl = HOP_LIMIT;
        (*out_ip).protocol = IPPROTO_ICMP;
        (*out_ip).saddr = [key.dst[12], key.dst[13], key.dst[14], key.dst[15]];
        (*out_ip).daddr = [key.src[12], key.src[13], key.src[14], key.src[15]];
        let header: *const [u8; IPV4_HDR_LEN] = out_ip.cast();
        (*out_ip).check = csum::ipv4_header(&*header).to_be_bytes();
        let [_, _, hi, lo] = mtu.min(u32::from(u16::MAX)).to_be_bytes();
        write_icmp_header(
            &mut *message,
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            [0, 0, hi, lo],
        );
        let check = csum::checksum(&*message, 0);
        (*message)[2] = (check >> 8) as u8;
        (*message)[3] = check as u8;
    }
    Ok(())
}

/// Ethernet, IPv6, ICMPv6, then the quote: the client's IPv6 header and 8 bytes of TCP.
#[inline(always)]
fn ipv6<H: Hook>(packet: &H, key: &FlowKey, mtu: u32) -> Result<(), PacketReason> {
    const ICMP_OFF: usize = ETH_HDR_LEN + IPV6_HDR_LEN;
    const MESSAGE: usize = ICMP_LEN + IPV6_HDR_LEN + QUOTED_TCP;
    let macs: [u8; 12] = read_at(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    packet.reshape(IPV6_HDR_LEN + ICMP_LEN, ICMP_OFF + MESSAGE)?;
    let out_eth: *mut EthHdr = ptr_at_mut(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    let out_ip: *mut Ipv6Hdr = ptr_at_mut(packet, ETH_HDR_LEN).ok_or(PacketReason::TruncatedIp)?;
    let message: *mut [u8; MESSAGE] =
        ptr_at_mut(packet, ICMP_OFF).ok_or(PacketReason::TruncatedL4)?;
    // SAFETY: bounds-checked pointers into the reshaped packet; byte fields.
    unsafe {
        set_macs(&mut *out_eth, &macs);
        (*out_eth).ether_type = ETH_P_IPV6.to_be_bytes();
        (*out_ip).version_class_flow = [0x60, 0, 0, 0];
        (*out_ip).payload_len = (MESSAGE as u16).to_be_bytes();
        (*out_ip).next_header = IPPROTO_ICMPV6;
        (*out_ip).hop_limit = HOP_LIMIT;
        (*out_ip).saddr = key.dst;
        (*out_ip).daddr = key.src;
        write_icmp_header(&mut *message, icmpv6::PACKET_TOO_BIG, 0, mtu.to_be_bytes());
        // The pseudo-header: both addresses, the message length, the next header.
        let pseudo =
            csum::sum(&key.dst) + csum::sum(&key.src) + MESSAGE as u32 + u32::from(IPPROTO_ICMPV6);
        let check = csum::checksum(&*message, pseudo);
        (*message)[2] = (check >> 8) as u8;
        (*message)[3] = check as u8;
    }
    Ok(())
}

/// Type, code, a zero checksum and the four bytes after it, one byte at a time (a slice
/// copy becomes a `memcpy` call).
#[inline(always)]
fn write_icmp_header<const N: usize>(message: &mut [u8; N], kind: u8, code: u8, rest: [u8; 4]) {
    let header = [kind, code, 0, 0, rest[0], rest[1], rest[2], rest[3]];
    for (i, byte) in header.into_iter().enumerate() {
        message[i] = byte;
    }
}

/// Back to the sender: the old source MAC becomes the destination and the old destination
/// (the gateway's) the source. `macs` is the old destination then source.
#[inline(always)]
#[expect(
    clippy::manual_memcpy,
    reason = "a slice copy becomes a `memcpy` call on the BPF target"
)]
fn set_macs(eth: &mut EthHdr, macs: &[u8; 12]) {
    for i in 0..6 {
        eth.dst[i] = macs[6 + i];
        eth.src[i] = macs[i];
    }
}
