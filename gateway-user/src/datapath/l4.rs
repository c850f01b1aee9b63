//! The kernel L4 fast path, daemon side: from each Plan, the listeners the kernel can serve
//! (every endpoint reached through an interface a Sluice program is attached to, so replies
//! come back through it), their source addresses, warm neighbours for the next hops, and the
//! ordered map writes from [`super::sync`]. Listeners the kernel cannot serve stay with the
//! userspace forwarder, which is bound on every L4 listener anyway.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues},
};
use gateway_common::{
    addr::from_mapped,
    l4::{
        Backend, FLOW_CLOSING, FLOW_SYN_SENT, Flow, FlowKey, L4Counters, Listener, ListenerKey,
        NatConfig, SynGuard,
    },
    map_names,
    select::MAGLEV_TABLE_SIZE,
};

use super::sync::{self, DesiredListener, MapState, Op};
use crate::{
    compile::plan::{ListenerKind, Plan},
    select::{BackendRemoval, BackendSet, BackendSets},
};

/// How a destination is reached, from the kernel's routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub device: String,
    /// The source address the kernel would use (becomes the flow's SNAT address).
    pub source: IpAddr,
    /// The on-link next hop: a gateway, or the destination itself.
    pub next_hop: IpAddr,
}

/// The kernel's per-listener and per-backend counters and what each id stands for. Shared
/// with the metrics endpoint; one lock covers both maps and their labels.
#[derive(Debug)]
pub struct L4KernelStats {
    inner: Mutex<StatsInner>,
    /// Flow entries after the last expiry pass.
    pub flows_live: std::sync::atomic::AtomicU64,
    /// Half-open entries (handshakes in progress) after the last expiry pass.
    pub half_open_live: std::sync::atomic::AtomicU64,
    /// The SYN guard's count of unanswered handshakes at the last expiry pass.
    pub syn_unanswered: std::sync::atomic::AtomicI64,
    /// Flow entries expired by the daemon, in total.
    pub flows_expired: std::sync::atomic::AtomicU64,
    /// Flow entries removed because their backend left the set (`--l4-backend-removal reset`).
    pub flows_reset: std::sync::atomic::AtomicU64,
}

struct StatsInner {
    listeners: PerCpuArray<MapData, L4Counters>,
    backends: PerCpuArray<MapData, L4Counters>,
    listener_labels: BTreeMap<u32, String>,
    backend_labels: BTreeMap<u32, String>,
}

impl std::fmt::Debug for StatsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsInner")
            .field("listeners", &self.listener_labels)
            .field("backends", &self.backend_labels)
            .finish()
    }
}

/// Counters by label (listener or backend address).
pub type Labelled = Vec<(String, L4Counters)>;

fn summed(map: &PerCpuArray<MapData, L4Counters>, id: u32) -> Option<L4Counters> {
    Some(map.get(&id, 0).ok()?.iter().sum())
}

impl L4KernelStats {
    /// (per listener, per backend) counters of the ids in use, summed over CPUs.
    pub fn read(&self) -> (Labelled, Labelled) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let collect =
            |map: &PerCpuArray<MapData, L4Counters>, labels: &BTreeMap<u32, String>| -> Labelled {
                labels
                    .iter()
                    .filter_map(|(id, label)| summed(map, *id).map(|c| (label.clone(), c)))
                    .collect()
            };
        (
            collect(&inner.listeners, &inner.listener_labels),
            collect(&inner.backends, &inner.backend_labels),
        )
    }

    /// Takes the ids' new labels; an id that is new or now means something else starts from
    /// zero (backend ids are reused).
    fn relabel(
        &self,
        listeners: BTreeMap<u32, String>,
        backends: BTreeMap<u32, String>,
    ) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = || PerCpuValues::try_from(vec![L4Counters::default(); cpus]);
        for (id, label) in &listeners {
            if inner.listener_labels.get(id) != Some(label) {
                inner.listeners.set(*id, zeros()?, 0)?;
            }
        }
        for (id, label) in &backends {
            if inner.backend_labels.get(id) != Some(label) {
                inner.backends.set(*id, zeros()?, 0)?;
            }
        }
        inner.listener_labels = listeners;
        inner.backend_labels = backends;
        Ok(())
    }
}

pub struct KernelL4 {
    stats: Arc<L4KernelStats>,
    flows: HashMap<MapData, FlowKey, Flow>,
    half_open: HashMap<MapData, FlowKey, Flow>,
    syn_guard: Array<MapData, SynGuard>,
    listeners: HashMap<MapData, ListenerKey, Listener>,
    tables: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    state: MapState,
    /// Interfaces with the XDP program, by name.
    devices: BTreeMap<String, u32>,
    backend_removal: BackendRemoval,
    /// The node's addresses, for wildcard listeners (mapped into IPv6), as written.
    local: HashMap<MapData, [u8; 16], u8>,
    local_written: std::collections::BTreeSet<[u8; 16]>,
}

impl KernelL4 {
    /// Takes the L4 maps out of `ebpf`, registers `devices` (interfaces with an XDP or TC
    /// program, name -> ifindex) as redirect targets, and sets the NAT's source ports.
    pub fn new(
        ebpf: &mut Ebpf,
        devices: BTreeMap<String, u32>,
        nat: super::NatOptions,
    ) -> anyhow::Result<KernelL4> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no {name} map"))
        };
        let mut config: Array<MapData, NatConfig> = Array::try_from(take(map_names::L4_CONFIG)?)?;
        config
            .set(0, nat.config(), 0)
            .context("writing the NAT's settings")?;
        let listeners = HashMap::try_from(take(map_names::L4_LISTENERS)?)?;
        let tables = Array::try_from(take(map_names::L4_TABLES)?)?;
        let backends = Array::try_from(take(map_names::L4_BACKENDS)?)?;
        let flows = HashMap::try_from(take(map_names::L4_FLOWS)?)?;
        let half_open = HashMap::try_from(take(map_names::L4_HALF_OPEN)?)?;
        let syn_guard = Array::try_from(take(map_names::L4_SYN_GUARD)?)?;
        let local: HashMap<MapData, [u8; 16], u8> =
            HashMap::try_from(take(map_names::L4_LOCAL_ADDRS)?)?;
        // What a previous run left is the starting point of the diff.
        let local_written = local.keys().filter_map(Result::ok).collect();
        let stats = Arc::new(L4KernelStats {
            inner: Mutex::new(StatsInner {
                listeners: PerCpuArray::try_from(take(map_names::L4_LISTENER_CNT)?)?,
                backends: PerCpuArray::try_from(take(map_names::L4_BACKEND_CNT)?)?,
                listener_labels: BTreeMap::new(),
                backend_labels: BTreeMap::new(),
            }),
            flows_live: std::sync::atomic::AtomicU64::new(0),
            half_open_live: std::sync::atomic::AtomicU64::new(0),
            syn_unanswered: std::sync::atomic::AtomicI64::new(0),
            flows_expired: std::sync::atomic::AtomicU64::new(0),
            flows_reset: std::sync::atomic::AtomicU64::new(0),
        });
        let mut redirect: DevMapHash<MapData> = DevMapHash::try_from(take(map_names::L4_DEVICES)?)?;
        for ifindex in devices.values() {
            redirect
                .insert(*ifindex, *ifindex, None, 0)
                .context("registering a redirect device")?;
        }
        // Interfaces a previous run attached to and this one does not.
        let gone: Vec<u32> = redirect
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !devices.values().any(|d| d == ifindex))
            .collect();
        for ifindex in gone {
            redirect
                .remove(ifindex)
                .context("unregistering a redirect device")?;
        }
        let mut xdp_tx: HashMap<MapData, u32, u8> = HashMap::try_from(take(map_names::L4_XDP_TX)?)?;
        let stale: Vec<u32> = xdp_tx.keys().filter_map(Result::ok).collect();
        for ifindex in stale {
            xdp_tx
                .remove(&ifindex)
                .context("clearing the XDP_TX devices")?;
        }
        for (name, ifindex) in &devices {
            if xdp_tx_reliable(super::link::kind(name).as_deref()) {
                xdp_tx
                    .insert(ifindex, 1, 0)
                    .context("registering an XDP_TX device")?;
            }
        }
        let state = read_back(&listeners, &tables, &backends)
            .context("reading back the L4 maps a previous run left")?;
        if !state.listeners.is_empty() {
            tracing::info!(
                listeners = state.listeners.len(),
                backends = state.backends.len(),
                "continuing from the kernel L4 state a previous run left in the pinned maps"
            );
        }
        let mut l4 = KernelL4 {
            stats,
            flows,
            half_open,
            syn_guard,
            listeners,
            tables,
            backends,
            state,
            devices,
            backend_removal: BackendRemoval::Keep,
            local,
            local_written,
        };
        // Before any listener is written: a wildcard matches only these destinations.
        l4.sync_local_addresses()
            .context("writing the node's addresses for wildcard listeners")?;
        // The counters of what is still there keep counting from where they are.
        let (listener_labels, backend_labels) = l4.labels();
        {
            let mut inner = l4.stats.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.listener_labels = listener_labels;
            inner.backend_labels = backend_labels;
        }
        Ok(l4)
    }

    /// Writes the node's current addresses (those of every interface in this network
    /// namespace) into the map wildcard listeners consult, removing ones that went away.
    /// Runs at start and with every expiry sweep, so an address added later is served
    /// within seconds. Returns how many entries changed.
    pub fn sync_local_addresses(&mut self) -> anyhow::Result<usize> {
        let now = node_addresses().context("listing the node's addresses")?;
        let (add, remove) = address_changes(&self.local_written, &now);
        for address in &remove {
            match self.local.remove(address) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing a node address"),
            }
            self.local_written.remove(address);
        }
        for address in &add {
            self.local
                .insert(address, 1, 0)
                .context("writing a node address")?;
            self.local_written.insert(*address);
        }
        Ok(add.len() + remove.len())
    }

    pub fn with_backend_removal(mut self, removal: BackendRemoval) -> KernelL4 {
        self.backend_removal = removal;
        self
    }

    /// Brings the kernel maps to `plan`; returns the listeners the kernel now serves.
    pub fn apply(
        &mut self,
        plan: &Plan,
        sets: &BackendSets,
        unbound: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut desired = Vec::new();
        let mut served = Vec::new();
        for listener in &plan.listeners {
            let ListenerKind::L4Forward { route: Some(_) } = &listener.kind else {
                continue;
            };
            if listener.runs.place != crate::compile::plan::Place::Kernel {
                tracing::info!(listener = %listener.address(), "served in userspace: {}", listener.runs.why);
                continue;
            }
            // The kernel takes a port only where the userspace fallback holds it: otherwise
            // it would capture a port another program of the node owns.
            if unbound.contains(&listener.address()) {
                tracing::info!(listener = %listener.address(), "not programmed in the kernel: its socket could not be bound");
                continue;
            }
            let Some(set) = sets.get(listener.address(), 0) else {
                continue;
            };
            match self.kernel_route(listener.address(), &set) {
                Ok(snat) => {
                    desired.push(DesiredListener {
                        key: sync::listener_key(listener.address()),
                        set,
                        snat,
                    });
                    served.push(listener.address());
                }
                Err(why) => {
                    tracing::info!(listener = %listener.address(), "served in userspace: {why}")
                }
            }
        }
        let mut planned = self.state.clone();
        let synced = sync::sync(&mut planned, &desired).map_err(anyhow::Error::from);
        let written = synced.and_then(|ops| {
            // What reached the maps, write by write: true even when one fails.
            let mut written = self.state.clone();
            let result = sync::write_each(&mut MapsWriter::of(self), &ops, &mut written);
            match result {
                Ok(()) => Ok(ops.len()),
                Err(e) => {
                    self.state = written;
                    Err(e)
                }
            }
        });
        match written {
            Ok(count) => {
                self.state = planned;
                tracing::info!(
                    listeners = served.len(),
                    writes = count,
                    "kernel L4 maps updated"
                );
                if self.backend_removal == BackendRemoval::Reset && count > 0 {
                    let pairs = sync::served_pairs(&self.state, &desired);
                    match self.reset_unserved(&pairs) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            entries = n,
                            "reset the connections whose backend left their listener"
                        ),
                        Err(e) => tracing::warn!("resetting connections failed: {e:#}"),
                    }
                }
                if let Err(e) = self.relabel() {
                    tracing::warn!("kernel L4 counters may be mislabelled: {e:#}");
                }
                served
            }
            Err(e) => {
                // Nothing half-written may go on serving: every listener leaves the kernel
                // and the userspace forwarder (bound on all of them) takes their new
                // connections.
                tracing::error!(
                    "the kernel cannot serve this Plan's L4 listeners ({e:#}); withdrawing \
                     every kernel L4 listener: the userspace forwarder serves them"
                );
                self.withdraw();
                Vec::new()
            }
        }
    }

    /// Takes every listener out of the kernel, from what the maps are known to hold.
    fn withdraw(&mut self) {
        let mut planned = self.state.clone();
        let ops = match sync::sync(&mut planned, &[]) {
            Ok(ops) => ops,
            Err(e) => return tracing::error!("withdrawing the kernel L4 listeners: {e}"),
        };
        let mut written = self.state.clone();
        match sync::write_each(&mut MapsWriter::of(self), &ops, &mut written) {
            Ok(()) => self.state = planned,
            Err(e) => {
                self.state = written;
                tracing::error!("withdrawing the kernel L4 listeners failed: {e:#}");
            }
        }
    }

    /// The source address towards each endpoint, if the kernel can serve the listener.
    fn kernel_route(&self, listener: SocketAddr, set: &BackendSet) -> Result<Vec<IpAddr>, String> {
        if set.table.is_empty() {
            return Err("no endpoints".into());
        }
        let mut sources = Vec::new();
        for endpoint in &set.endpoints {
            if endpoint.is_ipv4() != listener.is_ipv4() {
                return Err(format!("endpoint {endpoint} is of another address family"));
            }
            let route =
                route(endpoint.ip()).map_err(|e| format!("no route to {endpoint}: {e:#}"))?;
            if !self.devices.contains_key(&route.device) {
                return Err(format!(
                    "{endpoint} is reached through {}, which has no Sluice program (--interface)",
                    route.device
                ));
            }
            keep_resolved(route.next_hop, &route.device);
            sources.push(route.source);
        }
        Ok(sources)
    }

    /// Removes expired flows: established ones entry by entry (both directions are
    /// separate entries with their own state and timestamps), half-open ones a connection
    /// at a time, once neither direction has moved for `timeouts.syn`. Returns (entries
    /// left, entries removed) over both tables.
    pub fn expire(&mut self, timeouts: &Timeouts) -> anyhow::Result<(u64, u64)> {
        let now = monotonic_ns()?;
        let mut live = 0u64;
        let mut stale = Vec::new();
        for entry in self.flows.iter() {
            let (key, flow) = entry?;
            if expired(&flow, now, timeouts) {
                stale.push((key, flow.last_seen_ns));
            } else {
                live += 1;
            }
        }
        let (kept, mut removed) = remove_unmoved(&mut self.flows, &stale);
        live += kept;
        let half_open: Vec<(FlowKey, Flow)> = self.half_open.iter().collect::<Result<_, _>>()?;
        let stale = stale_handshakes(&half_open, now, timeouts.syn);
        let (_, half_removed) = remove_unmoved(&mut self.half_open, &stale);
        removed += half_removed;
        let half_live = (half_open.len() as u64).saturating_sub(half_removed);
        let unanswered = self.syn_guard.get(&0, 0).map_or(0, |g| g.unanswered);
        let ordering = std::sync::atomic::Ordering::Relaxed;
        self.stats.flows_live.store(live, ordering);
        self.stats.half_open_live.store(half_live, ordering);
        self.stats.syn_unanswered.store(unanswered, ordering);
        self.stats.flows_expired.fetch_add(removed, ordering);
        Ok((live + half_live, removed))
    }

    /// Removes the flow entries (both directions) whose (listener, backend) is not in
    /// `served`. Their next packet finds no flow and goes to the stack, which answers it with
    /// a reset: the client, and the backend, learn at once. Returns the entries removed.
    fn reset_unserved(
        &mut self,
        served: &std::collections::BTreeSet<(u32, u32)>,
    ) -> anyhow::Result<u64> {
        let mut removed = 0u64;
        for table in [&mut self.flows, &mut self.half_open] {
            let mut stale = Vec::new();
            for entry in table.iter() {
                let (key, flow) = entry?;
                if !served.contains(&(flow.listener, flow.backend)) {
                    stale.push(key);
                }
            }
            for key in &stale {
                if table.remove(key).is_ok() {
                    removed += 1;
                }
            }
        }
        self.stats
            .flows_reset
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(removed)
    }

    /// The counters of the kernel path, for the metrics endpoint.
    pub fn stats(&self) -> Arc<L4KernelStats> {
        self.stats.clone()
    }

    /// (listener id -> address, backend id -> address) of the current state.
    fn labels(&self) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
        let listeners = self
            .state
            .listeners
            .iter()
            .map(|(key, l)| (l.id, key_address(key).to_string()))
            .collect();
        let backends = self
            .state
            .backends
            .iter()
            .map(|(id, b)| {
                (
                    *id,
                    SocketAddr::new(from_mapped(b.addr), b.port).to_string(),
                )
            })
            .collect();
        (listeners, backends)
    }

    fn relabel(&self) -> anyhow::Result<()> {
        let (listeners, backends) = self.labels();
        self.stats.relabel(listeners, backends)
    }
}

/// The L4 maps as a [`sync::Writer`].
struct MapsWriter<'a> {
    listeners: &'a mut HashMap<MapData, ListenerKey, Listener>,
    tables: &'a mut Array<MapData, u32>,
    backends: &'a mut Array<MapData, Backend>,
}

impl<'a> MapsWriter<'a> {
    fn of(l4: &'a mut KernelL4) -> MapsWriter<'a> {
        MapsWriter {
            listeners: &mut l4.listeners,
            tables: &mut l4.tables,
            backends: &mut l4.backends,
        }
    }
}

impl sync::Writer for MapsWriter<'_> {
    fn write(&mut self, op: &Op) -> anyhow::Result<()> {
        match op {
            Op::PutBackend(id, backend) => self.backends.set(*id, *backend, 0)?,
            Op::WriteTable { slot, table } => {
                let first = slot * MAGLEV_TABLE_SIZE;
                // One syscall for the table; entry by entry where the kernel has no batches.
                if let Err(e) = super::batch::write_u32s(
                    aya::maps::IterableMap::map(&*self.tables),
                    first,
                    table,
                ) {
                    tracing::debug!("batch write of a Maglev table failed ({e}); entry by entry");
                    for (i, id) in table.iter().enumerate() {
                        self.tables.set(first + i as u32, id, 0)?;
                    }
                }
            }
            Op::PutListener(key, listener) => self.listeners.insert(key, listener, 0)?,
            Op::DeleteListener(key) => self.listeners.remove(key)?,
            // Arrays cannot delete: an all-zero backend (port 0) is refused by the kernel.
            Op::DeleteBackend(id) => self.backends.set(*id, Backend::default(), 0)?,
        }
        Ok(())
    }
}

/// What the maps hold: empty when they were just created, a previous run's state when they
/// were pinned and reused.
fn read_back(
    listeners: &HashMap<MapData, ListenerKey, Listener>,
    tables: &Array<MapData, u32>,
    backends: &Array<MapData, Backend>,
) -> anyhow::Result<MapState> {
    let listeners: BTreeMap<ListenerKey, Listener> = listeners.iter().collect::<Result<_, _>>()?;
    let mut slots = BTreeMap::new();
    for slot in listeners.values().map(|l| l.set_slot) {
        if slots.contains_key(&slot) {
            continue;
        }
        let base = slot * MAGLEV_TABLE_SIZE;
        let table = (base..base + MAGLEV_TABLE_SIZE)
            .map(|i| tables.get(&i, 0))
            .collect::<Result<Vec<u32>, _>>()?;
        slots.insert(slot, table);
    }
    // Only backends a table references can be live; a listener-less map has none.
    let referenced: std::collections::BTreeSet<u32> = slots.values().flatten().copied().collect();
    let backends = referenced
        .into_iter()
        .map(|id| Ok((id, backends.get(&id, 0)?)))
        .collect::<Result<BTreeMap<u32, Backend>, aya::maps::MapError>>()?;
    Ok(MapState::recovered(listeners, slots, backends))
}

/// The kernel's route to `ip` (`ip -j route get`).
pub fn route(ip: IpAddr) -> anyhow::Result<Route> {
    let out = Command::new("ip")
        .args(["-j", "route", "get", &ip.to_string()])
        .output()
        .context("running ip route get")?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_route(&String::from_utf8_lossy(&out.stdout), ip)
}

fn parse_route(json: &str, ip: IpAddr) -> anyhow::Result<Route> {
    let routes: serde_json::Value = serde_json::from_str(json).context("parsing ip's JSON")?;
    let route = routes.get(0).ok_or_else(|| anyhow!("no route"))?;
    let text = |field: &str| route.get(field).and_then(serde_json::Value::as_str);
    let device = text("dev")
        .ok_or_else(|| anyhow!("the route names no device"))?
        .to_owned();
    let source = text("prefsrc")
        .ok_or_else(|| anyhow!("the route has no source address"))?
        .parse()?;
    let next_hop = match text("gateway") {
        Some(gateway) => gateway.parse()?,
        None => ip,
    };
    Ok(Route {
        device,
        source,
        next_hop,
    })
}

/// Asks the kernel to keep `ip`'s neighbour entry resolved on `device` (NTF_MANAGED): XDP
/// cannot resolve neighbours, and the FIB lookup fails without one.
fn keep_resolved(ip: IpAddr, device: &str) {
    let status = Command::new("ip")
        .args([
            "neigh",
            "replace",
            &ip.to_string(),
            "dev",
            device,
            "managed",
        ])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::warn!(%ip, device, "could not mark the neighbour managed; the first packets may be dropped until it resolves");
    }
}

/// The listener a key stands for (the IPv4 wildcard is stored as `::ffff:0.0.0.0`).
fn key_address(key: &ListenerKey) -> SocketAddr {
    SocketAddr::new(from_mapped(key.addr), key.port)
}

/// How long flows live after their last packet, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// After a FIN or RST.
    pub closing: std::time::Duration,
    /// Handshake not completed.
    pub syn: std::time::Duration,
    /// Established, no packet.
    pub idle: std::time::Duration,
}

/// Whether an `XDP_TX` frame reliably leaves a device of link kind `kind` (none: a physical
/// NIC). Not a veth: it wakes its peer for `XDP_TX` frames only if the peer runs an XDP
/// program, so without one they wait in the peer's ring (measured: 18 of 18 never arrived).
pub fn xdp_tx_reliable(kind: Option<&str>) -> bool {
    kind != Some("veth")
}

/// Removes the entries of `stale` (key, `last_seen_ns` when judged) that have not moved
/// since: the sweep takes a while, and meanwhile a client may have reused a closing tuple
/// and the datapath replaced the entry with a new connection's. Gone already (LRU) is
/// fine. Returns (entries kept because they moved, entries removed).
fn remove_unmoved(
    table: &mut HashMap<MapData, FlowKey, Flow>,
    stale: &[(FlowKey, u64)],
) -> (u64, u64) {
    let (mut kept, mut removed) = (0, 0);
    for (key, seen) in stale {
        match table.get(key, 0) {
            Ok(flow) if flow.last_seen_ns == *seen => {
                if table.remove(key).is_ok() {
                    removed += 1;
                }
            }
            Ok(_) => kept += 1,
            Err(_) => {}
        }
    }
    (kept, removed)
}

/// The half-open entries to remove: each judged by the latest packet of its handshake
/// (either direction), so both go once neither has moved for `limit` (a client
/// retransmitting its SYN keeps its reply entry too), and an entry whose other half is gone
/// by its own time.
fn stale_handshakes(
    entries: &[(FlowKey, Flow)],
    now_ns: u64,
    limit: std::time::Duration,
) -> Vec<(FlowKey, u64)> {
    let seen: std::collections::HashMap<FlowKey, u64> = entries
        .iter()
        .map(|(key, flow)| (*key, flow.last_seen_ns))
        .collect();
    let limit = limit.as_nanos() as u64;
    let mut stale = Vec::new();
    for (key, flow) in entries {
        let other = flow.other_direction();
        let latest = seen
            .get(&other)
            .map_or(flow.last_seen_ns, |s| (*s).max(flow.last_seen_ns));
        if now_ns.saturating_sub(latest) <= limit {
            continue;
        }
        stale.push((*key, flow.last_seen_ns));
    }
    stale
}

/// Whether `flow` has expired at `now_ns` (CLOCK_MONOTONIC, the clock of
/// `bpf_ktime_get_ns`).
pub fn expired(flow: &Flow, now_ns: u64, timeouts: &Timeouts) -> bool {
    let limit = match flow.state {
        FLOW_CLOSING => timeouts.closing,
        FLOW_SYN_SENT => timeouts.syn,
        // Established, or half-closed (FLOW_FIN_SENT): data may still flow the other way.
        _ => timeouts.idle,
    };
    now_ns.saturating_sub(flow.last_seen_ns) > limit.as_nanos() as u64
}

/// Every address of every interface in this network namespace, IPv4 mapped into IPv6 as
/// the kernel's maps hold them.
fn node_addresses() -> anyhow::Result<std::collections::BTreeSet<[u8; 16]>> {
    let mut addresses = std::collections::BTreeSet::new();
    for interface in nix::ifaddrs::getifaddrs()? {
        let Some(address) = interface.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            addresses.insert(v4.ip().to_ipv6_mapped().octets());
        } else if let Some(v6) = address.as_sockaddr_in6() {
            addresses.insert(v6.ip().octets());
        }
    }
    Ok(addresses)
}

/// What to add to and remove from the written set to make it `now`. Pure.
fn address_changes(
    written: &std::collections::BTreeSet<[u8; 16]>,
    now: &std::collections::BTreeSet<[u8; 16]>,
) -> (Vec<[u8; 16]>, Vec<[u8; 16]>) {
    (
        now.difference(written).copied().collect(),
        written.difference(now).copied().collect(),
    )
}

/// CLOCK_MONOTONIC in nanoseconds.
fn monotonic_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(u64::try_from(now.tv_sec())? * 1_000_000_000 + u64::try_from(now.tv_nsec())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::l4::FLOW_ESTABLISHED;

    #[test]
    fn local_addresses_are_written_as_a_diff() {
        let set = |items: &[u8]| -> std::collections::BTreeSet<[u8; 16]> {
            items.iter().map(|i| [*i; 16]).collect()
        };
        let (add, remove) = address_changes(&set(&[1, 2, 3]), &set(&[2, 3, 4]));
        assert_eq!((add, remove), (vec![[4; 16]], vec![[1; 16]]));
        let (add, remove) = address_changes(&set(&[1]), &set(&[1]));
        assert!(add.is_empty() && remove.is_empty());
        // This process's own addresses include loopback, mapped.
        let here = node_addresses().unwrap_or_else(|e| panic!("{e:#}"));
        assert!(here.contains(&std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets()));
    }

    #[test]
    fn flows_expire_by_state() {
        let timeouts = Timeouts {
            closing: std::time::Duration::from_secs(10),
            syn: std::time::Duration::from_secs(30),
            idle: std::time::Duration::from_secs(3600),
        };
        let second = 1_000_000_000u64;
        let flow = |state, last_seen_ns| Flow {
            state,
            last_seen_ns,
            ..Flow::default()
        };
        let now = 10_000 * second;
        let cases = [
            (FLOW_CLOSING, now - 9 * second, false),
            (FLOW_CLOSING, now - 11 * second, true),
            (FLOW_SYN_SENT, now - 29 * second, false),
            (FLOW_SYN_SENT, now - 31 * second, true),
            (FLOW_ESTABLISHED, now - 3599 * second, false),
            (FLOW_ESTABLISHED, now - 3601 * second, true),
            // Half-closed: the other direction may pause and go on sending.
            (gateway_common::l4::FLOW_FIN_SENT, now - 60 * second, false),
            (gateway_common::l4::FLOW_FIN_SENT, now - 3601 * second, true),
            // A packet stamped after `now` was read (another CPU) is not expired.
            (FLOW_CLOSING, now + second, false),
        ];
        for (state, seen, want) in cases {
            assert_eq!(
                expired(&flow(state, seen), now, &timeouts),
                want,
                "state {state} seen {seen}"
            );
        }
    }

    #[test]
    fn xdp_tx_only_where_it_leaves() {
        assert!(xdp_tx_reliable(None), "a physical NIC");
        assert!(xdp_tx_reliable(Some("bond")));
        assert!(!xdp_tx_reliable(Some("veth")));
    }

    #[test]
    fn handshakes_expire_by_their_latest_packet() {
        let second = 1_000_000_000u64;
        let now = 10_000 * second;
        let limit = std::time::Duration::from_secs(10);
        // A handshake's two entries: the client side's rewrite points at the reply key.
        let pair = |port: u16, client_seen: u64, reply_seen: u64| {
            let client_key = FlowKey {
                src_port: port,
                dst_port: 7000,
                protocol: gateway_common::proto::IPPROTO_TCP,
                ..FlowKey::default()
            };
            let client_side = Flow {
                new_src_port: port + 1000,
                new_dst_port: 8080,
                direction: gateway_common::l4::TO_BACKEND,
                last_seen_ns: client_seen,
                ..Flow::default()
            };
            let reply_key = client_side.other_direction();
            // The reply side rewrites back to the client: its other direction is the
            // client side's key.
            let reply = Flow {
                new_src_port: 7000,
                new_dst_port: port,
                direction: gateway_common::l4::TO_CLIENT,
                last_seen_ns: reply_seen,
                ..Flow::default()
            };
            assert_eq!(reply.other_direction(), client_key);
            [(client_key, client_side), (reply_key, reply)]
        };
        let mut entries = Vec::new();
        // Both silent: both go.
        entries.extend(pair(1, now - 11 * second, now - 12 * second));
        // The client retransmitted lately, the backend never answered: both stay.
        entries.extend(pair(2, now - 2 * second, now - 30 * second));
        // The backend answered lately: both stay.
        entries.extend(pair(3, now - 30 * second, now - second));
        // A reply entry whose client side is gone goes by its own time.
        let [_, lone] = pair(4, 0, now - 11 * second);
        entries.push(lone);
        // Which entries: ("client", its port) or ("reply", the client port it serves).
        let mut stale: Vec<(&str, u16)> = stale_handshakes(&entries, now, limit)
            .iter()
            .map(|(key, _)| match key.dst_port {
                7000 => ("client", key.src_port),
                nat => ("reply", nat - 1000),
            })
            .collect();
        stale.sort_unstable();
        assert_eq!(stale, vec![("client", 1), ("reply", 1), ("reply", 4)]);
    }

    #[test]
    fn routes_parse_from_ip_json() {
        let on_link = r#"[{"dst":"203.0.113.2","dev":"gw-b","prefsrc":"203.0.113.1","flags":[],"uid":0,"cache":[]}]"#;
        let ip: IpAddr = "203.0.113.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let route = parse_route(on_link, ip).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            route,
            Route {
                device: "gw-b".into(),
                source: "203.0.113.1".parse().unwrap_or_else(|e| panic!("{e}")),
                next_hop: ip
            }
        );
        let via = r#"[{"dst":"192.0.2.9","gateway":"203.0.113.254","dev":"gw-b","prefsrc":"203.0.113.1"}]"#;
        let route = parse_route(via, "192.0.2.9".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            route.next_hop,
            "203.0.113.254"
                .parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(parse_route("[]", ip).is_err());
    }
}
