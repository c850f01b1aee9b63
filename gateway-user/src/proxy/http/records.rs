//! What upstream destinations remember across requests, workers, routes and config
//! reloads: outlier detection records per destination and endpoint, and circuit breakers
//! per destination and limits. A routing table holds its records; the registry only finds
//! the live one for a name, so a record lives while some table uses it.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use super::{
    circuit::Circuit,
    origination::TlsSources,
    outlier::{DestinationHealth, EndpointHealth},
};
use crate::compile::plan::PoolLimits;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Registry<K, V> = Mutex<HashMap<K, Weak<V>>>;

#[derive(Debug, Default)]
pub struct Records {
    /// Where TLS origination finds certificates a rule does not name.
    pub tls_sources: TlsSources,
    destinations: Registry<String, DestinationHealth>,
    endpoints: Registry<(String, SocketAddr), EndpointHealth>,
    circuits: Registry<(String, PoolLimits), Circuit>,
}

fn get_or_make<K: std::hash::Hash + Eq, V>(
    registry: &Registry<K, V>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut map = lock(registry);
    if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
        return live;
    }
    map.retain(|_, v| v.strong_count() > 0);
    let fresh = Arc::new(make());
    map.insert(key, Arc::downgrade(&fresh));
    fresh
}

impl Records {
    pub fn new(tls_sources: TlsSources) -> Records {
        Records {
            tls_sources,
            ..Records::default()
        }
    }

    pub fn destination(&self, name: &str) -> Arc<DestinationHealth> {
        get_or_make(&self.destinations, name.to_owned(), Default::default)
    }

    pub fn endpoint(&self, destination: &str, address: SocketAddr) -> Arc<EndpointHealth> {
        get_or_make(
            &self.endpoints,
            (destination.to_owned(), address),
            Default::default,
        )
    }

    /// The circuit breakers of `destination` with `limits`: new limits start new counts.
    pub fn circuit(&self, destination: &str, limits: &PoolLimits) -> Arc<Circuit> {
        get_or_make(
            &self.circuits,
            (destination.to_owned(), limits.clone()),
            || Circuit::new(limits.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_shared_while_held() {
        let records = Records::default();
        let address: SocketAddr = "192.0.2.1:80".parse().unwrap_or_else(|e| panic!("{e}"));
        let a = records.endpoint("outbound|80||a", address);
        let b = records.endpoint("outbound|80||a", address);
        assert!(Arc::ptr_eq(&a, &b));
        let other = records.endpoint("outbound|80||b", address);
        assert!(!Arc::ptr_eq(&a, &other));
        let policy = crate::compile::plan::OutlierPolicy {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            split_local: false,
            consecutive_local: 5,
            interval_ms: 1000,
            base_ejection_ms: 1000,
            max_ejection_percent: 100,
            min_health_percent: 0,
        };
        assert_eq!(a.eject(&policy, 1), Some(1001));
        drop((a, b));
        let fresh = records.endpoint("outbound|80||a", address);
        assert!(!fresh.ejected(2), "a dropped record came back");
    }
}
