//! Every map of the kernel programs, declared with BTF so `bpftool map dump` prints field
//! names. Names and value types come from `gateway-common`.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use gateway_common::{Counters, REASON_COUNT};

/// Packets and bytes per `PacketReason`, per CPU.
#[btf_map]
pub static REASON_COUNTERS: PerCpuArray<Counters, { REASON_COUNT as usize }> = PerCpuArray::new();
