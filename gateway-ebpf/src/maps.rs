//! Every map of the kernel programs, declared with BTF so `bpftool map dump` prints field
//! names. Names and value types come from `gateway-common`.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, SockHash},
    macros::btf_map,
};
use gateway_common::{
    Counters, REASON_COUNT,
    l4::{
        Backend, Flow, FlowKey, L4Counters, Listener, ListenerKey, MAX_BACKENDS, MAX_FLOWS,
        MAX_HALF_OPEN, MAX_LISTENERS, MAX_LOCAL_ADDRS, NatConfig, SynGuard, TABLE_ENTRIES,
    },
    sockets::{COUNT_LEN, MAX_SOCKETS, SockKey},
};

/// Packets and bytes per `PacketReason`, per CPU.
#[btf_map]
pub static REASON_COUNTERS: PerCpuArray<Counters, { REASON_COUNT as usize }> = PerCpuArray::new();

/// L4 listeners served in the kernel: (address, port, protocol) -> id and Maglev slot.
#[btf_map]
pub static L4_LISTENERS: HashMap<ListenerKey, Listener, { MAX_LISTENERS as usize }> =
    HashMap::new();

/// The node's own addresses (IPv4 mapped), kept by the daemon: wildcard listeners match
/// only these destinations.
#[btf_map]
pub static L4_LOCAL_ADDRS: HashMap<[u8; 16], u8, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

/// Maglev tables, `MAGLEV_TABLE_SIZE` backend ids per slot.
#[btf_map]
pub static L4_TABLES: Array<u32, { TABLE_ENTRIES as usize }> = Array::new();

/// Backends by id.
#[btf_map]
pub static L4_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Connection tracking, both directions of every established (or closing) flow.
#[btf_map]
pub static L4_FLOWS: LruHashMap<FlowKey, Flow, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Both directions of every flow whose handshake has not completed; moved to `L4_FLOWS` by
/// the client's ACK of the backend's SYN-ACK.
#[btf_map]
pub static L4_HALF_OPEN: LruHashMap<FlowKey, Flow, { MAX_HALF_OPEN as usize }> = LruHashMap::new();

/// Devices (ifindex) an `XDP_TX` frame reliably leaves; written by the daemon.
#[btf_map]
pub static L4_XDP_TX: HashMap<u32, u8, 64> = HashMap::new();

/// Unanswered NATed handshakes, for SYN flood detection (one entry, every CPU).
#[btf_map]
pub static L4_SYN_GUARD: Array<SynGuard, 1> = Array::new();

/// Large temporaries of one packet (a per-CPU map value, not the stack).
#[repr(C)]
pub struct Scratch {
    pub key: FlowKey,
    pub flow: Flow,
    /// A new flow's reply direction, built here before it is inserted.
    pub reverse: FlowKey,
    pub back: Flow,
    /// The client-side key of a closing flow whose source port is reclaimed.
    pub reclaimed: FlowKey,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
}

/// Per-CPU working memory for the NAT stage: its large temporaries would overflow the
/// 512-byte BPF stack. Not pinned; every packet overwrites what it uses.
#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Interfaces NATed packets may be redirected to, by ifindex.
#[btf_map]
pub static L4_DEVICES: DevMapHash<64> = DevMapHash::new();

/// What the kernel forwarded per listener id.
#[btf_map]
pub static L4_LISTENER_CNT: PerCpuArray<L4Counters, { MAX_LISTENERS as usize }> =
    PerCpuArray::new();

/// What the kernel forwarded per backend id.
#[btf_map]
pub static L4_BACKEND_CNT: PerCpuArray<L4Counters, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// The NAT's settings, written by the daemon at start.
#[btf_map]
pub static L4_CONFIG: Array<NatConfig, 1> = Array::new();

/// TLS passthrough connections spliced in the kernel: the tuple of the socket bytes arrive
/// on -> the socket they are sent out of (both directions of each connection).
#[btf_map]
pub static SNI_SOCKETS: SockHash<SockKey, { MAX_SOCKETS as usize }> = SockHash::new();

/// What the socket splice did, per CPU, by `sockets::COUNT_*`.
#[btf_map]
pub static SNI_COUNTERS: PerCpuArray<Counters, { COUNT_LEN as usize }> = PerCpuArray::new();
