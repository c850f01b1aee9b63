//! Packet builders for datapath fixtures and raw injection. Lengths and checksums are
//! computed here, independently of the code under test.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::proto::{self, tcp_flags};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
        options: Vec<u8>,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// An ICMP/ICMPv6 echo request.
    Icmp,
    /// Any protocol number with opaque bytes.
    Raw {
        protocol: u8,
    },
}

/// Builds Ethernet frames: optional VLAN tags, IPv4 or IPv6, a transport header, a payload.
#[derive(Clone, Debug)]
pub struct PacketBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan_tags: Vec<(u16, u16)>,
    src: IpAddr,
    dst: IpAddr,
    ipv4_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order).
    ipv4_frag: u16,
    /// IPv6 extension header (next header value, body) inserted before the transport.
    ipv6_extension: Option<u8>,
    transport: Transport,
    payload: Vec<u8>,
    ttl: u8,
    /// The TCP sequence number (1000 unless set).
    tcp_seq: u32,
    /// The TCP acknowledgement number when ACK is set (2000 unless set).
    tcp_ack: u32,
}

impl PacketBuilder {
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp {
                src: sport,
                dst: dport,
                flags,
                options: Vec::new(),
            },
        )
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            Transport::Udp {
                src: sport,
                dst: dport,
            },
        )
    }

    pub fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        PacketBuilder {
            src_mac: CLIENT_MAC,
            dst_mac: GATEWAY_MAC,
            vlan_tags: Vec::new(),
            src,
            dst,
            ipv4_options: Vec::new(),
            ipv4_frag: 0x4000, // DF
            ipv6_extension: None,
            transport,
            payload: Vec::new(),
            ttl: 64,
            tcp_seq: 1000,
            tcp_ack: 2000,
        }
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_seq = seq;
        self
    }

    /// Sets the TCP acknowledgement number (sent when ACK is set).
    pub fn ack(mut self, ack: u32) -> Self {
        self.tcp_ack = ack;
        self
    }

    /// Sets the TCP options (padded to a multiple of 4 bytes); nothing for other transports.
    pub fn tcp_options(mut self, bytes: &[u8]) -> Self {
        if let Transport::Tcp { options, .. } = &mut self.transport {
            *options = bytes.to_vec();
        }
        self
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag (outermost first) with the given TPID (0x8100 or 0x88a8).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlan_tags.push((tpid, vid));
        self
    }

    /// IPv4 options (padded to a multiple of 4 bytes).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// IPv4 fragment: more-fragments flag and offset in 8-byte units.
    pub fn ipv4_fragment(mut self, more: bool, offset_units: u16) -> Self {
        self.ipv4_frag = (u16::from(more) << 13) | (offset_units & 0x1fff);
        self
    }

    /// Inserts an 8-byte IPv6 extension header of type `next_header` (e.g. 0 hop-by-hop,
    /// 44 fragment, 60 destination options).
    pub fn ipv6_extension(mut self, next_header: u8) -> Self {
        self.ipv6_extension = Some(next_header);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let mut frame = Vec::with_capacity(64 + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        for &(tpid, vid) in &self.vlan_tags {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&proto::ETH_P_IP.to_be_bytes());
                frame.extend_from_slice(&self.ipv4_header(src, dst, l4.len()));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&proto::ETH_P_IPV6.to_be_bytes());
                frame.extend_from_slice(&self.ipv6_header(src, dst, l4.len()));
            }
            _ => panic!("mixed address families"),
        }
        frame.extend_from_slice(&l4);
        frame
    }

    fn protocol(&self) -> u8 {
        match (&self.transport, self.src) {
            (Transport::Tcp { .. }, _) => proto::IPPROTO_TCP,
            (Transport::Udp { .. }, _) => proto::IPPROTO_UDP,
            (Transport::Icmp, IpAddr::V4(_)) => proto::IPPROTO_ICMP,
            (Transport::Icmp, IpAddr::V6(_)) => proto::IPPROTO_ICMPV6,
            (Transport::Raw { protocol }, _) => *protocol,
        }
    }

    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, l4_len: usize) -> Vec<u8> {
        let header_len = 20 + self.ipv4_options.len();
        let total = (header_len + l4_len) as u16;
        let mut h = vec![0x40 | (header_len / 4) as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes());
        h.extend_from_slice(&self.ipv4_frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.protocol(), 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(&self.ipv4_options);
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    fn ipv6_header(&self, src: Ipv6Addr, dst: Ipv6Addr, l4_len: usize) -> Vec<u8> {
        let ext_len = if self.ipv6_extension.is_some() { 8 } else { 0 };
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
        h.push(self.ipv6_extension.unwrap_or_else(|| self.protocol()));
        h.push(self.ttl);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        if self.ipv6_extension.is_some() {
            // Next header, length 0 (8 bytes), then padding/fragment fields of zero.
            h.extend_from_slice(&[self.protocol(), 0, 0, 0, 0, 0, 0, 0]);
        }
        h
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let mut l4 = match &self.transport {
            Transport::Tcp {
                src,
                dst,
                flags,
                options,
            } => {
                let mut opts = options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let mut t = Vec::new();
                t.extend_from_slice(&src.to_be_bytes());
                t.extend_from_slice(&dst.to_be_bytes());
                t.extend_from_slice(&self.tcp_seq.to_be_bytes());
                t.extend_from_slice(
                    &(if flags & tcp_flags::ACK != 0 {
                        self.tcp_ack
                    } else {
                        0
                    })
                    .to_be_bytes(),
                );
                t.push((((20 + opts.len()) / 4) as u8) << 4);
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t
            }
            Transport::Udp { src, dst } => {
                let mut t = Vec::new();
                t.extend_from_slice(&src.to_be_bytes());
                t.extend_from_slice(&dst.to_be_bytes());
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                t
            }
            Transport::Icmp => {
                let kind = if self.src.is_ipv4() { 8 } else { 128 };
                vec![kind, 0, 0, 0, 0, 1, 0, 1]
            }
            Transport::Raw { .. } => Vec::new(),
        };
        l4.extend_from_slice(&self.payload);
        let check_at = match self.transport {
            Transport::Tcp { .. } => Some(16),
            Transport::Udp { .. } => Some(6),
            Transport::Icmp => Some(2),
            Transport::Raw { .. } => None,
        };
        if let Some(at) = check_at {
            let pseudo = pseudo_header(self.src, self.dst, self.protocol(), l4.len());
            let sum = match (&self.transport, self.src) {
                (Transport::Icmp, IpAddr::V4(_)) => checksum(&[&l4]),
                _ => checksum(&[&pseudo, &l4]),
            };
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        l4
    }
}

/// The TCP/UDP pseudo-header of RFC 793 / RFC 8200 §8.1.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families"),
    }
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, computed plainly
/// (sum of 16-bit words, folded) so it can check incremental updates made elsewhere.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `bytes` (a header with its checksum field filled in, plus `prefix` such as a
/// pseudo-header) sums to zero, i.e. its checksum is correct.
pub fn checksum_ok(prefix: &[u8], bytes: &[u8]) -> bool {
    checksum(&[prefix, bytes]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn built_headers_carry_valid_checksums_and_lengths() {
        let src: IpAddr = "198.51.100.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let dst: IpAddr = "203.0.113.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let frame = PacketBuilder::tcp(src, dst, 40000, 80, tcp_flags::SYN)
            .payload(b"hi")
            .build();
        assert_eq!(frame.len(), 14 + 20 + 20 + 2);
        assert!(checksum_ok(&[], &frame[14..34]), "IPv4 header checksum");
        let pseudo = pseudo_header(src, dst, 6, 22);
        assert!(checksum_ok(&pseudo, &frame[34..]), "TCP checksum");
    }
}
