//! Entry points of Sluice's kernel programs. Each is a thin wrapper: classify the packet,
//! count it, and return the verdict the contract in `gateway-common` assigns to it.
#![no_std]
#![no_main]

mod context;
mod counters;
mod headers;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use gateway_common::{PacketReason, Verdict};

use crate::context::{Packet, TcPacket, XdpPacket};

/// XDP ingress: the fast path on every interface where XDP attaches.
#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    let reason = ingress(&XdpPacket::new(&ctx));
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "xdp: reason {}", reason.index());
    match reason.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// TC (clsact/TCX ingress): the fallback where XDP cannot attach. It sees skbs, so GSO
/// packets keep their offloads (../shared/BENCH_NOTES.md).
#[classifier]
pub fn sluice_tc(ctx: TcContext) -> i32 {
    let reason = ingress(&TcPacket::new(&ctx));
    #[cfg(feature = "packet-log")]
    aya_log_ebpf::debug!(&ctx, "tc: reason {}", reason.index());
    match reason.verdict() {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn ingress<P: Packet>(packet: &P) -> PacketReason {
    let reason = parse::classify(packet);
    counters::count(reason, packet.frame_len());
    reason
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
