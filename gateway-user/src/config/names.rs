//! Host names, wildcards and Istio's enumerations: small pure functions shared by validation,
//! analysis and compilation.

/// Protocols a Gateway server port may declare (compared case-insensitively).
pub const SERVER_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL",
];

/// DestinationRule `tls.mode` (ClientTLSSettings).
pub const CLIENT_TLS_MODES: &[&str] = &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"];

/// TLS modes of a Gateway server.
pub const TLS_MODES: &[&str] = &[
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
];

pub const TLS_VERSIONS: &[&str] = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];

/// TLS 1.2 cipher suites (Envoy/BoringSSL names) that rustls implements.
pub const RUSTLS_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// Cipher suites Envoy accepts that rustls deliberately does not implement (CBC, 3DES,
/// static RSA key exchange).
pub const REFUSED_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

pub const SERVICE_ENTRY_RESOLUTIONS: &[&str] = &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"];
pub const SERVICE_ENTRY_LOCATIONS: &[&str] = &["MESH_EXTERNAL", "MESH_INTERNAL"];
pub const LOAD_BALANCERS: &[&str] = &[
    "UNSPECIFIED",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
    "LEAST_CONN",
];
/// `connectionPool.http.h2UpgradePolicy` values.
pub const H2_UPGRADE_POLICIES: &[&str] = &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"];
/// Protocols a ServiceEntry port may declare.
pub const SERVICE_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL", "UDP",
];
/// Envoy retry policies for `retries.retryOn` (besides HTTP status codes).
/// gRPC status codes by name, in code order (the index is the code), as `grpcStatus` names
/// them.
pub const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// `word` in `list`, ignoring ASCII case; returns the canonical spelling.
pub fn one_of(word: &str, list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|c| c.eq_ignore_ascii_case(word))
}

/// Whether `name` is a valid HTTP header name (any case: HTTP/2 lowercases them).
pub fn is_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_ok()
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends. Istio accepts
/// upper case in hosts, so it is allowed here too.
pub fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Why `host` is not a valid (optionally wildcard) DNS name, or `None` if it is. A wildcard
/// is only allowed as the whole left-most label (`*.example.com`) or alone (`*`).
pub fn wildcard_host_problem(host: &str) -> Option<String> {
    if host == "*" {
        return None;
    }
    if host.is_empty() {
        return Some("empty host".into());
    }
    if host.len() > 255 {
        return Some(format!("host {host:?} is longer than 255 characters"));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') {
        return Some(format!(
            "host {host:?}: a wildcard must be the whole left-most label (`*.example.com`); partial wildcards are not allowed"
        ));
    }
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    rest.split('.')
        .find(|label| !is_dns_label(label))
        .map(|label| format!("host {host:?}: {label:?} is not a valid DNS label"))
}

/// Whether `host` (a concrete or wildcard name) is matched by `pattern` (a Gateway or
/// VirtualService host, possibly `*` or `*.suffix`). Case-insensitive.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.example.com` matches `a.example.com` and `*.a.example.com`, not `example.com`.
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => false,
    }
}

/// Whether two host patterns can match a common name (either covers the other).
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// Splits a Gateway server host into its namespace part (`*`, `.`, a namespace, or none)
/// and DNS name.
pub fn split_namespace(host: &str) -> (Option<&str>, &str) {
    match host.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, host),
    }
}

/// Parses a duration as Istio reads one (Go's `time.ParseDuration`): one or more decimal
/// numbers each with a unit (`h`, `m`, `s`, `ms`, `us`/`µs`, `ns`), as `1.5s`, `300ms`,
/// `1m30s`. `None` for anything else, a negative value, or one past `u64` seconds.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number.parse().ok()?;
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        let part = Duration::try_from_secs_f64(value * scale).ok()?;
        total = total.checked_add(part)?;
        rest = tail;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_only_as_whole_left_most_label() {
        for ok in [
            "*",
            "example.com",
            "*.example.com",
            "a-b.example.com",
            "reviews",
            "uk.bookinfo.com.",
        ] {
            assert_eq!(wildcard_host_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "*example.com",
            "foo.*.com",
            "a*.example.com",
            "-a.example.com",
            "a..com",
            "exa_mple.com",
        ] {
            assert!(wildcard_host_problem(bad).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn host_matching_follows_istio() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.bookinfo.com", "uk.bookinfo.com"));
        assert!(host_matches("*.bookinfo.com", "*.uk.bookinfo.com"));
        assert!(!host_matches("*.bookinfo.com", "bookinfo.com"));
        assert!(host_matches("UK.bookinfo.com", "uk.BOOKINFO.com"));
        assert!(!host_matches("uk.bookinfo.com", "eu.bookinfo.com"));
        assert!(hosts_overlap("uk.bookinfo.com", "*.bookinfo.com"));
        assert!(!hosts_overlap("a.com", "b.com"));
    }

    #[test]
    fn durations_parse_like_protobuf() {
        assert_eq!(
            parse_duration("1.5s"),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("300ms"),
            Some(std::time::Duration::from_millis(300))
        );
        assert_eq!(
            parse_duration("2m"),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("1m30s"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("1h0m0.5s"),
            Some(std::time::Duration::from_millis(3_600_500))
        );
        // Past what a Duration holds: refused, never a panic.
        for bad in [
            "",
            "5",
            "s",
            "-1s",
            "1d",
            "abc",
            "1.2.3s",
            "100000000000000000000s",
            "1e400h",
            "s1",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
