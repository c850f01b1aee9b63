//! A route's backends as the datapaths use them: the endpoints flattened with their
//! effective weights, and the Maglev table that picks one per flow.
use std::{
    collections::BTreeSet,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use gateway_common::select::{MAGLEV_TABLE_SIZE, flow_hash};

use super::maglev;
use crate::compile::plan::{Backend, ListenerKind, Plan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSet {
    /// Every endpoint of every destination, in Plan order.
    pub endpoints: Vec<SocketAddr>,
    /// Maglev table: indexes into `endpoints`; empty when nothing can be picked.
    pub table: Vec<u32>,
}

/// Weight resolution within a destination: its endpoints' weights are scaled so each
/// destination's total is proportional to the route weight.
const SCALE: u64 = 1_000;

/// What happens to established connections whose backend leaves their listener's set
/// (`--l4-backend-removal`), in both datapaths alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendRemoval {
    /// They run on to their end: the backend is out of rotation, not necessarily down.
    Keep,
    /// They are reset: the client learns at once instead of waiting on a backend that is
    /// going away (Envoy's `close_connections_on_host_set_change`).
    Reset,
}

impl BackendSet {
    /// Whether `endpoint` is in the set (with any weight, zero included: out of rotation is
    /// not removed).
    pub fn contains(&self, endpoint: SocketAddr) -> bool {
        self.endpoints.contains(&endpoint)
    }

    pub fn new(backends: &[Backend]) -> BackendSet {
        BackendSet::with_health(backends, &BTreeSet::new())
    }

    /// [`BackendSet::new`] without the `unhealthy` endpoints: they keep their place in the
    /// set (connections to them are not reset) but get no share of new flows, and Maglev
    /// moves only their share. When every endpoint with weight is unhealthy, all are used
    /// (Envoy's panic mode): an empty set would refuse everything.
    pub fn with_health(backends: &[Backend], unhealthy: &BTreeSet<SocketAddr>) -> BackendSet {
        let mut endpoints = Vec::new();
        let mut entries = Vec::new();
        for (backend, weights) in backends.iter().zip(endpoint_shares(backends)) {
            for (endpoint, weight) in backend.endpoints.iter().zip(weights) {
                endpoints.push(endpoint.address);
                entries.push(maglev::Entry {
                    key: format!("{}/{}", backend.host, endpoint.address),
                    weight,
                });
            }
        }
        let panic = entries
            .iter()
            .zip(&endpoints)
            .all(|(entry, address)| entry.weight == 0 || unhealthy.contains(address));
        if !panic {
            for (entry, address) in entries.iter_mut().zip(&endpoints) {
                if unhealthy.contains(address) {
                    entry.weight = 0;
                }
            }
        }
        let table = maglev::table(&entries, MAGLEV_TABLE_SIZE);
        BackendSet { endpoints, table }
    }

    /// The endpoint for a flow from `client` to `listener`, as the kernel would choose it.
    pub fn pick(&self, client: SocketAddr, listener: SocketAddr) -> Option<SocketAddr> {
        self.pick_index(client, listener)
            .and_then(|i| self.endpoints.get(i).copied())
    }

    /// [`BackendSet::pick`] as an index into `endpoints`.
    pub fn pick_index(&self, client: SocketAddr, listener: SocketAddr) -> Option<usize> {
        let slot = self.table.get(self.slot(client, listener)?)?;
        Some(*slot as usize).filter(|i| *i < self.endpoints.len())
    }

    /// Up to `most` distinct endpoints for a flow, in the order to try them: the kernel's
    /// pick first, then the next different endpoints met walking the Maglev table on from
    /// its slot (a well-mixed table, so the later choices still follow the weights). What a
    /// proxy tries when connecting to the first fails.
    pub fn choices(
        &self,
        client: SocketAddr,
        listener: SocketAddr,
        most: usize,
    ) -> Vec<SocketAddr> {
        self.choice_indexes(client, listener, most)
            .into_iter()
            .map(|i| self.endpoints[i])
            .collect()
    }

    /// [`BackendSet::choices`] as indexes into `endpoints`.
    pub fn choice_indexes(
        &self,
        client: SocketAddr,
        listener: SocketAddr,
        most: usize,
    ) -> Vec<usize> {
        let Some(start) = self.slot(client, listener) else {
            return Vec::new();
        };
        let mut chosen: Vec<usize> = Vec::new();
        for step in 0..self.table.len() {
            if chosen.len() == most.min(self.endpoints.len()) {
                break;
            }
            let index = self.table[(start + step) % self.table.len()] as usize;
            if index < self.endpoints.len() && !chosen.contains(&index) {
                chosen.push(index);
            }
        }
        chosen
    }

    /// The table slot of a flow, as the kernel computes it.
    fn slot(&self, client: SocketAddr, listener: SocketAddr) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let hash = flow_hash(
            words(client.ip()),
            words(listener.ip()),
            client.port(),
            listener.port(),
            6,
        );
        Some((hash % MAGLEV_TABLE_SIZE) as usize % self.table.len())
    }
}

/// Every route's backend set of a Plan, built once per config (a Maglev table has 16,381
/// entries) and shared by the kernel sync and the userspace servers.
#[derive(Debug, Clone, Default)]
pub struct BackendSets {
    /// By listener and the route's index in the listener (0 for an L4 listener's route).
    sets: HashMap<(SocketAddr, usize), Arc<BackendSet>>,
}

impl BackendSets {
    pub fn for_plan(plan: &Plan) -> BackendSets {
        BackendSets::for_plan_with_health(plan, &BTreeSet::new())
    }

    /// [`BackendSets::for_plan`] without the `unhealthy` endpoints' shares.
    pub fn for_plan_with_health(plan: &Plan, unhealthy: &BTreeSet<SocketAddr>) -> BackendSets {
        let new = |backends: &[Backend]| Arc::new(BackendSet::with_health(backends, unhealthy));
        let mut sets = HashMap::new();
        for listener in &plan.listeners {
            let address = listener.address();
            match &listener.kind {
                ListenerKind::L4Forward { route: Some(route) } => {
                    sets.insert((address, 0), new(&route.backends));
                }
                ListenerKind::SniRoute { routes } => {
                    for (i, route) in routes.iter().enumerate() {
                        sets.insert((address, i), new(&route.backends));
                    }
                }
                _ => {}
            }
        }
        BackendSets { sets }
    }

    /// The set of route `index` of `listener`.
    pub fn get(&self, listener: SocketAddr, index: usize) -> Option<Arc<BackendSet>> {
        self.sets.get(&(listener, index)).cloned()
    }
}

/// An address as the kernel reads it from a packet: 16 bytes (IPv4 mapped into IPv6) taken
/// as four native-endian words.
pub fn words(ip: IpAddr) -> [u32; 4] {
    let octets = gateway_common::addr::to_mapped(ip);
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Each endpoint's share of its set: the route weight split over the destination's
/// endpoints by their weights. Computed wide (route weights reach 2^31, endpoint weights
/// 2^32: their product overflows u64) and scaled down together when the largest share does
/// not fit a u32, so proportions hold; an endpoint with weight keeps at least 1.
fn endpoint_shares(backends: &[Backend]) -> Vec<Vec<u32>> {
    let wide: Vec<Vec<u128>> = backends
        .iter()
        .map(|backend| {
            let total: u128 = backend.endpoints.iter().map(|e| u128::from(e.weight)).sum();
            backend
                .endpoints
                .iter()
                .map(|e| {
                    u128::from(backend.weight) * u128::from(SCALE) * u128::from(e.weight)
                        / total.max(1)
                })
                .collect()
        })
        .collect();
    let largest = wide.iter().flatten().copied().max().unwrap_or(0);
    let divisor = largest.div_ceil(u128::from(u32::MAX)).max(1);
    wide.into_iter()
        .map(|shares| {
            shares
                .into_iter()
                .map(|share| {
                    let scaled = (share / divisor).max(u128::from(share > 0));
                    u32::try_from(scaled).unwrap_or(u32::MAX)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::plan::Endpoint;

    fn backend(weight: u32, endpoints: &[(&str, u32)]) -> Backend {
        Backend {
            host: "h".into(),
            subset: None,
            port: 1,
            weight,
            load_balancer: "LEAST_REQUEST".into(),
            endpoints: endpoints
                .iter()
                .map(|(a, w)| Endpoint {
                    address: a.parse().unwrap_or_else(|e| panic!("{e}")),
                    weight: *w,
                })
                .collect(),
            ..Backend::default()
        }
    }

    #[test]
    fn the_largest_weights_neither_overflow_nor_lose_proportions() {
        let top = i32::MAX as u32;
        let shares = endpoint_shares(&[
            backend(top, &[("203.0.113.2:80", u32::MAX), ("203.0.113.3:80", 1)]),
            backend(top, &[("203.0.113.4:80", u32::MAX)]),
            backend(1, &[("203.0.113.5:80", 1)]),
        ]);
        assert!(shares[0][0].abs_diff(shares[1][0]) <= 1, "{shares:?}");
        assert_eq!(shares[0][1], 1, "a tiny share stays in: {shares:?}");
        assert!((1..=2).contains(&shares[2][0]), "{shares:?}");
        assert!(shares[0][0] > u32::MAX / 2, "{shares:?}");
        let set = BackendSet::new(&[
            backend(top, &[("203.0.113.2:80", u32::MAX), ("203.0.113.3:80", 1)]),
            backend(top, &[("203.0.113.4:80", u32::MAX)]),
        ]);
        assert!(!set.table.is_empty());
    }

    #[test]
    fn choices_start_with_the_pick_and_follow_the_weights() {
        let set = BackendSet::new(&[
            backend(60, &[("203.0.113.2:80", 1)]),
            backend(30, &[("203.0.113.3:80", 1)]),
            backend(10, &[("203.0.113.4:80", 1)]),
        ]);
        let listener: SocketAddr = "198.51.100.1:7000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        // Second choices when the first is the heaviest endpoint: the other two by weight
        // (30:10).
        let mut second = [0usize; 3];
        for port in 40000..42000u16 {
            let client = SocketAddr::new(
                "198.51.100.2".parse().unwrap_or_else(|e| panic!("{e}")),
                port,
            );
            let choices = set.choices(client, listener, 3);
            assert_eq!(choices.len(), 3);
            assert_eq!(Some(choices[0]), set.pick(client, listener));
            let mut distinct = choices.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{choices:?}");
            if choices[0] == set.endpoints[0] {
                let i = set
                    .endpoints
                    .iter()
                    .position(|e| *e == choices[1])
                    .unwrap_or(0);
                second[i] += 1;
            }
        }
        assert_eq!(second[0], 0);
        assert!(second[1] > 2 * second[2], "{second:?}");
        assert_eq!(
            set.choices(SocketAddr::from(([198, 51, 100, 2], 1)), listener, 1)
                .len(),
            1
        );
        assert!(
            BackendSet::new(&[])
                .choices(listener, listener, 3)
                .is_empty()
        );
    }

    #[test]
    fn unhealthy_endpoints_lose_only_their_share_and_all_unhealthy_is_panic_mode() {
        let backends = [backend(
            100,
            &[
                ("203.0.113.2:80", 1),
                ("203.0.113.3:80", 1),
                ("203.0.113.4:80", 1),
            ],
        )];
        let healthy = BackendSet::new(&backends);
        let down: BTreeSet<SocketAddr> =
            ["203.0.113.3:80".parse().unwrap_or_else(|e| panic!("{e}"))].into();
        let degraded = BackendSet::with_health(&backends, &down);
        assert!(degraded.contains("203.0.113.3:80".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(
            !degraded.table.contains(&1),
            "the unhealthy endpoint keeps no slot"
        );
        // Slots of the healthy endpoints stay where they were.
        let moved = healthy
            .table
            .iter()
            .zip(&degraded.table)
            .filter(|(before, after)| **before != 1 && before != after)
            .count();
        // Maglev's disruption bound: a handful of the others' slots move, not a share.
        assert!(
            moved < healthy.table.len() / 100,
            "{moved} slots of healthy endpoints moved"
        );
        let all: BTreeSet<SocketAddr> = healthy.endpoints.iter().copied().collect();
        assert_eq!(
            BackendSet::with_health(&backends, &all).table,
            healthy.table,
            "panic mode"
        );
    }

    #[test]
    fn route_and_endpoint_weights_combine() {
        let set = BackendSet::new(&[
            backend(80, &[("203.0.113.2:80", 1), ("203.0.113.3:80", 3)]),
            backend(20, &[("203.0.113.4:80", 1)]),
        ]);
        let mut counts = [0usize; 3];
        for slot in &set.table {
            counts[*slot as usize] += 1;
        }
        let share = |i: usize| counts[i] as f64 / set.table.len() as f64;
        for (i, want) in [0.2, 0.6, 0.2].iter().enumerate() {
            assert!(
                (share(i) - want).abs() < 0.01,
                "{i}: {} vs {want}",
                share(i)
            );
        }
    }

    #[test]
    fn picks_are_stable_per_flow_and_spread_across_flows() {
        let set = BackendSet::new(&[backend(
            100,
            &[("203.0.113.2:80", 1), ("203.0.113.3:80", 1)],
        )]);
        let listener: SocketAddr = "198.51.100.1:7000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let client = |port| {
            SocketAddr::new(
                "198.51.100.2".parse().unwrap_or_else(|e| panic!("{e}")),
                port,
            )
        };
        assert_eq!(
            set.pick(client(40000), listener),
            set.pick(client(40000), listener)
        );
        let first = (40000..41000)
            .filter(|p| set.pick(client(*p), listener) == Some(set.endpoints[0]))
            .count();
        assert!(
            (400..600).contains(&first),
            "{first} of 1000 flows on the first endpoint"
        );
        assert_eq!(BackendSet::new(&[]).pick(client(1), listener), None);
    }

    #[test]
    fn ipv4_words_match_the_kernel_layout() {
        let w = words("198.51.100.2".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(w[0..2], [0, 0]);
        assert_eq!(w[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(w[3].to_ne_bytes(), [198, 51, 100, 2]);
        assert_eq!(
            words(
                "::ffff:198.51.100.2"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}"))
            ),
            w
        );
    }
}
