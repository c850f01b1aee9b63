//! Where a routed request goes: one of the route's destinations by weight, then one of its
//! endpoints by the DestinationRule's load balancer (`ROUND_ROBIN`, `LEAST_REQUEST`, Istio's
//! default, as power of two choices over requests in flight, or `RANDOM`). Built once per
//! config; the request path only touches atomics.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use crate::compile::plan::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
}

#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// `address` as a URI authority, made once rather than per request.
    pub authority: http::uri::Authority,
    weight: u32,
    in_flight: AtomicU32,
}

#[derive(Debug)]
pub struct Destination {
    /// `host:port` of the service, for logs and metrics.
    pub name: String,
    weight: u32,
    endpoints: Vec<Endpoint>,
    /// Endpoint indexes repeated by weight, for round robin.
    rotation: Vec<usize>,
    policy: Policy,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
pub struct Destinations {
    total_weight: u64,
    items: Vec<Destination>,
}

/// A request's endpoint; it counts as in flight until dropped.
#[derive(Debug)]
pub struct Picked<'a> {
    pub destination: &'a Destination,
    pub endpoint: &'a Endpoint,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Round-robin rotations are capped at this many slots (weights are scaled down past it).
const MAX_ROTATION: u64 = 1024;

impl Destinations {
    pub fn new(backends: &[Backend]) -> Destinations {
        let items: Vec<Destination> = backends
            .iter()
            .map(|b| {
                let endpoints: Vec<Endpoint> = b
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        Some(Endpoint {
                            address: e.address,
                            authority: e.address.to_string().parse().ok()?,
                            weight: e.weight,
                            in_flight: AtomicU32::new(0),
                        })
                    })
                    .collect();
                let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
                let scale = total.div_ceil(MAX_ROTATION).max(1);
                let rotation = endpoints
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| {
                        let slots = (u64::from(e.weight) / scale).max(u64::from(e.weight > 0));
                        std::iter::repeat_n(i, slots as usize)
                    })
                    .collect();
                Destination {
                    name: format!("{}:{}", b.host, b.port),
                    weight: b.weight,
                    endpoints,
                    rotation,
                    policy: match b.load_balancer.as_str() {
                        "ROUND_ROBIN" => Policy::RoundRobin,
                        "RANDOM" => Policy::Random,
                        _ => Policy::LeastRequest,
                    },
                    next: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
                }
            })
            .collect();
        Destinations {
            total_weight: items.iter().map(|d| u64::from(d.weight)).sum(),
            items,
        }
    }

    /// A destination by weight, then an endpoint of it. `Err` with the destination's name
    /// when it has no endpoint (Envoy's "no healthy upstream").
    pub fn pick(&self) -> Result<Picked<'_>, Option<&str>> {
        let destination = self.weighted().ok_or(None)?;
        let endpoint = destination
            .endpoint()
            .ok_or(Some(destination.name.as_str()))?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked {
            destination,
            endpoint,
        })
    }

    fn weighted(&self) -> Option<&Destination> {
        if self.items.len() == 1 {
            return self.items.first();
        }
        if self.total_weight == 0 {
            return None;
        }
        let mut ticket = fastrand::u64(..self.total_weight);
        self.items.iter().find(|d| {
            let w = u64::from(d.weight);
            if ticket < w {
                true
            } else {
                ticket -= w;
                false
            }
        })
    }
}

impl Destination {
    fn endpoint(&self) -> Option<&Endpoint> {
        if self.rotation.is_empty() {
            return None;
        }
        let slot = |i: usize| &self.endpoints[self.rotation[i % self.rotation.len()]];
        match self.policy {
            Policy::RoundRobin => Some(slot(self.next.fetch_add(1, Ordering::Relaxed))),
            Policy::Random => Some(slot(fastrand::usize(..self.rotation.len()))),
            Policy::LeastRequest => {
                let a = slot(fastrand::usize(..self.rotation.len()));
                let b = slot(fastrand::usize(..self.rotation.len()));
                let load = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::plan::Endpoint as PlanEndpoint;

    fn backend(weight: u32, lb: &str, endpoints: &[(&str, u32)]) -> Backend {
        Backend {
            host: format!("h{weight}"),
            subset: None,
            port: 80,
            weight,
            load_balancer: lb.into(),
            endpoints: endpoints
                .iter()
                .map(|(a, w)| PlanEndpoint {
                    address: a.parse().unwrap_or_else(|e| panic!("{e}")),
                    weight: *w,
                })
                .collect(),
        }
    }

    #[test]
    fn destinations_by_weight_endpoints_by_policy() {
        let d = Destinations::new(&[
            backend(
                80,
                "ROUND_ROBIN",
                &[("203.0.113.2:80", 1), ("203.0.113.3:80", 1)],
            ),
            backend(20, "RANDOM", &[("203.0.113.4:80", 1)]),
        ]);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let picked = d.pick().unwrap_or_else(|e| panic!("{e:?}"));
            *counts
                .entry(picked.endpoint.address.to_string())
                .or_insert(0) += 1;
        }
        let share = |a: &str| f64::from(counts[a]) / 10_000.0;
        assert!((share("203.0.113.4:80") - 0.2).abs() < 0.03, "{counts:?}");
        // Round robin splits the 80 % evenly.
        assert!((share("203.0.113.2:80") - 0.4).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let d = Destinations::new(&[backend(
            100,
            "LEAST_REQUEST",
            &[("203.0.113.2:80", 1), ("203.0.113.3:80", 1)],
        )]);
        let held: Vec<Picked<'_>> = (0..50).filter_map(|_| d.pick().ok()).collect();
        let busy = |a: &str| {
            held.iter()
                .filter(|p| p.endpoint.address.to_string() == a)
                .count()
        };
        // Two choices each time: the loads stay close.
        assert!(busy("203.0.113.2:80").abs_diff(busy("203.0.113.3:80")) < 10);
        drop(held);
        assert!(
            d.items[0]
                .endpoints
                .iter()
                .all(|e| e.in_flight.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn no_endpoint_is_no_healthy_upstream() {
        let d = Destinations::new(&[backend(100, "ROUND_ROBIN", &[])]);
        assert_eq!(d.pick().err(), Some(Some("h100:80")));
        assert_eq!(Destinations::default().pick().err(), Some(None));
    }
}
