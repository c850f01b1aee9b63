//! An HTTPS listener's servers by the names they serve: the rustls configuration for a
//! ClientHello's SNI (exact name, then the longest wildcard suffix, then a `*` server), as
//! Envoy chooses a filter chain by server name: a name no server takes, or no SNI where no
//! server has `*`, is refused.
use std::{collections::HashMap, sync::Arc};

use rustls::ServerConfig;

use super::certificates::Termination;

/// The servers of one HTTPS listener by the names they serve.
#[derive(Default)]
pub struct ListenerTls {
    exact: HashMap<String, Arc<Termination>>,
    /// `.example.com` for `*.example.com`, longest first.
    suffixes: Vec<(String, Arc<Termination>)>,
    any: Option<Arc<Termination>>,
}

impl ListenerTls {
    /// `servers` in Gateway order, each with the hosts it serves.
    pub fn new(servers: Vec<(Vec<String>, Arc<Termination>)>) -> ListenerTls {
        let mut tls = ListenerTls::default();
        for (hosts, server) in servers {
            for host in hosts {
                let host = crate::config::names::split_namespace(&host)
                    .1
                    .to_ascii_lowercase();
                if host == "*" {
                    tls.any.get_or_insert_with(|| server.clone());
                } else if let Some(suffix) = host.strip_prefix('*') {
                    if !tls.suffixes.iter().any(|(s, _)| s == suffix) {
                        tls.suffixes.push((suffix.to_owned(), server.clone()));
                    }
                } else {
                    tls.exact.entry(host).or_insert_with(|| server.clone());
                }
            }
        }
        tls.suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        tls
    }

    /// The configuration for a ClientHello naming `server_name`.
    pub fn config(&self, server_name: Option<&str>) -> Option<Arc<ServerConfig>> {
        let chosen = server_name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
                    .map(|(_, t)| t)
            })
        });
        chosen.or(self.any.as_ref()).map(|t| t.config())
    }
}
