//! Resolving the DNS names that ServiceEntries with `resolution: DNS` name, for compile,
//! with the records' TTLs so the daemon refreshes each answer when it expires.
//!
//! As Envoy's strict DNS clusters: a lookup that fails (timeout, SERVFAIL, no server) keeps
//! the name's last good answer and is tried again soon; only an answer that the name has no
//! addresses (NXDOMAIN, or NOERROR with no records) empties it. Addresses a gateway must
//! never be sent to by DNS (loopback, link-local, unspecified, multicast, broadcast) are
//! refused with a warning and counted.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::proto::{ProtoErrorKind, op::ResponseCode};
use hickory_resolver::{ResolveError, TokioResolver, name_server::TokioConnectionProvider};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::compile::DnsAnswers;

/// How long one name may take to resolve before it counts as unresolved.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The soonest an answer is refreshed again, whatever its TTL (TTL 0 would spin).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// When a failed lookup is tried again (its last good answer serving meanwhile).
pub const FAILURE_RETRY: Duration = Duration::from_secs(5);

/// The system's resolver (`/etc/resolv.conf`, `/etc/hosts`), shared by every lookup.
#[derive(Clone)]
pub struct Resolver {
    inner: Option<Arc<TokioResolver>>,
    metrics: Arc<DnsMetrics>,
}

/// Answers and when the first of them expires.
pub struct Resolved {
    pub answers: DnsAnswers,
    /// Time until the shortest-lived answer expires (or a failed lookup is due again);
    /// `None` when nothing needs refreshing.
    pub expires_in: Option<Duration>,
}

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Usable addresses (possibly none left after refusing some), valid until the instant.
    Addresses(Vec<IpAddr>, Instant),
    /// The name's servers say it has no addresses: the name is emptied.
    NoAddresses,
    /// No answer about the name (timeout, SERVFAIL, REFUSED, no server): its last good
    /// answer stands.
    Failed,
}

/// `sluice_dns_lookups_total{result}` and `sluice_dns_refused_addresses_total`.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    lookups: Family<LookupLabels, Counter>,
    refused: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: LookupResult,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum LookupResult {
    addresses,
    no_addresses,
    failed,
}

impl DnsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let dns = registry.sub_registry_with_prefix("dns");
        dns.register(
            "lookups",
            "DNS lookups of ServiceEntry names, by result: addresses, no_addresses (NXDOMAIN or \
             no records: the name is emptied), failed (timeout, SERVFAIL, no server: the last \
             good answer is kept)",
            self.lookups.clone(),
        );
        dns.register(
            "refused_addresses",
            "Addresses in DNS answers that were not used: loopback, link-local, unspecified, \
             multicast or broadcast",
            self.refused.clone(),
        );
    }

    fn count(&self, result: LookupResult) {
        self.lookups.get_or_create(&LookupLabels { result }).inc();
    }
}

impl Resolver {
    /// Reads the system configuration. Without one, lookups fail (and are reported) rather
    /// than the daemon failing to start: a config may need no DNS at all.
    pub fn from_system(metrics: Arc<DnsMetrics>) -> Resolver {
        let built =
            TokioResolver::builder(TokioConnectionProvider::default()).map(|mut builder| {
                builder.options_mut().timeout = LOOKUP_TIMEOUT;
                builder.build()
            });
        let inner = match built {
            Ok(resolver) => Some(Arc::new(resolver)),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: DNS names will not resolve");
                None
            }
        };
        Resolver { inner, metrics }
    }

    /// Resolves every name concurrently. A name whose lookup fails keeps its address in
    /// `previous` (and is due again after [`FAILURE_RETRY`]); names without any answer are
    /// absent from the answers (compile reports them).
    pub async fn resolve(&self, names: &[String], previous: &DnsAnswers) -> Resolved {
        let mut lookups = tokio::task::JoinSet::new();
        for name in names.iter().cloned() {
            let resolver = self.inner.clone();
            lookups.spawn(async move {
                let found = match resolver {
                    Some(resolver) => lookup(&resolver, &name).await,
                    None => Lookup::Failed,
                };
                (name, found)
            });
        }
        let mut found = Vec::new();
        while let Some(done) = lookups.join_next().await {
            if let Ok(one) = done {
                found.push(one);
            }
        }
        merge_with(found, previous, Instant::now(), &self.metrics)
    }
}

/// Looks `name` up and sorts the outcome: addresses (refused ones dropped), the name's
/// servers saying it has none, or no answer at all.
async fn lookup(resolver: &TokioResolver, name: &str) -> Lookup {
    // A trailing dot makes the name absolute: no search-domain guesses.
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(fqdn)).await {
        Ok(Ok(lookup)) => {
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort();
            ips.dedup();
            Lookup::Addresses(ips, lookup.valid_until())
        }
        Ok(Err(e)) if says_no_addresses(&e) => {
            tracing::warn!(%name, error = %e, "DNS: the name has no addresses");
            Lookup::NoAddresses
        }
        Ok(Err(e)) => {
            tracing::warn!(%name, error = %e, "DNS lookup failed; the last answer stands");
            Lookup::Failed
        }
        Err(_) => {
            tracing::warn!(%name, timeout = ?LOOKUP_TIMEOUT, "DNS lookup timed out; the last answer stands");
            Lookup::Failed
        }
    }
}

/// Whether an error is an answer that the name has no addresses (NXDOMAIN, or NOERROR
/// without records), as opposed to no answer (SERVFAIL, REFUSED, timeouts, I/O).
fn says_no_addresses(error: &ResolveError) -> bool {
    error.proto().is_some_and(|proto| {
        matches!(
            proto.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                ..
            }
        )
    })
}

/// Whether a gateway may be sent to `ip` by a DNS answer.
pub fn usable(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_unspecified()
                || v6.is_multicast())
        }
    }
}

/// Folds lookups into answers: addresses (usable ones) replace a name's answer, "no
/// addresses" removes it, a failure keeps `previous`'s. Pure, for the table tests.
fn merge_with(
    found: Vec<(String, Lookup)>,
    previous: &DnsAnswers,
    now: Instant,
    metrics: &DnsMetrics,
) -> Resolved {
    let mut addresses = BTreeMap::new();
    let mut due: Option<Instant> = None;
    let mut soonest = |at: Instant| due = Some(due.map_or(at, |d| d.min(at)));
    for (name, lookup) in found {
        match lookup {
            Lookup::Addresses(ips, valid_until) => {
                let (kept, refused): (Vec<IpAddr>, Vec<IpAddr>) =
                    ips.into_iter().partition(|ip| usable(*ip));
                if !refused.is_empty() {
                    tracing::warn!(%name, ?refused, "DNS answer holds addresses a gateway does not forward to; they are not used");
                }
                metrics.count(LookupResult::addresses);
                metrics.refused.inc_by(refused.len() as u64);
                if !kept.is_empty() {
                    addresses.insert(name, kept);
                }
                soonest(valid_until);
            }
            Lookup::NoAddresses => {
                metrics.count(LookupResult::no_addresses);
                soonest(now + FAILURE_RETRY);
            }
            Lookup::Failed => {
                metrics.count(LookupResult::failed);
                if let Some(last) = previous.addresses.get(&name) {
                    addresses.insert(name, last.clone());
                }
                soonest(now + FAILURE_RETRY);
            }
        }
    }
    Resolved {
        answers: DnsAnswers {
            looked_up: true,
            addresses,
        },
        expires_in: due.map(|d| d.saturating_duration_since(now).max(MIN_REFRESH)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn failures_keep_the_last_answer_and_no_addresses_empties_it() {
        let now = Instant::now();
        let previous = DnsAnswers {
            looked_up: true,
            addresses: BTreeMap::from([
                ("kept.example".to_owned(), vec![ip("203.0.113.2")]),
                ("gone.example".to_owned(), vec![ip("203.0.113.3")]),
                ("moved.example".to_owned(), vec![ip("203.0.113.4")]),
            ]),
        };
        let metrics = DnsMetrics::default();
        let resolved = merge_with(
            vec![
                ("kept.example".into(), Lookup::Failed),
                ("gone.example".into(), Lookup::NoAddresses),
                (
                    "moved.example".into(),
                    Lookup::Addresses(vec![ip("203.0.113.5")], now + Duration::from_secs(60)),
                ),
                ("never.example".into(), Lookup::Failed),
            ],
            &previous,
            now,
            &metrics,
        );
        assert_eq!(
            resolved.answers.addresses,
            BTreeMap::from([
                ("kept.example".to_owned(), vec![ip("203.0.113.2")]),
                ("moved.example".to_owned(), vec![ip("203.0.113.5")]),
            ])
        );
        // The failures are due again soon, not at the good answer's TTL.
        assert_eq!(resolved.expires_in, Some(FAILURE_RETRY));
        let count = |result| {
            metrics
                .lookups
                .get_or_create(&LookupLabels { result })
                .get()
        };
        assert_eq!(count(LookupResult::failed), 2);
        assert_eq!(count(LookupResult::no_addresses), 1);
        assert_eq!(count(LookupResult::addresses), 1);
    }

    #[test]
    fn answers_a_gateway_must_not_follow_are_refused() {
        let now = Instant::now();
        let metrics = DnsMetrics::default();
        let answer = [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::",
            "ff02::1",
            "::ffff:127.0.0.1",
            "203.0.113.7",
            "2001:db8::7",
        ]
        .map(ip)
        .to_vec();
        let resolved = merge_with(
            vec![
                ("mixed.example".into(), Lookup::Addresses(answer, now)),
                (
                    "local.example".into(),
                    Lookup::Addresses(vec![ip("127.0.0.1")], now),
                ),
            ],
            &DnsAnswers::default(),
            now,
            &metrics,
        );
        assert_eq!(
            resolved.answers.addresses,
            BTreeMap::from([(
                "mixed.example".to_owned(),
                vec![ip("203.0.113.7"), ip("2001:db8::7")]
            )])
        );
        assert_eq!(metrics.refused.get(), 11);
        assert_eq!(resolved.expires_in, Some(MIN_REFRESH));
    }
}
