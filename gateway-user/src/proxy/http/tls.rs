//! TLS termination for HTTPS listeners. Each Gateway server's `tls` becomes its own rustls
//! configuration (certificates, protocol versions, cipher suites, client certificates for
//! MUTUAL and OPTIONAL_MUTUAL); `server_names` picks one per handshake by the SNI.
//! Certificates come from files (`serverCertificate`/`privateKey`, `tlsCertificates`), or from
//! `credentialName(s)` looked up under `--credentials-dir` as a mounted Kubernetes TLS Secret
//! (`<dir>/<name>/tls.crt`, `tls.key`, `ca.crt`, or the CA in `<dir>/<name>-cacert/ca.crt`).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use rustls::{
    CipherSuite, RootCertStore, ServerConfig, SignatureAlgorithm, SupportedCipherSuite,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use crate::compile::plan::{CertificateSource, TlsTermination};

/// The files a server's TLS is made of: certificate chains with their private keys (one,
/// or an RSA and an ECDSA pair), and the CA that signs client certificates (MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub pairs: Vec<KeyPair>,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl TlsFiles {
    /// Where `termination`'s files are, credentials looked up under `credentials`.
    pub fn of(termination: &TlsTermination, credentials: &Path) -> TlsFiles {
        let mutual = termination.mode != "SIMPLE";
        let pairs = termination
            .certificates
            .iter()
            .map(|source| match source {
                CertificateSource::Files {
                    certificate,
                    private_key,
                } => KeyPair {
                    certificate: certificate.into(),
                    private_key: private_key.into(),
                },
                CertificateSource::Credential { name } => KeyPair {
                    certificate: credentials.join(name).join("tls.crt"),
                    private_key: credentials.join(name).join("tls.key"),
                },
            })
            .collect();
        let ca = match termination.certificates.first() {
            _ if !mutual => None,
            Some(CertificateSource::Credential { name }) => {
                // Istio takes `ca.crt` from the Secret itself, else from `<name>-cacert`.
                let own = credentials.join(name).join("ca.crt");
                Some(if own.exists() {
                    own
                } else {
                    credentials.join(format!("{name}-cacert")).join("ca.crt")
                })
            }
            _ => termination.ca_certificates.as_ref().map(PathBuf::from),
        };
        TlsFiles { pairs, ca }
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.pairs
            .iter()
            .flat_map(|p| [&p.certificate, &p.private_key])
            .chain(&self.ca)
            .map(PathBuf::as_path)
    }

    /// The first certificate file, to name the server in logs.
    pub fn first_certificate(&self) -> String {
        self.pairs
            .first()
            .map_or_else(String::new, |p| p.certificate.display().to_string())
    }
}

/// A server's certificates, the one for a handshake chosen by the signature schemes the
/// client offers: ECDSA when it can verify it (as Envoy prefers), else the next one.
#[derive(Debug)]
struct ByKeyType(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for ByKeyType {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or(self.0.first())
            .cloned()
    }
}

/// Envoy's (BoringSSL's) names of the TLS 1.2 suites rustls implements.
const CIPHER_SUITES: [(&str, CipherSuite); 6] = [
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The provider's suites, TLS 1.2 ones narrowed to `names` when given (as Envoy's
/// `cipherSuites`, which leave TLS 1.3's alone).
fn cipher_suites(names: &[String]) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let all = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    if names.is_empty() {
        return Ok(all);
    }
    let mut wanted = Vec::new();
    for name in names {
        let Some((_, suite)) = CIPHER_SUITES.iter().find(|(n, _)| n == name) else {
            bail!("cipher suite {name} is not one rustls implements");
        };
        wanted.push(*suite);
    }
    Ok(all
        .into_iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) || wanted.contains(&s.suite()))
        .collect())
}

/// The rustls configuration of one server, read from `files`.
pub fn server_config(
    termination: &TlsTermination,
    files: &TlsFiles,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(&termination.cipher_suites)?,
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        ("1.2", &rustls::version::TLS12),
        ("1.3", &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| {
        *v >= termination.min_version.as_str() && *v <= termination.max_version.as_str()
    })
    .map(|(_, v)| v)
    .collect();
    if versions.is_empty() {
        bail!(
            "the server's protocol versions leave none: from TLS {} to {}",
            termination.min_version,
            termination.max_version
        );
    }
    let mut keys = Vec::new();
    for pair in &files.pairs {
        let chain = certificates(&pair.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&pair.private_key)
            .with_context(|| format!("reading the private key {}", pair.private_key.display()))?;
        let key = CertifiedKey::from_der(chain, key, &provider).with_context(|| {
            format!(
                "the key in {} does not match the certificate in {}",
                pair.private_key.display(),
                pair.certificate.display()
            )
        })?;
        keys.push(Arc::new(key));
    }
    if keys.is_empty() {
        bail!("the server has no certificate");
    }
    keys.sort_by_key(|k| k.key.algorithm() != SignatureAlgorithm::ECDSA);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("TLS protocol versions")?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .with_context(|| format!("a CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if termination.mode == "OPTIONAL_MUTUAL" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("the client CA {}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(ByKeyType(keys)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn termination(mode: &str, certificate: CertificateSource, ca: Option<&str>) -> TlsTermination {
        TlsTermination {
            hosts: vec!["a.example.com".into()],
            mode: mode.into(),
            certificates: vec![certificate],
            ca_certificates: ca.map(str::to_owned),
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            cipher_suites: Vec::new(),
        }
    }

    #[test]
    fn files_of_a_server_as_istio_finds_them() {
        let credentials = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = credentials.path();
        std::fs::create_dir_all(dir.join("own/")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("own/ca.crt"), "").unwrap_or_else(|e| panic!("{e}"));
        let credential = |name: &str| CertificateSource::Credential { name: name.into() };
        let files = CertificateSource::Files {
            certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
        };
        let cases = [
            (
                termination("SIMPLE", credential("own"), None),
                "own/tls.crt",
                None,
            ),
            (
                termination("MUTUAL", credential("own"), None),
                "own/tls.crt",
                Some(dir.join("own/ca.crt")),
            ),
            // No ca.crt in the Secret: Istio's `<name>-cacert` Secret.
            (
                termination("MUTUAL", credential("other"), None),
                "other/tls.crt",
                Some(dir.join("other-cacert/ca.crt")),
            ),
            (
                termination("SIMPLE", files.clone(), Some("/ca.pem")),
                "/c.pem",
                None,
            ),
            (
                termination("OPTIONAL_MUTUAL", files, Some("/ca.pem")),
                "/c.pem",
                Some("/ca.pem".into()),
            ),
        ];
        for (t, certificate, ca) in cases {
            let got = TlsFiles::of(&t, dir);
            assert_eq!(got.pairs[0].certificate, dir.join(certificate), "{t:?}");
            assert_eq!(got.ca, ca, "{t:?}");
        }
    }

    #[test]
    fn cipher_suites_narrow_tls12_only() {
        let all = cipher_suites(&[]).unwrap_or_else(|e| panic!("{e}"));
        let tls13 = all
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .count();
        let chosen = cipher_suites(&["ECDHE-RSA-AES128-GCM-SHA256".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chosen.len(), tls13 + 1);
        assert!(
            chosen
                .iter()
                .any(|s| s.suite() == CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        );
        let Err(refused) = cipher_suites(&["AES128-SHA".into()]) else {
            panic!("AES128-SHA accepted");
        };
        assert!(refused.to_string().contains("AES128-SHA"), "{refused}");
        // Every name the validator lets through maps to a suite.
        for name in crate::config::names::RUSTLS_CIPHER_SUITES {
            assert!(cipher_suites(&[name.to_string()]).is_ok(), "{name}");
        }
    }
}
