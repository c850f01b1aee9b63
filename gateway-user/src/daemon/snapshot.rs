//! A running config: what was loaded, what it compiled to, and the history of reloads. The
//! daemon builds a new snapshot off to the side and swaps it in whole.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    compile::plan::Plan,
    compile::{self, DnsAnswers},
    config::{self, Diagnostic, Object, Severity},
    select::BackendSets,
};

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Counts applied configs from 1; a rejected reload does not advance it.
    pub generation: u64,
    /// RFC 3339, when this config was applied.
    pub applied_at: String,
    pub sources: Vec<PathBuf>,
    pub objects: Vec<Object>,
    pub plan: Plan,
    /// The Plan's backend sets (Maglev tables), built once for every server that uses them.
    #[serde(skip)]
    pub backend_sets: Arc<BackendSets>,
    /// Warnings and infos of this config (an applied config has no errors).
    pub diagnostics: Vec<Diagnostic>,
}

/// A config that was not applied, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub attempted_at: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Rejected {
    /// Every error, one per line.
    pub fn errors(&self) -> String {
        let errors: Vec<String> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        errors.join("\n")
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The longest a config load (reading and validating the files) may take in the daemon.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Loads and validates `paths` on a blocking thread, off the async runtime, within
/// `timeout`. A load still running then (a hung file system) is reported as an error
/// naming the first path; its thread is left to finish on its own.
pub async fn check_off_runtime(paths: &[PathBuf], timeout: Duration) -> config::Checked {
    let owned = paths.to_vec();
    let load = tokio::task::spawn_blocking(move || config::check(&owned));
    let message = match tokio::time::timeout(timeout, load).await {
        Ok(Ok(checked)) => return checked,
        Ok(Err(e)) => format!("loading the config failed: {e}"),
        Err(_) => format!(
            "loading the config took longer than {}s (a file system not answering?)",
            timeout.as_secs_f64()
        ),
    };
    config::Checked {
        sources: paths.to_vec(),
        objects: Vec::new(),
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            code: config::diagnostic::codes::SCHEMA,
            file: paths.first().cloned().unwrap_or_default(),
            mark: None,
            object: None,
            path: String::new(),
            message,
        }],
    }
}

/// Compiles a loaded and validated config. A set with any error is rejected whole.
pub fn build(
    checked: config::Checked,
    dns: &DnsAnswers,
    generation: u64,
) -> Result<Snapshot, Rejected> {
    if checked.count(Severity::Error) > 0 {
        return Err(Rejected {
            attempted_at: now_rfc3339(),
            diagnostics: checked.diagnostics,
        });
    }
    let compiled = compile::compile(&checked.objects, dns);
    let mut diagnostics = checked.diagnostics;
    diagnostics.extend(compiled.diagnostics);
    Ok(Snapshot {
        generation,
        applied_at: now_rfc3339(),
        sources: checked.sources,
        objects: checked.objects,
        backend_sets: Arc::new(BackendSets::for_plan(&compiled.plan)),
        plan: compiled.plan,
        diagnostics,
    })
}

/// The config the daemon serves and the outcome of the last reload attempt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    pub current: Option<Arc<Snapshot>>,
    pub last_rejected: Option<Rejected>,
    pub reloads_succeeded: u64,
    pub reloads_rejected: u64,
}
