//! Where a routed request goes: one of the route's destinations by weight, then one of its
//! endpoints by the DestinationRule's load balancer (`ROUND_ROBIN`, `LEAST_REQUEST`, Istio's
//! default, as power of two choices over requests in flight, or `RANDOM`), or by a hash of
//! the request (`consistentHash` on a header, a cookie, the source IP or a query parameter,
//! looked up in a ring or a Maglev table). Built once per config; the request path only
//! touches atomics. The upstream clients, HTTP/1.1 and HTTP/2, live here too.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use http::{HeaderMap, HeaderValue, Request, Response, header};

use super::{
    body::{Body, Counted},
    circuit::Circuit,
    h2_pool::Http2Pool,
    metrics::{HttpMetrics, UpstreamMetrics},
    origination::{ClientTls, client_tls},
    outlier::{self, DestinationHealth, EndpointHealth, Outcome},
    pool::{Http1Pool, SendError},
    records::Records,
};
use crate::{
    compile::plan::{Backend, ConsistentHash, HashKey, HashTable, OutlierPolicy},
    config::model::Headers,
    select::maglev,
};

/// One worker's upstream connections: HTTP/1.1 pooled, HTTP/2 (prior knowledge, for
/// destinations whose port says HTTP2 or GRPC) multiplexed, one connection per endpoint.
#[derive(Default)]
pub struct Clients {
    http1: Arc<Http1Pool>,
    http2: Http2Pool,
}

impl Clients {
    /// Sends `request` (its URI in origin form, `Host` set) to `endpoint` of `destination`.
    pub async fn send(
        &self,
        destination: &Destination,
        endpoint: &Endpoint,
        request: Request<Counted>,
    ) -> Result<Response<Body>, SendError> {
        let tls = match &destination.tls {
            None => None,
            Some(Ok(tls)) => Some(&**tls),
            // InvalidInput: the gateway's configuration, not the endpoint, failed.
            Some(Err(reason)) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("TLS origination: {reason}"),
                )));
            }
        };
        if !destination.http2 {
            return self
                .http1
                .send(
                    endpoint.address,
                    request,
                    destination.circuit.as_deref(),
                    tls,
                )
                .await;
        }
        // HTTP/2 carries the authority as `:authority`, from the URI: the client's.
        let (mut parts, body) = request.into_parts();
        let authority = parts
            .headers
            .remove(header::HOST)
            .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok())
            .unwrap_or_else(|| endpoint.authority.clone());
        let mut uri = http::uri::Parts::from(parts.uri);
        uri.scheme = Some(if tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        uri.authority = Some(authority);
        parts.uri = http::Uri::from_parts(uri).map_err(|e| {
            SendError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        self.http2
            .send(endpoint.address, Request::from_parts(parts, body), tls)
            .await
    }
}

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
    /// Its outlier detection record, when the destination has a policy.
    health: Option<Arc<EndpointHealth>>,
}

impl Endpoint {
    fn ejected(&self, now: u64) -> bool {
        self.health.as_ref().is_some_and(|h| h.ejected(now))
    }
}

#[derive(Debug)]
pub struct Destination {
    /// `outbound|<port>|<subset>|<host>`, as Istio names Envoy's clusters.
    pub name: String,
    pub metrics: UpstreamMetrics,
    /// Spoken to in HTTP/2.
    pub http2: bool,
    /// Header operations of this destination.
    pub headers: Option<Headers>,
    weight: u32,
    endpoints: Vec<Endpoint>,
    /// Endpoint indexes repeated by weight, for round robin.
    rotation: Vec<usize>,
    policy: Policy,
    affinity: Option<Affinity>,
    next: AtomicUsize,
    outlier: Option<(OutlierPolicy, Arc<DestinationHealth>)>,
    /// Circuit breakers (DestinationRule `connectionPool`).
    pub circuit: Option<Arc<Circuit>>,
    /// TLS origination (DestinationRule `tls`), or why it could not be set up.
    pub tls: Option<Result<Arc<ClientTls>, String>>,
}

/// A `consistentHash` load balancer, its table built.
#[derive(Debug)]
struct Affinity {
    key: HashKey,
    lookup: Lookup,
}

#[derive(Debug)]
enum Lookup {
    /// Points on the ring (hash, endpoint index), sorted by hash.
    Ring(Vec<(u64, usize)>),
    /// Maglev slots holding endpoint indexes.
    Maglev(Vec<u32>),
}

/// What a request offers the hash: its headers, query string and client address.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'r> {
    pub headers: &'r HeaderMap,
    pub query: Option<&'r str>,
    pub source: IpAddr,
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
    /// A cookie the client is to keep (a `consistentHash` cookie with a ttl it lacked).
    pub set_cookie: Option<HeaderValue>,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Round-robin rotations are capped at this many slots (weights are scaled down past it).
const MAX_ROTATION: u64 = 1024;

impl Destinations {
    pub fn new(backends: &[Backend], metrics: &HttpMetrics, records: &Records) -> Destinations {
        let items: Vec<Destination> = backends
            .iter()
            .map(|b| {
                let name = format!(
                    "outbound|{}|{}|{}",
                    b.port,
                    b.subset.as_deref().unwrap_or(""),
                    b.host
                );
                let endpoints: Vec<Endpoint> = b
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        Some(Endpoint {
                            address: e.address,
                            authority: e.address.to_string().parse().ok()?,
                            weight: e.weight,
                            in_flight: AtomicU32::new(0),
                            health: b
                                .outlier
                                .as_ref()
                                .map(|_| records.endpoint(&name, e.address)),
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
                let affinity = b
                    .consistent_hash
                    .as_ref()
                    .map(|hash| Affinity::new(hash, &endpoints));
                let tls = b.tls.as_ref().map(|tls| {
                    client_tls(tls, b.http2, &records.tls_sources)
                        .map(Arc::new)
                        .map_err(|e| {
                            tracing::error!(upstream = %name, "TLS origination is not set up: {e:#}");
                            format!("{e:#}")
                        })
                });
                Destination {
                    tls,
                    circuit: b.pool.as_ref().map(|limits| records.circuit(&name, limits)),
                    outlier: b
                        .outlier
                        .clone()
                        .map(|policy| (policy, records.destination(&name))),
                    metrics: metrics.upstream(&name),
                    name,
                    http2: b.http2,
                    headers: b.headers.clone(),
                    weight: b.weight,
                    endpoints,
                    rotation,
                    affinity,
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

    /// A destination by weight, then an endpoint of it. `Err` with the destination when it
    /// has no endpoint (Envoy's "no healthy upstream").
    pub fn pick(&self, request: &HashInput<'_>) -> Result<Picked<'_>, Option<&Destination>> {
        let destination = self.weighted().ok_or(None)?;
        let no_endpoint = Some(destination);
        if destination.rotation.is_empty() {
            return Err(no_endpoint);
        }
        let (endpoint, set_cookie) = match &destination.affinity {
            Some(affinity) => match affinity.hash(request) {
                Some((hash, set_cookie)) => {
                    (affinity.lookup(hash, &destination.endpoints), set_cookie)
                }
                // Nothing to hash on: any endpoint, as Envoy's hash balancers do.
                None => (None, None),
            },
            None => (None, None),
        };
        let endpoint = endpoint
            .filter(|e| !destination.outlier_ejects(e))
            .or_else(|| destination.endpoint())
            .ok_or(no_endpoint)?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked {
            destination,
            endpoint,
            set_cookie,
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
    /// An endpoint for a retry, counted in flight: one not `tried` yet when one of up to five
    /// choices finds it (Envoy's previous-hosts predicate), else the last choice.
    pub fn retry_pick(&self, tried: &[SocketAddr]) -> Option<Picked<'_>> {
        let mut endpoint = self.endpoint()?;
        for _ in 0..4 {
            if !tried.contains(&endpoint.address) {
                break;
            }
            endpoint = self.endpoint()?;
        }
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            destination: self,
            endpoint,
            set_cookie: None,
        })
    }

    fn endpoint(&self) -> Option<&Endpoint> {
        if self.rotation.is_empty() {
            return None;
        }
        if let Some((policy, health)) = &self.outlier {
            let now = outlier::now_ms();
            if health.any_ejected(now) {
                return self.endpoint_not_ejected(policy, now);
            }
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

impl Destination {
    /// Whether `endpoint` is out of load balancing now (ejected, and not in panic).
    fn outlier_ejects(&self, endpoint: &Endpoint) -> bool {
        let Some((policy, health)) = &self.outlier else {
            return false;
        };
        let now = outlier::now_ms();
        health.any_ejected(now) && endpoint.ejected(now) && !self.in_panic(policy, now)
    }

    fn in_panic(&self, policy: &OutlierPolicy, now: u64) -> bool {
        let healthy = self.endpoints.iter().filter(|e| !e.ejected(now)).count();
        outlier::panic(policy.min_health_percent, healthy, self.endpoints.len())
    }

    /// [`Destination::endpoint`] while some endpoint is ejected: the policy's choice among
    /// the others, or among all in panic; none when all are ejected.
    fn endpoint_not_ejected(&self, policy: &OutlierPolicy, now: u64) -> Option<&Endpoint> {
        let panicking = self.in_panic(policy, now);
        let slots: Vec<usize> = self
            .rotation
            .iter()
            .copied()
            .filter(|&i| panicking || !self.endpoints[i].ejected(now))
            .collect();
        if slots.is_empty() {
            return None;
        }
        let slot = |i: usize| &self.endpoints[slots[i % slots.len()]];
        Some(match self.policy {
            Policy::RoundRobin => slot(self.next.fetch_add(1, Ordering::Relaxed)),
            Policy::Random => slot(fastrand::usize(..slots.len())),
            Policy::LeastRequest => {
                let a = slot(fastrand::usize(..slots.len()));
                let b = slot(fastrand::usize(..slots.len()));
                let load = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
        })
    }

    /// Counts a try's outcome on `endpoint`; ejects it when that completes a run and the
    /// destination may lose one more endpoint.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        let (Some((policy, health)), Some(record)) = (&self.outlier, &endpoint.health) else {
            return;
        };
        // An ejected endpoint's late answers (and its answers in panic) do not count: its
        // run starts afresh when it is back, as Envoy's does.
        let now = outlier::now_ms();
        if record.ejected(now) || !record.record(policy, outcome) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        if !outlier::may_eject(policy.max_ejection_percent, ejected, self.endpoints.len()) {
            return;
        }
        let Some(until) = record.eject(policy, now) else {
            return;
        };
        health.ejected(until);
        self.metrics.ejected();
        tracing::warn!(
            upstream = %self.name,
            endpoint = %endpoint.address,
            seconds = (until - now) / 1000,
            "outlier detection ejected an endpoint"
        );
    }
}

impl Affinity {
    fn new(hash: &ConsistentHash, endpoints: &[Endpoint]) -> Affinity {
        let lookup = match hash.table {
            HashTable::Ring { minimum_size } => Lookup::Ring(ring(endpoints, minimum_size)),
            HashTable::Maglev { size } => {
                let entries: Vec<maglev::Entry> = endpoints
                    .iter()
                    .map(|e| maglev::Entry {
                        key: e.address.to_string(),
                        weight: e.weight,
                    })
                    .collect();
                let size = u32::try_from(size).unwrap_or(65537);
                Lookup::Maglev(maglev::table(&entries, size))
            }
        };
        Affinity {
            key: hash.key.clone(),
            lookup,
        }
    }

    /// The request's hash, and the cookie to hand out when the hash is on a generated one.
    fn hash(&self, request: &HashInput<'_>) -> Option<(u64, Option<HeaderValue>)> {
        match &self.key {
            HashKey::Header(name) => {
                let value = request.headers.get(name.as_str())?;
                Some((hash64(value.as_bytes()), None))
            }
            HashKey::SourceIp => Some((hash64(request.source.to_string().as_bytes()), None)),
            HashKey::QueryParameter(name) => {
                let value = super::query::query_values(request.query, name).next()?;
                Some((hash64(value.as_bytes()), None))
            }
            HashKey::Cookie { name, path, ttl_s } => {
                if let Some(value) = cookie(request.headers, name) {
                    return Some((hash64(value.as_bytes()), None));
                }
                // As Envoy: a value made from the client's address, so racing requests of
                // one client get the same one, and the hash of that value.
                let ttl = (*ttl_s)?;
                let value = format!("{:016x}", hash64(request.source.to_string().as_bytes()));
                let path = path
                    .as_deref()
                    .map_or(String::new(), |p| format!("; Path={p}"));
                let set = format!("{name}=\"{value}\"; Max-Age={ttl}{path}; HttpOnly");
                Some((hash64(value.as_bytes()), HeaderValue::from_str(&set).ok()))
            }
        }
    }

    fn lookup<'e>(&self, hash: u64, endpoints: &'e [Endpoint]) -> Option<&'e Endpoint> {
        let index = match &self.lookup {
            Lookup::Ring(points) => {
                let at = points.partition_point(|(point, _)| *point < hash);
                points.get(at).or(points.first())?.1
            }
            Lookup::Maglev(slots) => {
                let len = u64::try_from(slots.len()).ok().filter(|l| *l > 0)?;
                *slots.get(usize::try_from(hash % len).ok()?)? as usize
            }
        };
        endpoints.get(index)
    }
}

/// A ring of at least `minimum` points, each endpoint holding a share by weight (Envoy's
/// ring hash: a point per `address_n`, hashed).
fn ring(endpoints: &[Endpoint], minimum: u64) -> Vec<(u64, usize)> {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        return Vec::new();
    }
    // Bounded: Envoy caps the ring at 8M points; a smaller cap keeps a config cheap.
    let minimum = minimum.clamp(1, 1 << 20);
    let mut points = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let count = (minimum * u64::from(e.weight)).div_ceil(total);
        let address = e.address.to_string();
        for n in 0..count {
            points.push((hash64(format!("{address}_{n}").as_bytes()), i));
        }
    }
    points.sort_unstable();
    points
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// FNV-1a with a final avalanche (splitmix64's), so near keys land far apart on the ring.
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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
            ..Backend::default()
        }
    }

    fn anyone() -> HashInput<'static> {
        static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        HashInput {
            headers: HEADERS.get_or_init(HeaderMap::new),
            query: None,
            source: IpAddr::from([192, 0, 2, 1]),
        }
    }

    #[test]
    fn destinations_by_weight_endpoints_by_policy() {
        let d = Destinations::new(
            &[
                backend(
                    80,
                    "ROUND_ROBIN",
                    &[("203.0.113.2:80", 1), ("203.0.113.3:80", 1)],
                ),
                backend(20, "RANDOM", &[("203.0.113.4:80", 1)]),
            ],
            &HttpMetrics::default(),
            &Records::default(),
        );
        let mut counts = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let picked = d.pick(&anyone()).unwrap_or_else(|e| panic!("{e:?}"));
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
        let d = Destinations::new(
            &[backend(
                100,
                "LEAST_REQUEST",
                &[("203.0.113.2:80", 1), ("203.0.113.3:80", 1)],
            )],
            &HttpMetrics::default(),
            &Records::default(),
        );
        let held: Vec<Picked<'_>> = (0..50).filter_map(|_| d.pick(&anyone()).ok()).collect();
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

    fn hashed(table: HashTable, key: HashKey) -> Destinations {
        let mut b = backend(
            100,
            "ROUND_ROBIN",
            &[
                ("203.0.113.2:80", 1),
                ("203.0.113.3:80", 1),
                ("203.0.113.4:80", 2),
            ],
        );
        b.consistent_hash = Some(ConsistentHash { key, table });
        Destinations::new(&[b], &HttpMetrics::default(), &Records::default())
    }

    #[test]
    fn consistent_hash_sticks_to_an_endpoint_and_spreads_by_weight() {
        for table in [
            HashTable::Ring { minimum_size: 1024 },
            HashTable::Maglev { size: 65537 },
        ] {
            let d = hashed(table.clone(), HashKey::Header("x-user".into()));
            let mut counts = std::collections::HashMap::new();
            for user in 0..2000 {
                let mut headers = HeaderMap::new();
                headers.insert("x-user", HeaderValue::from(user));
                let input = HashInput {
                    headers: &headers,
                    ..anyone()
                };
                let first = d.pick(&input).ok().map(|p| p.endpoint.address);
                // The same key, the same endpoint, every time.
                for _ in 0..3 {
                    assert_eq!(d.pick(&input).ok().map(|p| p.endpoint.address), first);
                }
                *counts.entry(first).or_insert(0) += 1;
            }
            let share = |a: &str| f64::from(counts[&a.parse().ok()]) / 2000.0;
            assert!(
                (share("203.0.113.4:80") - 0.5).abs() < 0.08,
                "{table:?} {counts:?}"
            );
            assert!(
                (share("203.0.113.2:80") - 0.25).abs() < 0.08,
                "{table:?} {counts:?}"
            );
        }
    }

    #[test]
    fn hash_keys_from_query_source_and_cookie() {
        let query = hashed(
            HashTable::Ring { minimum_size: 64 },
            HashKey::QueryParameter("user".into()),
        );
        let at = |q: &'static str| {
            query
                .pick(&HashInput {
                    query: Some(q),
                    ..anyone()
                })
                .ok()
                .map(|p| p.endpoint.address)
        };
        assert_eq!(at("a=1&user=jason"), at("user=jason"));
        let source = hashed(HashTable::Maglev { size: 251 }, HashKey::SourceIp);
        let from = |ip: [u8; 4]| {
            source
                .pick(&HashInput {
                    source: IpAddr::from(ip),
                    ..anyone()
                })
                .ok()
                .map(|p| p.endpoint.address)
        };
        assert_eq!(from([192, 0, 2, 7]), from([192, 0, 2, 7]));
        let cookie = hashed(
            HashTable::Ring { minimum_size: 64 },
            HashKey::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl_s: Some(60),
            },
        );
        // No cookie: one is handed out, and bringing it back lands on the same endpoint.
        let first = cookie.pick(&anyone()).unwrap_or_else(|e| panic!("{e:?}"));
        let set = first
            .set_cookie
            .clone()
            .unwrap_or_else(|| panic!("no cookie"));
        let set = set.to_str().unwrap_or_default().to_owned();
        assert!(
            set.starts_with("session=\"") && set.contains("Max-Age=60; Path=/"),
            "{set}"
        );
        let value = set.split(';').next().unwrap_or_default().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {value}")).unwrap_or_else(|e| panic!("{e}")),
        );
        let again = cookie
            .pick(&HashInput {
                headers: &headers,
                ..anyone()
            })
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(again.endpoint.address, first.endpoint.address);
        assert!(again.set_cookie.is_none());
    }

    #[test]
    fn no_endpoint_is_no_healthy_upstream() {
        let d = Destinations::new(
            &[backend(100, "ROUND_ROBIN", &[])],
            &HttpMetrics::default(),
            &Records::default(),
        );
        let no_endpoint = d.pick(&anyone()).err().flatten().map(|d| d.name.as_str());
        assert_eq!(no_endpoint, Some("outbound|80||h100"));
        assert!(matches!(Destinations::default().pick(&anyone()), Err(None)));
    }

    #[test]
    fn outlier_detection_takes_ejected_endpoints_out() {
        let policy = |max_percent: u32, min_health: u32| OutlierPolicy {
            consecutive_5xx: 2,
            consecutive_gateway: 0,
            split_local: false,
            consecutive_local: 5,
            interval_ms: 10_000,
            base_ejection_ms: 60_000,
            max_ejection_percent: max_percent,
            min_health_percent: min_health,
        };
        let endpoints = [
            ("192.0.2.1:80", 1),
            ("192.0.2.2:80", 1),
            ("192.0.2.3:80", 1),
        ];
        let build = |policy: OutlierPolicy, records: &Records| {
            Destinations::new(
                &[Backend {
                    outlier: Some(policy),
                    ..backend(100, "ROUND_ROBIN", &endpoints)
                }],
                &HttpMetrics::default(),
                records,
            )
        };
        let picks = |d: &Destinations| -> Vec<SocketAddr> {
            (0..30)
                .filter_map(|_| d.pick(&anyone()).ok().map(|p| p.endpoint.address))
                .collect()
        };
        let fail = |d: &Destinations, n: usize, status: u16| {
            let destination = &d.items[0];
            destination.report(&destination.endpoints[n], Outcome::Status(status));
        };
        let records = Records::default();
        let d = build(policy(10, 0), &records);
        assert_eq!(picks(&d).len(), 30);
        // One 5xx, a success, one 5xx: no run of two.
        fail(&d, 0, 503);
        fail(&d, 0, 200);
        fail(&d, 0, 500);
        assert!(picks(&d).contains(&d.items[0].endpoints[0].address));
        // The second 5xx in a row ejects it: no request goes there.
        fail(&d, 0, 500);
        let after = picks(&d);
        assert_eq!(after.len(), 30);
        assert!(
            !after.contains(&d.items[0].endpoints[0].address),
            "{after:?}"
        );
        // 10 %: a second endpoint of three is not ejected.
        fail(&d, 1, 500);
        fail(&d, 1, 500);
        assert!(picks(&d).contains(&d.items[0].endpoints[1].address));
        // The record outlives a reload: the rebuilt table still avoids it.
        let reloaded = build(policy(10, 0), &records);
        assert!(!picks(&reloaded).contains(&endpoints_address(0)));

        // 100 %: all three go, and nothing is left (no panic threshold) ...
        let d = build(policy(100, 0), &Records::default());
        for n in 0..3 {
            fail(&d, n, 502);
            fail(&d, n, 502);
        }
        assert!(matches!(d.pick(&anyone()), Err(Some(_))));
        // ... unless below minHealthPercent every endpoint is used again.
        let d = build(policy(100, 50), &Records::default());
        for n in 0..3 {
            fail(&d, n, 502);
            fail(&d, n, 502);
        }
        assert_eq!(picks(&d).len(), 30);
    }

    fn endpoints_address(n: usize) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1 + n as u8], 80))
    }
}
