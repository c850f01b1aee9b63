//! An SNI listener's routes as a lookup table, built once per config. The most specific
//! name wins, as in Envoy's filter-chain match that Istio's gateways use: an exact name,
//! then the wildcard with the longest suffix (`*.example.com` covers `a.example.com` and
//! `a.b.example.com`, not `example.com`), then a catch-all `*`, which also takes
//! ClientHellos without a server name. The first route that declares a name keeps it.
use std::collections::HashMap;

use crate::compile::plan::SniRoute;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniTable {
    /// Lower-case name -> route index.
    exact: HashMap<String, usize>,
    /// Lower-case suffix with its leading dot (`.example.com` for `*.example.com`) -> route.
    wildcard: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl SniTable {
    pub fn new(routes: &[SniRoute]) -> SniTable {
        let mut table = SniTable::default();
        for (index, route) in routes.iter().enumerate() {
            for host in &route.sni_hosts {
                let host = host.to_ascii_lowercase();
                if host == "*" {
                    table.catch_all.get_or_insert(index);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    table.wildcard.entry(suffix.to_owned()).or_insert(index);
                } else {
                    table.exact.entry(host).or_insert(index);
                }
            }
        }
        table
    }

    /// The route for a ClientHello's server name (lower case, as the parser gives it).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<usize> {
        let Some(name) = server_name else {
            return self.catch_all;
        };
        if let Some(index) = self.exact.get(name) {
            return Some(*index);
        }
        // Longest suffix first: strip one label at a time.
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if let Some(index) = self.wildcard.get(suffix) {
                return Some(*index);
            }
            rest = &rest[dot + 1..];
        }
        self.catch_all
    }

    /// Whether every name reaches one route (a catch-all and nothing else).
    pub fn is_catch_all_only(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.catch_all.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::plan::{Place, Placement, RouteOrigin},
        config::ObjectRef,
    };

    fn routes(hosts: &[&[&str]]) -> Vec<SniRoute> {
        hosts
            .iter()
            .map(|names| SniRoute {
                sni_hosts: names.iter().map(|s| s.to_string()).collect(),
                origin: RouteOrigin {
                    object: ObjectRef {
                        kind: "VirtualService".into(),
                        namespace: "default".into(),
                        name: "vs".into(),
                    },
                    path: "spec.tls[0]".into(),
                },
                runs: Placement {
                    place: Place::KernelSplice,
                    why: String::new(),
                },
                backends: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_most_specific_name_wins() {
        let table = SniTable::new(&routes(&[
            &["*.example.com"],
            &["a.example.com", "B.Example.ORG"],
            &["*.b.example.com"],
            &["*"],
        ]));
        let cases = [
            (Some("a.example.com"), Some(1)),
            (Some("b.example.org"), Some(1)),
            (Some("x.example.com"), Some(0)),
            (Some("x.y.example.com"), Some(0)),
            (Some("x.b.example.com"), Some(2)),
            (Some("b.example.com"), Some(0)),
            (Some("example.com"), Some(3)),
            (Some("other.net"), Some(3)),
            (None, Some(3)),
        ];
        for (name, want) in cases {
            assert_eq!(table.lookup(name), want, "{name:?}");
        }
        assert!(!table.is_catch_all_only());
    }

    #[test]
    fn without_a_catch_all_unknown_names_and_no_name_have_no_route() {
        let table = SniTable::new(&routes(&[&["a.example.com"], &["*.example.com"]]));
        assert_eq!(table.lookup(Some("a.example.net")), None);
        assert_eq!(table.lookup(Some("example.com")), None);
        assert_eq!(table.lookup(None), None);
        assert_eq!(table.lookup(Some(".example.com")), Some(1));
    }

    #[test]
    fn the_first_route_declaring_a_name_keeps_it() {
        let table = SniTable::new(&routes(&[&["a.example.com"], &["a.example.com", "*"]]));
        assert_eq!(table.lookup(Some("a.example.com")), Some(0));
        assert_eq!(table.lookup(Some("z.example.com")), Some(1));
        let only = SniTable::new(&routes(&[&["*"], &["*"]]));
        assert!(only.is_catch_all_only());
        assert_eq!(only.lookup(Some("x")), Some(0));
    }
}
