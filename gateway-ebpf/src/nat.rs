//! The L4 fast path: full NAT with connection tracking. A SYN to a kernel listener picks a
//! backend from the listener's Maglev table and a source port whose reverse tuple is free,
//! and creates both directions' flow entries in the half-open table; the client's ACK of the
//! backend's SYN-ACK moves them to the flow table, so a SYN flood can only evict other
//! half-open entries. While too many handshakes go unanswered, new SYNs go to the stack's
//! SYN cookies instead (the userspace forwarder is bound on every kernel listener). Every
//! packet of a tracked flow is rewritten (addresses, ports, checksums, TTL) and sent to its
//! next hop without the stack.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{
    PacketReason,
    addr::ipv4_mapped,
    l4::{
        DEFAULT_SYN_BACKLOG, FAMILY_IPV4, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_FIN_SENT,
        FLOW_SYN_SENT, Flow, FlowKey, ListenerKey, NatConfig, RECLAIM_CLOSED_AFTER_NS,
        RECLAIM_CLOSING_AFTER_NS, RECLAIM_HALF_OPEN_AFTER_NS, RST_WINDOW, SYN_GUARD_WINDOW_NS,
        TO_BACKEND, TO_CLIENT,
    },
    proto::{ETH_HDR_LEN, IPPROTO_TCP, tcp_flags},
    select::{
        MAGLEV_TABLE_SIZE, SOURCE_PORT_ATTEMPTS, SOURCE_PORT_BASE, SOURCE_PORT_SPAN, flow_hash,
        source_port,
    },
};

use crate::{
    context::ptr_at_mut,
    csum, fib,
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr},
    hook::Hook,
    maps::{
        L4_BACKENDS, L4_CONFIG, L4_FLOWS, L4_HALF_OPEN, L4_LISTENERS, L4_LOCAL_ADDRS, L4_SYN_GUARD,
        L4_TABLES, SCRATCH, Scratch,
    },
    parse::Tcp,
};

/// Handles a TCP segment: `(reason, the hook's action)`.
#[inline(always)]
pub fn process<H: Hook>(packet: &H, tcp: &Tcp) -> (PacketReason, i32) {
    // The fast path handles untagged frames; a segment whose TTL would expire goes to the
    // stack, which answers with ICMP time exceeded.
    if tcp.l3_off != ETH_HDR_LEN || tcp.hop_limit <= 1 {
        return (PacketReason::Tcp, H::verdict_action(PacketReason::Tcp));
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return (PacketReason::Tcp, H::verdict_action(PacketReason::Tcp));
    };
    // SAFETY: this CPU's slot of a per-CPU map; nothing else runs on it during the program.
    let scratch = unsafe { &mut *scratch };
    if let Err(reason) = fill_key(packet, tcp, &mut scratch.key) {
        return (reason, H::verdict_action(reason));
    }
    // Established flows first: their packets pay one lookup.
    let mut table = Table::Established;
    let mut found = L4_FLOWS.get_ptr_mut(&scratch.key);
    if found.is_none() {
        table = Table::HalfOpen;
        found = L4_HALF_OPEN.get_ptr_mut(&scratch.key);
    }
    // A new SYN on the tuple of a closing flow is a new connection (the client reused its
    // port): it picks a backend afresh, and the old entries go, so a late packet from the
    // old backend cannot reach the new connection.
    if let Some(flow) = found
        && tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        // SAFETY: a pointer from a successful lookup of this map's value type.
        && matches!(unsafe { (*flow).state }, FLOW_CLOSING | FLOW_FIN_SENT)
    {
        // SAFETY: as above; the fields are copied out before the entry changes.
        other_direction_key(unsafe { &*flow }, &mut scratch.reverse);
        table.remove(&scratch.reverse);
        table.remove(&scratch.key);
        found = None;
    }
    // A tracked flow is used where it lies in the map: copying its 80 bytes out costs a
    // `memmove` call per packet (the BPF target has no inline block copy that size).
    let (flow, new_connection): (&Flow, bool) = match found {
        Some(flow) => {
            // SAFETY: a pointer from a successful lookup of this map's value type; the entry
            // stays valid for the rest of the program (RCU). Concurrent writers only race on
            // state and timestamps, which tolerate a lost update.
            unsafe {
                // A blind reset changes nothing, not even the flow's last activity.
                if tcp.flags & tcp_flags::RST != 0 && !rst_in_window(&*flow, tcp) {
                    let reason = PacketReason::L4RstOutOfWindow;
                    return (reason, H::verdict_action(reason));
                }
                (*flow).last_seen_ns = bpf_ktime_get_ns();
                if (*flow).seq_known == 0 || (tcp.seq_end.wrapping_sub((*flow).seq_next) as i32) > 0
                {
                    (*flow).seq_next = tcp.seq_end;
                    (*flow).seq_known = 1;
                }
                if tcp.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                    close_direction(&mut *flow, tcp.flags, &mut scratch.reverse, table);
                } else if (*flow).state == FLOW_SYN_SENT && tcp.flags & tcp_flags::ACK != 0 {
                    (*flow).state = FLOW_ESTABLISHED;
                }
                if table == Table::HalfOpen
                    && (*flow).direction == TO_BACKEND
                    && tcp.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
                    && tcp.flags & tcp_flags::ACK != 0
                    && promote(scratch, tcp.ack)
                {
                    // The half-open entry is gone: its copy carries this packet.
                    (&scratch.flow, false)
                } else {
                    (&*flow, false)
                }
            }
        }
        None => {
            let from = arrival(packet);
            match new_flow(tcp, scratch, &from) {
                Ok(true) => (&scratch.flow, true),
                Ok(false) => return (PacketReason::Tcp, H::verdict_action(PacketReason::Tcp)),
                Err(reason) => return (reason, H::verdict_action(reason)),
            }
        }
    };
    // The route first: a packet too big for it is answered as the client sent it.
    let hop = match fib::next_hop(packet, tcp, flow, &mut scratch.fib) {
        Ok(hop) => hop,
        Err(fib::Blocked::TooBig { mtu }) => {
            return crate::too_big::answer(packet, tcp, &scratch.key, mtu);
        }
        Err(fib::Blocked::Reason(reason)) => return (reason, H::verdict_action(reason)),
    };
    if let Err(reason) = rewrite(packet, tcp, &scratch.key, flow) {
        return (reason, H::verdict_action(reason));
    }
    match fib::send(packet, tcp, flow, &scratch.fib, hop) {
        Ok(action) => {
            crate::counters::count_l4(
                flow.listener,
                flow.backend,
                packet.frame_len(),
                new_connection,
            );
            (PacketReason::L4Forwarded, action)
        }
        Err(reason) => (reason, H::verdict_action(reason)),
    }
}

/// The table a flow entry lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Established,
    HalfOpen,
}

impl Table {
    #[inline(always)]
    fn get_ptr_mut(self, key: &FlowKey) -> Option<*mut Flow> {
        match self {
            Table::Established => L4_FLOWS.get_ptr_mut(key),
            Table::HalfOpen => L4_HALF_OPEN.get_ptr_mut(key),
        }
    }

    #[inline(always)]
    fn remove(self, key: &FlowKey) {
        let _ = match self {
            Table::Established => L4_FLOWS.remove(key),
            Table::HalfOpen => L4_HALF_OPEN.remove(key),
        };
    }
}

/// The client's ACK on a half-open flow: if it acknowledges what the backend has sent (its
/// SYN-ACK), both entries move to the established table. `scratch.key` is the client-side
/// key; `scratch.flow` ends up holding that entry's copy.
// Out of line, like `new_flow`: it touches maps and scratch only.
#[inline(never)]
fn promote(scratch: &mut Scratch, ack: u32) -> bool {
    // SAFETY (both lookups): plain data copied out at once; a deleted entry's memory may be
    // reused by another CPU's insert, so nothing is read through the pointers later.
    let Some(forward) = (unsafe { L4_HALF_OPEN.get(&scratch.key) }) else {
        return false;
    };
    scratch.flow = *forward;
    other_direction_key(&scratch.flow, &mut scratch.reverse);
    let Some(back) = (unsafe { L4_HALF_OPEN.get(&scratch.reverse) }) else {
        return false;
    };
    // A blind ACK (a spoofed source never sees the SYN-ACK) would have to guess the
    // backend's initial sequence number to within the window.
    if back.seq_known == 0 || (ack.wrapping_sub(back.seq_next) as i32).unsigned_abs() > RST_WINDOW {
        return false;
    }
    scratch.back = *back;
    // The reply direction first, as when a flow is created.
    if L4_FLOWS.insert(&scratch.reverse, &scratch.back, 0).is_err()
        || L4_FLOWS.insert(&scratch.key, &scratch.flow, 0).is_err()
    {
        return false;
    }
    let _ = L4_HALF_OPEN.remove(&scratch.key);
    let _ = L4_HALF_OPEN.remove(&scratch.reverse);
    syn_guard_add(-1);
    true
}

/// Whether NATed handshakes go unanswered faster than `backlog` fades: a SYN flood (or
/// backends that do not answer). Halves the count once per `SYN_GUARD_WINDOW_NS`.
#[inline(always)]
fn syn_flood(now: u64, backlog: u32) -> bool {
    let Some(guard) = L4_SYN_GUARD.get_ptr_mut(0) else {
        return false;
    };
    let backlog = if backlog == 0 {
        DEFAULT_SYN_BACKLOG
    } else {
        backlog
    };
    // SAFETY: a pointer from a successful lookup of the one entry. The halving races with
    // other CPUs' adds: a lost update only nudges a count that is an estimate anyway.
    unsafe {
        if now.wrapping_sub((*guard).window_start_ns) > SYN_GUARD_WINDOW_NS {
            (*guard).window_start_ns = now;
            let unanswered = (*guard).unanswered;
            (*guard).unanswered = if unanswered > 0 { unanswered >> 1 } else { 0 };
        }
        (*guard).unanswered >= i64::from(backlog)
    }
}

/// Adds `delta` to the unanswered handshakes, atomically (every CPU shares the entry).
#[inline(always)]
fn syn_guard_add(delta: i64) {
    if let Some(guard) = L4_SYN_GUARD.get_ptr_mut(0) {
        // `AtomicI64::fetch_add` does not exist on this target (it has no compare-and-swap
        // in the base instruction set); the intrinsic is BPF's atomic add, which every
        // kernel that runs these programs has.
        // SAFETY: an aligned 8-byte field of a map value that lives as long as the map.
        unsafe {
            core::intrinsics::atomic_xadd::<i64, i64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*guard).unanswered,
                delta,
            );
        }
    }
}

/// Where a packet came from at L2: the client's path, remembered for replies.
pub struct Arrival {
    ifindex: u32,
    /// The sender's MAC and the gateway's MAC on that link.
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

#[inline(always)]
fn arrival<H: Hook>(packet: &H) -> Arrival {
    let eth: Option<EthHdr> = crate::context::read_at(packet, 0);
    let (src_mac, dst_mac) = eth.map_or(([0; 6], [0; 6]), |e| (e.src, e.dst));
    Arrival {
        ifindex: packet.ingress_ifindex(),
        src_mac,
        dst_mac,
    }
}

/// The flow key of a segment, read from the packet straight into `key` (addresses are copied
/// once: the BPF stack has no room for more).
#[inline(always)]
fn fill_key<H: Hook>(packet: &H, tcp: &Tcp, key: &mut FlowKey) -> Result<(), PacketReason> {
    if tcp.family == FAMILY_IPV4 {
        let ip: *const Ipv4Hdr = ptr_at_mut(packet, tcp.l3_off).ok_or(PacketReason::TruncatedIp)?;
        // SAFETY: bounds-checked pointer into the packet; byte fields.
        unsafe {
            write_mapped(&mut key.src, &(*ip).saddr);
            write_mapped(&mut key.dst, &(*ip).daddr);
        }
    } else {
        let ip: *const Ipv6Hdr = ptr_at_mut(packet, tcp.l3_off).ok_or(PacketReason::TruncatedIp)?;
        // SAFETY: as above.
        unsafe {
            key.src = (*ip).saddr;
            key.dst = (*ip).daddr;
        }
    }
    key.src_port = tcp.src_port;
    key.dst_port = tcp.dst_port;
    key.protocol = IPPROTO_TCP;
    write_bytes(&mut key._pad, |_| 0);
    Ok(())
}

/// `::ffff:a.b.c.d` into `out` (the key's IPv4-mapped form).
#[inline(always)]
fn write_mapped(out: &mut [u8; 16], v4: &[u8; 4]) {
    write_bytes(out, |i| match i {
        10 | 11 => 0xff,
        12..=15 => v4[i - 12],
        _ => 0,
    });
}

/// Stores `byte(i)` into each byte of `out` one at a time. Whole-array stores, even of a few
/// bytes, become `memset`/`memmove` subprogram calls on this target: on every packet.
#[inline(always)]
fn write_bytes<const N: usize>(out: &mut [u8; N], byte: impl Fn(usize) -> u8) {
    let p = out.as_mut_ptr();
    for i in 0..N {
        // SAFETY: i < N, inside `out`.
        unsafe { core::ptr::write_volatile(p.add(i), byte(i)) };
    }
}

/// Words of a 16-byte address as the shared flow hash takes them.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The listener for a destination: exact address first, then the wildcards that cover it
/// (`0.0.0.0` for IPv4, then `::`, which Linux also binds for IPv4).
#[inline(always)]
fn listener(tcp: &Tcp, dst: &[u8; 16]) -> Option<gateway_common::l4::Listener> {
    let mut key = ListenerKey {
        addr: *dst,
        port: tcp.dst_port,
        protocol: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY (each lookup): plain-data values copied out at once.
    if let Some(l) = unsafe { L4_LISTENERS.get(&key) } {
        return Some(*l);
    }
    // A wildcard takes only what is addressed to the node: transit traffic (routed
    // through it, to any port) is not a listener's.
    // SAFETY: as above.
    unsafe { L4_LOCAL_ADDRS.get(dst) }?;
    if tcp.family == FAMILY_IPV4 {
        key.addr = ipv4_mapped([0; 4]);
        if let Some(l) = unsafe { L4_LISTENERS.get(&key) } {
            return Some(*l);
        }
    }
    key.addr = [0; 16];
    unsafe { L4_LISTENERS.get(&key) }.copied()
}

/// Creates the flow for a SYN to a kernel listener: `Ok(None)` when the destination is not
/// one, an error reason when the SYN cannot be served.
// A BPF-to-BPF call, not inlined: its locals (two flows, two keys) get their own frame
// instead of crowding the caller's 512-byte stack. It may be out of line because it touches
// maps and stack values only: the verifier rejects packet pointers passed to subprograms
// (LLVM hands over data/data_end and does arithmetic on pkt_end).
#[inline(never)]
fn new_flow(tcp: &Tcp, scratch: &mut Scratch, from: &Arrival) -> Result<bool, PacketReason> {
    let key = &scratch.key;
    let Some(listener) = listener(tcp, &key.dst) else {
        return Ok(false);
    };
    if tcp.flags & tcp_flags::SYN == 0 || tcp.flags & tcp_flags::ACK != 0 {
        return Err(PacketReason::L4NoFlow);
    }
    let config = L4_CONFIG.get(0).copied().unwrap_or(NatConfig::default());
    let now = unsafe { bpf_ktime_get_ns() };
    if syn_flood(now, config.syn_backlog) {
        crate::counters::count_syn_to_stack(listener.id);
        return Err(PacketReason::L4SynToStack);
    }
    let hash = flow_hash(
        words(&key.src),
        words(&key.dst),
        tcp.src_port,
        tcp.dst_port,
        IPPROTO_TCP,
    );
    let index = listener
        .set_slot
        .wrapping_mul(MAGLEV_TABLE_SIZE)
        .wrapping_add(hash % MAGLEV_TABLE_SIZE);
    let backend_id = *L4_TABLES.get(index).ok_or(PacketReason::L4NoBackend)?;
    let backend = *L4_BACKENDS
        .get(backend_id)
        .ok_or(PacketReason::L4NoBackend)?;
    if backend.family != tcp.family || backend.port == 0 {
        return Err(PacketReason::L4NoBackend);
    }
    // A source port whose reverse tuple (backend -> gateway) is not in use.
    scratch.reverse = FlowKey {
        src: backend.addr,
        dst: backend.snat_addr,
        src_port: backend.port,
        dst_port: 0,
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let (base, span) = if config.source_port_span > 0 {
        (config.source_port_base, config.source_port_span)
    } else {
        (SOURCE_PORT_BASE, SOURCE_PORT_SPAN)
    };
    let mut found = false;
    // The first candidate held by a flow that may give its port up, if none is free, and
    // the table that flow is in.
    let mut reclaimable = SOURCE_PORT_ATTEMPTS;
    let mut reclaim_from = Table::Established;
    for attempt in 0..SOURCE_PORT_ATTEMPTS {
        scratch.reverse.dst_port = source_port(hash, attempt, base, span);
        // SAFETY (both lookups): the entry's plain-data fields are read at once.
        if let Some(held) = unsafe { L4_FLOWS.get(&scratch.reverse) } {
            if reclaimable == SOURCE_PORT_ATTEMPTS
                && reclaimable_flow(held, &mut scratch.reclaimed, now)
            {
                reclaimable = attempt;
                reclaim_from = Table::Established;
            }
        } else if let Some(held) = unsafe { L4_HALF_OPEN.get(&scratch.reverse) } {
            if reclaimable == SOURCE_PORT_ATTEMPTS && reclaimable_half_open(held, now) {
                reclaimable = attempt;
                reclaim_from = Table::HalfOpen;
            }
        } else {
            found = true;
            break;
        }
    }
    if !found {
        if reclaimable == SOURCE_PORT_ATTEMPTS {
            return Err(PacketReason::L4PortExhausted);
        }
        scratch.reverse.dst_port = source_port(hash, reclaimable, base, span);
        // The holder's client-side entry is found from its reply entry (which rewrites to
        // the client); both go before the port is reused.
        let Some(held) = reclaim_from.get_ptr_mut(&scratch.reverse) else {
            return Err(PacketReason::L4PortExhausted);
        };
        // SAFETY: a pointer from a successful lookup; the fields are copied out at once.
        other_direction_key(unsafe { &*held }, &mut scratch.reclaimed);
        reclaim_from.remove(&scratch.reclaimed);
        reclaim_from.remove(&scratch.reverse);
    }
    scratch.flow = Flow {
        new_src: backend.snat_addr,
        new_dst: backend.addr,
        new_src_port: scratch.reverse.dst_port,
        new_dst_port: backend.port,
        backend: backend_id,
        listener: listener.id,
        state: FLOW_SYN_SENT,
        direction: TO_BACKEND,
        seq_known: 1,
        _pad: 0,
        ifindex: 0,
        mac_dst: [0; 6],
        mac_src: [0; 6],
        last_seen_ns: now,
        seq_next: tcp.seq_end,
        _pad2: 0,
    };
    scratch.back = Flow {
        new_src: key.dst,
        new_dst: key.src,
        new_src_port: tcp.dst_port,
        new_dst_port: tcp.src_port,
        direction: TO_CLIENT,
        ifindex: from.ifindex,
        mac_dst: from.src_mac,
        mac_src: from.dst_mac,
        // Learnt from the backend's first segment.
        seq_known: 0,
        seq_next: 0,
        ..scratch.flow
    };
    // The reply direction first: once the forward entry exists, replies must find theirs.
    if L4_HALF_OPEN
        .insert(&scratch.reverse, &scratch.back, 0)
        .is_err()
        || L4_HALF_OPEN.insert(&scratch.key, &scratch.flow, 0).is_err()
    {
        return Err(PacketReason::L4PortExhausted);
    }
    syn_guard_add(1);
    Ok(true)
}

/// [`Flow::other_direction`] written into `key` (a scratch slot: the stack has no room).
#[inline(always)]
fn other_direction_key(flow: &Flow, key: &mut FlowKey) {
    *key = flow.other_direction();
}

/// Whether a RST on `flow`'s direction is believable: its sequence number within
/// `RST_WINDOW` of what that side has sent, or nothing known of that side yet (a backend
/// refusing the SYN answers RST before any segment of its own).
#[inline(always)]
fn rst_in_window(flow: &Flow, tcp: &Tcp) -> bool {
    flow.seq_known == 0 || (tcp.seq.wrapping_sub(flow.seq_next) as i32).unsigned_abs() <= RST_WINDOW
}

/// A FIN or RST on `flow`'s direction. A RST ends the connection: both entries close. A FIN
/// closes one direction: the flow is closed once the other direction's FIN has been seen
/// too (then both entries close), and until then it is half-closed, which may carry data
/// the other way for as long as it likes. `room` holds the other entry's key while it
/// looks (only FIN and RST segments pay for the lookup).
#[inline(always)]
fn close_direction(flow: &mut Flow, flags: u8, room: &mut FlowKey, table: Table) {
    if flow.state == FLOW_CLOSING {
        return;
    }
    other_direction_key(flow, room);
    let other = table.get_ptr_mut(room);
    if flags & tcp_flags::RST != 0 {
        flow.state = FLOW_CLOSING;
        if let Some(other) = other {
            // SAFETY: a pointer from a successful lookup of this map's value type; a racing
            // writer could only set the same state.
            unsafe { (*other).state = FLOW_CLOSING };
        }
        return;
    }
    // SAFETY: as above.
    match other.map(|other| unsafe { &mut *other }) {
        Some(other) if matches!(other.state, FLOW_FIN_SENT | FLOW_CLOSING) => {
            flow.state = FLOW_CLOSING;
            other.state = FLOW_CLOSING;
        }
        _ => flow.state = FLOW_FIN_SENT,
    }
}

/// Whether the flow whose reply entry is `reply` may give its source port up now: closed
/// both ways and silent for `RECLAIM_CLOSED_AFTER_NS`, or closing one way and silent for
/// `RECLAIM_CLOSING_AFTER_NS`. `room` holds a key while it looks.
#[inline(always)]
fn reclaimable_flow(reply: &Flow, room: &mut FlowKey, now: u64) -> bool {
    if !matches!(reply.state, FLOW_CLOSING | FLOW_FIN_SENT) {
        return false;
    }
    let quiet = now.wrapping_sub(reply.last_seen_ns);
    if quiet > RECLAIM_CLOSING_AFTER_NS {
        return true;
    }
    other_direction_key(reply, room);
    // SAFETY: plain-data fields read at once.
    match unsafe { L4_FLOWS.get(room) } {
        Some(forward) => {
            forward.state == FLOW_CLOSING
                && reply.state == FLOW_CLOSING
                && quiet > RECLAIM_CLOSED_AFTER_NS
                && now.wrapping_sub(forward.last_seen_ns) > RECLAIM_CLOSED_AFTER_NS
        }
        // Its other half is already gone.
        None => quiet > RECLAIM_CLOSED_AFTER_NS,
    }
}

/// Whether the half-open flow whose reply entry is `reply` may give its source port up now:
/// refused (a RST) and silent for `RECLAIM_CLOSED_AFTER_NS`, or silent for
/// `RECLAIM_HALF_OPEN_AFTER_NS` (a client that still wants it has retransmitted its SYN).
#[inline(always)]
fn reclaimable_half_open(reply: &Flow, now: u64) -> bool {
    let quiet = now.wrapping_sub(reply.last_seen_ns);
    quiet > RECLAIM_HALF_OPEN_AFTER_NS
        || (reply.state == FLOW_CLOSING && quiet > RECLAIM_CLOSED_AFTER_NS)
}

/// Rewrites addresses, ports, TTL and checksums in place. `key` holds the packet's
/// addresses as they arrived.
#[inline(always)]
fn rewrite<H: Hook>(packet: &H, tcp: &Tcp, key: &FlowKey, flow: &Flow) -> Result<(), PacketReason> {
    // First, while the TCP header still holds the old ports (TC's helpers invalidate packet
    // pointers; everything below takes fresh ones).
    packet.update_tcp_checksum(tcp, key, flow)?;
    let th: *mut TcpHdr = ptr_at_mut(packet, tcp.l4_off).ok_or(PacketReason::TruncatedL4)?;
    // SAFETY: bounds-checked pointers into the packet; headers are byte arrays (align 1).
    unsafe {
        (*th).source = flow.new_src_port.to_be_bytes();
        (*th).dest = flow.new_dst_port.to_be_bytes();
        if tcp.family == FAMILY_IPV4 {
            let ip: *mut Ipv4Hdr =
                ptr_at_mut(packet, tcp.l3_off).ok_or(PacketReason::TruncatedIp)?;
            (*ip).saddr = [
                flow.new_src[12],
                flow.new_src[13],
                flow.new_src[14],
                flow.new_src[15],
            ];
            (*ip).daddr = [
                flow.new_dst[12],
                flow.new_dst[13],
                flow.new_dst[14],
                flow.new_dst[15],
            ];
            (*ip).ttl -= 1;
            let header: *const [u8; 20] = ip.cast();
            (*ip).check = csum::ipv4_header(&*header).to_be_bytes();
        } else {
            let ip: *mut Ipv6Hdr =
                ptr_at_mut(packet, tcp.l3_off).ok_or(PacketReason::TruncatedIp)?;
            (*ip).saddr = flow.new_src;
            (*ip).daddr = flow.new_dst;
            (*ip).hop_limit -= 1;
        }
    }
    Ok(())
}
