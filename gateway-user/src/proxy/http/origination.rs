//! TLS origination (DestinationRule `tls` SIMPLE or MUTUAL): the gateway speaks TLS to a
//! destination's endpoints. Their certificates are verified against the rule's
//! `caCertificates`, a credential's `ca.crt`, `--upstream-ca-file`, or the system's CAs, in
//! that order of preference; the name checked is one of `subjectAltNames` when given, else
//! the server name sent (`sni`, else the destination's host). `insecureSkipVerify` checks
//! nothing but the handshake. MUTUAL presents a client certificate (files or a credential's
//! `tls.crt`/`tls.key`). ALPN offers what the destination is spoken to in.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::ParsedCertificate,
};
use tokio_rustls::TlsConnector;

use super::{
    client_cert::{alt_names_of, san_matches},
    tls::{MESH_CERTIFICATE, MESH_KEY, MESH_ROOT},
};
use crate::compile::plan::UpstreamTls;

/// Where origination finds what a rule does not name.
#[derive(Debug, Clone)]
pub struct TlsSources {
    /// `--credentials-dir`: `credentialName` is `<dir>/<name>/{tls.crt,tls.key,ca.crt}`.
    pub credentials: PathBuf,
    /// `--upstream-ca-file`: the CAs when a rule names none (else the system's).
    pub ca_file: Option<PathBuf>,
    /// `--mesh-identity-dir`: the mesh identity ISTIO_MUTUAL presents and trusts.
    pub mesh_identity: Option<PathBuf>,
}

impl Default for TlsSources {
    fn default() -> Self {
        TlsSources {
            credentials: PathBuf::from("/etc/sluice/credentials"),
            ca_file: None,
            mesh_identity: None,
        }
    }
}

/// A destination's TLS: the connector, the name it sends, and an id that keeps its
/// connections apart from plain ones (and another rule's) to the same endpoint.
pub struct ClientTls {
    pub id: u64,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("id", &self.id)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The TLS handshake on `stream`, within `timeout`; a failure is a connect failure.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
        timeout: std::time::Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let handshake = self.connector.connect(self.server_name.clone(), stream);
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }
}

/// The client side of `tls`, speaking HTTP/2 when `http2`.
pub fn client_tls(
    tls: &UpstreamTls,
    http2: bool,
    sources: &TlsSources,
) -> anyhow::Result<ClientTls> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let credential = tls
        .credential_name
        .as_ref()
        .map(|n| sources.credentials.join(n));
    let mesh = match (&sources.mesh_identity, tls.mesh) {
        (Some(dir), true) => Some(dir),
        (None, true) => bail!(
            "ISTIO_MUTUAL needs the mesh identity as files: start sluice with --mesh-identity-dir"
        ),
        _ => None,
    };
    let roots = if tls.insecure_skip_verify {
        RootCertStore::empty()
    } else if let Some(dir) = mesh {
        roots_from(&dir.join(MESH_ROOT))?
    } else {
        let own_ca = tls
            .ca_certificates
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| {
                credential
                    .as_ref()
                    .map(|c| c.join("ca.crt"))
                    .filter(|p| p.exists())
            })
            .or_else(|| sources.ca_file.clone());
        match own_ca {
            Some(path) => roots_from(&path)?,
            None => system_roots()?,
        }
    };
    let verifier = Arc::new(UpstreamVerifier {
        roots: Arc::new(roots),
        names: tls.subject_alt_names.clone(),
        // The mesh's names are workload identities (SPIFFE URIs) Sluice does not know:
        // ISTIO_MUTUAL checks the chain to the mesh's root, and the names listed if any.
        any_name: mesh.is_some() && tls.subject_alt_names.is_empty(),
        insecure: tls.insecure_skip_verify,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = if tls.mutual {
        let (certificate, key) = match (&credential, &tls.client_certificate, &tls.private_key) {
            _ if mesh.is_some() => {
                let dir = mesh.map_or_else(PathBuf::new, Clone::clone);
                (dir.join(MESH_CERTIFICATE), dir.join(MESH_KEY))
            }
            (Some(dir), _, _) => (dir.join("tls.crt"), dir.join("tls.key")),
            (None, Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
            _ => bail!(
                "MUTUAL origination needs clientCertificate and privateKey, or credentialName"
            ),
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certificate)
            .with_context(|| format!("reading {}", certificate.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", certificate.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading the private key {}", key.display()))?;
        builder
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("the client certificate {}", certificate.display()))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let server_name = ServerName::try_from(tls.sni.clone())
        .with_context(|| format!("the server name {:?}", tls.sni))?;
    // The same settings, the same id: routes and reloads share pooled connections.
    let id = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        (tls, http2).hash(&mut hasher);
        hasher.finish() | 1
    };
    Ok(ClientTls {
        id,
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

fn roots_from(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        let certificate = certificate.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(certificate)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no CA certificate", path.display());
    }
    Ok(roots)
}

/// The system's CAs, read once (rustls-native-certs: `SSL_CERT_FILE`, `SSL_CERT_DIR`, or
/// the distribution's bundle).
fn system_roots() -> anyhow::Result<RootCertStore> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    let loaded = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(format!("no system CA certificates ({:?})", found.errors));
        }
        Ok(roots)
    });
    loaded.clone().map_err(anyhow::Error::msg)
}

/// Verifies an upstream's certificate: its chain to the roots, then its name.
#[derive(Debug)]
struct UpstreamVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<String>,
    /// Any name will do (the chain is still checked).
    any_name: bool,
    insecure: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let named = self.any_name
            || if self.names.is_empty() {
                verify_server_name(&certificate, server_name).is_ok()
            } else {
                alt_names_of(end_entity)
                    .iter()
                    .any(|name| self.names.iter().any(|want| san_matches(name, want)))
            };
        if !named {
            return Err(Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
