//! Active health checks of the L4 and TLS passthrough endpoints: a TCP connect to each
//! endpoint every interval, within a timeout. An endpoint is unhealthy after
//! `unhealthy_threshold` failed checks in a row and healthy again after `healthy_threshold`
//! successes; an unhealthy endpoint keeps its place in its sets but gets no share of new
//! connections (`BackendSet::with_health`), in the kernel's Maglev tables and in userspace
//! alike. Every endpoint starts healthy.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use tokio::sync::watch;

use super::snapshot::Snapshot;
use crate::compile::plan::ListenerKind;

/// `--health-check-*`.
#[derive(Debug, Clone, Copy)]
pub struct HealthOptions {
    /// Between two checks of an endpoint; zero turns checking off.
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// One endpoint's checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    pub healthy: bool,
    /// Checks in a row with the same result.
    pub streak: u32,
    /// Why the last check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            healthy: true,
            streak: 0,
            last_failure: None,
        }
    }
}

impl EndpointHealth {
    /// Records one check; returns whether the endpoint changed between healthy and not.
    /// Pure.
    pub fn observe(&mut self, result: Result<(), String>, options: &HealthOptions) -> bool {
        let passed = result.is_ok();
        if let Err(why) = result {
            self.last_failure = Some(why);
        }
        if passed == self.healthy {
            // Confirms the current state; a streak towards the other one is broken.
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if passed {
            options.healthy_threshold
        } else {
            options.unhealthy_threshold
        };
        if self.streak >= needed.max(1) {
            self.healthy = passed;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// The health of every checked endpoint, published for the servers (the unhealthy set)
/// and the admin server.
#[derive(Debug)]
pub struct Health {
    endpoints: Mutex<BTreeMap<SocketAddr, EndpointHealth>>,
    unhealthy: watch::Sender<Arc<BTreeSet<SocketAddr>>>,
    gauge: Family<EndpointLabels, Gauge>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            endpoints: Mutex::default(),
            unhealthy: watch::channel(Arc::default()).0,
            gauge: Family::default(),
        }
    }
}

impl Health {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "endpoint_healthy",
            "Active health of each L4 and TLS passthrough endpoint (1 healthy, 0 not)",
            self.gauge.clone(),
        );
    }

    /// The unhealthy endpoints, now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeSet<SocketAddr>>> {
        self.unhealthy.subscribe()
    }

    /// Every checked endpoint, for `/config_dump`.
    pub fn dump(&self) -> BTreeMap<SocketAddr, EndpointHealth> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a round of checks of exactly `results`' endpoints (the others are no longer
    /// in the config and are forgotten), and publishes the unhealthy set if it changed.
    fn record(&self, results: Vec<(SocketAddr, Result<(), String>)>, options: &HealthOptions) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let checked: BTreeSet<SocketAddr> = results.iter().map(|(a, _)| *a).collect();
        endpoints.retain(|address, _| checked.contains(address));
        for (address, result) in results {
            let health = endpoints.entry(address).or_default();
            if health.observe(result, options) {
                if health.healthy {
                    tracing::info!(endpoint = %address, "endpoint healthy again");
                } else {
                    tracing::warn!(endpoint = %address, why = health.last_failure.as_deref().unwrap_or(""), "endpoint unhealthy: it gets no new connections");
                }
            }
            let labels = EndpointLabels {
                endpoint: address.to_string(),
            };
            self.gauge
                .get_or_create(&labels)
                .set(i64::from(health.healthy));
        }
        let unhealthy: BTreeSet<SocketAddr> = endpoints
            .iter()
            .filter(|(_, h)| !h.healthy)
            .map(|(a, _)| *a)
            .collect();
        self.unhealthy.send_if_modified(|current| {
            if **current == unhealthy {
                return false;
            }
            *current = Arc::new(unhealthy);
            true
        });
    }
}

/// The endpoints the datapaths connect to on their own: L4 and TLS passthrough routes'.
fn endpoints(snapshot: &Snapshot) -> BTreeSet<SocketAddr> {
    let mut found = BTreeSet::new();
    for listener in &snapshot.plan.listeners {
        let backends = match &listener.kind {
            ListenerKind::L4Forward { route: Some(route) } => vec![&route.backends],
            ListenerKind::SniRoute { routes } => routes.iter().map(|r| &r.backends).collect(),
            _ => Vec::new(),
        };
        for backend in backends.into_iter().flatten() {
            found.extend(backend.endpoints.iter().map(|e| e.address));
        }
    }
    found
}

/// Checks the applied config's endpoints every interval until the task is aborted.
pub async fn run(
    health: Arc<Health>,
    applied: watch::Receiver<Option<Arc<Snapshot>>>,
    options: HealthOptions,
) {
    if options.interval.is_zero() {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets = applied
            .borrow()
            .as_ref()
            .map(|snapshot| endpoints(snapshot))
            .unwrap_or_default();
        let mut checks = tokio::task::JoinSet::new();
        for address in targets {
            checks.spawn(async move {
                let connected =
                    tokio::time::timeout(options.timeout, tokio::net::TcpStream::connect(address))
                        .await;
                let result = match connected {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connect: {e}")),
                    Err(_) => Err(format!("no answer within {:?}", options.timeout)),
                };
                (address, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = checks.join_next().await {
            if let Ok(one) = done {
                results.push(one);
            }
        }
        health.record(results, &options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: HealthOptions = HealthOptions {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        unhealthy_threshold: 2,
        healthy_threshold: 1,
    };

    #[test]
    fn thresholds_decide_the_transitions() {
        let mut h = EndpointHealth::default();
        let fail = || Err("refused".to_owned());
        assert!(!h.observe(fail(), &OPTIONS), "one failure is not enough");
        assert!(h.healthy);
        assert!(!h.observe(Ok(()), &OPTIONS), "a success breaks the streak");
        assert!(!h.observe(fail(), &OPTIONS));
        assert!(h.observe(fail(), &OPTIONS), "two in a row");
        assert!(!h.healthy);
        assert_eq!(h.last_failure.as_deref(), Some("refused"));
        assert!(!h.observe(fail(), &OPTIONS));
        assert!(h.observe(Ok(()), &OPTIONS), "one success brings it back");
        assert!(h.healthy);
    }

    #[test]
    fn a_round_publishes_the_unhealthy_set_and_forgets_what_left() {
        let health = Health::default();
        let watch = health.subscribe();
        let (a, b): (SocketAddr, SocketAddr) = (
            "203.0.113.2:80".parse().unwrap_or_else(|e| panic!("{e}")),
            "203.0.113.3:80".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        for _ in 0..2 {
            health.record(vec![(a, Ok(())), (b, Err("refused".into()))], &OPTIONS);
        }
        assert_eq!(**watch.borrow(), BTreeSet::from([b]));
        health.record(vec![(a, Ok(()))], &OPTIONS);
        assert!(watch.borrow().is_empty(), "b left the config");
        assert_eq!(health.dump().len(), 1);
    }
}
