//! Server certificates that follow their files. Each server's TLS is loaded once and shared
//! by every config that names the same files; the directories holding them are watched, and
//! when a file changes (written in place, renamed over, or a mounted Secret's `..data`
//! symlink swapped) the server's configuration is rebuilt and swapped in for the next
//! handshake, while connections already open carry on with theirs. A change that does not
//! load (a half-written file, a key that does not match) keeps the previous certificate.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use rustls::ServerConfig;
use tokio::sync::{mpsc, watch};

use super::{
    metrics::HttpMetrics,
    tls::{TlsFiles, server_config},
};
use crate::compile::plan::TlsTermination;

/// File events closer together than this are one change (a Secret update writes several).
const SETTLE: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What identifies a file's content without reading it: the file a path leads to (symlinks
/// followed), its size and its modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        device: m.dev(),
        inode: m.ino(),
        size: m.size(),
        modified_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    })
}

struct Loaded {
    fingerprints: Vec<Option<Fingerprint>>,
    config: Arc<ServerConfig>,
}

/// One server's TLS, current as of the last change to its files.
pub struct Termination {
    termination: TlsTermination,
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

impl Termination {
    fn load(termination: &TlsTermination, files: TlsFiles) -> anyhow::Result<Termination> {
        let fingerprints = files.paths().map(fingerprint).collect();
        let config = server_config(termination, &files)?;
        Ok(Termination {
            termination: termination.clone(),
            files,
            loaded: Mutex::new(Loaded {
                fingerprints,
                config,
            }),
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        lock(&self.loaded).config.clone()
    }

    /// Rebuilds the configuration if a file changed: `Some(result)` when it tried.
    fn reload_if_changed(&self) -> Option<anyhow::Result<()>> {
        let now: Vec<_> = self.files.paths().map(fingerprint).collect();
        if lock(&self.loaded).fingerprints == now {
            return None;
        }
        let result = server_config(&self.termination, &self.files);
        let mut loaded = lock(&self.loaded);
        // Remembered either way: a failed load is retried when the files change again.
        loaded.fingerprints = now;
        Some(result.map(|config| loaded.config = config))
    }
}

/// Every server's TLS that a listener uses, and the watch on their files.
pub struct CertificateStore {
    credentials: PathBuf,
    mesh_identity: Option<PathBuf>,
    metrics: Arc<HttpMetrics>,
    loaded: Mutex<HashMap<TlsTermination, Weak<Termination>>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    watched: Mutex<HashSet<PathBuf>>,
    /// Advances after files under watch changed, so listeners that could not load their
    /// certificates are tried again.
    changed: watch::Sender<u64>,
}

impl CertificateStore {
    /// A store reading credentials under `credentials` and the mesh identity under
    /// `mesh_identity`; files are watched once [`CertificateStore::watch`] has run.
    pub fn new(
        credentials: PathBuf,
        mesh_identity: Option<PathBuf>,
        metrics: Arc<HttpMetrics>,
    ) -> Arc<CertificateStore> {
        Arc::new(CertificateStore {
            credentials,
            mesh_identity,
            metrics,
            loaded: Mutex::default(),
            watcher: Mutex::default(),
            watched: Mutex::default(),
            changed: watch::channel(0).0,
        })
    }

    /// Starts watching certificate files (on the current tokio runtime).
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<()> {
        let (tx, mut events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })
        .context("creating the certificate file watcher")?;
        *lock(&self.watcher) = Some(watcher);
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            while events.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
                let Some(store) = store.upgrade() else { return };
                store.refresh();
            }
        });
        let dirs: Vec<PathBuf> = lock(&self.watched).drain().collect();
        for dir in dirs {
            self.watch_dir(&dir);
        }
        Ok(())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The TLS of `termination`: the one already loaded for the same files, or a new load.
    /// The files' directories are watched from here on, also when the load fails, so a
    /// certificate that appears later is picked up.
    pub fn get(&self, termination: &TlsTermination) -> anyhow::Result<Arc<Termination>> {
        let files = TlsFiles::of(
            termination,
            &self.credentials,
            self.mesh_identity.as_deref(),
        )?;
        for path in files.paths() {
            self.watch_dir(&watch_point(path));
        }
        let mut loaded = lock(&self.loaded);
        if let Some(live) = loaded.get(termination).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let fresh = Arc::new(Termination::load(termination, files)?);
        loaded.retain(|_, t| t.strong_count() > 0);
        loaded.insert(termination.clone(), Arc::downgrade(&fresh));
        Ok(fresh)
    }

    fn watch_dir(&self, dir: &Path) {
        if !lock(&self.watched).insert(dir.to_owned()) {
            return;
        }
        let mut watcher = lock(&self.watcher);
        if let Some(watcher) = watcher.as_mut()
            && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), "certificates there will not be reloaded: {e}");
        }
    }

    /// Reloads every server whose files changed.
    pub fn refresh(&self) {
        let live: Vec<Arc<Termination>> = lock(&self.loaded)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for termination in live {
            let certificate = termination.files.first_certificate();
            match termination.reload_if_changed() {
                None => {}
                Some(Ok(())) => {
                    self.metrics.certificate_reloaded(true);
                    tracing::info!(%certificate, hosts = ?termination.termination.hosts, "certificate reloaded");
                }
                Some(Err(e)) => {
                    self.metrics.certificate_reloaded(false);
                    tracing::warn!(%certificate, hosts = ?termination.termination.hosts, "certificate not reloaded, the previous one stays: {e:#}");
                }
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The directory to watch for `file`: its own, or the nearest one that exists (so a
/// credential directory created later is noticed).
fn watch_point(file: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(Path::new("/"));
    while !dir.is_dir() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    dir.to_owned()
}
