//! Resolving the DNS names that ServiceEntries with `resolution: DNS` name, for compile.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use crate::compile::DnsAnswers;

/// How long one name may take to resolve before it counts as unresolved.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves every name with the system resolver, concurrently. Names that fail are absent
/// from the answers (compile reports them).
pub async fn resolve(names: &[String]) -> DnsAnswers {
    let mut lookups = tokio::task::JoinSet::new();
    for name in names.iter().cloned() {
        lookups.spawn(async move {
            let lookup = tokio::net::lookup_host(format!("{name}:0"));
            let found = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await;
            let mut ips: Vec<IpAddr> = match found {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    tracing::warn!(%name, error = %e, "DNS lookup failed");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(%name, timeout = ?LOOKUP_TIMEOUT, "DNS lookup timed out");
                    Vec::new()
                }
            };
            ips.sort();
            ips.dedup();
            (name, ips)
        });
    }
    let mut addresses = BTreeMap::new();
    while let Some(done) = lookups.join_next().await {
        if let Ok((name, ips)) = done
            && !ips.is_empty()
        {
            addresses.insert(name, ips);
        }
    }
    DnsAnswers {
        looked_up: true,
        addresses,
    }
}
