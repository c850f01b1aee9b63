//! Per-object validation, after Istio's own rules (`istioctl validate`): everything here is
//! an error, found from one object alone. Cross-object checks live in `analyze`.
use std::collections::HashMap;

use super::{
    diagnostic::{Diagnostic, Severity, codes},
    load::{Object, Spec},
    model::{
        ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, CorsPolicy,
        DestinationRuleSpec, GatewaySpec, Headers, HttpDirectResponse, HttpFaultInjection,
        HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, OutlierDetection,
        Server, ServerTlsSettings, ServiceEntrySpec, StringMatch, TrafficPolicy,
        VirtualServiceSpec, Weighted,
    },
    names::{self, one_of},
};

/// Every error of `object` on its own.
pub fn validate(object: &Object) -> Vec<Diagnostic> {
    let mut check = Check {
        object,
        out: Vec::new(),
    };
    object_name(&mut check);
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

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        let diagnostic =
            self.object
                .diagnostic(Severity::Warning, codes::SCHEMA, path, message.into());
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

/// Kubernetes names: a Gateway's is a DNS-1123 label (Istio refers to it as
/// `namespace/name`, so no dots), other objects' a DNS-1123 subdomain; the namespace a label.
fn object_name(c: &mut Check<'_>) {
    let (name, namespace) = (c.object.name(), c.object.namespace());
    let lower = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
    if name.is_empty() {
        // Reported when the envelope is read.
    } else if matches!(c.object.spec, Spec::Gateway(_)) {
        if !(names::is_dns_label(name) && lower(name)) {
            c.error("metadata.name", format!("invalid gateway name: {name:?}"));
        }
    } else if !(name.len() <= 253 && name.split('.').all(names::is_dns_label) && lower(name)) {
        c.error("metadata.name", format!("invalid name {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
    }
    if !(names::is_dns_label(namespace) && lower(namespace)) {
        c.error(
            "metadata.namespace",
            format!("invalid namespace {namespace:?}: a lowercase RFC 1123 label"),
        );
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
            && tls.ca_certificates.is_none()
            && tls.ca_crl.is_none()
            && tls.subject_alt_names.is_empty()
            && tls.verify_certificate_spki.is_empty()
            && tls.verify_certificate_hash.is_empty();
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
    certificate_lists(c, at, tls);
    let has_files = tls.server_certificate.is_some()
        || tls.private_key.is_some()
        || !tls.tls_certificates.is_empty();
    let has_credential = tls
        .credential_name
        .as_deref()
        .is_some_and(|n| !n.is_empty())
        || !tls.credential_names.is_empty();
    let has_ca = tls.ca_certificates.is_some()
        || tls
            .tls_certificates
            .iter()
            .any(|t| t.ca_certificates.is_some());
    match mode {
        Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") => {
            let mode = mode.unwrap_or_default();
            if has_credential && has_files {
                c.error(at, format!("{mode} TLS takes a credentialName or serverCertificate/privateKey, not both"));
            } else if !has_credential && tls.tls_certificates.is_empty() {
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
            if mode != "SIMPLE" && !has_credential && !has_ca {
                c.error(&format!("{at}.caCertificates"), format!("{mode} TLS requires caCertificates to verify clients (or a credentialName with ca.crt)"));
            }
        }
        Some("ISTIO_MUTUAL") if has_files || has_credential || tls.ca_certificates.is_some() => {
            c.error(at, "ISTIO_MUTUAL TLS cannot have a private key, server certificate, CA certificates or credentialName");
        }
        _ => {}
    }
    client_verification(c, at, tls, mode, has_credential);
    if protocol == Some("TLS")
        && matches!(
            mode,
            Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL")
        )
    {
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

/// What client certificates are checked against beyond the CA: a revocation list, subject
/// alternative names, SPKI and certificate digests. Istio's rules for `caCrl` (not with
/// SIMPLE; with a credential the CRL is the credential's `ca.crl`), Envoy's for the digests.
fn client_verification(
    c: &mut Check<'_>,
    at: &str,
    tls: &ServerTlsSettings,
    mode: Option<&str>,
    has_credential: bool,
) {
    let verifies_clients = matches!(mode, Some("MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL"));
    if tls.ca_crl.is_some() {
        let path = format!("{at}.caCrl");
        if mode == Some("SIMPLE") && !has_credential {
            c.error(&path, "CRL is not supported with SIMPLE TLS");
        } else if has_credential && verifies_clients {
            c.warn(&path, "caCrl is ignored with credentialName: the CRL comes from the credential (its ca.crl)");
        }
    }
    for (i, text) in tls.verify_certificate_spki.iter().enumerate() {
        if let Err(reason) = super::digests::spki_digest(text) {
            c.error(&format!("{at}.verifyCertificateSpki[{i}]"), reason);
        }
    }
    for (i, text) in tls.verify_certificate_hash.iter().enumerate() {
        if let Err(reason) = super::digests::certificate_hash(text) {
            c.error(&format!("{at}.verifyCertificateHash[{i}]"), reason);
        }
    }
    for (i, name) in tls.subject_alt_names.iter().enumerate() {
        if name.is_empty() {
            c.error(
                &format!("{at}.subjectAltNames[{i}]"),
                "subject alternative names cannot be empty",
            );
        }
    }
    let pins = !tls.subject_alt_names.is_empty()
        || !tls.verify_certificate_spki.is_empty()
        || !tls.verify_certificate_hash.is_empty();
    if pins && !verifies_clients {
        c.warn(
            at,
            format!(
                "subjectAltNames and verifyCertificate* apply to client certificates, which only MUTUAL and OPTIONAL_MUTUAL ask for; mode {} ignores them",
                mode.unwrap_or("PASSTHROUGH")
            ),
        );
    }
}

/// `credentialNames` and `tlsCertificates`: each instead of its singular form, at most two
/// (Envoy serves one RSA and one ECDSA certificate per server), each pair complete.
fn certificate_lists(c: &mut Check<'_>, at: &str, tls: &ServerTlsSettings) {
    if !tls.credential_names.is_empty() {
        let path = format!("{at}.credentialNames");
        if tls.credential_name.is_some() {
            c.error(
                &path,
                "only one of credentialName or credentialNames can be set",
            );
        }
        if tls.credential_names.len() > 2 {
            c.error(
                &path,
                "credentialNames can have at most 2 entries (an RSA and an ECDSA certificate)",
            );
        }
        if tls.credential_names.iter().any(String::is_empty) {
            c.error(&path, "credential names cannot be empty");
        }
    }
    if !tls.tls_certificates.is_empty() {
        let path = format!("{at}.tlsCertificates");
        if tls.server_certificate.is_some() || tls.private_key.is_some() {
            c.error(
                &path,
                "only one of serverCertificate/privateKey or tlsCertificates can be set",
            );
        }
        if !tls.credential_names.is_empty() || tls.credential_name.is_some() {
            c.error(
                &path,
                "only one of credentialName(s) or tlsCertificates can be set",
            );
        }
        if tls.tls_certificates.len() > 2 {
            c.error(
                &path,
                "tlsCertificates can have at most 2 entries (an RSA and an ECDSA certificate)",
            );
        }
        for (i, pair) in tls.tls_certificates.iter().enumerate() {
            if pair.server_certificate.as_deref().is_none_or(str::is_empty) {
                c.error(
                    &format!("{path}[{i}].serverCertificate"),
                    "a TLS certificate requires serverCertificate",
                );
            }
            if pair.private_key.as_deref().is_none_or(str::is_empty) {
                c.error(
                    &format!("{path}[{i}].privateKey"),
                    "a TLS certificate requires privateKey",
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

/// Istio's validateExportTo: `.`, `*` or namespace names, no duplicates (`.` and the
/// object's own namespace are one), `*` alone, `~` (none) only for ServiceEntries and alone.
fn export_to(c: &mut Check<'_>, entries: &[String], service_entry: bool) {
    let namespace = c.object.namespace().to_owned();
    let mut seen: Vec<&str> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if entry == "." {
            namespace.as_str()
        } else {
            entry.as_str()
        };
        if seen.contains(&key) {
            if key != entry {
                c.error(
                    &path,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                c.error(
                    &path,
                    format!("duplicate entries in exportTo for entry {entry}"),
                );
            }
            continue;
        }
        match entry.as_str() {
            "." | "*" => {}
            "~" if service_entry => {}
            "~" => c.error(
                &path,
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            ),
            name if !names::is_dns_label(name) => c.error(
                &path,
                "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            ),
            _ => {}
        }
        seen.push(key);
    }
    if entries.len() > 1 && seen.contains(&"*") {
        c.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if entries.len() > 1 && seen.contains(&"~") {
        c.error(
            "spec.exportTo",
            "cannot export service entry to no one (~) and someone",
        );
    }
}

fn virtual_service(c: &mut Check<'_>, spec: &VirtualServiceSpec) {
    export_to(c, &spec.export_to, false);
    // Without hosts it is a delegate: its HTTP routes are taken by a root's `delegate`.
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            c.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !spec.tls.is_empty() {
            c.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !spec.tcp.is_empty() {
            c.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        if let Some(problem) = names::wildcard_host_problem(host) {
            c.error(&path, problem);
            continue;
        }
        if let Some(earlier) = spec.hosts[..i]
            .iter()
            .find(|h| names::hosts_overlap(h, host))
        {
            c.error(
                &path,
                format!("duplicate hosts in virtual service: {earlier} & {host}"),
            );
        }
    }
    let mesh_bound = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    if !delegate && mesh_bound && spec.hosts.iter().any(|h| h == "*") {
        c.error(
            "spec.hosts",
            "wildcard host * is not allowed for virtual services bound to the mesh gateway",
        );
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
        let at = format!("spec.http[{i}]");
        if delegate && route.delegate.is_some() {
            c.error(
                &format!("{at}.delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        }
        http_route(c, &at, route);
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
    let name = route.name.as_deref().unwrap_or("");
    if route.delegate.is_some() {
        // A root route: the delegate brings the action.
        if !route.route.is_empty() {
            c.error(
                &format!("{at}.route"),
                format!("root HTTP route {name} must not specify route"),
            );
        }
        if route.redirect.is_some() {
            c.error(
                &format!("{at}.redirect"),
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if let Some(delegate) = &route.delegate
            && delegate.name.is_empty()
        {
            c.error(&format!("{at}.delegate.name"), "delegate name is required");
        }
    } else {
        let (has_route, has_redirect, has_direct) = (
            !route.route.is_empty(),
            route.redirect.is_some(),
            route.direct_response.is_some(),
        );
        if !has_route && !has_redirect && !has_direct {
            c.error(at, "HTTP route, redirect or direct_response is required");
        }
        if has_route && has_redirect {
            c.error(at, "HTTP route cannot contain both route and redirect");
        }
        if has_route && has_direct {
            c.error(
                at,
                "HTTP route cannot contain both route and direct_response",
            );
        }
        if has_direct && has_redirect {
            c.error(
                at,
                "HTTP route rule cannot contain both direct_response and redirect",
            );
        }
    }
    if route.rewrite.is_some() && route.redirect.is_some() {
        c.error(
            &format!("{at}.rewrite"),
            "HTTP route rule cannot contain both rewrite and redirect",
        );
    }
    if route.rewrite.is_some() && route.direct_response.is_some() {
        c.error(
            &format!("{at}.rewrite"),
            "HTTP route rule cannot contain both rewrite and direct_response",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        http_match(c, &format!("{at}.match[{j}]"), m);
    }
    if !route.route.is_empty() {
        destinations(c, at, &route.route);
        for (k, destination) in route.route.iter().enumerate() {
            if let Some(headers) = &destination.headers {
                header_operations(c, &format!("{at}.route[{k}].headers"), headers);
            }
        }
    }
    if let Some(headers) = &route.headers {
        header_operations(c, &format!("{at}.headers"), headers);
    }
    if let Some(rewrite) = &route.rewrite {
        http_rewrite(c, &format!("{at}.rewrite"), rewrite);
        authority_set_once(c, at, route);
    }
    if let Some(redirect) = &route.redirect {
        http_redirect(c, &format!("{at}.redirect"), redirect);
    }
    if let Some(response) = &route.direct_response {
        direct_response(c, &format!("{at}.directResponse"), response);
    }
    if let Some(timeout) = &route.timeout {
        duration(c, &format!("{at}.timeout"), timeout);
    }
    if let Some(retries) = &route.retries {
        http_retry(c, &format!("{at}.retries"), retries);
    }
    if let Some(fault) = &route.fault {
        http_fault(c, &format!("{at}.fault"), fault);
    }
    mirrors(c, at, route);
    if let Some(cors) = &route.cors_policy {
        cors_policy(c, &format!("{at}.corsPolicy"), cors);
    }
}

/// Methods a CORS policy may allow (Istio's list, and `*`).
const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

/// A CORS policy as Istio checks it: origin matches of one kind each and not empty, known
/// methods, valid header names, a whole-second `maxAge`.
fn cors_policy(c: &mut Check<'_>, at: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let path = format!("{at}.allowOrigins[{i}]");
        let empty = [&origin.exact, &origin.prefix, &origin.regex]
            .iter()
            .all(|m| m.as_deref().is_none_or(str::is_empty));
        if empty {
            c.error(&path, "not a valid match type for CORS allow origins");
        } else {
            string_match(c, &path, "corsPolicy.allowOrigins", origin);
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            c.error(
                &format!("{at}.allowMethods[{i}]"),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" && !names::is_header_name(name) {
                c.error(
                    &format!("{at}.{field}[{i}]"),
                    format!("header name {name:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(max_age) = &cors.max_age {
        let path = format!("{at}.maxAge");
        match names::parse_duration(max_age) {
            Some(d) if d.subsec_nanos() != 0 => c.error(
                &path,
                "max_age duration is accurate only to seconds precision",
            ),
            Some(_) => {}
            None => duration(c, &path, max_age),
        }
    }
    if let Some(unmatched) = &cors.unmatched_preflights
        && !["UNSPECIFIED", "FORWARD", "IGNORE"].contains(&unmatched.as_str())
    {
        c.error(
            &format!("{at}.unmatchedPreflights"),
            format!("unknown value {unmatched:?}; expected one of UNSPECIFIED, FORWARD, IGNORE"),
        );
    }
}

/// Fault injection as Istio checks it: a delay and/or an abort, percentages within 0-100,
/// a fixed delay (exponential ones are not supported, by Istio either), one error type.
fn http_fault(c: &mut Check<'_>, at: &str, fault: &HttpFaultInjection) {
    if fault.delay.is_none() && fault.abort.is_none() {
        c.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(delay) = &fault.delay {
        let path = format!("{at}.delay");
        if let Some(p) = &delay.percentage {
            percentage(c, &format!("{path}.percentage"), p.value);
        }
        if let Some(p) = delay.percent
            && !(0..=100).contains(&p)
        {
            c.error(
                &format!("{path}.percent"),
                format!("percentage {p} is not in range 0-100"),
            );
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (_, Some(_)) => c.error(
                &format!("{path}.exponentialDelay"),
                "exponentialDelay not supported yet",
            ),
            (Some(fixed), None) => duration(c, &format!("{path}.fixedDelay"), fixed),
            (None, None) => c.error(&path, "a delay needs fixedDelay"),
        }
    }
    if let Some(abort) = &fault.abort {
        let path = format!("{at}.abort");
        if let Some(p) = &abort.percentage {
            percentage(c, &format!("{path}.percentage"), p.value);
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            c.error(
                &path,
                "only one of httpStatus, grpcStatus and http2Error may be set",
            );
        }
        if abort.http2_error.is_some() {
            c.error(
                &format!("{path}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
        if let Some(status) = &abort.grpc_status
            && !names::GRPC_STATUS.contains(&status.as_str())
        {
            c.error(
                &format!("{path}.grpcStatus"),
                format!(
                    "gRPC status {status:?} is not supported; one of the names of \
                     https://github.com/grpc/grpc/blob/master/doc/statuscodes.md, e.g. NOT_FOUND"
                ),
            );
        }
        if let Some(status) = abort.http_status
            && !(200..=600).contains(&status)
        {
            c.error(
                &format!("{path}.httpStatus"),
                format!("HTTP status {status} is not in range 200-599"),
            );
        }
        if kinds == [false; 3] {
            c.warn(&path, "abort configured, but error type not set");
        }
    }
}

fn percentage(c: &mut Check<'_>, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        c.error(path, format!("percentage {value} is not in range 0-100"));
    }
}

fn http_match(c: &mut Check<'_>, at: &str, m: &HttpMatchRequest) {
    for (field, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(value) = value {
            string_match(c, &format!("{at}.{field}"), field, value);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            let path = format!("{at}.{field}.{name}");
            if name.is_empty() {
                c.error(&path, "header name cannot be empty");
            } else if name.starts_with("@request.auth.claims") {
                c.error(&path, "JWT claim based routing is not supported yet (it needs request authentication)");
            } else if !names::is_header_name(name) {
                c.error(
                    &path,
                    format!("header name {name} is not a valid header name"),
                );
            }
            // `withoutHeaders: {x: {regex: "*"}}` is Istio's "present".
            if !(field == "withoutHeaders" && value.regex.as_deref() == Some("*")) {
                string_match(c, &path, field, value);
            }
        }
    }
    for (name, value) in &m.query_params {
        string_match(c, &format!("{at}.queryParams.{name}"), "queryParams", value);
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        c.port(&format!("{at}.port"), port);
    }
    for (k, g) in m.gateways.iter().enumerate() {
        gateway_reference(c, &format!("{at}.gateways[{k}]"), g);
    }
    if m.source_labels.keys().any(String::is_empty) {
        c.error(&format!("{at}.sourceLabels"), "label keys cannot be empty");
    }
    for (field, set) in [
        ("sourceLabels", !m.source_labels.is_empty()),
        ("sourceNamespace", m.source_namespace.is_some()),
    ] {
        if set {
            c.info(
                &format!("{at}.{field}"),
                format!("{field} applies to sidecars only; a gateway ignores it, as Istio's do"),
            );
        }
    }
}

/// Istio's rules for a `StringMatch` (`where` names the field in its messages). Setting
/// none of exact, prefix and regex is allowed: the value only has to be present.
fn string_match(c: &mut Check<'_>, path: &str, what: &str, value: &StringMatch) {
    let set = [
        value.exact.is_some(),
        value.prefix.is_some(),
        value.regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        c.error(
            path,
            "a string match may have only one of exact, prefix or regex",
        );
    }
    if value.prefix.as_deref() == Some("") && what != "uri" {
        c.error(
            &format!("{path}.prefix"),
            format!("{what:?}: prefix string match should not be empty"),
        );
    }
    if let Some(regex) = &value.regex {
        regex_rule(c, &format!("{path}.regex"), what, regex);
    }
}

/// A regex as Istio checks one: not empty, at most 1024 characters, and valid.
fn regex_rule(c: &mut Check<'_>, path: &str, what: &str, regex: &str) {
    if regex.is_empty() {
        c.error(
            path,
            format!("{what:?}: regex string match should not be empty"),
        );
    } else if regex.len() > 1024 {
        c.error(
            path,
            format!("{what:?}: regex is too large, max length allowed is 1024"),
        );
    } else if let Err(e) = regex::Regex::new(regex) {
        c.error(path, format!("{what:?}: {e}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"));
    }
}

fn http_rewrite(c: &mut Check<'_>, at: &str, rewrite: &HttpRewrite) {
    let uri = rewrite.uri.as_deref().is_some_and(|u| !u.is_empty());
    let authority = rewrite.authority.as_deref().is_some_and(|a| !a.is_empty());
    let regex = rewrite.uri_regex_rewrite.as_ref();
    if !uri && !authority && regex.is_none() {
        c.error(at, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified");
    }
    if uri && regex.is_some() {
        c.error(at, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if let Some(r) = regex {
        let path = format!("{at}.uriRegexRewrite");
        if r.regex.is_empty() || r.rewrite.is_empty() {
            c.error(
                &path,
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
        } else {
            regex_rule(
                c,
                &format!("{path}.match"),
                "HTTPRewrite.UriRegexRewrite.Match",
                &r.regex,
            );
        }
    }
}

/// The authority is set by at most one of `rewrite.authority` and the request's `host` or
/// `:authority` header operations.
fn authority_set_once(c: &mut Check<'_>, at: &str, route: &HttpRoute) {
    let Some(first) = route.rewrite.as_ref().and_then(|r| r.authority.as_deref()) else {
        return;
    };
    let ops = route.headers.as_ref().and_then(|h| h.request.as_ref());
    for (name, value) in ops.iter().flat_map(|o| o.set.iter().chain(&o.add)) {
        if name.eq_ignore_ascii_case("host") || name == ":authority" {
            c.error(
                &format!("{at}.headers.request"),
                format!("authority header cannot be set multiple times: have {first:?}, attempting to set {value:?}"),
            );
        }
    }
}

fn http_redirect(c: &mut Check<'_>, path: &str, redirect: &HttpRedirect) {
    let port = redirect.port.filter(|p| *p != 0);
    if redirect.uri.is_none()
        && redirect.authority.is_none()
        && redirect.scheme.is_none()
        && port.is_none()
        && redirect.derive_port.is_none()
    {
        c.error(
            path,
            "redirect must specify URI, authority, scheme, or port",
        );
    }
    if port.is_some() && redirect.derive_port.is_some() {
        c.error(
            &format!("{path}.derivePort"),
            "redirect cannot have both port and derivePort",
        );
    }
    if let Some(port) = port {
        c.port(&format!("{path}.port"), port);
    }
    if let Some(scheme) = &redirect.scheme
        && scheme != "http"
        && scheme != "https"
    {
        c.error(
            &format!("{path}.scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(derive) = &redirect.derive_port {
        c.one_of(
            &format!("{path}.derivePort"),
            "derivePort",
            derive,
            &["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"],
        );
    }
    if let Some(code) = redirect.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&code)
    {
        c.error(
            &format!("{path}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
}

/// Direct responses are held in memory and sent for every request: the size Istio allows
/// (an error past 1 MiB, a warning past 100 KiB).
fn direct_response(c: &mut Check<'_>, path: &str, response: &HttpDirectResponse) {
    if !(200..=599).contains(&response.status) {
        c.error(
            &format!("{path}.status"),
            format!("HTTP status {} is not in range 200-599", response.status),
        );
    }
    let Some(body) = &response.body else { return };
    if body.string.is_some() && body.bytes.is_some() {
        c.error(
            &format!("{path}.body"),
            "body may have only one of string or bytes",
        );
    }
    let size = match (&body.string, &body.bytes) {
        (Some(text), _) => text.len(),
        (None, Some(encoded)) => {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(bytes) => bytes.len(),
                Err(e) => {
                    c.error(
                        &format!("{path}.body.bytes"),
                        format!("illegal base64 data: {e}"),
                    );
                    0
                }
            }
        }
        (None, None) => 0,
    };
    if size > 1 << 20 {
        c.error(
            &format!("{path}.body"),
            "large direct_responses may impact control plane performance, must be less than 1MB",
        );
    } else if size > 100 << 10 {
        c.warn(
            &format!("{path}.body"),
            "large direct_responses may impact control plane performance",
        );
    }
}

fn http_retry(c: &mut Check<'_>, path: &str, retries: &HttpRetry) {
    if retries.attempts < 0 {
        c.error(&format!("{path}.attempts"), "attempts cannot be negative");
    }
    if retries.attempts == 0
        && (retries.per_try_timeout.is_some()
            || retries.retry_on.is_some()
            || retries.retry_remote_localities.is_some())
    {
        c.error(
            path,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(timeout) = &retries.per_try_timeout {
        duration(c, &format!("{path}.perTryTimeout"), timeout);
    }
    if let Some(backoff) = &retries.backoff {
        duration(c, &format!("{path}.backoff"), backoff);
    }
    if retries.retry_remote_localities.is_some() {
        c.info(
            &format!("{path}.retryRemoteLocalities"),
            "has no effect: Sluice has no locality model, every endpoint is a retry candidate",
        );
    }
    if let Some(retry_on) = &retries.retry_on {
        for policy in retry_on.split(',') {
            let is_status = policy.len() == 3
                && policy
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .is_some_and(|s| s.canonical_reason().is_some());
            if !is_status && !names::RETRY_ON.contains(&policy) {
                c.error(
                    &format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

/// Header operations as Istio checks them: names not empty and without a `:` prefix (the
/// request's `:authority` and `host` may be set or added), `host` not removed nor touched
/// on responses, values without control characters, `%` only as `%%`.
fn header_operations(c: &mut Check<'_>, at: &str, headers: &Headers) {
    for (side, ops) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        let Some(ops) = ops else { continue };
        let path = format!("{at}.{side}");
        let written = ops.set.iter().map(|(n, v)| ("set", n, Some(v)));
        let added = ops.add.iter().map(|(n, v)| ("add", n, Some(v)));
        let removed = ops.remove.iter().map(|n| ("remove", n, None));
        for (op, name, value) in written.chain(added).chain(removed) {
            let at = format!("{path}.{op}");
            let may_set_authority = side == "request" && op != "remove";
            if name.is_empty() {
                c.error(&at, "header name cannot be empty");
            } else if may_set_authority
                && (name == ":authority" || name.eq_ignore_ascii_case("host"))
            {
                // The authority the upstream sees.
            } else if name.eq_ignore_ascii_case("host") {
                c.error(
                    &at,
                    format!("invalid header {name:?}: cannot set Host header"),
                );
            } else if name.starts_with(':') {
                c.error(
                    &at,
                    format!("invalid header {name:?}: header cannot have \":\" prefix"),
                );
            } else if !names::is_header_name(name) {
                c.error(
                    &at,
                    format!("header name {name} is not a valid header name"),
                );
            }
            if let Some(value) = value {
                header_value(c, &at, value);
            }
        }
    }
}

/// A header value: visible characters, spaces and tabs; `%` escaped as `%%` (Envoy's
/// `%VARIABLE%` expressions are not supported: Sluice sends values as written).
fn header_value(c: &mut Check<'_>, at: &str, value: &str) {
    if value.chars().any(|ch| ch.is_control() && ch != '\t') {
        c.error(at, format!("header value configuration {value} is invalid"));
        return;
    }
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            rest = tail;
            continue;
        }
        match after.find('%') {
            Some(end)
                if end > 0
                    && after[..end].bytes().all(|b| {
                        b.is_ascii_uppercase()
                            || b == b'_'
                            || b.is_ascii_digit()
                            || b == b'('
                            || b == b')'
                            || b == b':'
                            || b == b'-'
                            || b == b'.'
                    }) =>
            {
                c.error(at, format!("header value {value:?}: the variable %{}% is not supported yet (Sluice sends header values as written)", &after[..end]));
                return;
            }
            Some(_) => {
                c.error(
                    at,
                    "header value configuration: invalid header configuration. Un-escaped %",
                );
                return;
            }
            None => {
                c.error(at, format!("header value configuration: invalid header configuration. Un-terminated variable expression '{}'", &rest[i..]));
                return;
            }
        }
    }
}

fn duration(c: &mut Check<'_>, path: &str, text: &str) {
    match names::parse_duration(text) {
        Some(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            c.error(path, "only durations to ms precision are supported")
        }
        Some(d) if d >= std::time::Duration::from_millis(1) => {}
        Some(_) => c.error(path, "duration must be greater than 1ms"),
        None => c.error(
            path,
            format!("invalid duration {text:?}; write e.g. 1.5s, 300ms, 1m30s"),
        ),
    }
}

/// Istio's validateDestination: a host (not `*`), a subset that is a DNS label, a port.
fn destination(c: &mut Check<'_>, at: &str, d: &super::model::Destination) {
    let host_path = format!("{at}.host");
    if d.host.is_empty() {
        c.error(&host_path, "destination host is required");
    } else if d.host == "*" {
        c.error(&host_path, "invalid destination host *");
    } else if d.host.parse::<std::net::IpAddr>().is_err()
        && let Some(problem) = names::wildcard_host_problem(&d.host)
    {
        c.error(&host_path, problem);
    }
    if let Some(subset) = &d.subset
        && !names::is_dns_label(subset)
    {
        c.error(
            &format!("{at}.subset"),
            format!("subset name is invalid: {subset}"),
        );
    }
    if let Some(port) = &d.port {
        c.port(&format!("{at}.port.number"), port.number);
    }
}

/// `mirror`, `mirrorPercentage`, `mirrorPercent` and `mirrors`, with Istio's messages.
fn mirrors(c: &mut Check<'_>, at: &str, route: &HttpRoute) {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        c.error(
            &format!("{at}.mirrors"),
            "`mirror` and `mirrors` cannot be used together",
        );
    }
    if let Some(d) = &route.mirror {
        destination(c, &format!("{at}.mirror"), d);
    }
    if let Some(percent) = route.mirror_percent {
        let path = format!("{at}.mirrorPercent");
        if percent > 100 {
            c.error(
                &path,
                format!("mirror_percent must have a max value of 100 (it has {percent})"),
            );
        }
        c.warn(
            &path,
            "using deprecated setting mirrorPercent, consider using mirrorPercentage instead",
        );
    }
    let percentage = |c: &mut Check<'_>, path: &str, name: &str, value: f64| {
        if value > 100.0 {
            c.error(
                path,
                format!("{name} must have a max value of 100 (it has {value})"),
            );
        } else if value < 0.0 {
            c.error(
                path,
                format!("{name} must have a min value of 0 (it has {value})"),
            );
        }
    };
    if let Some(p) = &route.mirror_percentage {
        percentage(
            c,
            &format!("{at}.mirrorPercentage.value"),
            "mirror_percentage",
            p.value,
        );
    }
    for (i, mirror) in route.mirrors.iter().enumerate() {
        let path = format!("{at}.mirrors[{i}]");
        match &mirror.destination {
            None => c.error(
                &format!("{path}.destination"),
                "destination is required for mirrors",
            ),
            Some(d) => destination(c, &format!("{path}.destination"), d),
        }
        if let Some(p) = &mirror.percentage {
            percentage(
                c,
                &format!("{path}.percentage.value"),
                "mirror percentage",
                p.value,
            );
        }
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
    for (i, (target, weight)) in routes.iter().enumerate() {
        let path = format!("{at}.route[{i}]");
        match target {
            None => c.error(&format!("{path}.destination"), "destination is required"),
            Some(d) => destination(c, &format!("{path}.destination"), d),
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
    if routes.len() > 1 && total == 0 {
        c.error(&format!("{at}.route"), "total destination weight = 0");
    }
}

// ---------------------------------------------------------------------------------------
// ServiceEntry

fn service_entry(c: &mut Check<'_>, spec: &ServiceEntrySpec) {
    export_to(c, &spec.export_to, true);
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
    export_to(c, &spec.export_to, false);
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
    if policy == &TrafficPolicy::default() {
        c.error(at, "traffic policy must have at least one field");
    }
    policy_fields(c, at, policy);
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        let path = format!("{at}.portLevelSettings[{i}]");
        match &port.port {
            None => c.error(&path, "portLevelSettings must specify port"),
            Some(p) => c.port(&format!("{path}.port.number"), p.number),
        }
        policy_fields(c, &path, &port.as_policy());
    }
}

/// Istio's validateTLS for a DestinationRule's `tls` (origination).
fn client_tls(c: &mut Check<'_>, at: &str, tls: &ClientTlsSettings) {
    let mode = match &tls.mode {
        Some(mode) => c.one_of(
            &format!("{at}.mode"),
            "TLS mode",
            mode,
            names::CLIENT_TLS_MODES,
        ),
        None => Some("DISABLE"),
    };
    let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if tls.insecure_skip_verify == Some(true) {
        if mode == Some("SIMPLE")
            && (has(&tls.ca_certificates)
                || has(&tls.credential_name)
                || !tls.subject_alt_names.is_empty())
        {
            c.error(at, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
        }
        if mode == Some("MUTUAL")
            && (has(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            c.error(at, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
        }
    }
    if matches!(mode, Some("SIMPLE" | "MUTUAL")) && has(&tls.credential_name) {
        if has(&tls.client_certificate) || has(&tls.ca_certificates) || has(&tls.private_key) {
            c.error(at, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == Some("MUTUAL") {
        if !has(&tls.client_certificate) {
            c.error(
                &format!("{at}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !has(&tls.private_key) {
            c.error(
                &format!("{at}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

fn policy_fields(c: &mut Check<'_>, at: &str, policy: &TrafficPolicy) {
    if let Some(tls) = &policy.tls {
        client_tls(c, &format!("{at}.tls"), tls);
    }
    if let Some(lb) = &policy.load_balancer {
        let path = format!("{at}.loadBalancer");
        if let Some(simple) = &lb.simple {
            c.one_of(
                &format!("{path}.simple"),
                "load balancer",
                simple,
                names::LOAD_BALANCERS,
            );
        }
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            c.error(
                &path,
                "load balancer may have only one of simple or consistentHash",
            );
        }
        if let Some(hash) = &lb.consistent_hash {
            consistent_hash(c, &format!("{path}.consistentHash"), hash);
        }
    }
    if let Some(upgrade) = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy.as_ref())
    {
        c.one_of(
            &format!("{at}.connectionPool.http.h2UpgradePolicy"),
            "h2UpgradePolicy",
            upgrade,
            names::H2_UPGRADE_POLICIES,
        );
    }
    if let Some(outlier) = &policy.outlier_detection {
        outlier_detection(c, &format!("{at}.outlierDetection"), outlier);
    }
    if let Some(pool) = &policy.connection_pool {
        connection_pool(c, &format!("{at}.connectionPool"), pool);
    }
    if let Some(percent) = policy.retry_budget.as_ref().and_then(|b| b.percent)
        && !(0.0..=100.0).contains(&percent)
    {
        c.error(
            &format!("{at}.retryBudget.percent"),
            format!("retry budget percent {percent} is not in range 0..100"),
        );
    }
}

/// Istio's rules for `connectionPool` (validateConnectionPool).
fn connection_pool(c: &mut Check<'_>, at: &str, pool: &ConnectionPoolSettings) {
    let mut non_negative = |field: &str, value: Option<i32>, what: &str| {
        if value.is_some_and(|v| v < 0) {
            c.error(
                &format!("{at}.{field}"),
                format!("{what} must be non-negative"),
            );
        }
    };
    if let Some(http) = &pool.http {
        non_negative(
            "http.http1MaxPendingRequests",
            http.http1_max_pending_requests,
            "http1 max pending requests",
        );
        non_negative(
            "http.http2MaxRequests",
            http.http2_max_requests,
            "http2 max requests",
        );
        non_negative(
            "http.maxRequestsPerConnection",
            http.max_requests_per_connection,
            "max requests per connection",
        );
        non_negative("http.maxRetries", http.max_retries, "max retries");
    }
    if let Some(tcp) = &pool.tcp {
        non_negative("tcp.maxConnections", tcp.max_connections, "max connections");
    }
    if let Some(text) = pool.http.as_ref().and_then(|h| h.idle_timeout.as_ref()) {
        duration(c, &format!("{at}.http.idleTimeout"), text);
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(text) = &tcp.connect_timeout {
            duration(c, &format!("{at}.tcp.connectTimeout"), text);
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            for (field, value) in [("time", &keepalive.time), ("interval", &keepalive.interval)] {
                if let Some(text) = value {
                    duration(c, &format!("{at}.tcp.tcpKeepalive.{field}"), text);
                }
            }
        }
    }
}

/// Istio's rules for `outlierDetection` (validateOutlierDetection).
fn outlier_detection(c: &mut Check<'_>, at: &str, outlier: &OutlierDetection) {
    if let Some(text) = &outlier.base_ejection_time {
        duration(c, &format!("{at}.baseEjectionTime"), text);
    }
    if let Some(text) = &outlier.interval {
        duration(c, &format!("{at}.interval"), text);
    }
    if outlier.consecutive_errors.is_some_and(|n| n != 0) {
        c.warn(&format!("{at}.consecutiveErrors"), "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead (it is ignored, as by Istio)");
    }
    if !outlier.split_external_local_origin_errors
        && outlier
            .consecutive_local_origin_failures
            .is_some_and(|n| n > 0)
    {
        c.error(&format!("{at}.consecutiveLocalOriginFailures"), "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false");
    }
    for (field, value) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            c.error(
                &format!("{at}.{field}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

fn consistent_hash(c: &mut Check<'_>, at: &str, hash: &ConsistentHashLb) {
    let keys = [
        hash.http_header_name.is_some(),
        hash.http_cookie.is_some(),
        hash.use_source_ip.is_some(),
        hash.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        c.error(at, "consistentHash may have only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName");
    }
    if let Some(name) = &hash.http_header_name
        && !names::is_header_name(name)
    {
        c.error(
            &format!("{at}.httpHeaderName"),
            format!("header name {name} is not a valid header name"),
        );
    }
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            c.error(
                &format!("{at}.httpCookie.name"),
                "name required for HttpCookie",
            );
        }
        if let Some(ttl) = &cookie.ttl
            && names::parse_duration(ttl).is_none()
        {
            c.error(
                &format!("{at}.httpCookie.ttl"),
                format!("invalid duration {ttl:?}; write e.g. 1.5s, 300ms, 1m30s"),
            );
        }
    }
    if hash.minimum_ring_size.is_some() {
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            c.error(
                at,
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            );
        } else {
            c.warn(&format!("{at}.minimumRingSize"), "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead");
        }
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        c.error(at, "consistentHash may have only one of ringHash or maglev");
    }
    if let Some(maglev) = &hash.maglev {
        let path = format!("{at}.maglev.tableSize");
        match maglev.table_size.unwrap_or(0) {
            0 => c.error(&path, "tableSize must be set for maglev"),
            size if size >= 5_000_011 => {
                c.error(&path, "tableSize must be less than 5000011 for maglev")
            }
            size if !is_prime(size) => {
                c.error(&path, "tableSize must be a prime number for maglev")
            }
            _ => {}
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
