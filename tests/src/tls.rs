//! TLS test hosts: a CA that issues certificates for names, a rustls backend that owns its
//! certificate (answers `GET` with its id, echoes anything else), and a client that
//! verifies the chain it is shown against the CA and reports what it saw.
use std::{
    io::{self, BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    ClientConfig, ClientConnection, NamedGroup, RootCertStore, ServerConfig, ServerConnection,
    SignatureAlgorithm, StreamOwned,
    client::WebPkiServerVerifier,
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};

use crate::netns::NetNs;

/// A throwaway certificate authority; its certificate is also written to a PEM file for
/// curl and openssl.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
    dir: tempfile::TempDir,
}

/// A leaf certificate (chain: leaf, CA) and its key, in DER and as PEM files would hold them.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's certificate, then the CA's.
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf's serial number (for revocation lists) and SubjectPublicKeyInfo (DER).
    pub serial: Vec<u8>,
    pub spki: Vec<u8>,
}

impl Identity {
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Writes `<dir>/tls.crt` and `<dir>/tls.key` (a Kubernetes TLS Secret's layout);
    /// returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &self.chain_pem).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, &self.key_pem).unwrap_or_else(|e| panic!("{e}"));
        (cert, key)
    }

    /// Writes `<dir>/tls.crt`, `tls.key` and the `extra` files as the kubelet mounts a
    /// Secret and updates it: the files live in a fresh `..<n>` directory, each name is a
    /// symlink through `..data`, and `..data` is swapped to the new directory by a rename.
    pub fn mount(&self, dir: &Path, extra: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        static VERSION: AtomicUsize = AtomicUsize::new(0);
        let version = format!("..{}", VERSION.fetch_add(1, Ordering::Relaxed));
        let fresh = dir.join(&version);
        std::fs::create_dir_all(&fresh).unwrap_or_else(|e| panic!("{}: {e}", fresh.display()));
        let files = [
            ("tls.crt", self.chain_pem.as_str()),
            ("tls.key", &self.key_pem),
        ];
        for (name, content) in files.iter().chain(extra) {
            std::fs::write(fresh.join(name), content).unwrap_or_else(|e| panic!("{e}"));
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let staged = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        symlink(&version, &staged).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&staged, dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("CA params: {e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test CA");
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        TestCa {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            pem: cert.pem(),
            dir,
        }
    }

    /// A certificate for `names` (the first is also the common name), ECDSA P-256.
    pub fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        self.issue_with(names, key)
    }

    /// As [`TestCa::issue`], with a 2048-bit RSA key.
    pub fn issue_rsa(&self, names: &[&str]) -> Identity {
        // rcgen generates no RSA keys: aws-lc-rs does, rcgen signs with it.
        use aws_lc_rs::encoding::AsDer as _;
        let generated = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap_or_else(|e| panic!("RSA key: {e}"));
        let der = generated
            .as_der()
            .unwrap_or_else(|e| panic!("RSA key as PKCS#8: {e}"));
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der.as_ref().to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap_or_else(|e| panic!("RSA key: {e}"));
        self.issue_with(names, key)
    }

    fn issue_with(&self, names: &[&str], key: KeyPair) -> Identity {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("params for {names:?}: {e}"));
        // Serials unique per process, so a revocation list names exactly one leaf.
        static SERIAL: AtomicUsize = AtomicUsize::new(0x1000);
        let serial = (SERIAL.fetch_add(1, Ordering::Relaxed) as u64)
            .to_be_bytes()
            .to_vec();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("-"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("certificate for {names:?}: {e}"));
        Identity {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            chain_pem: cert.pem() + &self.pem,
            key_pem: key.serialize_pem(),
            serial,
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        }
    }

    /// A certificate revocation list (PEM) of this CA that revokes `revoked`.
    pub fn crl(&self, revoked: &[&Identity]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|identity| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&identity.serial),
                    revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .unwrap_or_else(|e| panic!("CRL: {e}"))
            .pem()
            .unwrap_or_else(|e| panic!("CRL PEM: {e}"))
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate as a PEM file (`curl --cacert`, `openssl s_client -CAfile`).
    pub fn pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .unwrap_or_else(|e| panic!("CA root: {e}"));
        Arc::new(
            ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A client that offers only `algorithm`'s signature schemes, so a server holding
    /// certificates of several key types has to show it that kind.
    pub fn client_config_verifying(&self, algorithm: SignatureAlgorithm) -> Arc<ClientConfig> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let supported = provider.signature_verification_algorithms;
        let mapping: Vec<_> = supported
            .mapping
            .iter()
            .filter(|(scheme, _)| {
                let name = format!("{scheme:?}");
                match algorithm {
                    SignatureAlgorithm::RSA => name.starts_with("RSA_"),
                    SignatureAlgorithm::ECDSA => name.starts_with("ECDSA_"),
                    _ => false,
                }
            })
            .copied()
            .collect();
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            signature_verification_algorithms: WebPkiSupportedAlgorithms {
                all: supported.all,
                // Leaked: one small list per test client.
                mapping: Vec::leak(mapping),
            },
            ..provider
        });
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .unwrap_or_else(|e| panic!("CA root: {e}"));
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap_or_else(|e| panic!("verifier: {e}"));
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|e| panic!("{e}"))
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A TLS server in a namespace: one thread per connection. `GET …` is answered with an
/// HTTP/1.1 200 whose body is the backend's id; any other first bytes are echoed until EOF.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub id: String,
    pub certificate: CertificateDer<'static>,
    handshakes: Arc<AtomicUsize>,
    /// The server name of each completed handshake.
    names: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsBackend {
    pub fn start(ns: &NetNs, addr: SocketAddr, identity: Identity, id: &str) -> TlsBackend {
        Self::start_verifying(ns, addr, identity, id, None)
    }

    /// [`TlsBackend::start`], requiring a client certificate `clients` signed when given.
    pub fn start_verifying(
        ns: &NetNs,
        addr: SocketAddr,
        identity: Identity,
        id: &str,
        clients: Option<&TestCa>,
    ) -> TlsBackend {
        let certificate = identity.leaf().clone();
        let builder = ServerConfig::builder();
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(ca.cert.clone())
                    .unwrap_or_else(|e| panic!("client CA: {e}"));
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap_or_else(|e| panic!("client verifier: {e}"));
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(
            builder
                .with_single_cert(identity.chain, identity.key)
                .unwrap_or_else(|e| panic!("server config: {e}")),
        );
        let listener = ns
            .run(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let names: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (stop2, handshakes2, name) = (stop.clone(), handshakes.clone(), id.to_owned());
        let names2 = names.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (config, handshakes, name) =
                            (config.clone(), handshakes2.clone(), name.clone());
                        let names = names2.clone();
                        std::thread::spawn(move || {
                            let _ = serve_tls(stream, config, &handshakes, &names, &name);
                        });
                    }
                    // Polled so that dropping the backend stops it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TlsBackend {
            addr,
            id: id.to_owned(),
            certificate,
            handshakes,
            names,
            stop,
            thread: Some(thread),
        }
    }

    /// Completed TLS handshakes so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// The server name (SNI) of each completed handshake so far.
    pub fn server_names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_tls(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    handshakes: &AtomicUsize,
    names: &std::sync::Mutex<Vec<String>>,
    id: &str,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let connection = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let name = tls.conn.server_name().unwrap_or_default().to_owned();
    names.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    handshakes.fetch_add(1, Ordering::Relaxed);
    let mut first = [0u8; 4];
    let n = read_some(&mut tls, &mut first)?;
    if n == 0 {
        return Ok(());
    }
    if &first[..n] == b"GET " {
        let mut reader = BufReader::new(&mut tls);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{id}",
            id.len()
        );
        tls.write_all(response.as_bytes())?;
    } else {
        tls.write_all(&first[..n])?;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = tls.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            tls.write_all(&buffer[..n])?;
        }
    }
    tls.conn.send_close_notify();
    tls.flush()
}

/// Reads at least one byte (up to the buffer), 0 at EOF.
fn read_some(tls: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    tls.read(buffer)
}

/// A client TLS session through the gateway, verified against the test CA for `sni`.
pub struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects to `addr`, sends `sni`, and completes the handshake (fails if the chain
    /// shown does not verify for `sni`).
    pub fn connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::over(tcp, sni, config)
    }

    /// The handshake over a connected socket.
    pub fn over(tcp: TcpStream, sni: &str, config: Arc<ClientConfig>) -> io::Result<Self> {
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
        let connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { stream })
    }

    /// The leaf certificate the server showed.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// The key exchange the handshake used.
    pub fn key_exchange(&self) -> Option<NamedGroup> {
        self.stream
            .conn
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    }

    /// `GET /` -> the backend's id (the body); the server closes afterwards.
    pub fn get(mut self) -> io::Result<String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")?;
        let mut response = String::new();
        match self.stream.read_to_string(&mut response) {
            Ok(_) => {}
            // The server closes the TCP connection right after close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e),
        }
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:?}")))
    }

    /// `GET <path>` for `host` on this connection, kept alive: (status, body). The
    /// response must carry a `content-length`.
    pub fn request(&mut self, host: &str, path: &str) -> io::Result<(u16, String)> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n")?;
        self.stream.flush()?;
        let mut reader = BufReader::new(&mut self.stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(io::Error::other)?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Sends `data` in chunks and checks each chunk comes back unchanged.
    pub fn echo(&mut self, data: &[u8]) -> io::Result<()> {
        let mut back = vec![0u8; 64 * 1024];
        for chunk in data.chunks(64 * 1024) {
            self.stream.write_all(chunk)?;
            let got = &mut back[..chunk.len()];
            self.stream.read_exact(got)?;
            if got != chunk {
                return Err(io::Error::other("the echo differs"));
            }
        }
        Ok(())
    }

    /// Sends close_notify and closes.
    pub fn close(mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }
}

/// The first flight of a rustls client for `sni`: its ClientHello records, as the wire
/// carries them (with rustls' default key shares, X25519MLKEM768 first).
pub fn client_hello(sni: &str, config: Arc<ClientConfig>) -> (ClientConnection, Vec<u8>) {
    let name = ServerName::try_from(sni.to_owned()).unwrap_or_else(|e| panic!("name {sni}: {e}"));
    let mut connection =
        ClientConnection::new(config, name).unwrap_or_else(|e| panic!("client: {e}"));
    let mut bytes = Vec::new();
    while connection.wants_write() {
        connection
            .write_tls(&mut bytes)
            .unwrap_or_else(|e| panic!("ClientHello: {e}"));
    }
    (connection, bytes)
}

/// Finishes the handshake of `connection`, whose ClientHello was already written to `tcp`.
pub fn finish_handshake(connection: ClientConnection, tcp: TcpStream) -> io::Result<TlsClient> {
    tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(TlsClient { stream })
}

/// A small, valid ClientHello for `sni` (one record, one cipher suite, the SNI extension):
/// for feeding a gateway byte by byte. No TLS server would complete a handshake with it.
pub fn minimal_client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = vec![0, 0];
    ext.extend((name.len() as u16 + 5).to_be_bytes());
    ext.extend((name.len() as u16 + 3).to_be_bytes());
    ext.push(0);
    ext.extend((name.len() as u16).to_be_bytes());
    ext.extend(name);
    let mut body = vec![3, 3];
    body.extend([0x5a; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hello = vec![22, 3, 1];
    hello.extend((body.len() as u16 + 4).to_be_bytes());
    hello.push(1);
    hello.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hello.extend(body);
    hello
}
