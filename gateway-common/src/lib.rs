//! The contract between Sluice's kernel programs and its daemon: every map name, key, value,
//! limit and shared enum is defined here once, `#[repr(C)]` without hidden padding.
#![no_std]

/// Names of the maps in the eBPF object. The daemon pins each under
/// `<bpffs>/sluice/<instance>/<name>`; BPF object names are limited to 15 bytes.
pub mod map_names {
    /// Per-CPU packet and byte counters indexed by [`crate::PacketReason`].
    pub const REASON_COUNTERS: &str = "REASON_COUNTERS";
    /// [`crate::l4::ListenerKey`] -> [`crate::l4::Listener`].
    pub const L4_LISTENERS: &str = "L4_LISTENERS";
    /// Maglev tables: backend ids, `MAGLEV_TABLE_SIZE` per slot.
    pub const L4_TABLES: &str = "L4_TABLES";
    /// Backend id -> [`crate::l4::Backend`].
    pub const L4_BACKENDS: &str = "L4_BACKENDS";
    /// [`crate::l4::FlowKey`] -> [`crate::l4::Flow`], both directions.
    pub const L4_FLOWS: &str = "L4_FLOWS";
    /// ifindex -> device, for XDP_REDIRECT.
    pub const L4_DEVICES: &str = "L4_DEVICES";
    /// Per-CPU [`crate::l4::L4Counters`] by listener id.
    pub const L4_LISTENER_CNT: &str = "L4_LISTENER_CNT";
    /// Per-CPU [`crate::l4::L4Counters`] by backend id.
    pub const L4_BACKEND_CNT: &str = "L4_BACKEND_CNT";
    /// One [`crate::l4::NatConfig`]: the source-port range of the NAT.
    pub const L4_CONFIG: &str = "L4_CONFIG";
    /// The node's own addresses (IPv4 mapped into IPv6) -> 1: a wildcard listener takes
    /// only traffic addressed to one of them, never transit traffic.
    pub const L4_LOCAL_ADDRS: &str = "L4_LOCAL_ADDRS";
    /// [`crate::l4::FlowKey`] -> [`crate::l4::Flow`] of connections whose handshake has
    /// not completed: an LRU of its own, so a SYN flood evicts only other half-open
    /// entries, never an established connection's.
    pub const L4_HALF_OPEN: &str = "L4_HALF_OPEN";
    /// One [`crate::l4::SynGuard`]: how many SYNs the kernel NATed lately that no
    /// handshake completed, shared by every CPU.
    pub const L4_SYN_GUARD: &str = "L4_SYN_GUARD";
    /// ifindex -> 1: devices an `XDP_TX` frame reliably leaves. Not veth, which wakes its
    /// peer for `XDP_TX` frames only if the peer runs an XDP program itself; there, and on
    /// devices not listed, a reply out of the arrival device goes through `L4_DEVICES`.
    pub const L4_XDP_TX: &str = "L4_XDP_TX";
    /// SOCKHASH of TLS passthrough connections handed to the kernel:
    /// [`crate::sockets::SockKey`] of the socket bytes arrive on -> the socket they leave by.
    pub const SNI_SOCKETS: &str = "SNI_SOCKETS";
    /// Per-CPU counters of the socket splice, indexed by `sockets::COUNT_*`.
    pub const SNI_COUNTERS: &str = "SNI_COUNTERS";
    /// Every map the daemon pins, in a stable order.
    pub const ALL: &[&str] = &[
        REASON_COUNTERS,
        L4_LISTENERS,
        L4_TABLES,
        L4_BACKENDS,
        L4_FLOWS,
        L4_DEVICES,
        L4_LISTENER_CNT,
        L4_BACKEND_CNT,
        L4_CONFIG,
        L4_LOCAL_ADDRS,
        L4_HALF_OPEN,
        L4_SYN_GUARD,
        L4_XDP_TX,
        SNI_SOCKETS,
        SNI_COUNTERS,
    ];
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// XDP ingress entry point.
    pub const XDP_INGRESS: &str = "sluice_xdp";
    /// TC (clsact ingress) entry point, for interfaces where XDP cannot attach.
    pub const TC_INGRESS: &str = "sluice_tc";
    /// `sk_skb` stream verdict on [`crate::map_names::SNI_SOCKETS`]: moves a spliced
    /// connection's bytes to its peer socket.
    pub const SOCKET_SPLICE: &str = "sluice_sockmap";
}

/// What the datapath did with a packet, decided by the first check that classified it.
/// Used by the kernel as a per-CPU counter index and by the daemon as a metric label.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketReason {
    /// Shorter than an Ethernet header (or a VLAN tag it announces).
    TruncatedEthernet = 0,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, more than two VLAN tags, ...).
    NonIp = 1,
    /// IP header shorter than its minimum, or than its own length fields claim.
    TruncatedIp = 2,
    /// IP header fields that no valid packet carries (version, IHL, total length).
    MalformedIp = 3,
    /// IPv4 header with options: not parsed on the fast path, left to the stack.
    Ipv4Options = 4,
    /// IPv6 extension headers other than a fragment header: left to the stack.
    Ipv6ExtensionHeaders = 5,
    /// IPv4 or IPv6 fragment: ports are not in every fragment, left to the stack.
    IpFragment = 6,
    /// TCP or UDP header shorter than its minimum, or than its data offset claims.
    TruncatedL4 = 7,
    /// TCP header with a data offset below 5 words.
    MalformedTcp = 8,
    /// A well-formed TCP segment.
    Tcp = 9,
    /// A well-formed UDP datagram.
    Udp = 10,
    /// ICMP or ICMPv6.
    Icmp = 11,
    /// Any other IP protocol (SCTP, GRE, ESP, ...).
    OtherL4 = 12,
    /// A packet of a tracked L4 flow, NATed and forwarded by the kernel.
    L4Forwarded = 13,
    /// A TCP segment for an L4 listener that is not a SYN and has no flow (e.g. the flow
    /// expired): left to the stack, which answers with a reset.
    L4NoFlow = 14,
    /// A SYN for a listener whose backend set is empty: dropped, as a refused connect.
    L4NoBackend = 15,
    /// No free source port towards the backend: the SYN is dropped (the client retries).
    L4PortExhausted = 16,
    /// The next hop's neighbour is not resolved yet: dropped (the daemon resolves it; TCP
    /// retransmits). A NATed packet cannot be handed to the stack.
    L4NoNeighbour = 17,
    /// No route, or a route the fast path cannot use (needs fragmentation, blackhole, ...).
    L4Unroutable = 18,
    /// An ICMP error about a tracked flow (e.g. fragmentation needed), translated back to the
    /// client like the flow's own packets.
    L4IcmpTranslated = 19,
    /// A RST for a tracked flow whose sequence number lies outside the window of what its
    /// sender has sent (`l4::RST_WINDOW`): a blind reset (RFC 5961). Dropped; the
    /// connection carries on.
    L4RstOutOfWindow = 20,
    /// A SYN for a kernel listener while more NATed handshakes are unanswered than
    /// `--l4-syn-backlog` (a SYN flood): handed to the stack, whose SYN cookies answer it
    /// without keeping state, and the userspace forwarder bound on the listener serves the
    /// connection. Counted per listener too (`L4Counters::syn_to_stack`).
    L4SynToStack = 21,
    /// A client's segment bigger than the route towards its backend carries (the path MTU
    /// shrank after the handshake): answered with ICMP fragmentation needed (IPv4 with DF)
    /// or ICMPv6 packet too big carrying the route's MTU, sent back to the client.
    L4TooBig = 22,
}

/// Number of [`PacketReason`] values; the size of the per-CPU counter array.
pub const REASON_COUNT: u32 = 23;

/// Verdict classes a [`PacketReason`] maps to, exported as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handed to the kernel network stack unchanged.
    Pass,
    /// Dropped by the datapath.
    Drop,
    /// Rewritten and sent out by the datapath (XDP_TX / XDP_REDIRECT).
    Forward,
}

impl Verdict {
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Forward => "forward",
        }
    }
}

impl PacketReason {
    /// Every reason, in counter-index order.
    pub const ALL: [PacketReason; REASON_COUNT as usize] = [
        PacketReason::TruncatedEthernet,
        PacketReason::NonIp,
        PacketReason::TruncatedIp,
        PacketReason::MalformedIp,
        PacketReason::Ipv4Options,
        PacketReason::Ipv6ExtensionHeaders,
        PacketReason::IpFragment,
        PacketReason::TruncatedL4,
        PacketReason::MalformedTcp,
        PacketReason::Tcp,
        PacketReason::Udp,
        PacketReason::Icmp,
        PacketReason::OtherL4,
        PacketReason::L4Forwarded,
        PacketReason::L4NoFlow,
        PacketReason::L4NoBackend,
        PacketReason::L4PortExhausted,
        PacketReason::L4NoNeighbour,
        PacketReason::L4Unroutable,
        PacketReason::L4IcmpTranslated,
        PacketReason::L4RstOutOfWindow,
        PacketReason::L4SynToStack,
        PacketReason::L4TooBig,
    ];

    /// The metric label for this reason.
    pub const fn label(self) -> &'static str {
        match self {
            PacketReason::TruncatedEthernet => "truncated_ethernet",
            PacketReason::NonIp => "non_ip",
            PacketReason::TruncatedIp => "truncated_ip",
            PacketReason::MalformedIp => "malformed_ip",
            PacketReason::Ipv4Options => "ipv4_options",
            PacketReason::Ipv6ExtensionHeaders => "ipv6_extension_headers",
            PacketReason::IpFragment => "ip_fragment",
            PacketReason::TruncatedL4 => "truncated_l4",
            PacketReason::MalformedTcp => "malformed_tcp",
            PacketReason::Tcp => "tcp",
            PacketReason::Udp => "udp",
            PacketReason::Icmp => "icmp",
            PacketReason::OtherL4 => "other_l4",
            PacketReason::L4Forwarded => "l4_forwarded",
            PacketReason::L4NoFlow => "l4_no_flow",
            PacketReason::L4NoBackend => "l4_no_backend",
            PacketReason::L4PortExhausted => "l4_port_exhausted",
            PacketReason::L4NoNeighbour => "l4_no_neighbour",
            PacketReason::L4Unroutable => "l4_unroutable",
            PacketReason::L4IcmpTranslated => "l4_icmp_translated",
            PacketReason::L4RstOutOfWindow => "l4_rst_out_of_window",
            PacketReason::L4SynToStack => "l4_syn_to_stack",
            PacketReason::L4TooBig => "l4_too_big",
        }
    }

    /// What the datapath does with packets of this reason. Malformed packets are passed so
    /// that the kernel stack, which owns the error accounting (`netstat -s`), drops them; the
    /// datapath only forwards what it fully understood, and drops only packets it has
    /// already rewritten or that a refused connection would have dropped anyway.
    pub const fn verdict(self) -> Verdict {
        match self {
            PacketReason::L4Forwarded | PacketReason::L4IcmpTranslated | PacketReason::L4TooBig => {
                Verdict::Forward
            }
            PacketReason::L4NoBackend
            | PacketReason::L4PortExhausted
            | PacketReason::L4NoNeighbour
            | PacketReason::L4Unroutable
            | PacketReason::L4RstOutOfWindow => Verdict::Drop,
            _ => Verdict::Pass,
        }
    }

    /// The counter index of this reason.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Per-CPU packet and byte counters, the value of [`map_names::REASON_COUNTERS`].
/// Bytes are whole frames as the datapath sees them (Ethernet header included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 16);

/// Per-CPU values add up to the total.
impl<'a> core::iter::Sum<&'a Counters> for Counters {
    fn sum<I: Iterator<Item = &'a Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), |a, c| Counters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
    }
}

#[cfg(feature = "user")]
// SAFETY: Counters is #[repr(C)], has no padding (asserted above) and every bit pattern is valid.
unsafe impl aya::Pod for Counters {}

// SAFETY (each of these): #[repr(C)], sizes asserted without hidden padding (explicit `_pad`
// fields), integers and byte arrays only, so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::ListenerKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::Listener {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::Backend {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::Flow {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::L4Counters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::NatConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for l4::SynGuard {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for sockets::SockKey {}

/// Protocol constants shared by the parsers and the tests' packet builders.
pub mod proto {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;
    pub const ETH_HDR_LEN: usize = 14;
    pub const VLAN_HDR_LEN: usize = 4;
    /// VLAN tags the parser walks through (802.1ad outer + 802.1Q inner).
    pub const MAX_VLAN_TAGS: usize = 2;
    pub const IPV4_HDR_LEN: usize = 20;
    pub const IPV6_HDR_LEN: usize = 40;
    pub const TCP_HDR_LEN: usize = 20;
    pub const UDP_HDR_LEN: usize = 8;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_IPV6_FRAGMENT: u8 = 44;
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// IPv6 extension headers the parser recognises (hop-by-hop, routing, fragment,
    /// destination options, authentication, mobility, HIP, shim6).
    pub const IPV6_EXTENSION_HEADERS: [u8; 8] = [0, 43, 44, 60, 51, 135, 139, 140];

    /// TCP flag bits (the 13th byte of the header).
    pub mod tcp_flags {
        pub const FIN: u8 = 0x01;
        pub const SYN: u8 = 0x02;
        pub const RST: u8 = 0x04;
        pub const PSH: u8 = 0x08;
        pub const ACK: u8 = 0x10;
    }

    /// ICMP (IPv4) error types that quote a packet.
    pub mod icmp {
        pub const DEST_UNREACH: u8 = 3;
        /// Code of [`DEST_UNREACH`]: fragmentation needed and DF set.
        pub const FRAG_NEEDED: u8 = 4;
        pub const TIME_EXCEEDED: u8 = 11;
    }

    /// ICMPv6 error types that quote a packet.
    pub mod icmpv6 {
        pub const DEST_UNREACH: u8 = 1;
        pub const PACKET_TOO_BIG: u8 = 2;
        pub const TIME_EXCEEDED: u8 = 3;
    }
}

/// Addresses as every map holds them: 16 bytes, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`),
/// so one key layout serves both families.
pub mod addr {
    /// The first 12 bytes of an IPv4-mapped IPv6 address.
    pub const IPV4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

    /// `v4` as the maps hold it.
    #[inline(always)]
    pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
        ]
    }

    /// Any address as the maps hold it.
    #[cfg(feature = "user")]
    pub fn to_mapped(ip: core::net::IpAddr) -> [u8; 16] {
        match ip {
            core::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
            core::net::IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// A map's address back as an address of its own family.
    #[cfg(feature = "user")]
    pub fn from_mapped(bytes: [u8; 16]) -> core::net::IpAddr {
        let v6 = core::net::Ipv6Addr::from(bytes);
        v6.to_ipv4_mapped()
            .map_or(core::net::IpAddr::V6(v6), core::net::IpAddr::V4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_in_index_order() {
        for (i, reason) in PacketReason::ALL.iter().enumerate() {
            assert_eq!(reason.index() as usize, i, "{reason:?} out of order");
        }
    }

    #[test]
    fn labels_are_unique_snake_case() {
        for (i, a) in PacketReason::ALL.iter().enumerate() {
            let snake = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
            assert!(a.label().bytes().all(snake), "{}", a.label());
            for b in &PacketReason::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }

    #[cfg(feature = "user")]
    #[test]
    fn mapped_addresses_round_trip() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
        let bytes = addr::to_mapped(v4);
        assert_eq!(bytes[..12], addr::IPV4_MAPPED_PREFIX);
        assert_eq!(bytes[12..], [198, 51, 100, 2]);
        assert_eq!(addr::from_mapped(bytes), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
        assert_eq!(addr::from_mapped(addr::to_mapped(v6)), v6);
    }

    #[test]
    fn map_names_fit_bpf_object_names() {
        for name in map_names::ALL {
            assert!(
                name.len() < 16,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}

/// The L4 fast path's maps: listeners, backend sets (Maglev tables), backends and flows.
pub mod l4 {
    use crate::select::MAGLEV_TABLE_SIZE;

    /// Listener map capacity: (address, port) pairs served in the kernel.
    pub const MAX_LISTENERS: u32 = 1024;
    /// Addresses of the node a wildcard listener answers on.
    pub const MAX_LOCAL_ADDRS: u32 = 4096;
    /// Backend map capacity (an endpoint shared by several routes is stored once).
    pub const MAX_BACKENDS: u32 = 16_384;
    /// Maglev table slots. A backend set being rebuilt is written to a free slot and the
    /// listener then flips to it, so packets never see a half-written table: twice the
    /// number of sets that can be live at once.
    pub const MAX_SET_SLOTS: u32 = 128;
    /// Entries of the flat Maglev table array: `slot * MAGLEV_TABLE_SIZE + hash % size`.
    pub const TABLE_ENTRIES: u32 = MAX_SET_SLOTS * MAGLEV_TABLE_SIZE;
    /// Connection-tracking capacity (each connection takes two entries: both directions).
    pub const MAX_FLOWS: u32 = 1 << 18;
    /// Capacity of the half-open table (two entries per handshake in progress). A flood
    /// beyond it evicts the oldest half-open entries, never an established flow.
    pub const MAX_HALF_OPEN: u32 = 1 << 16;

    /// Address family values.
    pub const FAMILY_IPV4: u8 = 4;
    pub const FAMILY_IPV6: u8 = 6;

    /// A listener: destination address (IPv4 mapped into IPv6), port in host order, protocol.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct ListenerKey {
        pub addr: [u8; 16],
        pub port: u16,
        pub protocol: u8,
        pub _pad: u8,
    }
    const _: () = assert!(core::mem::size_of::<ListenerKey>() == 20);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Listener {
        /// Stable id, the index of this listener's counters.
        pub id: u32,
        /// Which Maglev table slot holds this listener's backend set.
        pub set_slot: u32,
    }
    const _: () = assert!(core::mem::size_of::<Listener>() == 8);

    /// One endpoint, with the gateway address used as the source towards it (full NAT).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Backend {
        pub addr: [u8; 16],
        pub snat_addr: [u8; 16],
        /// Host order.
        pub port: u16,
        pub family: u8,
        pub _pad: u8,
    }
    const _: () = assert!(core::mem::size_of::<Backend>() == 36);

    /// A flow as it arrives: addresses as in `ListenerKey`, ports in host order.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FlowKey {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub src_port: u16,
        pub dst_port: u16,
        pub protocol: u8,
        pub _pad: [u8; 3],
    }
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

    /// What to rewrite a flow's packets to, and its state.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Flow {
        pub new_src: [u8; 16],
        pub new_dst: [u8; 16],
        pub new_src_port: u16,
        pub new_dst_port: u16,
        pub backend: u32,
        pub listener: u32,
        /// `FLOW_*` state.
        pub state: u8,
        /// [`TO_BACKEND`] or [`TO_CLIENT`].
        pub direction: u8,
        /// Whether `seq_next` holds this direction's sequence yet (the reply entry learns
        /// it from the backend's first segment).
        pub seq_known: u8,
        pub _pad: u8,
        /// For [`TO_CLIENT`] entries: the device the client's SYN arrived on and the MAC
        /// addresses to send back with (the client's, and the gateway's on that link). The
        /// client's SYN never reaches the stack, so no neighbour entry exists for it.
        pub ifindex: u32,
        pub mac_dst: [u8; 6],
        pub mac_src: [u8; 6],
        /// `bpf_ktime_get_ns` of the last packet, for idle expiry by the daemon.
        pub last_seen_ns: u64,
        /// The sequence number after the furthest segment this direction has sent (SYN
        /// and FIN count one): a RST from this side is believed only near it.
        pub seq_next: u32,
        pub _pad2: u32,
    }
    const _: () = assert!(core::mem::size_of::<Flow>() == 80);

    impl Flow {
        /// The key of the entry for this flow's other direction: the packets it rewrites
        /// to, seen coming back (for a reply entry, the client side; for a client-side
        /// entry, the reply).
        #[inline(always)]
        pub const fn other_direction(&self) -> FlowKey {
            FlowKey {
                src: self.new_dst,
                dst: self.new_src,
                src_port: self.new_dst_port,
                dst_port: self.new_src_port,
                protocol: crate::proto::IPPROTO_TCP,
                _pad: [0; 3],
            }
        }
    }

    /// How far from the sender's next sequence number a RST may be and still close its flow:
    /// a legitimate RST carries the sender's next sequence number (or one a little behind
    /// it); a blind attacker has to guess within this of 2^32.
    pub const RST_WINDOW: u32 = 1 << 20;

    /// [`Flow::direction`]: client to backend (next hop from the FIB).
    pub const TO_BACKEND: u8 = 0;
    /// [`Flow::direction`]: backend to client (back the way the client came).
    pub const TO_CLIENT: u8 = 1;

    /// Traffic the kernel forwarded for one listener or backend (per CPU).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct L4Counters {
        /// Packets forwarded, both directions.
        pub packets: u64,
        /// Bytes of those packets (whole frames).
        pub bytes: u64,
        /// Connections (flows) created.
        pub connections: u64,
        /// SYNs handed to the stack's SYN cookies (and the userspace forwarder) because
        /// too many handshakes were unanswered ([`crate::PacketReason::L4SynToStack`]).
        pub syn_to_stack: u64,
    }
    const _: () = assert!(core::mem::size_of::<L4Counters>() == 32);

    /// Per-CPU values add up to the total.
    impl<'a> core::iter::Sum<&'a L4Counters> for L4Counters {
        fn sum<I: Iterator<Item = &'a L4Counters>>(iter: I) -> L4Counters {
            iter.fold(L4Counters::default(), |a, c| L4Counters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                connections: a.connections + c.connections,
                syn_to_stack: a.syn_to_stack + c.syn_to_stack,
            })
        }
    }

    /// Settings of the NAT the daemon writes at start (one entry of
    /// [`crate::map_names::L4_CONFIG`]).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NatConfig {
        /// Source ports towards backends: `[source_port_base, + source_port_span)`, a range
        /// the host does not allocate its own connections from (`--l4-nat-ports`). A span of
        /// 0 (nothing written) means `select::SOURCE_PORT_BASE`/`_SPAN`.
        pub source_port_base: u32,
        pub source_port_span: u32,
        /// NATed handshakes that may be unanswered at once ([`SynGuard::unanswered`])
        /// before new SYNs go to the stack's SYN cookies (`--l4-syn-backlog`); 0 means
        /// [`DEFAULT_SYN_BACKLOG`].
        pub syn_backlog: u32,
        pub _pad: u32,
    }
    const _: () = assert!(core::mem::size_of::<NatConfig>() == 16);

    /// [`NatConfig::syn_backlog`] when the daemon has not set one: the stack's own
    /// `tcp_max_syn_backlog` on most hosts.
    pub const DEFAULT_SYN_BACKLOG: u32 = 4096;

    /// SYN flood detection, one entry shared by every CPU (updated atomically): a SYN that
    /// creates a half-open flow adds one, the client's ACK that completes its handshake
    /// takes it away, and every [`SYN_GUARD_WINDOW_NS`] the count halves, so handshakes
    /// that never complete (spoofed sources, a backend that does not answer) fade out.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SynGuard {
        /// `bpf_ktime_get_ns` when the count last halved.
        pub window_start_ns: u64,
        /// Handshakes NATed and not completed, decaying; may dip below zero briefly (a
        /// handshake that started before the last halving completes after it).
        pub unanswered: i64,
    }
    const _: () = assert!(core::mem::size_of::<SynGuard>() == 16);

    /// How often [`SynGuard::unanswered`] halves.
    pub const SYN_GUARD_WINDOW_NS: u64 = 1_000_000_000;

    /// A half-open flow silent this long gives its source port up to a new connection that
    /// finds every candidate port taken (a client retransmits its SYN after 1 s, then 3 s).
    pub const RECLAIM_HALF_OPEN_AFTER_NS: u64 = 3_000_000_000;

    /// A flow closed both ways (a FIN seen in each direction, or a RST) and silent this long
    /// gives its source port up to a new connection that finds every candidate port taken,
    /// as conntrack drops closing entries early under pressure: otherwise a burst of short
    /// connections holds the whole range for the closing timeout. Both entries go.
    pub const RECLAIM_CLOSED_AFTER_NS: u64 = 100_000_000;
    /// A flow closing in one direction only (a half-close) gives its port up after this long
    /// of silence, and only to a new connection that finds every candidate port taken.
    pub const RECLAIM_CLOSING_AFTER_NS: u64 = 1_000_000_000;

    pub const FLOW_SYN_SENT: u8 = 1;
    pub const FLOW_ESTABLISHED: u8 = 2;
    /// Closed: a FIN seen both ways (each entry then holds this), or a RST either way. The
    /// daemon forgets such entries after `--l4-closing-timeout` of silence.
    pub const FLOW_CLOSING: u8 = 3;
    /// This direction sent its FIN, the other has not: a half-close, which may carry data
    /// the other way for as long as it likes, so it lives by the idle timeout.
    pub const FLOW_FIN_SENT: u8 = 4;
}

/// Backend selection shared by the kernel and userspace datapaths, so both pick the same
/// backend for the same flow.
pub mod select {
    /// Entries of one backend set's Maglev table: a prime, large against the number of
    /// backends so weights are honoured to well under 1 %.
    pub const MAGLEV_TABLE_SIZE: u32 = 16_381;

    /// The hash of a flow's 5-tuple. Addresses are 16 bytes (IPv4 as IPv4-mapped IPv6),
    /// passed as four native-endian words. Fixed-length and loop-free so the verifier sees a
    /// straight line.
    #[inline(always)]
    pub fn flow_hash(
        src: [u32; 4],
        dst: [u32; 4],
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> u32 {
        let mut h = 0x9747_b28c_u32 ^ u32::from(protocol);
        h = mix(h, src[0]);
        h = mix(h, src[1]);
        h = mix(h, src[2]);
        h = mix(h, src[3]);
        h = mix(h, dst[0]);
        h = mix(h, dst[1]);
        h = mix(h, dst[2]);
        h = mix(h, dst[3]);
        h = mix(h, (u32::from(src_port) << 16) | u32::from(dst_port));
        finish(h)
    }

    /// Source ports the gateway allocates towards backends when the daemon has not set a
    /// range ([`crate::l4::NatConfig`]): `[1024, 65535)`.
    pub const SOURCE_PORT_BASE: u32 = 1024;
    pub const SOURCE_PORT_SPAN: u32 = 65_535 - SOURCE_PORT_BASE;
    /// The stride between a flow's candidate ports: a prime, so the candidates are distinct
    /// in any range whose size it does not divide.
    pub const SOURCE_PORT_STRIDE: u32 = 7_919;
    /// Candidate source ports tried before a SYN is dropped as exhausted. With the port space
    /// half in use (a client cycling through its whole ephemeral range) 32 probes fail about
    /// once in 10^10 SYNs; 8 failed every few thousand SYNs under connection churn.
    pub const SOURCE_PORT_ATTEMPTS: u32 = 32;

    /// The `attempt`th source port candidate in `[base, base + span)` for a new flow with
    /// hash `hash` (`span` > 0). A prime stride, so the candidates of one flow are distinct;
    /// a client that reuses its tuple gets the same first candidate back.
    #[inline(always)]
    pub const fn source_port(hash: u32, attempt: u32, base: u32, span: u32) -> u16 {
        (base + hash.wrapping_add(attempt.wrapping_mul(SOURCE_PORT_STRIDE)) % span) as u16
    }

    /// One round of MurmurHash3's 32-bit body.
    #[inline(always)]
    const fn mix(h: u32, k: u32) -> u32 {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }

    /// MurmurHash3's finaliser: every input bit affects every output bit.
    #[inline(always)]
    const fn finish(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// Connections whose bytes the kernel moves between two sockets (TLS passthrough after the
/// SNI decision): a SOCKHASH keyed by the receiving socket's own tuple, whose value is the
/// socket to send out of.
pub mod sockets {
    /// SOCKHASH capacity: two entries per connection.
    pub const MAX_SOCKETS: u32 = 1 << 16;

    /// A socket's tuple as the `sk_skb` program reads it from `__sk_buff`: the address
    /// family (`AF_INET` 2, `AF_INET6` 10), ports in host order, addresses as the raw
    /// network-order words (IPv4 in word 0; a dual-stack socket's IPv4 peers are
    /// IPv4-mapped IPv6).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SockKey {
        pub family: u32,
        pub local_port: u32,
        pub remote_port: u32,
        pub _pad: u32,
        pub local: [u32; 4],
        pub remote: [u32; 4],
    }
    const _: () = assert!(core::mem::size_of::<SockKey>() == 48);

    pub const AF_INET: u32 = 2;
    pub const AF_INET6: u32 = 10;

    /// Bytes handed to the peer socket.
    pub const COUNT_REDIRECTED: u32 = 0;
    /// A FIN (an empty skb): left to the receiving socket, where userspace sees the EOF.
    pub const COUNT_EOF: u32 = 1;
    /// No peer in the map (it is closing): the bytes stay with the receiving socket.
    pub const COUNT_NO_PEER: u32 = 2;
    pub const COUNT_LEN: u32 = 3;

    /// Per-CPU packets and bytes of one `COUNT_*` kind.
    pub use crate::Counters;
}
