//! Resolving the DNS names that ServiceEntries with `resolution: DNS` name, for compile.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use crate::compile::DnsAnswers;

/// How long one name may take to resolve before it counts as unresolved.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves every name with the system resolver, concurrently. Names that fail are absent
/// from the answers (compile reports them).
pub async fn resolve(names: &[String]) -> DnsAnswers {
    let lookups = names.iter().map(|name| async move {
        let found =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0))).await;
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
        (name.clone(), ips)
    });
    let addresses: BTreeMap<String, Vec<IpAddr>> =
        futures_join_all(lookups).await.into_iter().collect();
    DnsAnswers {
        looked_up: true,
        addresses,
    }
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(future.await);
    }
    set
}
