//! Per-object validation, after Istio's own rules (`istioctl validate`): everything here is
//! an error, found from one object alone. Cross-object checks live in `analyze`.
use std::collections::HashMap;

use super::{
    diagnostic::{Diagnostic, Severity, codes},
    load::{Object, Spec},
    model::{
        DestinationRuleSpec, GatewaySpec, HttpRoute, Server, ServerTlsSettings, ServiceEntrySpec,
        StringMatch, TrafficPolicy, VirtualServiceSpec, Weighted,
    },
    names::{self, one_of},
};

/// Every error of `object` on its own.
pub fn validate(object: &Object) -> Vec<Diagnostic> {
    let mut check = Check {
        object,
        out: Vec::new(),
    };
    match &object.spec {
        Spec::Gateway(spec) => gateway(&mut check, spec),
        Spec::VirtualService(spec) => virtual_service(&mut check, spec),
        Spec::ServiceEntry(spec) => service_entry(&mut check, spec),
        Spec::DestinationRule(spec) => destination_rule(&mut check, spec),
    }
    check.out
}

struct Check<'a> {
    object: &'a Object,
    out: Vec<Diagnostic>,
}

impl Check<'_> {
    fn info(&mut self, path: &str, message: impl Into<String>) {
        let diagnostic =
            self.object
                .diagnostic(Severity::Info, codes::MESH_ONLY, path, message.into());
        self.out.push(diagnostic);
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        let diagnostic =
            self.object
                .diagnostic(Severity::Error, codes::SCHEMA, path, message.into());
        self.out.push(diagnostic);
    }

    fn one_of(
        &mut self,
        path: &str,
        what: &str,
        value: &str,
        list: &[&'static str],
    ) -> Option<&'static str> {
        let found = one_of(value, list);
        if found.is_none() {
            self.error(
                path,
                format!(
                    "unknown {what} {value:?}; expected one of {}",
                    list.join(", ")
                ),
            );
        }
        found
    }

    fn port(&mut self, path: &str, number: u32) {
        if !(1..=65535).contains(&number) {
            self.error(
                path,
                format!("port number {number} is out of range 1..65535"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

fn gateway(c: &mut Check<'_>, spec: &GatewaySpec) {
    if spec.servers.is_empty() {
        c.error("spec.servers", "gateway must have at least one server");
    }
    let mut port_names: HashMap<&str, usize> = HashMap::new();
    for (i, server_spec) in spec.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        server(c, &at, server_spec);
        if let Some(port) = &server_spec.port
            && !port.name.is_empty()
            && let Some(first) = port_names.insert(&port.name, i)
        {
            c.error(
                &format!("{at}.port.name"),
                format!("port name {:?} is already used by spec.servers[{first}]; port names must be unique", port.name),
            );
        }
    }
}

fn server(c: &mut Check<'_>, at: &str, server: &Server) {
    let protocol = match &server.port {
        None => {
            c.error(&format!("{at}.port"), "server must have a port");
            None
        }
        Some(port) => {
            c.port(&format!("{at}.port.number"), port.number);
            if port.name.is_empty() {
                c.error(&format!("{at}.port.name"), "port name must be set");
            }
            if port.protocol.is_empty() {
                c.error(&format!("{at}.port.protocol"), "protocol must be set");
                None
            } else {
                c.one_of(
                    &format!("{at}.port.protocol"),
                    "protocol",
                    &port.protocol,
                    names::SERVER_PROTOCOLS,
                )
            }
        }
    };
    if let Some(bind) = &server.bind
        && bind.parse::<std::net::IpAddr>().is_err()
    {
        c.error(
            &format!("{at}.bind"),
            format!("bind {bind:?} is not an IP address"),
        );
    }
    if server.hosts.is_empty() {
        c.error(&format!("{at}.hosts"), "server must have at least one host");
    }
    for (j, host) in server.hosts.iter().enumerate() {
        server_host(c, &format!("{at}.hosts[{j}]"), host);
    }
    let is_tls = matches!(protocol, Some("HTTPS" | "TLS"));
    match &server.tls {
        None if is_tls => c.error(
            &format!("{at}.tls"),
            "server must have TLS settings for HTTPS/TLS protocols",
        ),
        None => {}
        Some(tls) => server_tls(c, &format!("{at}.tls"), tls, protocol, is_tls),
    }
}

fn server_host(c: &mut Check<'_>, path: &str, host: &str) {
    let (namespace, name) = names::split_namespace(host);
    if let Some(ns) = namespace
        && ns != "*"
        && ns != "."
        && !names::is_dns_label(ns)
    {
        c.error(
            path,
            format!("host {host:?}: namespace {ns:?} must be `*`, `.` or a namespace name"),
        );
    }
    if let Some(problem) = names::wildcard_host_problem(name) {
        c.error(path, problem);
    } else if name != "*" && !name.trim_end_matches('.').contains('.') {
        c.error(
            path,
            format!("host {host:?} is a short name; use a fully qualified domain name"),
        );
    }
}

fn server_tls(
    c: &mut Check<'_>,
    at: &str,
    tls: &ServerTlsSettings,
    protocol: Option<&str>,
    is_tls: bool,
) {
    if !is_tls {
        let only_redirect = tls.mode.is_none()
            && tls.server_certificate.is_none()
            && tls.private_key.is_none()
            && tls.credential_name.is_none()
            && tls.ca_certificates.is_none();
        if !only_redirect && protocol.is_some() {
            c.error(
                at,
                "TLS settings other than httpsRedirect need protocol HTTPS or TLS",
            );
        }
        return;
    }
    // PASSTHROUGH is the default, as in Istio's API (mode's zero value).
    let mode = match &tls.mode {
        Some(mode) => c.one_of(&format!("{at}.mode"), "TLS mode", mode, names::TLS_MODES),
        None => Some("PASSTHROUGH"),
    };
    let has_files = tls.server_certificate.is_some() || tls.private_key.is_some();
    let has_credential = tls
        .credential_name
        .as_deref()
        .is_some_and(|n| !n.is_empty());
    match mode {
        Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") => {
            let mode = mode.unwrap_or_default();
            if has_credential && has_files {
                c.error(at, format!("{mode} TLS takes a credentialName or serverCertificate/privateKey, not both"));
            } else if !has_credential {
                if tls.server_certificate.is_none() {
                    c.error(
                        &format!("{at}.serverCertificate"),
                        format!("{mode} TLS requires a server certificate (or credentialName)"),
                    );
                }
                if tls.private_key.is_none() {
                    c.error(
                        &format!("{at}.privateKey"),
                        format!("{mode} TLS requires a private key (or credentialName)"),
                    );
                }
            }
            if mode != "SIMPLE" && !has_credential && tls.ca_certificates.is_none() {
                c.error(&format!("{at}.caCertificates"), format!("{mode} TLS requires caCertificates to verify clients (or a credentialName with ca.crt)"));
            }
        }
        Some("ISTIO_MUTUAL") => {
            if has_files || has_credential || tls.ca_certificates.is_some() {
                c.error(at, "ISTIO_MUTUAL TLS cannot have a private key, server certificate, CA certificates or credentialName");
            } else {
                c.error(
                    &format!("{at}.mode"),
                    "mode ISTIO_MUTUAL is not supported yet (it needs Istio's workload identity)",
                );
            }
        }
        _ => {}
    }
    if protocol == Some("TLS") && matches!(mode, Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) {
        c.error(&format!("{at}.mode"), "terminating TLS in front of opaque TCP (protocol TLS with a terminating mode) is not supported yet");
    }
    let min = tls
        .min_protocol_version
        .as_deref()
        .and_then(|v| tls_version(c, &format!("{at}.minProtocolVersion"), v));
    let max = tls
        .max_protocol_version
        .as_deref()
        .and_then(|v| tls_version(c, &format!("{at}.maxProtocolVersion"), v));
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        c.error(
            &format!("{at}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
    for (i, suite) in tls.cipher_suites.iter().enumerate() {
        let path = format!("{at}.cipherSuites[{i}]");
        // Envoy's equal-preference groups: `[A|B]`.
        for name in suite
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split('|')
        {
            if names::REFUSED_CIPHER_SUITES.contains(&name) {
                c.error(&path, format!("cipher suite {name:?} is not supported: rustls implements no CBC, 3DES or static-RSA suites"));
            } else if !names::RUSTLS_CIPHER_SUITES.contains(&name) {
                c.error(
                    &path,
                    format!(
                        "unknown cipher suite {name:?}; supported: {}",
                        names::RUSTLS_CIPHER_SUITES.join(", ")
                    ),
                );
            }
        }
    }
}

/// The version's rank (1.2 = 12, 1.3 = 13), or an error for versions rustls cannot serve.
fn tls_version(c: &mut Check<'_>, path: &str, version: &str) -> Option<u8> {
    match c.one_of(path, "TLS version", version, names::TLS_VERSIONS)? {
        "TLSV1_0" | "TLSV1_1" => {
            c.error(
                path,
                format!("{version} is not supported: rustls implements TLS 1.2 and 1.3 only"),
            );
            None
        }
        "TLSV1_3" => Some(13),
        _ => Some(12),
    }
}

// ---------------------------------------------------------------------------------------
// VirtualService

fn virtual_service(c: &mut Check<'_>, spec: &VirtualServiceSpec) {
    if spec.hosts.is_empty() {
        c.error("spec.hosts", "virtual service must have at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if let Some(problem) = names::wildcard_host_problem(host) {
            c.error(&format!("spec.hosts[{i}]"), problem);
        }
    }
    for (i, gateway) in spec.gateways.iter().enumerate() {
        gateway_reference(c, &format!("spec.gateways[{i}]"), gateway);
    }
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        c.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(c, &format!("spec.http[{i}]"), route);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        if route.matches.is_empty() {
            c.error(
                &format!("{at}.match"),
                "TLS route must have at least one match condition",
            );
        }
        for (j, m) in route.matches.iter().enumerate() {
            let at = format!("{at}.match[{j}]");
            if m.sni_hosts.is_empty() {
                c.error(
                    &format!("{at}.sniHosts"),
                    "TLS match must have at least one SNI host",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let path = format!("{at}.sniHosts[{k}]");
                if let Some(problem) = names::wildcard_host_problem(sni) {
                    c.error(&path, problem);
                } else if !spec.hosts.iter().any(|h| names::host_matches(h, sni)) {
                    c.error(
                        &path,
                        format!(
                            "SNI host {sni:?} is not a subset of any of the virtual service hosts"
                        ),
                    );
                }
            }
            l4_match(
                c,
                &at,
                L4Match {
                    port: m.port,
                    gateways: &m.gateways,
                    destination_subnets: &m.destination_subnets,
                    source_labels: &m.source_labels,
                    source_namespace: m.source_namespace.as_deref(),
                },
            );
        }
        destinations(c, &at, &route.route);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(
                c,
                &format!("{at}.match[{j}]"),
                L4Match {
                    port: m.port,
                    gateways: &m.gateways,
                    destination_subnets: &m.destination_subnets,
                    source_labels: &m.source_labels,
                    source_namespace: m.source_namespace.as_deref(),
                },
            );
        }
        destinations(c, &at, &route.route);
    }
}

/// The `port` and `gateways` of a TLS or TCP match.
/// The fields `tls` and `tcp` matches share.
struct L4Match<'m> {
    port: Option<u32>,
    gateways: &'m [String],
    destination_subnets: &'m [String],
    source_labels: &'m std::collections::BTreeMap<String, String>,
    source_namespace: Option<&'m str>,
}

fn l4_match(c: &mut Check<'_>, at: &str, m: L4Match<'_>) {
    if let Some(port) = m.port {
        c.port(&format!("{at}.port"), port);
    }
    for (k, g) in m.gateways.iter().enumerate() {
        gateway_reference(c, &format!("{at}.gateways[{k}]"), g);
    }
    for (k, subnet) in m.destination_subnets.iter().enumerate() {
        if !is_ip_or_cidr(subnet) {
            c.error(
                &format!("{at}.destinationSubnets[{k}]"),
                format!("{subnet:?} is not a valid IP address or CIDR"),
            );
        }
    }
    if m.source_labels.keys().any(String::is_empty) {
        c.error(&format!("{at}.sourceLabels"), "label keys cannot be empty");
    }
    // Istio applies these to sidecars only (its gateway listeners match on port and
    // gateways): accepted, and said so.
    let sidecar_only = [
        ("destinationSubnets", !m.destination_subnets.is_empty()),
        ("sourceLabels", !m.source_labels.is_empty()),
        ("sourceNamespace", m.source_namespace.is_some()),
    ];
    for (field, set) in sidecar_only {
        if set {
            c.info(
                &format!("{at}.{field}"),
                format!("{field} applies to sidecars only; a gateway ignores it, as Istio's do"),
            );
        }
    }
}

/// An IP address or an address/prefix-length (`203.0.113.0/24`, `2001:db8::/32`).
fn is_ip_or_cidr(text: &str) -> bool {
    match text.split_once('/') {
        None => text.parse::<std::net::IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

fn gateway_reference(c: &mut Check<'_>, path: &str, reference: &str) {
    if reference == "mesh" {
        return;
    }
    let (namespace, name) = match reference.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, reference),
    };
    let bad_ns = namespace.is_some_and(|ns| !names::is_dns_label(ns));
    let bad_name = name.split('.').any(|label| !names::is_dns_label(label));
    if bad_ns || bad_name {
        c.error(path, format!("invalid gateway reference {reference:?}: expected `name`, `namespace/name` or `mesh`"));
    }
}

fn http_route(c: &mut Check<'_>, at: &str, route: &HttpRoute) {
    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => c.error(
            at,
            "HTTP route must have exactly one of route, redirect or directResponse; it has none",
        ),
        1 => {}
        _ => c.error(
            at,
            "HTTP route must have exactly one of route, redirect or directResponse; it has several",
        ),
    }
    if route.redirect.is_some() && route.rewrite.is_some() {
        c.error(
            &format!("{at}.rewrite"),
            "HTTP route cannot have both redirect and rewrite",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        for (field, value) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(value) = value {
                string_match(c, &format!("{mat}.{field}"), value);
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, value) in map {
                let path = format!("{mat}.{field}.{name}");
                if name.is_empty() {
                    c.error(&path, "header and query parameter names cannot be empty");
                }
                string_match(c, &path, value);
            }
        }
        if let Some(port) = m.port {
            c.port(&format!("{mat}.port"), port);
        }
        for (k, g) in m.gateways.iter().enumerate() {
            gateway_reference(c, &format!("{mat}.gateways[{k}]"), g);
        }
    }
    if !route.route.is_empty() {
        destinations(c, at, &route.route);
    }
    if let Some(redirect) = &route.redirect {
        let path = format!("{at}.redirect");
        if redirect.uri.is_none()
            && redirect.authority.is_none()
            && redirect.scheme.is_none()
            && redirect.port.is_none()
            && redirect.derive_port.is_none()
        {
            c.error(
                &path,
                "redirect must specify uri, authority, scheme, port or derivePort",
            );
        }
        if redirect.port.is_some() && redirect.derive_port.is_some() {
            c.error(
                &format!("{path}.derivePort"),
                "redirect cannot have both port and derivePort",
            );
        }
        if let Some(port) = redirect.port {
            c.port(&format!("{path}.port"), port);
        }
        if let Some(derive) = &redirect.derive_port {
            c.one_of(
                &format!("{path}.derivePort"),
                "derivePort",
                derive,
                &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
            );
        }
        if let Some(code) = redirect.redirect_code
            && !(300..=399).contains(&code)
        {
            c.error(
                &format!("{path}.redirectCode"),
                format!("{code} is not a valid redirect code, must be 3xx"),
            );
        }
    }
    if let Some(response) = &route.direct_response {
        let path = format!("{at}.directResponse");
        if !(200..=599).contains(&response.status) {
            c.error(
                &format!("{path}.status"),
                format!("status {} is out of range 200..599", response.status),
            );
        }
        if let Some(body) = &response.body
            && body.string.is_some() == body.bytes.is_some()
        {
            c.error(
                &format!("{path}.body"),
                "body must have exactly one of string or bytes",
            );
        }
    }
    if let Some(timeout) = &route.timeout {
        duration(c, &format!("{at}.timeout"), timeout);
    }
    if let Some(retries) = &route.retries {
        let path = format!("{at}.retries");
        if retries.attempts < 0 {
            c.error(&format!("{path}.attempts"), "attempts cannot be negative");
        }
        if let Some(timeout) = &retries.per_try_timeout {
            duration(c, &format!("{path}.perTryTimeout"), timeout);
        }
        if let Some(retry_on) = &retries.retry_on {
            for policy in retry_on.split(',').map(str::trim) {
                let is_status = policy.len() == 3
                    && policy
                        .parse::<u16>()
                        .is_ok_and(|s| (100..=599).contains(&s));
                if !is_status && !names::RETRY_ON.contains(&policy) {
                    c.error(
                        &format!("{path}.retryOn"),
                        format!("unknown retry policy {policy:?}"),
                    );
                }
            }
        }
    }
}

fn string_match(c: &mut Check<'_>, path: &str, value: &StringMatch) {
    let set = [
        value.exact.is_some(),
        value.prefix.is_some(),
        value.regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        c.error(
            path,
            "a string match must have exactly one of exact, prefix or regex",
        );
    }
    if let Some(regex) = &value.regex
        && let Err(e) = regex::Regex::new(regex)
    {
        c.error(
            &format!("{path}.regex"),
            format!("invalid regex {regex:?}: {e}"),
        );
    }
}

fn duration(c: &mut Check<'_>, path: &str, text: &str) {
    match names::parse_duration(text) {
        Some(d) if d >= std::time::Duration::from_millis(1) => {}
        Some(_) => c.error(path, format!("duration {text:?} is below 1ms")),
        None => c.error(
            path,
            format!("invalid duration {text:?}; write e.g. 1.5s, 300ms, 2m"),
        ),
    }
}

fn destinations<W: Weighted>(c: &mut Check<'_>, at: &str, routes: &[W]) {
    let routes: Vec<_> = routes
        .iter()
        .map(|r| (r.destination(), r.weight()))
        .collect();
    if routes.is_empty() {
        c.error(
            &format!("{at}.route"),
            "route must have at least one destination",
        );
    }
    let mut total = 0i64;
    for (i, (destination, weight)) in routes.iter().enumerate() {
        let path = format!("{at}.route[{i}]");
        match destination {
            None => c.error(&format!("{path}.destination"), "destination is required"),
            Some(d) => {
                if d.host.is_empty() {
                    c.error(
                        &format!("{path}.destination.host"),
                        "destination host is required",
                    );
                } else if d.host.parse::<std::net::IpAddr>().is_err()
                    && let Some(problem) = names::wildcard_host_problem(&d.host)
                {
                    c.error(&format!("{path}.destination.host"), problem);
                } else if d.host.contains('*') {
                    c.error(
                        &format!("{path}.destination.host"),
                        "destination host cannot be a wildcard",
                    );
                }
                if let Some(port) = &d.port {
                    c.port(&format!("{path}.destination.port.number"), port.number);
                }
            }
        }
        match weight {
            Some(w) if *w < 0 => {
                c.error(&format!("{path}.weight"), format!("weight {w} is negative"))
            }
            Some(w) if *w > i64::from(i32::MAX) => c.error(
                &format!("{path}.weight"),
                format!("weight {w} is too large"),
            ),
            Some(w) => total += w,
            None => {}
        }
    }
    let any_weight = routes.iter().any(|(_, w)| w.is_some());
    if routes.len() > 1 && any_weight && total == 0 {
        c.error(
            &format!("{at}.route"),
            "the destination weights add up to 0",
        );
    }
}

// ---------------------------------------------------------------------------------------
// ServiceEntry

fn service_entry(c: &mut Check<'_>, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        c.error("spec.hosts", "service entry must have at least one host");
    }
    let resolution = match &spec.resolution {
        Some(r) => c.one_of(
            "spec.resolution",
            "resolution",
            r,
            names::SERVICE_ENTRY_RESOLUTIONS,
        ),
        None => Some("NONE"),
    };
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Some(problem) = names::wildcard_host_problem(host) {
            c.error(&path, problem);
        } else if host.contains('*') && resolution != Some("NONE") {
            c.error(&path, "wildcard hosts need resolution NONE");
        }
    }
    if let Some(location) = &spec.location {
        c.one_of(
            "spec.location",
            "location",
            location,
            names::SERVICE_ENTRY_LOCATIONS,
        );
    }
    if spec.ports.is_empty() {
        c.error("spec.ports", "service entry must have at least one port");
    }
    let mut names_seen: HashMap<&str, usize> = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        c.port(&format!("{at}.number"), port.number);
        if port.name.is_empty() {
            c.error(&format!("{at}.name"), "port name must be set");
        } else if let Some(first) = names_seen.insert(&port.name, i) {
            c.error(
                &format!("{at}.name"),
                format!(
                    "port name {:?} is already used by spec.ports[{first}]",
                    port.name
                ),
            );
        }
        if !port.protocol.is_empty() {
            c.one_of(
                &format!("{at}.protocol"),
                "protocol",
                &port.protocol,
                names::SERVICE_PROTOCOLS,
            );
        }
        if let Some(target) = port.target_port {
            c.port(&format!("{at}.targetPort"), target);
        }
    }
    if resolution == Some("STATIC") && spec.endpoints.is_empty() {
        c.error("spec.endpoints", "resolution STATIC needs endpoints");
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        let is_ip = endpoint.address.parse::<std::net::IpAddr>().is_ok();
        if endpoint.address.is_empty() {
            c.error(&format!("{at}.address"), "endpoint address is required");
        } else if resolution == Some("STATIC") && !is_ip {
            c.error(
                &format!("{at}.address"),
                format!(
                    "resolution STATIC needs IP addresses; {:?} is not one",
                    endpoint.address
                ),
            );
        } else if !is_ip && names::wildcard_host_problem(&endpoint.address).is_some() {
            c.error(
                &format!("{at}.address"),
                format!(
                    "{:?} is neither an IP address nor a DNS name",
                    endpoint.address
                ),
            );
        }
        for (name, number) in &endpoint.ports {
            c.port(&format!("{at}.ports.{name}"), *number);
            if !spec.ports.iter().any(|p| &p.name == name) {
                c.error(
                    &format!("{at}.ports.{name}"),
                    format!("no service port is named {name:?}"),
                );
            }
        }
        if endpoint.weight == Some(0) {
            c.error(
                &format!("{at}.weight"),
                "endpoint weight must be at least 1",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// DestinationRule

fn destination_rule(c: &mut Check<'_>, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        c.error("spec.host", "host is required");
    } else if let Some(problem) = names::wildcard_host_problem(&spec.host) {
        c.error("spec.host", problem);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(c, "spec.trafficPolicy", policy);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            c.error(&format!("{at}.name"), "subset name is required");
        } else if !names::is_dns_label(&subset.name) {
            c.error(
                &format!("{at}.name"),
                format!("subset name {:?} must be a DNS-1123 label", subset.name),
            );
        } else if let Some(first) = seen.insert(&subset.name, i) {
            c.error(
                &format!("{at}.name"),
                format!(
                    "subset {:?} is already defined by spec.subsets[{first}]",
                    subset.name
                ),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(c, &format!("{at}.trafficPolicy"), policy);
        }
    }
}

fn traffic_policy(c: &mut Check<'_>, at: &str, policy: &TrafficPolicy) {
    if let Some(simple) = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.simple.as_ref())
    {
        c.one_of(
            &format!("{at}.loadBalancer.simple"),
            "load balancer",
            simple,
            names::LOAD_BALANCERS,
        );
    }
}
