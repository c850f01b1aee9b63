//! Next hop for a NATed packet: the kernel's FIB gives the egress device and both MAC
//! addresses; a SYN's MSS is clamped to the devices on its way. Without a neighbour entry XDP must drop (the daemon keeps backends' neighbours
//! warm); TC lets the kernel resolve it.
use aya_ebpf::{bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup};
use gateway_common::{
    PacketReason,
    l4::{FAMILY_IPV4, Flow, TO_CLIENT},
    proto::IPPROTO_TCP,
};

use crate::{hook::Hook, parse::Tcp};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// Where a NATed packet goes. The device and MAC addresses stay where they are (the flow,
/// or the FIB lookup's result in the scratch map): the stack has no room for a copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Back the way the client came: the flow's device and MAC addresses.
    Client,
    /// The FIB's device and MAC addresses.
    Resolved,
    /// The FIB's device; the neighbour is not known yet.
    Unresolved,
}

/// Why a packet cannot go on.
pub enum Blocked {
    Reason(PacketReason),
    /// Bigger than the route towards the backend carries (its MTU).
    TooBig {
        mtu: u32,
    },
}

/// The next hop of a packet of `flow` (looked up before the rewrite, from the flow's
/// addresses). Replies go back the way the client came (remembered in the flow); packets
/// to backends follow the FIB.
#[inline(always)]
pub fn next_hop<H: Hook>(
    hook: &H,
    tcp: &Tcp,
    flow: &Flow,
    params: &mut bpf_fib_lookup,
) -> Result<NextHop, Blocked> {
    if flow.direction == TO_CLIENT {
        return Ok(NextHop::Client);
    }
    // An all-zero request skeleton, stored word by word: zeroing the struct whole becomes a
    // `memset` subprogram call on this target, once per packet towards a backend.
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 4;
    const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>().is_multiple_of(4));
    let words: *mut u32 = core::ptr::from_mut(params).cast();
    for i in 0..WORDS {
        // SAFETY: inside `params` (WORDS whole words), which is 4-byte aligned (u32 fields);
        // any bit pattern is valid plain data.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    params.l4_protocol = IPPROTO_TCP;
    params.sport = flow.new_src_port.to_be();
    params.dport = flow.new_dst_port.to_be();
    params.__bindgen_anon_1.tot_len = H::fib_tot_len(tcp);
    params.ifindex = hook.ingress_ifindex();
    if tcp.family == FAMILY_IPV4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([
            flow.new_src[12],
            flow.new_src[13],
            flow.new_src[14],
            flow.new_src[15],
        ]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([
            flow.new_dst[12],
            flow.new_dst[13],
            flow.new_dst[14],
            flow.new_dst[15],
        ]);
    } else {
        params.family = AF_INET6;
        // SAFETY: plain-data unions; the IPv6 arms are written whole.
        unsafe {
            let src: *mut [u8; 16] =
                core::ptr::addr_of_mut!(params.__bindgen_anon_3.ipv6_src).cast();
            let dst: *mut [u8; 16] =
                core::ptr::addr_of_mut!(params.__bindgen_anon_4.ipv6_dst).cast();
            *src = flow.new_src;
            *dst = flow.new_dst;
        }
    }
    // SAFETY: params lives on the stack for the call; the size is its own.
    let ret = unsafe {
        fib_lookup(
            hook.context_ptr(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match ret {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop::Resolved),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(NextHop::Unresolved),
        // SAFETY: the helper wrote the route's MTU into this arm of the union.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Blocked::TooBig {
            mtu: u32::from(unsafe { params.__bindgen_anon_1.mtu_result }),
        }),
        _ => Err(Blocked::Reason(PacketReason::L4Unroutable)),
    }
}

/// Sends the rewritten packet to `hop` (a SYN's MSS clamped to the devices on its way) and
/// returns the hook's action. `params` holds the FIB's answer from [`next_hop`].
#[inline(always)]
pub fn send<H: Hook>(
    hook: &H,
    tcp: &Tcp,
    flow: &Flow,
    params: &bpf_fib_lookup,
    hop: NextHop,
) -> Result<i32, PacketReason> {
    let ifindex = if hop == NextHop::Client {
        flow.ifindex
    } else {
        params.ifindex
    };
    crate::mss::clamp(hook, tcp, ifindex)?;
    match hop {
        NextHop::Client => hook.send(flow.ifindex, flow.mac_dst, flow.mac_src),
        NextHop::Resolved => hook.send(params.ifindex, params.dmac, params.smac),
        NextHop::Unresolved => hook.send_unresolved(params.ifindex),
    }
}
