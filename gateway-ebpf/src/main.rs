//! Entry points of Sluice's kernel programs. Each is a thin wrapper: classify the packet,
//! count it, and return the verdict the contract in `gateway-common` assigns to it.
#![no_std]
#![no_main]
// Atomic adds to a map value shared by CPUs (see `nat::syn_guard_add`); the BPF target is
// built with `-Z build-std`, on a nightly-enabled toolchain already.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference so they are not copied onto the 512-byte BPF stack"
)]

mod context;
mod counters;
mod csum;
mod fib;
mod headers;
mod hook;
mod icmp;
mod maps;
mod mss;
mod nat;
mod parse;
mod sockets;
mod too_big;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, stream_verdict, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use gateway_common::PacketReason;

use crate::{
    context::{Packet as _, TcPacket, XdpPacket},
    hook::Hook as _,
};

/// XDP ingress: the fast path on every interface where XDP attaches. TCP goes through the
/// L4 NAT stage; everything else is classified, counted and passed.
#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let packet = XdpPacket::new(&ctx);
    let frame_len = packet.frame_len();
    let (reason, action) = match parse::parse(&packet) {
        Ok(tcp) => {
            let (reason, action) = nat::process(&packet, &tcp);
            (reason, action as u32)
        }
        Err(PacketReason::Icmp) => icmp::translate(&packet)
            .map(|(reason, action)| (reason, action as u32))
            .unwrap_or((PacketReason::Icmp, xdp_action::XDP_PASS)),
        Err(reason) => (reason, XdpPacket::verdict_action(reason) as u32),
    };
    counters::count(reason, frame_len);
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "xdp: reason {}", reason.index());
    action
}

/// TC (clsact/TCX ingress): where XDP cannot attach, or where GSO matters. It sees skbs, so
/// a NATed 64 KB GSO packet stays one packet (docs/bench.md). TCP goes through
/// the same L4 NAT stage as in XDP, and ICMP errors about its flows are translated alike.
#[classifier]
pub fn sluice_tc(ctx: TcContext) -> i32 {
    let packet = TcPacket::new(&ctx);
    let frame_len = packet.frame_len();
    let (reason, action) = match parse::parse(&packet) {
        Ok(tcp) => nat::process(&packet, &tcp),
        Err(PacketReason::Icmp) => icmp::translate(&packet).unwrap_or((
            PacketReason::Icmp,
            TcPacket::verdict_action(PacketReason::Icmp),
        )),
        Err(reason) => (reason, TcPacket::verdict_action(reason)),
    };
    counters::count(reason, frame_len);
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "tc: reason {}", reason.index());
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic ("last insn is not an exit or jmp"), so a
    // program that loads never gets here; xtask checks the object has no panic call.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// `sk_skb` stream verdict of the TLS passthrough socket splice (attached to the
/// `SNI_SOCKETS` SOCKHASH): each byte a spliced socket receives leaves by its peer.
#[stream_verdict]
pub fn sluice_sockmap(ctx: SkBuffContext) -> u32 {
    sockets::verdict(&ctx)
}
