//! One of `config/examples` served end to end: a topology whose backend host also answers on
//! the addresses the example's ServiceEntries name, optionally a DNS server for the names it
//! resolves, and sluice running on a copy of the example (edited when a test must point it
//! at its own files), with either datapath.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::{
    bpffs::TempBpffs,
    dns::{DnsServer, NetnsResolvConf},
    sluice::Sluice,
    tls::TestCa,
    topology::{self, Topology},
};

/// A STATIC ServiceEntry `<name>.web.test` in namespace `web` with one port and these
/// endpoints, as a YAML document (with its leading `---`).
pub fn service_entry(name: &str, endpoints: &[Ipv4Addr], port: u16, protocol: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: '{a}'}}"))
        .collect();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  hosts: [{name}.web.test]\n  ports: [{{number: {port}, name: p, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// A TCP Gateway on `port` and a VirtualService splitting it across `backends` (address,
/// weight), each a STATIC ServiceEntry `b<i>.l4.test` in namespace `l4`.
pub fn l4_config(port: u16, backends: &[(std::net::IpAddr, u32)]) -> String {
    let mut text = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: l4}}\nspec:\n  servers:\n  - port: {{number: {port}, name: tcp, protocol: TCP}}\n    hosts: ['*']\n"
    );
    let mut routes = String::new();
    for (i, (address, weight)) in backends.iter().enumerate() {
        text += &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: b{i}, namespace: l4}}\nspec:\n  hosts: [b{i}.l4.test]\n  ports: [{{number: {port}, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints: [{{address: '{address}'}}]\n"
        );
        routes += &format!(
            "    - destination: {{host: b{i}.l4.test, port: {{number: {port}}}}}\n      weight: {weight}\n"
        );
    }
    text + &format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: l4}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  tcp:\n  - route:\n{routes}"
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Userspace,
    /// The TC programs attached to both gateway interfaces.
    Kernel,
}

impl Mode {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Userspace => &["--datapath", "userspace"],
            Mode::Kernel => topology::SLUICE_TC_ARGS,
        }
    }
}

pub struct Example {
    pub topology: Topology,
    pub ca: TestCa,
    _dns: Option<(NetnsResolvConf, DnsServer)>,
    bpffs: TempBpffs,
    config: tempfile::TempDir,
    sluice: Option<Sluice>,
}

impl Example {
    /// The network, with `addresses` added to the backend host and, when `dns` names some,
    /// a DNS server in the gateway namespace answering them.
    pub fn network(addresses: &[Ipv4Addr], dns: &[(&str, Ipv4Addr)]) -> Example {
        let topology = Topology::builder().ipv4_only().default_offloads().build();
        for address in addresses {
            topology.backend.ip(&[
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                topology::BACKEND_IF,
            ]);
        }
        let dns = (!dns.is_empty()).then(|| {
            let resolv = NetnsResolvConf::new(&topology.gateway, Ipv4Addr::LOCALHOST);
            let server = DnsServer::start(
                &topology.gateway,
                "127.0.0.1:53".parse().unwrap_or_else(|e| panic!("{e}")),
            );
            for (name, address) in dns {
                server.set(name, &[*address], 300);
            }
            (resolv, server)
        });
        Example {
            topology,
            ca: TestCa::new(),
            _dns: dns,
            bpffs: TempBpffs::new(),
            config: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            sluice: None,
        }
    }

    /// A directory that lives as long as the example, for files a test hands to sluice.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.config.path().join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }

    /// Runs sluice on `config/examples/<file>` and waits until it is ready.
    pub fn serve(&mut self, file: &str, mode: Mode) {
        let (status, ready) = self.serve_with(file, mode, &[], |text| text);
        assert_eq!(status, 200, "{ready}\n{}", self.sluice().log());
    }

    /// Runs sluice with `args` on `config/examples/<file>` as `edit` changes it, and waits
    /// until it is live; returns its `/ready` answer (503 when a listener is not served).
    pub fn serve_with(
        &mut self,
        file: &str,
        mode: Mode,
        args: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> (u16, String) {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/examples")
            .join(file);
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        self.serve_text(file, &edit(text), mode, args)
    }

    /// Runs sluice with `args` on `text` (written as `file`), and waits until it is live;
    /// returns its `/ready` answer.
    pub fn serve_text(
        &mut self,
        file: &str,
        text: &str,
        mode: Mode,
        args: &[&str],
    ) -> (u16, String) {
        let config = self.dir("config");
        std::fs::write(config.join(file), text).unwrap_or_else(|e| panic!("{e}"));
        let all: Vec<String> = [
            "-f",
            &config.to_string_lossy(),
            "--bpffs",
            &self.bpffs.path().to_string_lossy(),
            "--instance",
            "istio",
        ]
        .iter()
        .chain(mode.args())
        .chain(args)
        .map(|s| s.to_string())
        .collect();
        let mut sluice =
            Sluice::spawn(&self.topology.gateway, &[], crate::sluice::ADMIN_ADDR, &all);
        let ready = sluice.wait_live(std::time::Duration::from_secs(30));
        self.sluice = Some(sluice);
        ready
    }

    /// Stops the running daemon (and waits for it), so the next `serve` starts afresh.
    pub fn stop(&mut self) {
        if let Some(sluice) = self.sluice.take() {
            sluice.stop();
        }
    }

    pub fn sluice(&self) -> &Sluice {
        self.sluice
            .as_ref()
            .unwrap_or_else(|| panic!("sluice not started"))
    }

    /// `curl -v https://<host>:<port><path>` through the gateway, verifying against the
    /// test CA: (status code, the certificate subject curl printed).
    pub fn curl_tls(&self, host: &str, port: u16, path: &str) -> (String, String) {
        let out = self.topology.client.exec(
            "curl",
            &[
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &self.ca.pem_path().to_string_lossy(),
                "--resolve",
                &format!("{host}:{port}:{}", topology::GATEWAY_CLIENT_V4),
                &format!("https://{host}:{port}{path}"),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let subject = stderr
            .lines()
            .find_map(|l| {
                let l = l.strip_prefix('*')?.trim_start();
                l.strip_prefix("subject: ")
            })
            .unwrap_or_default()
            .to_owned();
        (String::from_utf8_lossy(&out.stdout).into_owned(), subject)
    }
}

/// Two tests running `scenario(mode)`, one per datapath, each when root tests can run.
#[macro_export]
macro_rules! in_both_datapaths {
    ($scenario:ident: $userspace:ident, $kernel:ident) => {
        #[test]
        fn $userspace() {
            if $crate::root::can_run(stringify!($userspace)) {
                $scenario($crate::example::Mode::Userspace);
            }
        }

        #[test]
        fn $kernel() {
            if $crate::root::can_run(stringify!($kernel)) {
                $scenario($crate::example::Mode::Kernel);
            }
        }
    };
}
