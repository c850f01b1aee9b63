//! Entry points of Sluice's kernel programs. Each is a thin wrapper: classify the packet,
//! count it, and return the verdict the contract in `gateway-common` assigns to it.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference so they are not copied onto the 512-byte BPF stack"
)]

mod context;
mod counters;
mod csum;
mod fib;
mod headers;
mod icmp;
mod maps;
mod nat;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use gateway_common::{PacketReason, Verdict};

use crate::context::{Packet as _, TcPacket, XdpPacket};

/// XDP ingress: the fast path on every interface where XDP attaches. TCP goes through the
/// L4 NAT stage; everything else is classified, counted and passed.
#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let packet = XdpPacket::new(&ctx);
    let frame_len = packet.frame_len();
    let (reason, action) = match parse::parse(&packet) {
        Ok(tcp) => nat::process(&ctx, &packet, &tcp),
        Err(PacketReason::Icmp) => {
            icmp::translate(&ctx, &packet).unwrap_or((PacketReason::Icmp, xdp_action::XDP_PASS))
        }
        Err(reason) => (reason, xdp_verdict(reason)),
    };
    counters::count(reason, frame_len);
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "xdp: reason {}", reason.index());
    action
}

#[inline(always)]
fn xdp_verdict(reason: PacketReason) -> u32 {
    match reason.verdict() {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::Forward => xdp_action::XDP_PASS,
    }
}

/// TC (clsact/TCX ingress): the fallback where XDP cannot attach. It sees skbs, so GSO
/// packets keep their offloads (../shared/BENCH_NOTES.md). It classifies and passes; the L4
/// NAT stage runs in XDP only for now.
#[classifier]
pub fn sluice_tc(ctx: TcContext) -> i32 {
    let packet = TcPacket::new(&ctx);
    let reason = parse::classify(&packet);
    counters::count(reason, packet.frame_len());
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "tc: reason {}", reason.index());
    match reason.verdict() {
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Pass | Verdict::Forward => TC_ACT_OK,
    }
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
