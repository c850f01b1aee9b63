//! Header parsing: small stages that each validate one layer against the bytes present and
//! either hand the next offset on or stop with the `PacketReason` that classifies the packet.
use gateway_common::{
    PacketReason,
    l4::{FAMILY_IPV4, FAMILY_IPV6},
    proto::{
        ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_IPV6_FRAGMENT, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_EXTENSION_HEADERS,
        IPV6_HDR_LEN, MAX_VLAN_TAGS, TCP_HDR_LEN, UDP_HDR_LEN, VLAN_HDR_LEN, tcp_flags,
    },
};

use crate::{
    context::{Packet, read_at},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, VlanHdr},
};

/// Where the network layer starts and what it is.
struct L2 {
    l3_off: usize,
    ether_type: u16,
}

/// Where the transport layer starts, which protocol it is, how many bytes the IP header
/// says it has, and the addresses (IPv4 mapped into IPv6).
struct L3 {
    hop_limit: u8,
    ip_len: u16,
    l3_off: usize,
    l4_off: usize,
    protocol: u8,
    l4_len: usize,
    family: u8,
}

/// A well-formed TCP segment: what the L4 fast path needs to know about it.
pub struct Tcp {
    pub family: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    /// The TCP header's length, options included.
    pub header_len: usize,
    /// Host order.
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// Length of the IP packet (header included), for the route's MTU check.
    pub ip_len: u16,
    /// The segment's sequence number, and the one after it (payload, SYN and FIN counted).
    pub seq: u32,
    pub seq_end: u32,
    /// The acknowledgement number (meaningful with ACK set).
    pub ack: u32,
}

/// Parses a TCP segment; anything else comes back as the reason that classifies it.
#[inline(always)]
pub fn parse<P: Packet>(packet: &P) -> Result<Tcp, PacketReason> {
    let l2 = parse_ethernet(packet)?;
    let l3 = match l2.ether_type {
        ETH_P_IP => parse_ipv4(packet, l2.l3_off)?,
        ETH_P_IPV6 => parse_ipv6(packet, l2.l3_off)?,
        _ => return Err(PacketReason::NonIp),
    };
    match l3.protocol {
        IPPROTO_TCP => parse_tcp(packet, &l3),
        IPPROTO_UDP => Err(parse_udp(packet, &l3).unwrap_or_else(|reason| reason)),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Err(PacketReason::Icmp),
        _ => Err(PacketReason::OtherL4),
    }
}

/// Ethernet plus up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags.
#[inline(always)]
fn parse_ethernet<P: Packet>(packet: &P) -> Result<L2, PacketReason> {
    let eth: EthHdr = read_at(packet, 0).ok_or(PacketReason::TruncatedEthernet)?;
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    let mut l3_off = ETH_HDR_LEN;
    // Unrolled by the compiler: the bound is a constant.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: VlanHdr = read_at(packet, l3_off).ok_or(PacketReason::TruncatedEthernet)?;
        ether_type = u16::from_be_bytes(tag.ether_type);
        l3_off += VLAN_HDR_LEN;
    }
    Ok(L2 { l3_off, ether_type })
}

/// Bytes of the frame from `off` to its end.
#[inline(always)]
fn bytes_from<P: Packet>(packet: &P, off: usize) -> usize {
    (packet.frame_len() as usize).saturating_sub(off)
}

#[inline(always)]
fn parse_ipv4<P: Packet>(packet: &P, off: usize) -> Result<L3, PacketReason> {
    let ip: Ipv4Hdr = read_at(packet, off).ok_or(PacketReason::TruncatedIp)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(PacketReason::MalformedIp);
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if header_len < IPV4_HDR_LEN || total_len < header_len {
        return Err(PacketReason::MalformedIp);
    }
    // Frames may carry Ethernet padding after the datagram, never fewer bytes than it.
    if total_len > bytes_from(packet, off) {
        return Err(PacketReason::TruncatedIp);
    }
    if u16::from_be_bytes(ip.frag_off) & Ipv4Hdr::FRAGMENT_MASK != 0 {
        return Err(PacketReason::IpFragment);
    }
    if header_len != IPV4_HDR_LEN {
        return Err(PacketReason::Ipv4Options);
    }
    Ok(L3 {
        hop_limit: ip.ttl,
        ip_len: total_len as u16,
        l3_off: off,
        l4_off: off + IPV4_HDR_LEN,
        protocol: ip.protocol,
        l4_len: total_len - IPV4_HDR_LEN,
        family: FAMILY_IPV4,
    })
}

#[inline(always)]
fn parse_ipv6<P: Packet>(packet: &P, off: usize) -> Result<L3, PacketReason> {
    let ip: Ipv6Hdr = read_at(packet, off).ok_or(PacketReason::TruncatedIp)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(PacketReason::MalformedIp);
    }
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if IPV6_HDR_LEN + payload_len > bytes_from(packet, off) {
        return Err(PacketReason::TruncatedIp);
    }
    if ip.next_header == IPPROTO_IPV6_FRAGMENT {
        return Err(PacketReason::IpFragment);
    }
    if IPV6_EXTENSION_HEADERS.contains(&ip.next_header) {
        return Err(PacketReason::Ipv6ExtensionHeaders);
    }
    Ok(L3 {
        hop_limit: ip.hop_limit,
        ip_len: (IPV6_HDR_LEN + payload_len) as u16,
        l3_off: off,
        l4_off: off + IPV6_HDR_LEN,
        protocol: ip.next_header,
        l4_len: payload_len,
        family: FAMILY_IPV6,
    })
}

#[inline(always)]
fn parse_tcp<P: Packet>(packet: &P, l3: &L3) -> Result<Tcp, PacketReason> {
    if l3.l4_len < TCP_HDR_LEN {
        return Err(PacketReason::TruncatedL4);
    }
    let tcp: TcpHdr = read_at(packet, l3.l4_off).ok_or(PacketReason::TruncatedL4)?;
    let header_len = usize::from(tcp.doff_reserved >> 4) * 4;
    if header_len < TCP_HDR_LEN {
        return Err(PacketReason::MalformedTcp);
    }
    if header_len > l3.l4_len {
        return Err(PacketReason::TruncatedL4);
    }
    let seq = u32::from_be_bytes(tcp.seq);
    let payload = (l3.l4_len - header_len) as u32;
    let control =
        u32::from(tcp.flags & tcp_flags::SYN != 0) + u32::from(tcp.flags & tcp_flags::FIN != 0);
    Ok(Tcp {
        family: l3.family,
        l3_off: l3.l3_off,
        l4_off: l3.l4_off,
        header_len,
        src_port: u16::from_be_bytes(tcp.source),
        dst_port: u16::from_be_bytes(tcp.dest),
        flags: tcp.flags,
        hop_limit: l3.hop_limit,
        ip_len: l3.ip_len,
        seq,
        seq_end: seq.wrapping_add(payload).wrapping_add(control),
        ack: u32::from_be_bytes(tcp.ack_seq),
    })
}

#[inline(always)]
fn parse_udp<P: Packet>(packet: &P, l3: &L3) -> Result<PacketReason, PacketReason> {
    if l3.l4_len < UDP_HDR_LEN {
        return Err(PacketReason::TruncatedL4);
    }
    let udp: UdpHdr = read_at(packet, l3.l4_off).ok_or(PacketReason::TruncatedL4)?;
    let udp_len = usize::from(u16::from_be_bytes(udp.len));
    if udp_len < UDP_HDR_LEN || udp_len > l3.l4_len {
        return Err(PacketReason::TruncatedL4);
    }
    Ok(PacketReason::Udp)
}
