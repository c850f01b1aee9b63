//! Log output: `tracing` to stderr as text or JSON, filtered by `RUST_LOG` (default `info`).
//! Records of the `log` crate (aya, aya-log's forwarded eBPF records) arrive through the
//! subscriber's `log` bridge. Lines are written by a thread of their own through a bounded
//! queue, so a slow stderr (a pipe nobody drains fast) never stalls a connection; access-log
//! lines (target `access`) go the same way.
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the subscriber; the returned guard flushes what is queued when dropped, so it
/// lives until the process exits.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("sluice: logging already initialised: {e}");
    }
    guard
}
