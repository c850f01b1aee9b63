//! Map synchronisation for the kernel L4 path: from the Plan's L4 listeners to the ordered
//! writes that bring the maps there. Pure: the daemon keeps a mirror of what it wrote
//! ([`MapState`]); [`sync`] diffs the desired state against it and returns only the changes,
//! in an order that never lets a packet see a half-written backend set (backends first, then
//! each changed Maglev table into a free slot, then the listener flips to it, then what is
//! no longer referenced is removed).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gateway_common::{
    addr::to_mapped,
    l4::{
        Backend, FAMILY_IPV4, FAMILY_IPV6, Listener, ListenerKey, MAX_BACKENDS, MAX_LISTENERS,
        MAX_SET_SLOTS,
    },
    proto::IPPROTO_TCP,
};

use crate::select::BackendSet;
use std::sync::Arc;

/// One write to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    /// A whole Maglev table (backend ids) into a slot no listener points at.
    WriteTable {
        slot: u32,
        table: Vec<u32>,
    },
    PutListener(ListenerKey, Listener),
    DeleteListener(ListenerKey),
    DeleteBackend(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("more than {MAX_LISTENERS} L4 listeners")]
    TooManyListeners,
    #[error("more than {MAX_BACKENDS} L4 backends")]
    TooManyBackends,
    #[error("no free Maglev table slot (at most {MAX_SET_SLOTS})")]
    NoFreeSlot,
}

/// A listener as the kernel should serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredListener {
    pub key: ListenerKey,
    /// Endpoints and the Maglev table indexing them.
    pub set: Arc<BackendSet>,
    /// Source address towards each endpoint (same order as `set.endpoints`).
    pub snat: Vec<IpAddr>,
}

/// What the daemon has written to the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapState {
    pub listeners: BTreeMap<ListenerKey, Listener>,
    /// Per slot, the table written there.
    pub slots: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<u32, Backend>,
    /// Slots no listener points at any more, and when they were let go: a packet on another
    /// CPU may have read the listener's old slot just before the flip and still be indexing
    /// that table, so a freed slot is not written again for [`SLOT_QUARANTINE`].
    pub freed: BTreeMap<u32, Instant>,
}

/// How long a freed Maglev slot rests before it is written again. A packet reads its
/// listener's slot and the table entry within one program run (microseconds); this is
/// far beyond that, and short enough that reloads in quick succession still find slots.
pub const SLOT_QUARANTINE: Duration = Duration::from_millis(100);

impl MapState {
    /// The state a previous run left in pinned maps, as read back by a restarted daemon: its
    /// first sync then writes only what the new Plan changes (nothing for the same config),
    /// and never writes into a slot a live listener points at. Deleted backends read back
    /// as all-zero entries (arrays cannot delete) and are not backends; only slots some
    /// listener references are kept.
    pub fn recovered(
        listeners: BTreeMap<ListenerKey, Listener>,
        mut slots: BTreeMap<u32, Vec<u32>>,
        mut backends: BTreeMap<u32, Backend>,
    ) -> MapState {
        backends.retain(|_, b| *b != Backend::default());
        let live: BTreeSet<u32> = listeners.values().map(|l| l.set_slot).collect();
        slots.retain(|slot, _| live.contains(slot));
        MapState {
            listeners,
            slots,
            backends,
            freed: BTreeMap::new(),
        }
    }
}

/// The key of a listener on `address` (wildcards are the all-zero address of their family,
/// IPv4 mapped into IPv6 as the kernel reads it).
pub fn listener_key(address: SocketAddr) -> ListenerKey {
    ListenerKey {
        addr: to_mapped(address.ip()),
        port: address.port(),
        protocol: IPPROTO_TCP,
        _pad: 0,
    }
}

fn backend_value(endpoint: SocketAddr, snat: IpAddr) -> Backend {
    Backend {
        addr: to_mapped(endpoint.ip()),
        snat_addr: to_mapped(snat),
        port: endpoint.port(),
        family: if endpoint.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        _pad: 0,
    }
}

/// Brings `state` to `desired`, returning the writes that do it, in a safe order. On error
/// nothing is returned and `state` is unchanged.
pub fn sync(state: &mut MapState, desired: &[DesiredListener]) -> Result<Vec<Op>, SyncError> {
    sync_at(state, desired, Instant::now())
}

/// [`sync`] at `now` (for the quarantine of freed slots).
pub fn sync_at(
    state: &mut MapState,
    desired: &[DesiredListener],
    now: Instant,
) -> Result<Vec<Op>, SyncError> {
    if desired.len() > MAX_LISTENERS as usize {
        return Err(SyncError::TooManyListeners);
    }
    let mut next = state.clone();
    next.freed
        .retain(|_, at| now.saturating_duration_since(*at) < SLOT_QUARANTINE);
    let mut ops = Vec::new();

    // 1. Backends: one id per distinct (endpoint, source address), kept stable across syncs.
    let mut wanted_backends: BTreeMap<Backend, u32> = BTreeMap::new();
    for (value, id) in state.backends.iter().map(|(id, b)| (*b, *id)) {
        wanted_backends.insert(value, id);
    }
    let mut used_ids: BTreeSet<u32> = BTreeSet::new();
    let mut tables: Vec<Vec<u32>> = Vec::new();
    for listener in desired {
        let ids: Vec<u32> = listener
            .set
            .endpoints
            .iter()
            .zip(&listener.snat)
            .map(|(endpoint, snat)| {
                let value = backend_value(*endpoint, *snat);
                let id = match wanted_backends.get(&value) {
                    Some(id) => *id,
                    None => {
                        let id = (0..MAX_BACKENDS)
                            .find(|i| !next.backends.contains_key(i))
                            .ok_or(SyncError::TooManyBackends)?;
                        next.backends.insert(id, value);
                        wanted_backends.insert(value, id);
                        ops.push(Op::PutBackend(id, value));
                        id
                    }
                };
                used_ids.insert(id);
                Ok(id)
            })
            .collect::<Result<_, SyncError>>()?;
        tables.push(
            listener
                .set
                .table
                .iter()
                .map(|i| ids[*i as usize])
                .collect(),
        );
    }

    // 2. Tables into free slots, 3. listeners flipped to them.
    let mut flips = Vec::new();
    let mut referenced: BTreeSet<u32> = state.listeners.values().map(|l| l.set_slot).collect();
    for (listener, table) in desired.iter().zip(tables) {
        let current = state.listeners.get(&listener.key);
        if let Some(l) = current
            && next.slots.get(&l.set_slot) == Some(&table)
        {
            continue; // unchanged
        }
        // Reuse a slot already holding this exact table, else write a free one.
        let slot = match next
            .slots
            .iter()
            .find(|(_, t)| **t == table)
            .map(|(s, _)| *s)
        {
            Some(slot) => slot,
            None => {
                let slot = (0..MAX_SET_SLOTS)
                    .find(|s| {
                        !referenced.contains(s)
                            && !next.slots.contains_key(s)
                            && !next.freed.contains_key(s)
                    })
                    .ok_or(SyncError::NoFreeSlot)?;
                next.slots.insert(slot, table.clone());
                ops.push(Op::WriteTable { slot, table });
                slot
            }
        };
        referenced.insert(slot);
        // Ids index the per-listener counters: the lowest free one, so they stay in range
        // however many listeners come and go. A listener removed by this same sync still
        // holds its id, so no id changes meaning within one sync.
        let id = match current {
            Some(l) => l.id,
            None => (0..MAX_LISTENERS)
                .find(|id| !next.listeners.values().any(|l| l.id == *id))
                .ok_or(SyncError::TooManyListeners)?,
        };
        let value = Listener { id, set_slot: slot };
        next.listeners.insert(listener.key, value);
        flips.push(Op::PutListener(listener.key, value));
    }
    ops.extend(flips);

    // 4. Removals: listeners, then slots and backends nothing references any more.
    let keep: BTreeSet<ListenerKey> = desired.iter().map(|l| l.key).collect();
    for key in state.listeners.keys().filter(|k| !keep.contains(k)) {
        next.listeners.remove(key);
        ops.push(Op::DeleteListener(*key));
    }
    let live_slots: BTreeSet<u32> = next.listeners.values().map(|l| l.set_slot).collect();
    let let_go: Vec<u32> = next
        .slots
        .keys()
        .filter(|slot| !live_slots.contains(slot))
        .copied()
        .collect();
    for slot in let_go {
        next.slots.remove(&slot);
        next.freed.insert(slot, now);
    }
    let stale: Vec<u32> = next
        .backends
        .keys()
        .filter(|id| !used_ids.contains(id))
        .copied()
        .collect();
    for id in stale {
        next.backends.remove(&id);
        ops.push(Op::DeleteBackend(id));
    }
    *state = next;
    Ok(ops)
}

impl MapState {
    /// Records one write that reached the maps.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, backend) => {
                self.backends.insert(*id, *backend);
            }
            Op::WriteTable { slot, table } => {
                self.slots.insert(*slot, table.clone());
            }
            Op::PutListener(key, listener) => {
                self.listeners.insert(*key, *listener);
            }
            Op::DeleteListener(key) => {
                self.listeners.remove(key);
            }
            Op::DeleteBackend(id) => {
                self.backends.remove(id);
            }
        }
    }
}

/// Something that writes [`Op`]s to the maps.
pub trait Writer {
    fn write(&mut self, op: &Op) -> anyhow::Result<()>;
}

/// Writes `ops` in order, recording each one that succeeded in `written`, so that after a
/// failure `written` is exactly what the maps hold. Returns the first failure.
pub fn write_each(
    writer: &mut impl Writer,
    ops: &[Op],
    written: &mut MapState,
) -> anyhow::Result<()> {
    for op in ops {
        writer.write(op)?;
        written.record(op);
    }
    Ok(())
}

/// The (listener id, backend id) pairs `desired` serves, once `state` has been synced to it:
/// a tracked connection on any other pair has lost its backend (or its listener).
pub fn served_pairs(state: &MapState, desired: &[DesiredListener]) -> BTreeSet<(u32, u32)> {
    let ids: BTreeMap<Backend, u32> = state.backends.iter().map(|(id, b)| (*b, *id)).collect();
    let mut pairs = BTreeSet::new();
    for listener in desired {
        let Some(l) = state.listeners.get(&listener.key) else {
            continue;
        };
        for (endpoint, snat) in listener.set.endpoints.iter().zip(&listener.snat) {
            if let Some(id) = ids.get(&backend_value(*endpoint, *snat)) {
                pairs.insert((l.id, *id));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::plan::{Backend as PlanBackend, Endpoint};

    fn set(spec: &[(&str, u32)]) -> BackendSet {
        let backends: Vec<PlanBackend> = spec
            .iter()
            .map(|(address, weight)| PlanBackend {
                host: (*address).into(),
                subset: None,
                port: 1,
                weight: *weight,
                load_balancer: "LEAST_REQUEST".into(),
                endpoints: vec![Endpoint {
                    address: address.parse().unwrap_or_else(|e| panic!("{e}")),
                    weight: 1,
                }],
                ..PlanBackend::default()
            })
            .collect();
        BackendSet::new(&backends)
    }

    fn listener(address: &str, spec: &[(&str, u32)]) -> DesiredListener {
        let set = set(spec);
        let snat = set
            .endpoints
            .iter()
            .map(|_| "203.0.113.1".parse().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        DesiredListener {
            key: listener_key(address.parse().unwrap_or_else(|e| panic!("{e}"))),
            set: Arc::new(set),
            snat,
        }
    }

    /// The maps as a packet sees them: the same shape as the daemon's record, with the
    /// checks a packet's view needs.
    type Kernel = MapState;

    trait PacketView {
        fn apply(&mut self, op: &Op);
        fn consistent(&self);
    }

    impl PacketView for Kernel {
        fn apply(&mut self, op: &Op) {
            if let Op::WriteTable { slot, .. } = op {
                assert!(
                    !self.listeners.values().any(|l| l.set_slot == *slot),
                    "table written into live slot {slot}"
                );
            }
            self.record(op);
        }

        /// Every listener points at a complete table of existing backends.
        fn consistent(&self) {
            for (key, l) in &self.listeners {
                let table = self
                    .slots
                    .get(&l.set_slot)
                    .unwrap_or_else(|| panic!("{key:?} points at an empty slot"));
                assert!(
                    table.iter().all(|id| self.backends.contains_key(id)),
                    "{key:?} references a missing backend"
                );
            }
        }
    }

    /// Applies `ops` one at a time, checking the maps after each write.
    fn replay(kernel: &mut Kernel, ops: &[Op]) {
        for op in ops {
            kernel.apply(op);
            kernel.consistent();
        }
    }

    #[test]
    fn first_sync_writes_backends_then_tables_then_listeners() {
        let mut state = MapState::default();
        let ops = sync(
            &mut state,
            &[listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 80), ("203.0.113.3:7000", 20)],
            )],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::PutBackend(..) => "backend",
                Op::WriteTable { .. } => "table",
                Op::PutListener(..) => "listener",
                Op::DeleteListener(_) => "delete-listener",
                Op::DeleteBackend(_) => "delete-backend",
            })
            .collect();
        assert_eq!(kinds, ["backend", "backend", "table", "listener"]);
        replay(&mut Kernel::default(), &ops);
    }

    #[test]
    fn an_unchanged_plan_writes_nothing() {
        let mut state = MapState::default();
        let desired = [listener("0.0.0.0:7000", &[("203.0.113.2:7000", 1)])];
        let _ = sync(&mut state, &desired);
        assert_eq!(sync(&mut state, &desired), Ok(vec![]));
    }

    #[test]
    fn changes_never_expose_half_written_state() {
        let steps: Vec<Vec<DesiredListener>> = vec![
            vec![listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 80), ("203.0.113.3:7000", 20)],
            )],
            // weights change: a new table in another slot, then the flip
            vec![listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 50), ("203.0.113.3:7000", 50)],
            )],
            // a backend removed, a listener added sharing a backend
            vec![
                listener("0.0.0.0:7000", &[("203.0.113.2:7000", 1)]),
                listener(
                    "[2001:db8:1::1]:8000",
                    &[("203.0.113.2:7000", 1), ("[2001:db8:2::5]:80", 1)],
                ),
            ],
            // a listener removed
            vec![listener(
                "[2001:db8:1::1]:8000",
                &[("[2001:db8:2::5]:80", 1)],
            )],
            vec![],
        ];
        let (mut state, mut kernel) = (MapState::default(), Kernel::default());
        let mut ids = BTreeMap::new();
        for (i, desired) in steps.iter().enumerate() {
            let ops = sync(&mut state, desired).unwrap_or_else(|e| panic!("step {i}: {e}"));
            replay(&mut kernel, &ops);
            assert_eq!(kernel.listeners, state.listeners, "step {i}");
            assert_eq!(kernel.backends, state.backends, "step {i}");
            assert_eq!(kernel.listeners.len(), desired.len(), "step {i}");
            // Listener ids (counter indexes) survive changes of their backends.
            for (key, l) in &kernel.listeners {
                assert_eq!(
                    *ids.entry(*key).or_insert(l.id),
                    l.id,
                    "step {i}: the id of {key:?} changed"
                );
            }
        }
        assert!(
            kernel.backends.is_empty() && state.slots.is_empty(),
            "nothing left after the last step"
        );
    }

    #[test]
    fn a_restarted_daemon_continues_from_the_maps() {
        let before = vec![
            listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 80), ("203.0.113.3:7000", 20)],
            ),
            listener("[2001:db8:1::1]:8000", &[("[2001:db8:2::5]:80", 1)]),
        ];
        let mut kernel = Kernel::default();
        let ops = sync(&mut MapState::default(), &before).unwrap_or_else(|e| panic!("{e}"));
        replay(&mut kernel, &ops);
        // A removed backend reads back as zeroes; a stale table stays in its slot.
        kernel.backends.insert(99, Backend::default());
        kernel.slots.insert(77, vec![99; 4]);

        let read_back = || {
            MapState::recovered(
                kernel.listeners.clone(),
                kernel.slots.clone(),
                kernel.backends.clone(),
            )
        };
        let mut state = read_back();
        assert!(!state.backends.contains_key(&99) && !state.slots.contains_key(&77));
        assert_eq!(
            sync(&mut state, &before),
            Ok(vec![]),
            "same config: no writes"
        );

        // A changed config after the restart is a safe diff against what packets see.
        let after = vec![
            listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 50), ("203.0.113.3:7000", 50)],
            ),
            listener("0.0.0.0:7001", &[("203.0.113.3:7000", 1)]),
        ];
        let mut state = read_back();
        let ids_before: Vec<u32> = state.listeners.values().map(|l| l.id).collect();
        let ops = sync(&mut state, &after).unwrap_or_else(|e| panic!("{e}"));
        replay(&mut kernel, &ops);
        assert_eq!(kernel.listeners, state.listeners);
        let kept = &state.listeners
            [&listener_key("0.0.0.0:7000".parse().unwrap_or_else(|e| panic!("{e}")))];
        assert!(
            ids_before.contains(&kept.id),
            "the kept listener keeps its id"
        );
        let ids: BTreeSet<u32> = state.listeners.values().map(|l| l.id).collect();
        assert_eq!(ids.len(), 2, "ids are distinct: {ids:?}");
    }

    #[test]
    fn served_pairs_follow_the_sets() {
        let mut state = MapState::default();
        let first = vec![
            listener(
                "0.0.0.0:7000",
                &[("203.0.113.2:7000", 80), ("203.0.113.3:7000", 20)],
            ),
            listener("0.0.0.0:7001", &[("203.0.113.3:7000", 1)]),
        ];
        sync(&mut state, &first).unwrap_or_else(|e| panic!("{e}"));
        let id = |state: &MapState, port: u16| {
            state.listeners[&listener_key(SocketAddr::from(([0, 0, 0, 0], port)))].id
        };
        let backend = |state: &MapState, addr: &str| {
            let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{e}"));
            state
                .backends
                .iter()
                .find(|(_, b)| b.port == addr.port() && b.addr == to_mapped(addr.ip()))
                .map(|(id, _)| *id)
                .unwrap_or_else(|| panic!("no backend {addr}"))
        };
        let (l0, l1) = (id(&state, 7000), id(&state, 7001));
        let (b2, b3) = (
            backend(&state, "203.0.113.2:7000"),
            backend(&state, "203.0.113.3:7000"),
        );
        assert_eq!(
            served_pairs(&state, &first),
            BTreeSet::from([(l0, b2), (l0, b3), (l1, b3)])
        );
        // .3 leaves :7000 but still serves :7001; :7001's other pairs are untouched.
        let second = vec![
            listener("0.0.0.0:7000", &[("203.0.113.2:7000", 1)]),
            listener("0.0.0.0:7001", &[("203.0.113.3:7000", 1)]),
        ];
        sync(&mut state, &second).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            served_pairs(&state, &second),
            BTreeSet::from([(l0, b2), (l1, b3)])
        );
    }

    #[test]
    fn listener_ids_stay_in_counter_range() {
        let mut state = MapState::default();
        for round in 0..(MAX_LISTENERS + 10) {
            let port = 1000 + (round % 3000) as u16;
            let desired = [listener(
                &format!("0.0.0.0:{port}"),
                &[("203.0.113.2:7000", 1)],
            )];
            sync(&mut state, &desired).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let ids: Vec<u32> = state.listeners.values().map(|l| l.id).collect();
            assert!(ids.iter().all(|id| *id < 2), "round {round}: {ids:?}");
        }
    }

    #[test]
    fn wildcard_and_family_keys() {
        let v4 = listener_key("0.0.0.0:80".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(&v4.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!((v4.port, v4.protocol), (80, 6));
        let v6 = listener_key("[::]:80".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(v6.addr, [0; 16]);
    }

    /// A slot let go is not written again until its quarantine is over, however the next
    /// syncs come; then it is the first choice again.
    #[test]
    fn freed_slots_rest_before_they_are_written_again() {
        let start = Instant::now();
        let mut state = MapState::default();
        let slot_of = |state: &MapState| {
            state
                .listeners
                .values()
                .next()
                .map(|l| l.set_slot)
                .unwrap_or_else(|| panic!("no listener"))
        };
        let a = [listener("0.0.0.0:80", &[("203.0.113.2:80", 1)])];
        let b = [listener("0.0.0.0:80", &[("203.0.113.3:80", 1)])];
        let c = [listener("0.0.0.0:80", &[("203.0.113.4:80", 1)])];
        let d = [listener("0.0.0.0:80", &[("203.0.113.5:80", 1)])];
        sync_at(&mut state, &a, start).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slot_of(&state), 0);
        sync_at(&mut state, &b, start).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slot_of(&state), 1, "a new table goes to a free slot");
        // Slot 0 was let go just now: not written again yet.
        sync_at(&mut state, &c, start + SLOT_QUARANTINE / 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slot_of(&state), 2);
        assert!(state.freed.contains_key(&0) && state.freed.contains_key(&1));
        // Past the quarantine slot 0 is free again; slot 1 (let go later) still rests.
        sync_at(
            &mut state,
            &d,
            start + SLOT_QUARANTINE + SLOT_QUARANTINE / 4,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(slot_of(&state), 0);
        assert!(!state.freed.contains_key(&0));
    }

    /// Maps that refuse the n-th write.
    struct Failing {
        left: usize,
        kernel: Kernel,
    }

    impl Writer for Failing {
        fn write(&mut self, op: &Op) -> anyhow::Result<()> {
            if self.left == 0 {
                anyhow::bail!("map full");
            }
            self.left -= 1;
            self.kernel.apply(op);
            Ok(())
        }
    }

    /// After a write fails part way, the record holds exactly what reached the maps, and a
    /// withdrawal synced from it removes every listener the kernel still had.
    #[test]
    fn a_failed_write_leaves_the_record_true_and_can_be_withdrawn() {
        let desired = [
            listener("0.0.0.0:80", &[("203.0.113.2:80", 1)]),
            listener("0.0.0.0:81", &[("203.0.113.3:80", 1)]),
        ];
        let mut planned = MapState::default();
        let ops = sync(&mut planned, &desired).unwrap_or_else(|e| panic!("{e}"));
        // Backends, tables, then the first listener: the second listener's write fails.
        let first_listener = ops
            .iter()
            .position(|op| matches!(op, Op::PutListener(..)))
            .unwrap_or_else(|| panic!("{ops:?}"));
        let mut maps = Failing {
            left: first_listener + 1,
            kernel: Kernel::default(),
        };
        let mut written = MapState::default();
        assert!(write_each(&mut maps, &ops, &mut written).is_err());
        assert_eq!(written.listeners, maps.kernel.listeners);
        assert_eq!(written.backends, maps.kernel.backends);
        assert_eq!(written.listeners.len(), 1);
        // Withdrawing from the true record removes that listener.
        let withdraw = sync(&mut written, &[]).unwrap_or_else(|e| panic!("{e}"));
        maps.left = usize::MAX;
        let mut after = written.clone();
        write_each(&mut maps, &withdraw, &mut after).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            maps.kernel.listeners.is_empty(),
            "{:?}",
            maps.kernel.listeners
        );
    }
}
