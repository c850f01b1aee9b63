//! Per-CPU accounting of every packet the datapath classified.
use gateway_common::PacketReason;

use crate::maps::REASON_COUNTERS;

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
