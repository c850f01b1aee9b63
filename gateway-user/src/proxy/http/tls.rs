//! TLS termination for HTTPS listeners: each server's certificate (files, or a
//! `credentialName` looked up under `--credentials-dir` as a mounted Kubernetes TLS Secret:
//! `<dir>/<name>/tls.crt`, `tls.key`), chosen per handshake by the ClientHello's SNI against
//! the server's hosts (exact, then the longest wildcard suffix, then a `*` server or the
//! first one), with the protocol versions the servers allow and ALPN `h2`, `http/1.1`.
use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::compile::plan::{CertificateSource, TlsTermination};

/// Certificates by server name.
#[derive(Debug, Default)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` for `*.example.com`, longest first.
    suffixes: Vec<(String, Arc<CertifiedKey>)>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return self.fallback.clone();
        };
        let name = name.to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
                    .map(|(_, k)| k)
            })
            .or(self.fallback.as_ref())
            .cloned()
    }
}

/// The rustls configuration of one HTTPS listener.
pub fn server_config(
    terminations: &[TlsTermination],
    credentials: &Path,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut names = ByName::default();
    let (mut min, mut max) = ("1.3", "1.2");
    for termination in terminations {
        let key = Arc::new(
            load(&termination.certificate, credentials, &provider).with_context(|| {
                format!("the certificate of the server for {:?}", termination.hosts)
            })?,
        );
        min = min.min(termination.min_version.as_str());
        max = max.max(termination.max_version.as_str());
        for host in &termination.hosts {
            let host = crate::config::names::split_namespace(host)
                .1
                .to_ascii_lowercase();
            if host == "*" {
                names.fallback.get_or_insert_with(|| key.clone());
            } else if let Some(suffix) = host.strip_prefix('*') {
                names.suffixes.push((suffix.to_owned(), key.clone()));
            } else {
                names.exact.entry(host).or_insert_with(|| key.clone());
            }
        }
        // A ClientHello without SNI gets the first server's certificate.
        names.fallback.get_or_insert(key);
    }
    names
        .suffixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        ("1.2", &rustls::version::TLS12),
        ("1.3", &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= min && *v <= max)
    .map(|(_, v)| v)
    .collect();
    if versions.is_empty() {
        bail!("the servers' protocol versions leave none: from TLS {min} to {max}");
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(names));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load(
    source: &CertificateSource,
    credentials: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let (cert, key) = match source {
        CertificateSource::Files {
            certificate,
            private_key,
        } => (
            Path::new(certificate).to_path_buf(),
            Path::new(private_key).to_path_buf(),
        ),
        CertificateSource::Credential { name } => {
            let dir = credentials.join(name);
            (dir.join("tls.crt"), dir.join("tls.key"))
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the key in {} does not match its certificate",
            cert.display()
        )
    })
}
