//! An HTTP listener's routes as a lookup structure built once per config: virtual hosts by
//! domain (exact, then the longest `*.` suffix, then `*`, as Envoy's virtual host selection
//! that Istio's gateways use; the port of the request's authority is ignored), then each
//! virtual host's routes in order, the first whose match applies winning. Regexes are
//! compiled here, once, with RE2's full-match semantics (Envoy's `safe_regex`).
use prometheus_client::metrics::counter::Counter;
use std::{collections::HashMap, sync::Arc};

use regex::Regex;

use super::{
    metrics::{HttpMetrics, RouteMetrics},
    mirror::CompiledMirror,
    query::query_values,
    records::Records,
    retry::RetryPolicy,
    upstream::Destinations,
};
use crate::{
    compile::plan::{HttpAction, HttpRoute, VirtualHost},
    config::model::{HttpMatchRequest, StringMatch},
};

/// The parts of a request routing looks at, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The Host header or `:authority`, as sent (port included).
    pub authority: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// A string matcher of the Istio API.
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// An empty `StringMatch`: the value only has to be present.
    Present,
}

impl StrMatch {
    /// Compiles `m`; a regex the validator accepted always compiles, so `None` only comes
    /// from a config that was never validated.
    pub fn new(m: &StringMatch, ignore_case: bool) -> Option<StrMatch> {
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        Some(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => StrMatch::Exact(fold(e)),
            (_, Some(p), _) => StrMatch::Prefix(fold(p)),
            // Istio's `regex: "*"` (accepted unchecked in withoutHeaders) means present.
            (_, _, Some(r)) if r == "*" => StrMatch::Present,
            (_, _, Some(r)) => StrMatch::Regex(Regex::new(&format!("^(?:{r})$")).ok()?),
            _ => StrMatch::Present,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Present => true,
        }
    }
}

/// One `HTTPMatchRequest`, compiled.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    uri: Option<StrMatch>,
    ignore_uri_case: bool,
    scheme: Option<StrMatch>,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    headers: Vec<(String, StrMatch)>,
    without_headers: Vec<(String, StrMatch)>,
    query: Vec<(String, StrMatch)>,
}

impl RequestMatch {
    pub fn new(m: &HttpMatchRequest) -> Option<RequestMatch> {
        // None: a regex that does not compile; Some(None): no such match.
        let one = |s: &Option<StringMatch>, fold| match s {
            None => Some(None),
            Some(s) => StrMatch::new(s, fold).map(Some),
        };
        let many = |map: &std::collections::BTreeMap<String, StringMatch>| {
            map.iter()
                .map(|(k, v)| Some((k.to_ascii_lowercase(), StrMatch::new(v, false)?)))
                .collect::<Option<Vec<_>>>()
        };
        Some(RequestMatch {
            uri: one(&m.uri, m.ignore_uri_case)?,
            ignore_uri_case: m.ignore_uri_case,
            scheme: one(&m.scheme, false)?,
            method: one(&m.method, false)?,
            authority: one(&m.authority, false)?,
            headers: many(&m.headers)?,
            without_headers: many(&m.without_headers)?,
            query: m
                .query_params
                .iter()
                .map(|(k, v)| Some((k.clone(), StrMatch::new(v, false)?)))
                .collect::<Option<Vec<_>>>()?,
        })
    }

    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        if let Some(uri) = &self.uri {
            let folded;
            let path = if self.ignore_uri_case {
                folded = r.path.to_ascii_lowercase();
                folded.as_str()
            } else {
                r.path
            };
            if !uri.matches(path) {
                return false;
            }
        }
        let simple = [
            (&self.scheme, r.scheme),
            (&self.method, r.method),
            (&self.authority, r.authority),
        ];
        if simple
            .iter()
            .any(|(m, value)| m.as_ref().is_some_and(|m| !m.matches(value)))
        {
            return false;
        }
        let header_matches = |name: &str, m: &StrMatch| {
            r.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        };
        if !self.headers.iter().all(|(n, m)| header_matches(n, m)) {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(n, m)| header_matches(n, m))
        {
            return false;
        }
        self.query
            .iter()
            .all(|(name, m)| query_values(r.query, name).any(|v| m.matches(&v)))
    }

    /// The prefix a `rewrite.uri` replaces: the matched prefix, the whole path for an
    /// exact match, and `/` when the match says nothing of the path (as Istio compiles a
    /// rewrite to Envoy's `prefix_rewrite`).
    pub fn rewrite_prefix<'p>(&self, path: &'p str) -> &'p str {
        match &self.uri {
            Some(StrMatch::Prefix(p)) => &path[..p.len().min(path.len())],
            Some(StrMatch::Exact(_)) | Some(StrMatch::Regex(_)) => path,
            _ => &path[..path.len().min(1)],
        }
    }
}

/// An RE2 rewrite (`\1` for a group, as Envoy's `regex_rewrite`) in the regex crate's
/// syntax (`${1}`, a literal `$` doubled).
pub fn substitution(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len() + 8);
    let mut chars = re2.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// A route with its matches compiled and its destinations ready to pick from.
#[derive(Debug)]
pub struct CompiledRoute {
    pub matches: Vec<RequestMatch>,
    pub route: HttpRoute,
    /// `rewrite.uriRegexRewrite`: the regex and its replacement in the regex crate's syntax.
    pub regex_rewrite: Option<(Regex, String)>,
    pub retry: RetryPolicy,
    pub destinations: Destinations,
    pub mirrors: Vec<CompiledMirror>,
    /// Requests not copied to their mirror (a body too long to hold).
    pub unmirrored: Counter,
    pub metrics: RouteMetrics,
    /// The CORS policy's allowed origins, compiled.
    pub cors_origins: Vec<StrMatch>,
}

/// A virtual host's routes, in order.
#[derive(Debug)]
pub struct CompiledHost {
    pub https_redirect: bool,
    pub routes: Vec<CompiledRoute>,
}

/// Virtual hosts by domain.
#[derive(Debug, Default)]
pub struct HttpTable {
    exact: HashMap<String, usize>,
    /// `.example.com` for `*.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
    pub hosts: Vec<CompiledHost>,
}

impl HttpTable {
    /// The table of the virtual hosts of `listener`, each route with its counters.
    pub fn new(
        virtual_hosts: &[VirtualHost],
        metrics: &HttpMetrics,
        records: &Records,
        listener: &str,
    ) -> HttpTable {
        let mut table = HttpTable::default();
        for (index, vh) in virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    table.any.get_or_insert(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !table.suffixes.iter().any(|(s, _)| s == suffix) {
                        table.suffixes.push((suffix.to_owned(), index));
                    }
                } else {
                    table.exact.entry(domain).or_insert(index);
                }
            }
            let routes = vh
                .routes
                .iter()
                .filter_map(|route| {
                    let matches = route
                        .matches
                        .iter()
                        .map(RequestMatch::new)
                        .collect::<Option<Vec<_>>>()?;
                    let destinations = match &route.action {
                        HttpAction::Route { backends } => {
                            Destinations::new(backends, metrics, records)
                        }
                        _ => Destinations::default(),
                    };
                    let regex_rewrite = match route
                        .rewrite
                        .as_ref()
                        .and_then(|r| r.uri_regex_rewrite.as_ref())
                    {
                        Some(r) => Some((Regex::new(&r.regex).ok()?, substitution(&r.rewrite))),
                        None => None,
                    };
                    let cors_origins = route
                        .cors
                        .iter()
                        .flat_map(|c| &c.allow_origins)
                        .map(|m| match m.exact.as_deref() {
                            Some("*") => Some(StrMatch::Present),
                            _ => StrMatch::new(m, false),
                        })
                        .collect::<Option<Vec<_>>>()?;
                    let mirrors = route
                        .mirrors
                        .iter()
                        .map(|m| CompiledMirror {
                            destinations: Arc::new(Destinations::new(
                                std::slice::from_ref(&m.backend),
                                metrics,
                                records,
                            )),
                            percent: m.percent,
                            in_flight: Arc::default(),
                        })
                        .collect();
                    let name = route.origin.to_string();
                    Some(CompiledRoute {
                        unmirrored: metrics.mirror_skipped(listener, &name),
                        mirrors,
                        cors_origins,
                        matches,
                        retry: RetryPolicy::of(route.retries.as_ref()),
                        route: route.clone(),
                        regex_rewrite,
                        destinations,
                        metrics: metrics.route(listener, &route.origin.to_string()),
                    })
                })
                .collect();
            table.hosts.push(CompiledHost {
                https_redirect: vh.https_redirect,
                routes,
            });
        }
        // Longest suffix first; stable, so the first declared wins among equals.
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
    }

    /// The virtual host for an authority (`host` or `host:port`).
    pub fn host(&self, authority: &str) -> Option<&CompiledHost> {
        let host = strip_port(authority).to_ascii_lowercase();
        let index = self
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        self.hosts.get(index)
    }
}

impl CompiledHost {
    /// The first route one of whose matches applies (a route without matches takes every
    /// request), with the match that applied.
    pub fn route(
        &self,
        request: &RequestView<'_>,
    ) -> Option<(&CompiledRoute, Option<&RequestMatch>)> {
        self.routes.iter().find_map(|route| {
            if route.matches.is_empty() {
                return Some((route, None));
            }
            route
                .matches
                .iter()
                .find(|m| m.matches(request))
                .map(|m| (route, Some(m)))
        })
    }
}

/// `host` of `host:port` (and of `[v6]:port`).
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    #[test]
    fn re2_rewrites_in_the_regex_crate_syntax() {
        for (re2, ours) in [
            ("\\2/instance/\\1", "${2}/instance/${1}"),
            ("/cost$1", "/cost$$1"),
            ("/a\\\\b", "/a\\b"),
            ("/plain", "/plain"),
        ] {
            assert_eq!(substitution(re2), ours, "{re2}");
        }
        let regex = Regex::new("^/service/([^/]+)(/.*)$").unwrap_or_else(|e| panic!("{e}"));
        let replaced = regex.replace_all(
            "/service/foo/v1/api",
            substitution("\\2/instance/\\1").as_str(),
        );
        assert_eq!(replaced, "/v1/api/instance/foo");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn percent_encoded(text: &str) -> String {
            text.bytes().map(|b| format!("%{b:02X}")).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Whatever a client sends as path, query, authority and headers, matching and
            /// virtual host lookup answer without panicking.
            #[test]
            fn any_request_is_matched_without_panic(
                path in ".{0,64}",
                query in proptest::option::of(".{0,64}"),
                authority in ".{0,40}",
                value in "[ -~]{0,40}",
            ) {
                let m = request_match("{uri: {regex: '/a.*'}, queryParams: {q: {prefix: x}}, headers: {x-a: {exact: b}}, withoutHeaders: {x-b: {}}}");
                let mut headers = HeaderMap::new();
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    headers.insert("x-a", v);
                }
                let _ = m.matches(&RequestView {
                    path: &path,
                    query: query.as_deref(),
                    method: "GET",
                    scheme: "http",
                    authority: &authority,
                    headers: &headers,
                });
                let table = HttpTable::default();
                prop_assert!(table.host(&authority).is_none());
                let _ = strip_port(&authority);
                let _ = query_values(query.as_deref(), "q").count();
            }

            /// A query parameter percent-encoded by the client is matched on its decoded
            /// value.
            #[test]
            fn query_parameters_decode(name in "p[a-z]{0,8}", value in ".{0,24}") {
                let query = format!("a=1&{}={}", percent_encoded(&name), percent_encoded(&value));
                let found: Vec<String> = query_values(Some(&query), &name).collect();
                prop_assert_eq!(found, vec![value]);
            }
        }
    }

    fn request_match(yaml: &str) -> RequestMatch {
        let m: HttpMatchRequest =
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        RequestMatch::new(&m).unwrap_or_else(|| panic!("{yaml} does not compile"))
    }

    /// `path?query` with `name: value` headers, GET over http to example.com.
    fn matches(m: &RequestMatch, target: &str, headers: &[(&str, &str)]) -> bool {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                v.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        m.matches(&RequestView {
            path,
            query,
            method: "GET",
            scheme: "http",
            authority: "example.com",
            headers: &map,
        })
    }

    #[test]
    fn request_matches_as_envoy_applies_them() {
        // (match, path?query, headers, matches)
        type Case = (
            &'static str,
            &'static str,
            &'static [(&'static str, &'static str)],
            bool,
        );
        let cases: &[Case] = &[
            ("uri: {exact: /a}", "/a", &[], true),
            ("uri: {exact: /a}", "/a/", &[], false),
            ("uri: {exact: /a}", "/a?x=1", &[], true),
            ("uri: {prefix: /api}", "/apiary", &[], true),
            ("uri: {prefix: /api}", "/ap", &[], false),
            // Regexes match the whole path, not a part of it.
            ("uri: {regex: '/v[0-9]+'}", "/v12", &[], true),
            ("uri: {regex: '/v[0-9]+'}", "/v12/x", &[], false),
            (
                "{uri: {prefix: /API}, ignoreUriCase: true}",
                "/api/x",
                &[],
                true,
            ),
            ("{uri: {exact: /A}, ignoreUriCase: true}", "/a", &[], true),
            ("uri: {prefix: /API}", "/api/x", &[], false),
            ("method: {exact: GET}", "/", &[], true),
            ("method: {exact: POST}", "/", &[], false),
            ("scheme: {exact: https}", "/", &[], false),
            ("authority: {regex: '.*\\.com'}", "/", &[], true),
            // Header names are case-insensitive; any of several values may match.
            (
                "headers: {X-User: {exact: jason}}",
                "/",
                &[("x-user", "jason")],
                true,
            ),
            (
                "headers: {x-user: {exact: jason}}",
                "/",
                &[("x-user", "a"), ("x-user", "jason")],
                true,
            ),
            ("headers: {x-user: {exact: jason}}", "/", &[], false),
            ("headers: {x-user: {}}", "/", &[("x-user", "")], true),
            (
                "headers: {x-user: {prefix: ja}}",
                "/",
                &[("x-user", "jason")],
                true,
            ),
            (
                "withoutHeaders: {x-debug: {}}",
                "/",
                &[("x-debug", "1")],
                false,
            ),
            ("withoutHeaders: {x-debug: {}}", "/", &[], true),
            (
                "withoutHeaders: {x-debug: {exact: '1'}}",
                "/",
                &[("x-debug", "2")],
                true,
            ),
            // Query parameters are decoded before they are compared.
            ("queryParams: {q: {exact: a b}}", "/?q=a+b", &[], true),
            ("queryParams: {q: {exact: a/b}}", "/?x=1&q=a%2Fb", &[], true),
            ("queryParams: {q: {exact: a}}", "/?qq=a", &[], false),
            ("queryParams: {q: {regex: '[0-9]+'}}", "/?q=42", &[], true),
            ("queryParams: {q: {exact: a}}", "/", &[], false),
            // Every field of one match must hold.
            (
                "{uri: {prefix: /}, headers: {a: {exact: b}}}",
                "/x",
                &[],
                false,
            ),
        ];
        for (yaml, target, headers, want) in cases {
            assert_eq!(
                matches(&request_match(yaml), target, headers),
                *want,
                "{yaml} on {target} {headers:?}"
            );
        }
    }

    #[test]
    fn rewrite_replaces_what_the_match_took() {
        let cases = [
            ("uri: {prefix: /api/v1}", "/api/v1/items", "/api/v1"),
            ("uri: {exact: /login}", "/login", "/login"),
            ("method: {exact: GET}", "/x/y", "/"),
        ];
        for (yaml, path, prefix) in cases {
            assert_eq!(request_match(yaml).rewrite_prefix(path), prefix, "{yaml}");
        }
    }

    fn host(domains: &[&str]) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            https_redirect: false,
            routes: Vec::new(),
        }
    }

    #[test]
    fn virtual_host_by_exact_then_longest_wildcard_then_any() {
        let hosts = [
            host(&["bookinfo.example.com"]),
            host(&["*.example.com"]),
            host(&["*.api.example.com"]),
            host(&["*"]),
        ];
        let table = HttpTable::new(&hosts, &HttpMetrics::default(), &Records::default(), "test");
        let index = |authority: &str| {
            table
                .host(authority)
                .map(|h| std::ptr::from_ref(h) as usize - table.hosts.as_ptr() as usize)
                .map(|offset| offset / std::mem::size_of::<CompiledHost>())
        };
        let cases = [
            ("bookinfo.example.com", 0),
            ("BookInfo.Example.com:8080", 0),
            ("x.example.com", 1),
            ("a.b.example.com", 1),
            ("v1.api.example.com", 2),
            ("api.example.com", 1),
            ("example.com", 3),
            ("other.test", 3),
            ("[2001:db8::1]:80", 3),
        ];
        for (authority, want) in cases {
            assert_eq!(index(authority), Some(want), "{authority}");
        }
        let without_any = HttpTable::new(
            &hosts[..1],
            &HttpMetrics::default(),
            &Records::default(),
            "test",
        );
        assert!(without_any.host("other.test").is_none());
    }

    #[test]
    fn port_is_stripped_from_authorities() {
        for (authority, host) in [
            ("a.test", "a.test"),
            ("a.test:8080", "a.test"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("a.test:x", "a.test:x"),
        ] {
            assert_eq!(strip_port(authority), host);
        }
    }
}
