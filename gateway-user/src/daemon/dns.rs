//! Resolving the DNS names that ServiceEntries with `resolution: DNS` name, for compile,
//! with the records' TTLs so the daemon refreshes each answer when it expires.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{TokioResolver, name_server::TokioConnectionProvider};

use crate::compile::DnsAnswers;

/// How long one name may take to resolve before it counts as unresolved.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The soonest an answer is refreshed again, whatever its TTL (TTL 0 would spin).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The system's resolver (`/etc/resolv.conf`, `/etc/hosts`), shared by every lookup.
#[derive(Clone)]
pub struct Resolver {
    inner: Option<Arc<TokioResolver>>,
}

/// Answers and when the first of them expires.
pub struct Resolved {
    pub answers: DnsAnswers,
    /// Time until the shortest-lived answer expires; `None` when nothing was resolved.
    pub expires_in: Option<Duration>,
}

impl Resolver {
    /// Reads the system configuration. Without one, lookups fail (and are reported) rather
    /// than the daemon failing to start: a config may need no DNS at all.
    pub fn from_system() -> Resolver {
        let built =
            TokioResolver::builder(TokioConnectionProvider::default()).map(|mut builder| {
                builder.options_mut().timeout = LOOKUP_TIMEOUT;
                builder.build()
            });
        match built {
            Ok(resolver) => Resolver {
                inner: Some(Arc::new(resolver)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: DNS names will not resolve");
                Resolver { inner: None }
            }
        }
    }

    /// Resolves every name concurrently. Names that fail are absent from the answers
    /// (compile reports them).
    pub async fn resolve(&self, names: &[String]) -> Resolved {
        let mut lookups = tokio::task::JoinSet::new();
        for name in names.iter().cloned() {
            let Some(resolver) = self.inner.clone() else {
                continue;
            };
            lookups.spawn(async move {
                // A trailing dot makes the name absolute: no search-domain guesses.
                let fqdn = if name.ends_with('.') {
                    name.clone()
                } else {
                    format!("{name}.")
                };
                let found = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(fqdn)).await;
                match found {
                    Ok(Ok(lookup)) => {
                        let mut ips: Vec<IpAddr> = lookup.iter().collect();
                        ips.sort();
                        ips.dedup();
                        Some((name, ips, lookup.valid_until()))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%name, error = %e, "DNS lookup failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(%name, timeout = ?LOOKUP_TIMEOUT, "DNS lookup timed out");
                        None
                    }
                }
            });
        }
        let mut addresses = BTreeMap::new();
        let mut first_expiry: Option<Instant> = None;
        while let Some(done) = lookups.join_next().await {
            if let Ok(Some((name, ips, valid_until))) = done
                && !ips.is_empty()
            {
                addresses.insert(name, ips);
                first_expiry = Some(first_expiry.map_or(valid_until, |e| e.min(valid_until)));
            }
        }
        let expires_in =
            first_expiry.map(|e| e.saturating_duration_since(Instant::now()).max(MIN_REFRESH));
        Resolved {
            answers: DnsAnswers {
                looked_up: true,
                addresses,
            },
            expires_in,
        }
    }
}
