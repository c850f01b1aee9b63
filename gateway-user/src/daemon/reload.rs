//! Hot reload: watches the config paths and SIGHUP, re-resolves DNS names on an interval,
//! and for each trigger builds a new snapshot off to the side. A valid one is swapped in
//! whole (the generation advances); an invalid one is recorded and the running config keeps
//! serving.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use super::{
    dns,
    snapshot::{self, Snapshot},
    state::SharedState,
};
use crate::compile::{self, DnsAnswers};

/// File events arriving closer together than this are one change (editors write in steps).
const SETTLE: Duration = Duration::from_millis(150);

pub struct Reloader {
    paths: Vec<PathBuf>,
    /// The namespace the gateway runs in, which `exportTo` is read against.
    namespace: String,
    /// SIGHUP, taken over at the daemon's start: its default action ends the process.
    hangup: tokio::signal::unix::Signal,
    state: Arc<SharedState>,
    generation: u64,
    resolver: dns::Resolver,
    dns: DnsAnswers,
    /// When DNS answers are next due: the shortest TTL (capped by `--dns-refresh`).
    dns_due: Duration,
}

/// Why a reload ran.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Files,
    Signal,
    Dns,
}

impl Reloader {
    pub fn new(
        paths: Vec<PathBuf>,
        namespace: String,
        hangup: tokio::signal::unix::Signal,
        state: Arc<SharedState>,
        current: &Snapshot,
        resolver: dns::Resolver,
        resolved: dns::Resolved,
    ) -> Reloader {
        Reloader {
            paths,
            namespace,
            hangup,
            state,
            generation: current.generation,
            resolver,
            dns: resolved.answers,
            dns_due: resolved.expires_in.unwrap_or(Duration::MAX),
        }
    }

    /// Runs until `stop` changes. Watcher setup failures are returned at once.
    pub async fn run(
        mut self,
        dns_refresh: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (tx, mut changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    let _ = tx.send(event.paths);
                }
            })
            .context("creating the config file watcher")?;
        for dir in watch_roots(&self.paths) {
            // Files are watched through their directory: editors and `kubectl`-style tools
            // replace a file by renaming a new one over it, which ends a watch on the file.
            watcher
                .watch(&dir, RecursiveMode::Recursive)
                .with_context(|| format!("watching {} for config changes", dir.display()))?;
        }
        loop {
            let refresh = tokio::time::sleep(self.dns_due.min(dns_refresh));
            let trigger = tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = self.hangup.recv() => Trigger::Signal,
                _ = refresh => Trigger::Dns,
                Some(paths) = changes.recv() => {
                    if !paths.iter().any(|p| self.is_config_path(p)) {
                        continue;
                    }
                    // Let a burst of writes settle, then reload once.
                    while let Ok(Some(_)) = tokio::time::timeout(SETTLE, changes.recv()).await {}
                    Trigger::Files
                }
            };
            // A reload waits on files and DNS: a stop ends it rather than waiting.
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                () = self.reload(trigger) => {}
            }
        }
    }

    fn is_config_path(&self, path: &Path) -> bool {
        is_config_path(&self.paths, path)
    }

    async fn reload(&mut self, trigger: Trigger) {
        super::fault::point("reloader");
        let checked = snapshot::check_off_runtime(&self.paths, snapshot::LOAD_TIMEOUT).await;
        let checked = crate::config::visibility::for_gateway(checked, &self.namespace);
        let names = compile::dns_names(&checked.objects);
        let resolved = self.resolver.resolve(&names, &self.dns).await;
        self.dns_due = resolved.expires_in.unwrap_or(Duration::MAX);
        let answers = resolved.answers;
        if matches!(trigger, Trigger::Dns) && answers.addresses == self.dns.addresses {
            return; // nothing moved
        }
        match snapshot::build(checked, &answers, self.generation + 1) {
            Ok(snapshot) => {
                self.generation = snapshot.generation;
                self.dns = answers;
                for diagnostic in &snapshot.diagnostics {
                    tracing::warn!(code = diagnostic.code, "{diagnostic}");
                }
                tracing::info!(
                    ?trigger,
                    generation = snapshot.generation,
                    listeners = snapshot.plan.listeners.len(),
                    left_out = snapshot.plan.left_out.len(),
                    "config reloaded"
                );
                self.state.apply_config(Arc::new(snapshot));
            }
            Err(rejected) => {
                tracing::error!(
                    ?trigger,
                    generation = self.generation,
                    "config rejected; generation {} keeps serving:\n{}",
                    self.generation,
                    rejected.errors()
                );
                self.state.reject_config(rejected);
            }
        }
    }
}

/// Whether a change at `path` can change the config under `paths`: a config path itself, a
/// YAML file below a config directory, or a ConfigMap volume's `..data` link (its atomic
/// swap is the one event an update is sure to make: the new timestamped directory's files
/// may be written before the watch on that directory exists).
fn is_config_path(paths: &[PathBuf], path: &Path) -> bool {
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let configmap_swap = path.file_name().is_some_and(|name| name == "..data");
    paths
        .iter()
        .any(|p| path == p || ((yaml || configmap_swap) && path.starts_with(p)))
}

/// The directories to watch: each directory path itself, and the parent of each file.
fn watch_roots(paths: &[PathBuf]) -> Vec<PathBuf> {
    let roots: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            }
        })
        .collect();
    roots.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_paths_include_a_configmap_swap() {
        let paths = [
            PathBuf::from("/etc/sluice/config"),
            PathBuf::from("/srv/one.yaml"),
        ];
        for (path, wanted) in [
            ("/etc/sluice/config/gw.yaml", true),
            ("/etc/sluice/config/sub/vs.yml", true),
            ("/etc/sluice/config/..data", true),
            ("/etc/sluice/config/..data_tmp", false),
            ("/etc/sluice/config/notes.txt", false),
            ("/srv/one.yaml", true),
            ("/srv/two.yaml", false),
            ("/srv/..data", false),
        ] {
            assert_eq!(is_config_path(&paths, Path::new(path)), wanted, "{path}");
        }
    }
}
