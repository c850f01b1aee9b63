//! The socket splice: an `sk_skb` stream verdict on the `SNI_SOCKETS` SOCKHASH. Every skb a
//! spliced socket receives is sent out of its peer socket (the map's value under the
//! receiver's own tuple), so a TLS passthrough connection's bytes never reach userspace.
//! A FIN arrives as an empty skb: it stays with the receiving socket, where userspace
//! reads the EOF and passes the half-close on. Without a peer (it is closing) the bytes
//! stay too: `SK_DROP` would discard them silently.
use core::ptr::read_volatile;

use aya_ebpf::{bindings::sk_action, programs::SkBuffContext};
use gateway_common::sockets::{
    AF_INET, COUNT_EOF, COUNT_NO_PEER, COUNT_REDIRECTED, Counters, SockKey,
};

use crate::maps::{SNI_COUNTERS, SNI_SOCKETS};

#[inline(always)]
pub fn verdict(ctx: &SkBuffContext) -> u32 {
    let skb = &ctx.skb;
    let len = skb.len();
    if len == 0 {
        count(COUNT_EOF, 0);
        return sk_action::SK_PASS;
    }
    let family = skb.family();
    let mut key = SockKey {
        family,
        local_port: skb.local_port(),
        // Network-order port in the upper 16 bits (bpf_convert_ctx_access).
        remote_port: u32::from(u16::from_be((skb.remote_port() >> 16) as u16)),
        _pad: 0,
        local: [0; 4],
        remote: [0; 4],
    };
    if family == AF_INET {
        key.local[0] = skb.local_ipv4();
        key.remote[0] = skb.remote_ipv4();
    } else {
        // One load per word at a constant offset from the context: the verifier refuses a
        // context pointer moved to the array and then dereferenced.
        let raw = skb.skb;
        // SAFETY (each): `raw` is the program's context; the fields are plain words.
        unsafe {
            key.local[0] = read_volatile(&raw const (*raw).local_ip6[0]);
            key.local[1] = read_volatile(&raw const (*raw).local_ip6[1]);
            key.local[2] = read_volatile(&raw const (*raw).local_ip6[2]);
            key.local[3] = read_volatile(&raw const (*raw).local_ip6[3]);
            key.remote[0] = read_volatile(&raw const (*raw).remote_ip6[0]);
            key.remote[1] = read_volatile(&raw const (*raw).remote_ip6[1]);
            key.remote[2] = read_volatile(&raw const (*raw).remote_ip6[2]);
            key.remote[3] = read_volatile(&raw const (*raw).remote_ip6[3]);
        }
    }
    if SNI_SOCKETS.redirect_skb(ctx, &mut key, 0) == i64::from(sk_action::SK_PASS) {
        count(COUNT_REDIRECTED, len);
        sk_action::SK_PASS
    } else {
        count(COUNT_NO_PEER, len);
        sk_action::SK_PASS
    }
}

#[inline(always)]
fn count(kind: u32, bytes: u32) {
    if let Some(c) = SNI_COUNTERS.get_ptr_mut(kind) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on it meanwhile.
        let c: &mut Counters = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += u64::from(bytes);
    }
}
