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
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use super::client_cert::{PinnedVerifier, Pins};
use crate::compile::plan::{CertificateSource, TlsTermination};

/// The files a server's TLS is made of: certificate chains with their private keys (one,
/// or an RSA and an ECDSA pair), the CA that signs client certificates (MUTUAL), and the
/// revocation lists they are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub pairs: Vec<KeyPair>,
    pub ca: Option<PathBuf>,
    pub crl: Option<Crl>,
}

/// A PEM file of certificate revocation lists: `caCrl` must exist; a credential's `ca.crl`
/// is used when the Secret has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub path: PathBuf,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Where the mesh workload identity is found under `--mesh-identity-dir`: the files
/// istio-agent writes with `OUTPUT_CERTS` (and the old `/etc/certs` Secret mount).
pub const MESH_CERTIFICATE: &str = "cert-chain.pem";
pub const MESH_KEY: &str = "key.pem";
pub const MESH_ROOT: &str = "root-cert.pem";

impl TlsFiles {
    /// Where `termination`'s files are: credentials looked up under `credentials`, the mesh
    /// identity (ISTIO_MUTUAL) under `mesh`, which is an error when not given.
    pub fn of(
        termination: &TlsTermination,
        credentials: &Path,
        mesh: Option<&Path>,
    ) -> anyhow::Result<TlsFiles> {
        let mutual = termination.mode != "SIMPLE";
        let mut pairs = Vec::new();
        for source in &termination.certificates {
            pairs.push(match source {
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
                CertificateSource::MeshIdentity => {
                    let Some(mesh) = mesh else {
                        bail!(
                            "mode ISTIO_MUTUAL needs the mesh workload identity as files: start \
                             sluice with --mesh-identity-dir (holding {MESH_CERTIFICATE}, \
                             {MESH_KEY} and {MESH_ROOT})"
                        );
                    };
                    return Ok(TlsFiles {
                        pairs: vec![KeyPair {
                            certificate: mesh.join(MESH_CERTIFICATE),
                            private_key: mesh.join(MESH_KEY),
                        }],
                        ca: Some(mesh.join(MESH_ROOT)),
                        crl: None,
                    });
                }
            });
        }
        // Istio takes `ca.crt` (and `ca.crl`) from the Secret itself, else from
        // `<name>-cacert`.
        let from_credential = |name: &str, file: &str| {
            let own = credentials.join(name).join(file);
            if own.exists() {
                own
            } else {
                credentials.join(format!("{name}-cacert")).join(file)
            }
        };
        let (ca, crl) = match termination.certificates.first() {
            _ if !mutual => (None, None),
            Some(CertificateSource::Credential { name }) => (
                Some(from_credential(name, "ca.crt")),
                Some(Crl {
                    path: from_credential(name, "ca.crl"),
                    required: false,
                }),
            ),
            _ => (
                termination.ca_certificates.as_ref().map(PathBuf::from),
                termination.ca_crl.as_ref().map(|path| Crl {
                    path: path.into(),
                    required: true,
                }),
            ),
        };
        Ok(TlsFiles { pairs, ca, crl })
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.pairs
            .iter()
            .flat_map(|p| [&p.certificate, &p.private_key])
            .chain(&self.ca)
            .chain(self.crl.as_ref().map(|c| &c.path))
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
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if termination.mode == "OPTIONAL_MUTUAL" {
                verifier = verifier.allow_unauthenticated();
            }
            if let Some(crl) = &files.crl
                && (crl.required || crl.path.exists())
            {
                // rustls's defaults are Envoy's: every certificate of the chain below the
                // trust anchor needs its issuer's list, and one without is refused.
                verifier = verifier.with_crls(revocation_lists(&crl.path)?);
            }
            let verifier = verifier
                .build()
                .with_context(|| format!("the client CA {}", ca.display()))?;
            match Pins::of(termination)? {
                None => builder.with_client_cert_verifier(verifier),
                Some(pins) => builder.with_client_cert_verifier(Arc::new(PinnedVerifier {
                    inner: verifier,
                    pins,
                })),
            }
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(ByKeyType(keys)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn revocation_lists(path: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    pem_objects(path, "certificate revocation list")
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    pem_objects(path, "certificate")
}

/// Every `T` in a PEM file, at least one.
fn pem_objects<T: PemObject>(path: &Path, what: &str) -> anyhow::Result<Vec<T>> {
    let objects: Vec<T> = T::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if objects.is_empty() {
        bail!("{} holds no {what}", path.display());
    }
    Ok(objects)
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
            ca_crl: None,
            subject_alt_names: Vec::new(),
            verify_spki: Vec::new(),
            verify_hash: Vec::new(),
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
            let got = TlsFiles::of(&t, dir, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.pairs[0].certificate, dir.join(certificate), "{t:?}");
            assert_eq!(got.ca, ca, "{t:?}");
        }
    }

    #[test]
    fn mesh_identity_needs_its_directory() {
        let t = termination("ISTIO_MUTUAL", CertificateSource::MeshIdentity, None);
        let Err(refused) = TlsFiles::of(&t, Path::new("/creds"), None) else {
            panic!("ISTIO_MUTUAL served without --mesh-identity-dir");
        };
        assert!(
            refused.to_string().contains("--mesh-identity-dir"),
            "{refused}"
        );
        let files = TlsFiles::of(&t, Path::new("/creds"), Some(Path::new("/mesh")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            files.pairs[0].certificate,
            Path::new("/mesh/cert-chain.pem")
        );
        assert_eq!(files.pairs[0].private_key, Path::new("/mesh/key.pem"));
        assert_eq!(files.ca.as_deref(), Some(Path::new("/mesh/root-cert.pem")));
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
