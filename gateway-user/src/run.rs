//! `sluice run`: load the config, start the admin server and the datapath, serve until
//! SIGINT/SIGTERM, then undo everything this run created.
use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin::{AdminServer, DatapathView, ServerState, SharedState},
    cli::RunArgs,
    config,
    datapath::{Datapath, DatapathOptions},
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = config::load(&args.config).context("loading the config")?;
    tracing::info!(
        objects = config.objects.len(),
        files = config.sources.len(),
        "config loaded"
    );

    let state = SharedState::new();
    state.set_config(config);
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
    };
    let datapath = match Datapath::start(&options) {
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
    state.set_state(ServerState::Live);
    tracing::info!("sluice is ready");

    let signal_name = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    tracing::info!(signal = signal_name, "shutting down");
    state.set_state(ServerState::Draining);
    datapath.shutdown();
    admin.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}
