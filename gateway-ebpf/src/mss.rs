//! MSS clamping. A SYN or SYN-ACK's maximum segment size option is lowered to what both the
//! link it arrived on and the link it leaves by carry, so neither end sends segments the
//! path cannot: a backend behind a smaller MTU than the client's (a tunnel, an overlay)
//! would otherwise stall after the handshake, as the NAT drops what does not fit.
use aya_ebpf::helpers::bpf_check_mtu;
use gateway_common::{
    PacketReason,
    l4::FAMILY_IPV4,
    proto::{IPV4_HDR_LEN, IPV6_HDR_LEN, TCP_HDR_LEN, tcp_flags},
};

use crate::{context::read_at, hook::Hook, parse::Tcp};

const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_MSS_LEN: u8 = 4;
/// Options looked at before giving up (a SYN carries at most 40 bytes of them; Linux puts
/// the MSS first).
const MAX_OPTIONS: usize = 10;
/// No TCP option starts further into a frame than this: two VLAN tags, an IPv6 header and
/// 60 bytes of TCP header. A constant bound the verifier can see.
const MAX_OPTION_OFFSET: usize = 160;

/// Lowers a SYN's MSS option to the smaller MTU of the arrival device and `egress_ifindex`,
/// less the IP and TCP headers. Segments without SYN, or without an MSS option, are left
/// alone; so is one whose devices cannot be asked.
// Out of line, as `too_big::answer`: the NAT stage's frame and `new_flow`'s share the
// verifier's 512 bytes; this reaches the packet through the hook only.
#[inline(never)]
pub fn clamp<H: Hook>(packet: &H, tcp: &Tcp, egress_ifindex: u32) -> Result<(), PacketReason> {
    if tcp.flags & tcp_flags::SYN == 0 {
        return Ok(());
    }
    let (Some(arrival), Some(egress)) = (device_mtu(packet, 0), device_mtu(packet, egress_ifindex))
    else {
        return Ok(());
    };
    let headers = TCP_HDR_LEN as u32
        + if tcp.family == FAMILY_IPV4 {
            IPV4_HDR_LEN as u32
        } else {
            IPV6_HDR_LEN as u32
        };
    let limit = arrival.min(egress).saturating_sub(headers);
    let Some(offset) = mss_offset(packet, tcp) else {
        return Ok(());
    };
    let Some(value) = read_at::<H, [u8; 2]>(packet, offset + 2) else {
        return Ok(());
    };
    let mss = u16::from_be_bytes(value);
    if u32::from(mss) <= limit || limit == 0 {
        return Ok(());
    }
    packet.replace_tcp_word(tcp, offset + 2, mss, limit.min(u32::from(u16::MAX)) as u16)
}

/// The MTU of `ifindex` (0: the device the packet arrived on).
#[inline(always)]
fn device_mtu<H: Hook>(packet: &H, ifindex: u32) -> Option<u32> {
    let mut mtu = 0u32;
    // SAFETY: `mtu` lives on the stack across the call; the helper writes the MTU into it
    // (and returns whether this packet would fit, which is not the question here).
    let ret = unsafe { bpf_check_mtu(packet.context_ptr(), ifindex, &mut mtu, 0, 0) };
    (ret >= 0 && mtu > 0).then_some(mtu)
}

/// Where the MSS option starts in the frame, if the segment has one.
#[inline(always)]
fn mss_offset<H: Hook>(packet: &H, tcp: &Tcp) -> Option<usize> {
    let end = tcp.l4_off + tcp.header_len;
    let mut offset = tcp.l4_off + TCP_HDR_LEN;
    for _ in 0..MAX_OPTIONS {
        if offset >= end || offset > MAX_OPTION_OFFSET {
            return None;
        }
        // Kind and length read as one: a one-byte read at a variable offset compiles to a
        // bounds check the verifier cannot follow. (A NOP as the frame's very last byte
        // ends the scan; no MSS could follow it.)
        let [kind, len]: [u8; 2] = read_at(packet, offset)?;
        match kind {
            OPTION_END => return None,
            OPTION_NOP => {
                offset += 1;
                continue;
            }
            _ => {}
        }
        if kind == OPTION_MSS {
            return (len == OPTION_MSS_LEN && offset + usize::from(len) <= end).then_some(offset);
        }
        if len < 2 {
            return None;
        }
        offset += usize::from(len);
    }
    None
}
