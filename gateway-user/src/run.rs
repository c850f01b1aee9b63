//! `sluice run`: load the config, start the admin server and the datapath, serve until
//! SIGINT/SIGTERM, then undo everything this run created.
use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    admin::{AdminServer, DatapathView, ServerState, Serving, SharedState},
    cli::RunArgs,
    compile,
    datapath::{Datapath, DatapathOptions},
    dns,
    l4proxy::L4Proxy,
    reload::Reloader,
    snapshot::{self, Snapshot},
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let resolver = dns::Resolver::from_system();
    let (snapshot, resolved) = load_config(&args.config, 1, &resolver).await?;
    let state = SharedState::new();
    let reloader = Reloader::new(
        args.config.clone(),
        state.clone(),
        &snapshot,
        resolver,
        resolved,
    );
    state.apply_config(Arc::new(snapshot));
    // Bound before the datapath so a taken admin port fails before anything is attached.
    let admin = AdminServer::start(args.admin_addr, state.clone()).await?;
    // Installed before attaching, so a signal during startup still runs the cleanup below.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let options = DatapathOptions {
        mode: args.datapath,
        xdp_mode: args.xdp_mode,
        interfaces: args.interfaces.clone(),
        bpffs: args.bpffs.clone(),
        instance: args.instance.clone(),
        keep_on_exit: args.keep_datapath,
    };
    let mut datapath = match Datapath::start(&options) {
        Ok(datapath) => datapath,
        Err(e) => {
            admin.shutdown().await;
            return Err(e);
        }
    };
    let status = datapath.status();
    tracing::info!(mode = status.mode_label(), status = %serde_json::to_string(&status).unwrap_or_default(), "datapath running");
    state.set_datapath(DatapathView {
        status,
        counters: datapath.counter_reader(),
    });
    // Listeners are bound before /ready turns 200.
    let mut servers = Servers {
        userspace: L4Proxy::new(state.l4.clone(), args.l4_backend_removal),
        kernel: datapath
            .take_l4()
            .map(|kernel| kernel.with_backend_removal(args.l4_backend_removal)),
        status: Serving::default(),
    };
    if let Some(kernel) = &servers.kernel {
        state.set_kernel_l4(kernel.stats());
    }
    if let Some(current) = state.config().current {
        let failures = servers.apply(&current).await;
        if let Some((address, error)) = failures.into_iter().next() {
            drop(servers);
            datapath.abandon();
            admin.shutdown().await;
            return Err(error.context(format!("serving the listener {address}")));
        }
    }
    state.set_serving(servers.status.clone());
    // Subscribed before the reloader starts, so no applied config is missed.
    let applied = state.subscribe();
    let timeouts = crate::datapath::l4::Timeouts {
        closing: args.l4_closing_timeout,
        syn: Duration::from_secs(30),
        idle: args.l4_idle_timeout,
    };
    let serving = tokio::spawn(follow_plans(servers, state.clone(), applied, timeouts));
    state.set_state(ServerState::Live);
    tracing::info!("sluice is ready");
    let (stop_reloads, stopped) = tokio::sync::watch::channel(false);
    let reloads = tokio::spawn(reloader.run(args.dns_refresh, stopped));

    let signal_name = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    tracing::info!(signal = signal_name, "shutting down");
    state.set_state(ServerState::Draining);
    serving.abort();
    let _ = stop_reloads.send(true);
    match reloads.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("config reloads had stopped: {e:#}"),
        Err(e) => tracing::error!("the config reload task failed: {e}"),
    }
    datapath.shutdown();
    admin.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Builds generation `generation` of the config, resolving its DNS names first, and logs
/// what it found. Errors (the config is not applied) come back as one message listing all.
pub async fn load_config(
    paths: &[PathBuf],
    generation: u64,
    resolver: &dns::Resolver,
) -> anyhow::Result<(Snapshot, dns::Resolved)> {
    let checked = crate::config::check(paths);
    let resolved = resolver
        .resolve(&compile::dns_names(&checked.objects))
        .await;
    let snapshot = snapshot::build(paths, &resolved.answers, generation).map_err(|rejected| {
        let count = rejected
            .diagnostics
            .iter()
            .filter(|d| d.severity == crate::config::Severity::Error)
            .count();
        anyhow::anyhow!("the config has {count} error(s):\n{}", rejected.errors())
    })?;
    for diagnostic in &snapshot.diagnostics {
        tracing::warn!(code = diagnostic.code, "{diagnostic}");
    }
    tracing::info!(
        generation,
        objects = snapshot.objects.len(),
        files = snapshot.sources.len(),
        listeners = snapshot.plan.listeners.len(),
        left_out = snapshot.plan.left_out.len(),
        "config applied"
    );
    Ok((snapshot, resolved))
}

/// What serves the Plan's L4 listeners: the userspace forwarder on every one (it is also the
/// fallback for connections the kernel does not take), and the kernel where it can.
struct Servers {
    userspace: L4Proxy,
    kernel: Option<crate::datapath::l4::KernelL4>,
    status: Serving,
}

impl Servers {
    /// Applies `plan`: sockets first, so the fallback exists before the kernel takes SYNs.
    async fn apply(&mut self, snapshot: &Snapshot) -> Vec<(std::net::SocketAddr, anyhow::Error)> {
        let failures = self.userspace.apply(&snapshot.plan).await;
        let kernel = self
            .kernel
            .as_mut()
            .map(|k| k.apply(&snapshot.plan))
            .unwrap_or_default();
        self.status = Serving {
            generation: snapshot.generation,
            l4_kernel: kernel,
            l4_userspace: self.userspace.addresses(),
        };
        failures
    }
}

/// Serves every Plan the reloader applies, and expires the kernel's finished connections.
async fn follow_plans(
    mut servers: Servers,
    state: Arc<SharedState>,
    mut applied: tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>,
    timeouts: crate::datapath::l4::Timeouts,
) {
    // Often enough that a closed connection is forgotten within ~1.5x its timeout.
    let mut expiry = tokio::time::interval(
        (timeouts.closing / 2).clamp(Duration::from_millis(200), Duration::from_secs(5)),
    );
    loop {
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(snapshot) = applied.borrow_and_update().clone() else { continue };
                for (address, error) in servers.apply(&snapshot).await {
                    tracing::error!(%address, generation = snapshot.generation, "listener not served: {error:#}");
                }
                state.set_serving(servers.status.clone());
            }
            _ = expiry.tick() => {
                if let Some(kernel) = servers.kernel.as_mut() {
                    // A sweep makes syscalls per entry, which adds up on a full table: this
                    // worker blocks for it while the others keep serving.
                    match tokio::task::block_in_place(|| kernel.expire(&timeouts)) {
                        Ok((_, 0)) => {}
                        Ok((live, removed)) => tracing::debug!(live, removed, "expired kernel L4 flows"),
                        Err(e) => tracing::warn!("expiring kernel L4 flows failed: {e:#}"),
                    }
                }
            }
        }
    }
}
