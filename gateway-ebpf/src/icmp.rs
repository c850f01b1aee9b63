//! ICMP errors about tracked L4 flows, translated back to the client (as Linux conntrack
//! does): an error from the backend side quotes the packet the gateway sent (gateway source
//! port -> backend); it goes to the client with the quoted header rewritten to the client's
//! own tuple, the outer destination set to the client, and every checksum updated.
//! IPv4 (destination unreachable, including fragmentation needed, and time exceeded) and
//! IPv6 (destination unreachable, packet too big, time exceeded; the ICMPv6 checksum also
//! covers the outer addresses, through its pseudo-header).
//! One function for XDP and TC: the rewrite changes the outer header and the ICMP message
//! with their own checksums updated, so each one's sum is unchanged and a TC skb's
//! `CHECKSUM_COMPLETE` value stays right without helpers.
use gateway_common::{
    PacketReason,
    addr::ipv4_mapped,
    l4::{Flow, FlowKey, TO_CLIENT},
    proto::{
        ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPV4_HDR_LEN,
        IPV6_HDR_LEN, icmp, icmpv6,
    },
};

use crate::{
    context::{ptr_at_mut, read_at},
    csum,
    headers::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, TCP_CHECK_OFFSET},
    hook::Hook,
    maps::{L4_FLOWS, L4_HALF_OPEN, SCRATCH, Scratch},
};

/// The quoted transport header: ports and, when quoted, the TCP checksum (bytes 16-17).
const QUOTED_PORTS: usize = 4;

/// `None`: not an error about a tracked flow; the stack handles it.
#[inline(always)]
pub fn translate<P: Hook>(packet: &P) -> Option<(PacketReason, i32)> {
    let eth: EthHdr = read_at(packet, 0)?;
    match u16::from_be_bytes(eth.ether_type) {
        ETH_P_IP => translate_v4(packet),
        ETH_P_IPV6 => translate_v6(packet),
        _ => None,
    }
}

#[inline(always)]
fn translate_v4<P: Hook>(packet: &P) -> Option<(PacketReason, i32)> {
    let outer_off = ETH_HDR_LEN;
    let outer: Ipv4Hdr = read_at(packet, outer_off)?;
    if outer.version_ihl != 0x45 || outer.protocol != IPPROTO_ICMP || outer.ttl <= 1 {
        return None;
    }
    let icmp_off = outer_off + IPV4_HDR_LEN;
    let icmp: IcmpHdr = read_at(packet, icmp_off)?;
    if icmp.kind != icmp::DEST_UNREACH && icmp.kind != icmp::TIME_EXCEEDED {
        return None;
    }
    let inner_off = icmp_off + core::mem::size_of::<IcmpHdr>();
    let inner: Ipv4Hdr = read_at(packet, inner_off)?;
    if inner.version_ihl != 0x45 || inner.protocol != IPPROTO_TCP {
        return None;
    }
    let ports_off = inner_off + IPV4_HDR_LEN;
    let ports: [u8; QUOTED_PORTS] = read_at(packet, ports_off)?;
    let scratch = quoted_flow(ipv4_mapped(inner.daddr), ipv4_mapped(inner.saddr), ports)?;
    let flow = &scratch.flow;
    let client = [
        flow.new_dst[12],
        flow.new_dst[13],
        flow.new_dst[14],
        flow.new_dst[15],
    ];
    let listener = [
        flow.new_src[12],
        flow.new_src[13],
        flow.new_src[14],
        flow.new_src[15],
    ];
    // SAFETY: bounds-checked pointers into the packet (each read above succeeded at the same
    // offsets); headers are byte arrays.
    unsafe {
        let inner_ip: *mut Ipv4Hdr = ptr_at_mut(packet, inner_off)?;
        let quoted: *mut [u8; QUOTED_PORTS] = ptr_at_mut(packet, ports_off)?;
        let icmp_hdr: *mut IcmpHdr = ptr_at_mut(packet, icmp_off)?;
        let outer_ip: *mut Ipv4Hdr = ptr_at_mut(packet, outer_off)?;
        // The quoted header becomes the client's: client -> listener.
        let mut icmp_check = u16::from_be_bytes((*icmp_hdr).check);
        icmp_check = csum::update_field(icmp_check, &inner.saddr, &client);
        icmp_check = csum::update_field(icmp_check, &inner.daddr, &listener);
        let new_ports = client_ports(flow);
        icmp_check = csum::update_field(icmp_check, &ports, &new_ports);
        // The quoted TCP checksum, when the quote reaches it, follows the same rewrite.
        if let Some(tcp_check) = ptr_at_mut::<P, [u8; 2]>(packet, ports_off + TCP_CHECK_OFFSET) {
            let old = *tcp_check;
            let mut check = u16::from_be_bytes(old);
            check = csum::update_field(check, &inner.saddr, &client);
            check = csum::update_field(check, &inner.daddr, &listener);
            check = csum::update_field(check, &ports, &new_ports);
            *tcp_check = check.to_be_bytes();
            icmp_check = csum::update_field(icmp_check, &old, &*tcp_check);
        }
        (*inner_ip).saddr = client;
        (*inner_ip).daddr = listener;
        *quoted = new_ports;
        let old_inner_check = (*inner_ip).check;
        let header: *const [u8; 20] = inner_ip.cast();
        (*inner_ip).check = csum::ipv4_header(&*header).to_be_bytes();
        icmp_check = csum::update_field(icmp_check, &old_inner_check, &(*inner_ip).check);
        (*icmp_hdr).check = icmp_check.to_be_bytes();
        // The error now goes to the client; if the backend itself sent it, it appears to come
        // from the listener's address, as the client knows no other.
        if outer.saddr == inner.daddr {
            (*outer_ip).saddr = listener;
        }
        (*outer_ip).daddr = client;
        (*outer_ip).ttl -= 1;
        let header: *const [u8; 20] = outer_ip.cast();
        (*outer_ip).check = csum::ipv4_header(&*header).to_be_bytes();
    }
    // Back the way the client came, as its replies go.
    let action = packet.send(flow.ifindex, flow.mac_dst, flow.mac_src).ok()?;
    Some((PacketReason::L4IcmpTranslated, action))
}

/// The reply-direction flow entry of a quoted gateway -> backend packet, read into this
/// CPU's scratch slot; `None` unless a tracked flow sent it.
#[inline(always)]
fn quoted_flow(
    backend: [u8; 16],
    gateway: [u8; 16],
    ports: [u8; QUOTED_PORTS],
) -> Option<&'static mut Scratch> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU map; nothing else runs on it during the program.
    let scratch = unsafe { &mut *scratch };
    // The quoted packet went gateway -> backend; its reply direction is the flow entry.
    scratch.key = FlowKey {
        src: backend,
        dst: gateway,
        src_port: u16::from_be_bytes([ports[2], ports[3]]),
        dst_port: u16::from_be_bytes([ports[0], ports[1]]),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // SAFETY: plain data copied out.
    // (A SYN's ICMP error finds its flow still half-open.)
    scratch.flow = unsafe {
        match L4_FLOWS.get(&scratch.key) {
            Some(flow) => *flow,
            None => *L4_HALF_OPEN.get(&scratch.key)?,
        }
    };
    (scratch.flow.direction == TO_CLIENT).then_some(scratch)
}

/// The quoted ports as the client's connection has them: client port, listener port.
#[inline(always)]
fn client_ports(flow: &Flow) -> [u8; QUOTED_PORTS] {
    let [a, b] = flow.new_dst_port.to_be_bytes();
    let [c, d] = flow.new_src_port.to_be_bytes();
    [a, b, c, d]
}

/// ICMPv6 errors quote the packet the gateway sent to the backend; translated like IPv4,
/// with the outer address change also folded into the ICMPv6 checksum (pseudo-header).
#[inline(always)]
fn translate_v6<P: Hook>(packet: &P) -> Option<(PacketReason, i32)> {
    let outer_off = ETH_HDR_LEN;
    let outer: Ipv6Hdr = read_at(packet, outer_off)?;
    if outer.version_class_flow[0] >> 4 != 6
        || outer.next_header != IPPROTO_ICMPV6
        || outer.hop_limit <= 1
    {
        return None;
    }
    let icmp_off = outer_off + IPV6_HDR_LEN;
    let icmp: IcmpHdr = read_at(packet, icmp_off)?;
    if !matches!(
        icmp.kind,
        icmpv6::DEST_UNREACH | icmpv6::PACKET_TOO_BIG | icmpv6::TIME_EXCEEDED
    ) {
        return None;
    }
    let inner_off = icmp_off + core::mem::size_of::<IcmpHdr>();
    let inner: Ipv6Hdr = read_at(packet, inner_off)?;
    if inner.version_class_flow[0] >> 4 != 6 || inner.next_header != IPPROTO_TCP {
        return None;
    }
    let ports_off = inner_off + IPV6_HDR_LEN;
    let ports: [u8; QUOTED_PORTS] = read_at(packet, ports_off)?;
    let scratch = quoted_flow(inner.daddr, inner.saddr, ports)?;
    let (key, flow) = (&scratch.key, &scratch.flow);
    // The quoted addresses (gateway -> backend) become client -> listener: one update over
    // both, from map memory (16-byte copies on the stack would not fit beside the headers).
    let (old_sum, new_sum) = csum::address_sums(&key.dst, &key.src, &flow.new_dst, &flow.new_src);
    let new_ports = client_ports(flow);
    // The outer addresses: to the client, and from the listener when the backend itself
    // sent the error (the client knows no other address).
    let from_backend = outer.saddr == inner.daddr;
    let (old_outer, new_outer) = if from_backend {
        csum::address_sums(&outer.saddr, &outer.daddr, &flow.new_src, &flow.new_dst)
    } else {
        csum::address_sums(&outer.daddr, &[0; 16], &flow.new_dst, &[0; 16])
    };
    // SAFETY: bounds-checked pointers into the packet (each read above succeeded at the same
    // offsets); headers are byte arrays.
    unsafe {
        let inner_ip: *mut Ipv6Hdr = ptr_at_mut(packet, inner_off)?;
        let quoted: *mut [u8; QUOTED_PORTS] = ptr_at_mut(packet, ports_off)?;
        let icmp_hdr: *mut IcmpHdr = ptr_at_mut(packet, icmp_off)?;
        let outer_ip: *mut Ipv6Hdr = ptr_at_mut(packet, outer_off)?;
        let mut icmp_check = u16::from_be_bytes((*icmp_hdr).check);
        icmp_check = csum::update16(icmp_check, old_sum, new_sum);
        icmp_check = csum::update_field(icmp_check, &ports, &new_ports);
        if let Some(tcp_check) = ptr_at_mut::<P, [u8; 2]>(packet, ports_off + TCP_CHECK_OFFSET) {
            let old = *tcp_check;
            let mut check = u16::from_be_bytes(old);
            check = csum::update16(check, old_sum, new_sum);
            check = csum::update_field(check, &ports, &new_ports);
            *tcp_check = check.to_be_bytes();
            icmp_check = csum::update_field(icmp_check, &old, &*tcp_check);
        }
        (*inner_ip).saddr = flow.new_dst;
        (*inner_ip).daddr = flow.new_src;
        *quoted = new_ports;
        // Pseudo-header: the outer addresses' change.
        icmp_check = csum::update16(icmp_check, old_outer, new_outer);
        if from_backend {
            (*outer_ip).saddr = flow.new_src;
        }
        (*outer_ip).daddr = flow.new_dst;
        (*outer_ip).hop_limit -= 1;
        (*icmp_hdr).check = icmp_check.to_be_bytes();
    }
    // Back the way the client came, as its replies go.
    let action = packet.send(flow.ifindex, flow.mac_dst, flow.mac_src).ok()?;
    Some((PacketReason::L4IcmpTranslated, action))
}
