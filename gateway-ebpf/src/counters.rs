//! Per-CPU accounting of every packet the datapath classified.
use gateway_common::{PacketReason, l4::L4Counters};

use crate::maps::{L4_BACKEND_CNT, L4_LISTENER_CNT, REASON_COUNTERS};

/// Adds one packet of `bytes` to the counters of `reason` on this CPU. Per-CPU slots have a
/// single writer, so plain adds are race-free.
#[inline(always)]
pub fn count(reason: PacketReason, bytes: u64) {
    if let Some(slot) = REASON_COUNTERS.get_ptr_mut(reason.index()) {
        // SAFETY: the pointer comes from a successful map lookup and points at this CPU's
        // slot, which only this program invocation writes.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}

/// Adds one forwarded packet (and a new connection, for a flow's first packet) to its
/// listener's and backend's counters on this CPU.
#[inline(always)]
pub fn count_l4(listener: u32, backend: u32, bytes: u64, new_connection: bool) {
    // Two separate checks: iterating over both lookups let LLVM OR the two map pointers,
    // which the verifier rejects ("pointer |= pointer prohibited").
    if let Some(slot) = L4_LISTENER_CNT.get_ptr_mut(listener) {
        add_l4(slot, bytes, new_connection);
    }
    if let Some(slot) = L4_BACKEND_CNT.get_ptr_mut(backend) {
        add_l4(slot, bytes, new_connection);
    }
}

/// Counts a SYN for `listener` handed to the stack's SYN cookies.
#[inline(always)]
pub fn count_syn_to_stack(listener: u32) {
    if let Some(slot) = L4_LISTENER_CNT.get_ptr_mut(listener) {
        // SAFETY: this CPU's slot of a per-CPU map, written only by this invocation.
        unsafe { (*slot).syn_to_stack += 1 };
    }
}

#[inline(always)]
fn add_l4(slot: *mut L4Counters, bytes: u64, new_connection: bool) {
    // SAFETY: this CPU's slot of a per-CPU map, written only by this invocation.
    unsafe {
        (*slot).packets += 1;
        (*slot).bytes += bytes;
        if new_connection {
            (*slot).connections += 1;
        }
    }
}
