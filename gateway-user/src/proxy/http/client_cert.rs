//! Client certificates at MUTUAL and OPTIONAL_MUTUAL servers, beyond the CA's signature and
//! the revocation lists (which the webpki verifier checks): the subject alternative names
//! and digests a server pins them to, as Envoy's `match_subject_alt_names`,
//! `verify_certificate_spki` and `verify_certificate_hash` do, and the
//! `x-forwarded-client-cert` header that tells routes and upstreams who the client is, in
//! the form Istio's gateways have Envoy set it (`SANITIZE_SET`: a client's own header is
//! never passed on).
use std::{io, sync::Arc};

use anyhow::Context as _;
use http::HeaderValue;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    prelude::FromDer as _,
    x509::{AttributeTypeAndValue, X509Name},
};

use crate::{
    compile::plan::TlsTermination,
    config::digests::{Sha256, certificate_hash, spki_digest},
};

/// What a client certificate must also be: one of `names` among its subject alternative
/// names (when any are given), and one of the SPKI or certificate digests (when any are
/// given; Envoy admits a certificate matching either list).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pins {
    names: Vec<String>,
    spki: Vec<Sha256>,
    hashes: Vec<Sha256>,
}

impl Pins {
    /// The pins of `termination`, `None` when it has none.
    pub fn of(termination: &TlsTermination) -> anyhow::Result<Option<Pins>> {
        let digests = |texts: &[String], parse: fn(&str) -> Result<Sha256, String>| {
            texts
                .iter()
                .map(|t| parse(t).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let pins = Pins {
            names: termination.subject_alt_names.clone(),
            spki: digests(&termination.verify_spki, spki_digest)
                .context("verifyCertificateSpki")?,
            hashes: digests(&termination.verify_hash, certificate_hash)
                .context("verifyCertificateHash")?,
        };
        Ok((pins != Pins::default()).then_some(pins))
    }

    /// Whether `certificate` (DER) passes, or what it lacks.
    pub fn check(&self, certificate: &[u8]) -> Result<(), &'static str> {
        let Ok((_, parsed)) = X509Certificate::from_der(certificate) else {
            return Err("unparsable");
        };
        if !self.names.is_empty() {
            let names = alt_names(&parsed);
            if !names
                .iter()
                .any(|n| self.names.iter().any(|want| san_matches(n, want)))
            {
                return Err("subject alternative name");
            }
        }
        if !self.spki.is_empty() || !self.hashes.is_empty() {
            let spki = sha256(parsed.public_key().raw);
            let hash = sha256(certificate);
            if !self.spki.contains(&spki) && !self.hashes.contains(&hash) {
                return Err("digest");
            }
        }
        Ok(())
    }
}

/// Whether a certificate's name `name` is the one `wanted`, as Envoy's exact SAN matcher
/// compares DNS names: equal (DNS case-insensitively), or a certificate's `*.` wildcard
/// standing for the one left-most label of `wanted`.
pub fn san_matches(name: &str, wanted: &str) -> bool {
    if name == wanted || name.eq_ignore_ascii_case(wanted) && !name.contains(':') {
        return true;
    }
    match (name.strip_prefix("*."), wanted.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && !label.contains('*') && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

fn sha256(bytes: &[u8]) -> Sha256 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// [`alt_names`] of a certificate in DER; none when it does not parse.
pub fn alt_names_of(certificate: &[u8]) -> Vec<String> {
    X509Certificate::from_der(certificate)
        .map(|(_, parsed)| alt_names(&parsed))
        .unwrap_or_default()
}

/// Every subject alternative name of a certificate as text (DNS names, URIs, e-mail
/// addresses, IP addresses), the forms Envoy compares `subjectAltNames` with.
fn alt_names(certificate: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(extension)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) | GeneralName::RFC822Name(n) => {
                Some((*n).to_owned())
            }
            GeneralName::IPAddress(bytes) => ip_text(bytes),
            _ => None,
        })
        .collect()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// The webpki verifier (CA, revocation lists) followed by a server's pins.
#[derive(Debug)]
pub struct PinnedVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub pins: Pins,
}

impl ClientCertVerifier for PinnedVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.pins.check(end_entity).map_err(|_| {
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a handshake failed, as the `sluice_http_tls_refused_total` reason: the client
/// certificate's fault where it was, else `handshake`.
pub fn refusal(error: &io::Error) -> &'static str {
    let Some(error) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return "handshake";
    };
    match error {
        Error::NoCertificatesPresented => "client_certificate_missing",
        Error::InvalidCertificate(CertificateError::Revoked) => "client_certificate_revoked",
        Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            "client_certificate_not_pinned"
        }
        Error::InvalidCertificate(_) => "client_certificate_invalid",
        _ => "handshake",
    }
}

/// The `x-forwarded-client-cert` value for a connection whose client showed `chain`, as
/// Envoy writes it with Istio's gateway settings (hash, certificate, subject, URI and DNS
/// names): `Hash=<hex>;Cert="<url-encoded PEM>";Subject="<RFC 2253>";URI=…;DNS=…`.
pub fn forwarded_client_cert(chain: &[CertificateDer<'_>]) -> Option<HeaderValue> {
    let leaf = chain.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    let mut fields = vec![format!("Hash={}", hex(&sha256(leaf)))];
    fields.push(format!("Cert=\"{}\"", url_encode(&pem(leaf))));
    fields.push(format!("Subject=\"{}\"", rfc2253(parsed.subject())));
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(extension)) = parsed.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(format!("URI={u}")),
                GeneralName::DNSName(d) => dns.push(format!("DNS={d}")),
                _ => {}
            }
        }
    }
    // Envoy writes `URI=` even without one; DNS only when there are names.
    if uris.is_empty() {
        uris.push("URI=".to_owned());
    }
    fields.extend(uris);
    fields.extend(dns);
    HeaderValue::from_str(&fields.join(";")).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A distinguished name as RFC 2253 writes it (OpenSSL's `XN_FLAG_RFC2253`, which Envoy
/// uses): the last RDN first, `,` between RDNs, `+` inside one, special characters escaped.
fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute(attribute: &AttributeTypeAndValue<'_>) -> String {
    let oid = attribute.attr_type();
    let kind = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
        .map_or_else(|_| oid.to_id_string(), str::to_owned);
    let value = match attribute.as_str() {
        Ok(text) => escape(text),
        // Not a string type: `#` and the value's hex, as RFC 2253 prescribes.
        Err(_) => format!("#{}", hex(attribute.attr_value().data)),
    };
    format!("{kind}={value}")
}

/// RFC 2253 escaping as OpenSSL's `XN_FLAG_RFC2253` writes it: specials with a backslash,
/// control characters and every byte of a non-ASCII character as `\XX` (so the header
/// value stays visible ASCII).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if c.is_ascii_control() || !c.is_ascii() {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
            continue;
        }
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str], subject: &[(rcgen::DnType, &str)]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        for name in names {
            let text = rcgen::string::Ia5String::try_from(*name).unwrap_or_else(|e| panic!("{e}"));
            params.subject_alt_names.push(if name.contains("://") {
                rcgen::SanType::URI(text)
            } else {
                rcgen::SanType::DnsName(text)
            });
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .clone()
    }

    fn termination(names: &[&str], spki: &[String], hashes: &[String]) -> TlsTermination {
        TlsTermination {
            hosts: vec![],
            mode: "MUTUAL".into(),
            certificates: vec![],
            ca_certificates: None,
            ca_crl: None,
            subject_alt_names: names.iter().map(|n| n.to_string()).collect(),
            verify_spki: spki.to_vec(),
            verify_hash: hashes.to_vec(),
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            cipher_suites: vec![],
        }
    }

    #[test]
    fn pins_admit_what_they_name() {
        use base64::Engine as _;
        let cert = certificate(
            &["client.example.com", "spiffe://cluster.local/ns/a/sa/b"],
            &[(rcgen::DnType::CommonName, "client")],
        );
        let (_, parsed) = X509Certificate::from_der(&cert).unwrap_or_else(|e| panic!("{e}"));
        let spki =
            [base64::engine::general_purpose::STANDARD.encode(sha256(parsed.public_key().raw))];
        let hash = [hex(&sha256(&cert)).to_uppercase()];
        let other = ["0".repeat(64)];
        let other_spki = [base64::engine::general_purpose::STANDARD.encode([7u8; 32])];
        let none: &[String] = &[];
        type Case<'a> = (
            &'a [&'a str],
            &'a [String],
            &'a [String],
            Result<(), &'a str>,
        );
        let cases: &[Case] = &[
            (&["client.example.com"], none, none, Ok(())),
            (&["spiffe://cluster.local/ns/a/sa/b"], none, none, Ok(())),
            (
                &["other.example.com"],
                none,
                none,
                Err("subject alternative name"),
            ),
            (&[], &spki, none, Ok(())),
            (&[], &other_spki, none, Err("digest")),
            (&[], none, &hash, Ok(())),
            (&[], none, &other, Err("digest")),
            // Either digest list admits (Envoy's rule) ...
            (&[], &other_spki, &hash, Ok(())),
            // ... but names and digests must both hold.
            (
                &["other.example.com"],
                &spki,
                none,
                Err("subject alternative name"),
            ),
        ];
        for (names, spki, hashes, want) in cases {
            let pins = Pins::of(&termination(names, spki, hashes))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no pins"));
            assert_eq!(pins.check(&cert), *want, "{names:?} {spki:?} {hashes:?}");
        }
        assert_eq!(Pins::of(&termination(&[], none, none)).ok(), Some(None));
    }

    #[test]
    fn forwarded_client_cert_as_envoy_writes_it() {
        let cert = certificate(
            &["client.example.com", "spiffe://cluster.local/ns/a/sa/b"],
            &[
                (rcgen::DnType::CountryName, "US"),
                (rcgen::DnType::OrganizationName, "Acme, Inc."),
                (rcgen::DnType::CommonName, "client.example.com"),
            ],
        );
        let value = forwarded_client_cert(std::slice::from_ref(&cert))
            .unwrap_or_else(|| panic!("no header"));
        let text = value.to_str().unwrap_or_else(|e| panic!("{e}"));
        let fields: Vec<&str> = text.split(';').collect();
        assert_eq!(fields[0], format!("Hash={}", hex(&sha256(&cert))));
        assert!(
            fields[1].starts_with("Cert=\"-----BEGIN%20CERTIFICATE-----%0AMII"),
            "{}",
            fields[1]
        );
        assert!(
            fields[1].ends_with("-----END%20CERTIFICATE-----%0A\""),
            "{}",
            fields[1]
        );
        assert_eq!(
            &fields[2..],
            [
                "Subject=\"CN=client.example.com,O=Acme\\, Inc.,C=US\"",
                "URI=spiffe://cluster.local/ns/a/sa/b",
                "DNS=client.example.com",
            ]
        );
        // Without a URI name Envoy still writes the key.
        let plain = certificate(&["a.example.com"], &[(rcgen::DnType::CommonName, "a")]);
        let value = forwarded_client_cert(&[plain]).unwrap_or_else(|| panic!("no header"));
        let text = value.to_str().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.ends_with(";Subject=\"CN=a\";URI=;DNS=a.example.com"),
            "{text}"
        );
        assert_eq!(forwarded_client_cert(&[]), None);
    }

    #[test]
    fn escapes_as_rfc2253() {
        assert_eq!(
            escape("a,b+c\"d\\e<f>g;h"),
            "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h"
        );
        assert_eq!(escape("#lead and trail "), "\\#lead and trail\\ ");
        assert_eq!(escape(" "), "\\ ");
        assert_eq!(escape("Müller\n"), "M\\C3\\BCller\\0A");
    }

    #[test]
    fn names_match_as_envoy_compares_them() {
        for (name, wanted, want) in [
            ("a.example.com", "a.example.com", true),
            ("A.Example.com", "a.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("b.example.com", "a.example.com", false),
            (
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/b",
                true,
            ),
            (
                "spiffe://cluster.local/ns/a/sa/B",
                "spiffe://cluster.local/ns/a/sa/b",
                false,
            ),
        ] {
            assert_eq!(san_matches(name, wanted), want, "{name} for {wanted}");
        }
    }
}
