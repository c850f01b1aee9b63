//! Wire layouts of the headers the parser reads. Multi-byte fields are kept as byte arrays in
//! network order, so the structs have alignment 1 and no padding.

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// An 802.1Q/802.1ad tag as it follows the Ethernet addresses: TCI, then the inner type.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// More-fragments flag and fragment offset; non-zero for every fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset in the upper four bits.
    pub doff_reserved: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

/// Where the TCP checksum sits in the header (the NAT rewrite and ICMP quotes both need it).
pub const TCP_CHECK_OFFSET: usize = core::mem::offset_of!(TcpHdr, check);
const _: () = assert!(TCP_CHECK_OFFSET == 16);

/// An ICMP error's header: type, code, checksum, and four bytes (unused, or the MTU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == gateway_common::proto::ETH_HDR_LEN);
const _: () = assert!(core::mem::size_of::<VlanHdr>() == gateway_common::proto::VLAN_HDR_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == gateway_common::proto::IPV4_HDR_LEN);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == gateway_common::proto::IPV6_HDR_LEN);
const _: () = assert!(core::mem::size_of::<TcpHdr>() == gateway_common::proto::TCP_HDR_LEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == gateway_common::proto::UDP_HDR_LEN);
