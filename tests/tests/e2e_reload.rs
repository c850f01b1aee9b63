//! Hot reload end to end: `sluice run` on a config directory. An invalid replacement is
//! rejected and the running config keeps serving (the error visible on the admin server); a
//! valid one becomes the next generation; SIGHUP reloads too. In both datapath modes.
use std::{path::Path, time::Duration};

use nix::sys::signal::Signal;
use tests::{
    bpffs::TempBpffs,
    root,
    sluice::{Sluice, replace_config as replace},
    topology::{GATEWAY_CLIENT_IF, Topology},
};

const CONFIG: &str = include_str!("../../config/demo/gateway.yaml");
const WAIT: Duration = Duration::from_secs(15);

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

/// Writes `text` as the ConfigMap volume's next version, the way the kubelet's atomic
/// writer does: a new timestamped directory, a `..data_tmp` link to it renamed over
/// `..data`, the old directory removed. The visible `gateway.yaml` links through `..data`.
fn configmap_version(dir: &Path, version: u32, text: &str) {
    let stamp = format!("..2026_12_07_18_00_0{version}.000000001");
    std::fs::create_dir(dir.join(&stamp)).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(&stamp).join("gateway.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap_or_else(|e| panic!("{e}"));
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap_or_else(|e| panic!("{e}"));
    } else {
        std::os::unix::fs::symlink("..data/gateway.yaml", dir.join("gateway.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A mounted ConfigMap: read once per object, an update (the `..data` swap) reloads; a FIFO
/// or a "billion laughs" file dropped in is rejected at once and the config keeps serving;
/// SIGTERM still ends the daemon promptly.
fn configmap_and_hostile_files(test: &str, datapath_args: &[&str]) {
    if !root::can_run(test) {
        return;
    }
    let topology = Topology::builder().ipv4_only().build();
    let bpffs = TempBpffs::new();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    configmap_version(dir.path(), 1, CONFIG);
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let bpffs_arg = bpffs.path().to_string_lossy().into_owned();
    let mut args = vec!["-f", &dir_arg, "--bpffs", &bpffs_arg, "--instance", "cm"];
    args.extend_from_slice(datapath_args);
    let sluice = Sluice::start(&topology.gateway, &args);
    let dump = sluice.config_dump();
    assert_eq!(dump["config"]["generation"], 1, "{dump:#}");
    assert_eq!(
        dump["config"]["sources"],
        serde_json::json!([dir.path().join("gateway.yaml")]),
        "each file is read once, by its visible name"
    );

    configmap_version(dir.path(), 2, &CONFIG.replace("7000", "7001"));
    let dump = sluice.wait_config(WAIT, "the ConfigMap update", |d| {
        d["config"]["generation"] == 2
    });
    assert_eq!(listener_port(&dump), 7001, "{dump:#}");

    let fifo = dir.path().join("wedge.yaml");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dump = sluice.wait_config(WAIT, "the FIFO's rejection", |d| {
        d["reloads"]["rejected"] == 1
    });
    assert_eq!(dump["config"]["generation"], 2, "{dump:#}");
    let error = &dump["last_rejected"]["diagnostics"][0];
    assert_eq!(error["file"], fifo.to_string_lossy().as_ref(), "{dump:#}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a regular file (a FIFO)")),
        "{dump:#}"
    );
    std::fs::remove_file(&fifo).unwrap_or_else(|e| panic!("{e}"));

    let mut laughs = String::from("a0: &a0 [lol]\n");
    for level in 1..=9 {
        laughs += &format!(
            "a{level}: &a{level} [{}]\n",
            vec![format!("*a{}", level - 1); 10].join(", ")
        );
    }
    replace(&dir.path().join("laughs.yaml"), &laughs);
    let dump = sluice.wait_config(WAIT, "the billion laughs' rejection", |d| {
        d["last_rejected"]["diagnostics"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expands to more than"))
    });
    assert_eq!(dump["config"]["generation"], 2, "{dump:#}");
    assert_eq!(
        listener_port(&dump),
        7001,
        "the running config keeps serving"
    );

    // A FIFO again, then SIGTERM: the daemon ends at once.
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sluice.signal(Signal::SIGHUP);
    let started = std::time::Instant::now();
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5), "{log}");
}

#[test]
fn configmap_and_hostile_files_in_userspace_mode() {
    configmap_and_hostile_files(
        "configmap_and_hostile_files_in_userspace_mode",
        &["--datapath", "userspace"],
    );
}

#[test]
fn configmap_and_hostile_files_with_the_kernel_datapath_attached() {
    configmap_and_hostile_files(
        "configmap_and_hostile_files_with_the_kernel_datapath_attached",
        &["--datapath", "tc", "--interface", GATEWAY_CLIENT_IF],
    );
}
