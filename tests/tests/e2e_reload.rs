//! Hot reload end to end: `sluice run` on a config directory. An invalid replacement is
//! rejected and the running config keeps serving (the error visible on the admin server); a
//! valid one becomes the next generation; SIGHUP reloads too. In both datapath modes.
use std::{path::Path, time::Duration};

use nix::sys::signal::Signal;
use tests::{
    bpffs::TempBpffs,
    root,
    sluice::Sluice,
    topology::{GATEWAY_CLIENT_IF, Topology},
};

const CONFIG: &str = include_str!("../../config/demo/gateway.yaml");
const WAIT: Duration = Duration::from_secs(15);

/// Replaces `path` the way editors and config-sync tools do: write aside, then rename over.
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("yaml.tmp");
    std::fs::write(&aside, text).unwrap_or_else(|e| panic!("{}: {e}", aside.display()));
    std::fs::rename(&aside, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn listener_port(dump: &serde_json::Value) -> u64 {
    dump["config"]["plan"]["listeners"][0]["port"]
        .as_u64()
        .unwrap_or_default()
}

fn reloads(test: &str, datapath_args: &[&str]) {
    if !root::can_run(test) {
        return;
    }
    let topology = Topology::builder().ipv4_only().build();
    let bpffs = TempBpffs::new();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let bpffs_arg = bpffs.path().to_string_lossy().into_owned();
    let mut args = vec![
        "-f",
        &dir_arg,
        "--bpffs",
        &bpffs_arg,
        "--instance",
        "reload",
    ];
    args.extend_from_slice(datapath_args);
    let sluice = Sluice::start(&topology.gateway, &args);

    let dump = sluice.config_dump();
    assert_eq!(dump["config"]["generation"], 1, "{dump:#}");
    assert_eq!(listener_port(&dump), 7000);

    // An invalid config is rejected whole; generation 1 keeps serving.
    replace(
        &file,
        &CONFIG.replace("protocol: TCP\n    hosts", "protocol: TCPX\n    hosts"),
    );
    let dump = sluice.wait_config(WAIT, "the rejection", |d| d["reloads"]["rejected"] == 1);
    assert_eq!(dump["config"]["generation"], 1, "{dump:#}");
    assert_eq!(listener_port(&dump), 7000, "the old Plan keeps serving");
    let error = &dump["last_rejected"]["diagnostics"][0];
    assert_eq!(error["severity"], "error", "{dump:#}");
    assert_eq!(error["path"], "spec.servers[0].port.protocol", "{dump:#}");
    assert_eq!(error["file"], file.to_string_lossy().as_ref(), "{dump:#}");
    assert_eq!(error["mark"]["line"], 15, "{dump:#}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown protocol \"TCPX\"")),
        "{dump:#}"
    );
    assert_eq!(
        sluice.metric("sluice_config_reloads_total{result=\"rejected\"}"),
        Some(1.0)
    );
    assert_eq!(sluice.metric("sluice_config_generation"), Some(1.0));
    assert!(
        sluice
            .log()
            .contains("config rejected; generation 1 keeps serving"),
        "{}",
        sluice.log()
    );

    // A valid change becomes generation 2.
    replace(&file, &CONFIG.replace("7000", "7001"));
    let dump = sluice.wait_config(WAIT, "generation 2", |d| d["config"]["generation"] == 2);
    assert_eq!(listener_port(&dump), 7001, "{dump:#}");
    assert_eq!(dump["reloads"]["succeeded"], 1);
    assert_eq!(
        sluice.metric("sluice_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(sluice.metric("sluice_config_generation"), Some(2.0));

    // SIGHUP reloads without a file change.
    sluice.signal(Signal::SIGHUP);
    sluice.wait_config(WAIT, "generation 3 after SIGHUP", |d| {
        d["config"]["generation"] == 3
    });
    assert!(sluice.log().contains("trigger=Signal"), "{}", sluice.log());

    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn reload_in_userspace_mode() {
    reloads("reload_in_userspace_mode", &["--datapath", "userspace"]);
}

#[test]
fn reload_with_the_kernel_datapath_attached() {
    reloads(
        "reload_with_the_kernel_datapath_attached",
        &["--datapath", "xdp", "--interface", GATEWAY_CLIENT_IF],
    );
}
