//! What the daemon publishes for the admin server and the metrics: server lifecycle, the
//! running datapath, the applied config and reload history, and what serves the listeners.
//! Written rarely, read per request.
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use serde::Serialize;
use tokio::sync::watch;

use crate::{
    daemon::snapshot::{ConfigStatus, Rejected, Snapshot},
    datapath::{DatapathStatus, kernel::CounterReader, l4::L4KernelStats},
    proxy::{http::metrics::HttpMetrics, l4::L4Metrics, sni::metrics::SniMetrics},
};

/// Server lifecycle, reported by `/ready` as Envoy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerState {
    /// Starting: the datapath is not attached or listeners are not bound yet.
    Initializing,
    /// Serving.
    Live,
    /// Shutting down.
    Draining,
    /// A background task died: `/healthz` fails and the daemon exits non-zero, for the
    /// orchestrator to restart it.
    Failed,
}

/// The running datapath as the admin server sees it.
#[derive(Debug, Clone)]
pub struct DatapathView {
    pub status: DatapathStatus,
    pub counters: Option<CounterReader>,
}

/// What the daemon publishes to the admin server; written rarely, read per request.
#[derive(Debug)]
pub struct SharedState {
    server_state: RwLock<ServerState>,
    datapath: RwLock<Option<DatapathView>>,
    config: RwLock<ConfigStatus>,
    /// The applied config, for the parts of the daemon that serve it.
    applied: watch::Sender<Option<Arc<Snapshot>>>,
    pub l4: Arc<L4Metrics>,
    pub sni: Arc<SniMetrics>,
    pub http: Arc<HttpMetrics>,
    pub dns: Arc<super::dns::DnsMetrics>,
    pub health: Arc<super::health::Health>,
    serving: RwLock<Serving>,
    kernel_l4: RwLock<Option<Arc<L4KernelStats>>>,
}

/// What actually serves the Plan's listeners now (the Plan says where they should run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Serving {
    /// The config generation the listeners below serve. It trails `config.generation` for
    /// the moment it takes to swap listeners and routes after a reload.
    pub generation: u64,
    /// L4 listeners whose connections the kernel forwards (XDP full NAT).
    pub l4_kernel: Vec<SocketAddr>,
    /// L4 listeners bound by the userspace forwarder: all of them, as the fallback for what
    /// the kernel does not take (and the only path in userspace mode).
    pub l4_userspace: Vec<SocketAddr>,
    /// TLS passthrough listeners bound by the SNI server.
    pub sni: Vec<SocketAddr>,
    /// How their bytes travel after the SNI decision: `Sockmap`, `Splice` or `Copy`.
    pub sni_byte_path: String,
    /// HTTP and HTTPS listeners bound by the HTTP proxy.
    pub http: Vec<SocketAddr>,
    /// Listeners of the Plan that nothing serves, and why; `/ready` is 503 while there are.
    pub unserved: Vec<Unserved>,
}

/// A listener of the Plan that is not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unserved {
    pub address: SocketAddr,
    pub reason: String,
}

impl SharedState {
    pub fn new() -> Arc<SharedState> {
        Arc::new(SharedState {
            server_state: RwLock::new(ServerState::Initializing),
            datapath: RwLock::new(None),
            config: RwLock::new(ConfigStatus::default()),
            applied: watch::channel(None).0,
            l4: Arc::default(),
            sni: Arc::default(),
            http: Arc::default(),
            dns: Arc::default(),
            health: Arc::default(),
            serving: RwLock::new(Serving::default()),
            kernel_l4: RwLock::new(None),
        })
    }

    pub fn set_state(&self, state: ServerState) {
        *write(&self.server_state) = state;
    }

    pub fn state(&self) -> ServerState {
        *read(&self.server_state)
    }

    pub fn set_datapath(&self, view: DatapathView) {
        *write(&self.datapath) = Some(view);
    }

    pub fn datapath(&self) -> Option<DatapathView> {
        read(&self.datapath).clone()
    }

    /// Publishes a newly applied config.
    pub fn apply_config(&self, snapshot: Arc<Snapshot>) {
        let mut status = write(&self.config);
        if status.current.is_some() {
            status.reloads_succeeded += 1;
        }
        status.current = Some(snapshot.clone());
        self.applied.send_replace(Some(snapshot));
    }

    pub fn set_kernel_l4(&self, stats: Arc<L4KernelStats>) {
        *write(&self.kernel_l4) = Some(stats);
    }

    pub fn kernel_l4(&self) -> Option<Arc<L4KernelStats>> {
        read(&self.kernel_l4).clone()
    }

    pub fn set_serving(&self, serving: Serving) {
        *write(&self.serving) = serving;
    }

    /// Listeners of the running Plan that nothing serves.
    pub fn unserved(&self) -> Vec<Unserved> {
        read(&self.serving).unserved.clone()
    }

    /// Follows every applied config.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.applied.subscribe()
    }

    /// Records a config that was rejected; the current one keeps serving.
    pub fn reject_config(&self, rejected: Rejected) {
        let mut status = write(&self.config);
        status.reloads_rejected += 1;
        status.last_rejected = Some(rejected);
    }

    pub fn config(&self) -> ConfigStatus {
        read(&self.config).clone()
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let config = read(&self.config);
        let datapath = read(&self.datapath);
        serde_json::json!({
            "state": self.state(),
            "datapath": datapath.as_ref().map(|d| &d.status),
            "serving": &*read(&self.serving),
            "health": self.health.dump(),
            "config": &config.current,
            "last_rejected": &config.last_rejected,
            "reloads": {
                "succeeded": config.reloads_succeeded,
                "rejected": config.reloads_rejected,
            },
        })
    }
}

// A panic while holding one of these locks cannot leave the plain values inside torn, so a
// poisoned lock is still safe to use.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
