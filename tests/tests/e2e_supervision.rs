//! Supervision end to end: a SIGHUP during startup is a reload, not the end of the daemon;
//! a background task that dies makes the daemon exit non-zero (for the orchestrator to
//! restart it) after undoing its datapath; a daemon killed with SIGKILL leaves pins that the
//! next run takes over or `sluice cleanup` removes. Faults are injected with
//! `SLUICE_TEST_FAULT`, which makes the named point panic as a bug would.
use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use tests::{
    bpffs::TempBpffs,
    root,
    sluice::Sluice,
    topology::{self, Topology},
};

const CONFIG: &str = include_str!("../../config/demo/gateway.yaml");
const ADMIN: &str = "127.0.0.1:19000";
const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    topology: Topology,
    bpffs: TempBpffs,
    config: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let config = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(config.path().join("gateway.yaml"), CONFIG)
            .unwrap_or_else(|e| panic!("{e}"));
        Setup {
            topology: Topology::builder().ipv4_only().build(),
            bpffs: TempBpffs::new(),
            config,
        }
    }

    fn args(&self, instance: &str, datapath: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "-f",
            &self.config.path().to_string_lossy(),
            "--bpffs",
            &self.bpffs.path().to_string_lossy(),
            "--instance",
            instance,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(datapath.iter().map(|a| (*a).to_owned()));
        args
    }

    fn links(&self, instance: &str) -> Vec<String> {
        std::fs::read_dir(self.bpffs.pin_dir(instance).join("links"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn a_sighup_during_startup_is_a_reload() {
    if !root::can_run("a_sighup_during_startup_is_a_reload") {
        return;
    }
    let setup = Setup::new();
    let args = setup.args("hup", &["--datapath", "userspace"]);
    let mut sluice = Sluice::spawn(&setup.topology.gateway, &[], ADMIN, &args);
    // The first line the daemon logs comes after its SIGHUP handler is installed; the
    // signal then arrives while the config loads and the servers start.
    sluice.wait_log(|line| line.contains("sluice starting"));
    sluice.signal(Signal::SIGHUP);
    sluice.wait_ready(WAIT);
    let dump = sluice.wait_config(WAIT, "the reload SIGHUP asked for", |d| {
        d["config"]["generation"] == 2
    });
    assert_eq!(dump["reloads"]["succeeded"], 1, "{dump:#}");
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
}

/// Starts a daemon whose `fault` point panics, reloads it (SIGHUP) to reach the point, and
/// returns how it ended.
fn dies_at(
    test: &str,
    fault: &str,
    datapath: &[&str],
) -> (Setup, std::process::ExitStatus, String) {
    let setup = Setup::new();
    let args = setup.args(test, datapath);
    let env = format!("SLUICE_TEST_FAULT={fault}");
    let mut sluice = Sluice::spawn(&setup.topology.gateway, &["env", &env], ADMIN, &args);
    sluice.wait_ready(WAIT);
    assert_eq!(sluice.admin_get("/healthz").0, 200);
    sluice.signal(Signal::SIGHUP);
    let (status, log) = sluice.wait_exit(WAIT);
    (setup, status, log)
}

#[test]
fn a_panicking_plan_follower_ends_the_daemon_and_its_datapath() {
    if !root::can_run("a_panicking_plan_follower_ends_the_daemon_and_its_datapath") {
        return;
    }
    let (setup, status, log) = dies_at("follower", "plan-follower", topology::SLUICE_TC_ARGS);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "the task serving the applied config (plans, flow expiry) panicked: fault injected at plan-follower"
        ),
        "{log}"
    );
    assert!(log.contains("exiting for a restart"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        !setup.bpffs.pin_dir("follower").exists(),
        "the datapath is undone: {log}"
    );
}

#[test]
fn a_panicking_reloader_ends_the_daemon() {
    if !root::can_run("a_panicking_reloader_ends_the_daemon") {
        return;
    }
    let (_setup, status, log) = dies_at("reloader", "reloader", &["--datapath", "userspace"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "the task config reloads and DNS refresh panicked: fault injected at reloader"
        ),
        "{log}"
    );
}

/// `sluice cleanup` as an operator runs it.
fn cleanup(setup: &Setup, instance: &str) -> String {
    let out = Command::new(root::sluice_bin())
        .args(["cleanup", "--bpffs"])
        .arg(setup.bpffs.path())
        .args(["--instance", instance])
        .output()
        .unwrap_or_else(|e| panic!("sluice cleanup: {e}"));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_killed_daemon_leaves_pins_the_next_run_takes_over_or_cleanup_removes() {
    if !root::can_run("a_killed_daemon_leaves_pins_the_next_run_takes_over_or_cleanup_removes") {
        return;
    }
    let setup = Setup::new();
    let args = setup.args("killed", topology::SLUICE_TC_ARGS);
    let sluice = Sluice::start(&setup.topology.gateway, &args);
    sluice.signal(Signal::SIGKILL);
    let (status, _) = sluice.wait_exit(WAIT);
    assert!(!status.success());
    let left = setup.links("killed");
    assert!(
        left.iter().all(|l| l.starts_with("tc@")) && !left.is_empty(),
        "a SIGKILL leaves the links pinned: {left:?}"
    );

    // The next run takes the pins over and, on a clean exit, removes them.
    let sluice = Sluice::start(&setup.topology.gateway, &args);
    assert!(
        sluice
            .log()
            .contains("loaded the eBPF programs on the maps a previous run pinned"),
        "{}",
        sluice.log()
    );
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
    assert!(!setup.bpffs.pin_dir("killed").exists(), "{log}");

    // Killed again, `sluice cleanup` removes what it left.
    let sluice = Sluice::start(&setup.topology.gateway, &args);
    sluice.signal(Signal::SIGKILL);
    let _ = sluice.wait_exit(WAIT);
    let removed = cleanup(&setup, "killed");
    assert!(removed.contains("removed"), "{removed}");
    assert!(!setup.bpffs.pin_dir("killed").exists(), "{removed}");
}

/// The program id each pinned link runs, by link name (`bpftool link show pinned`).
fn link_programs(setup: &Setup, instance: &str) -> Vec<(String, u64)> {
    let dir = setup.bpffs.pin_dir(instance).join("links");
    let mut programs: Vec<(String, u64)> = setup
        .links(instance)
        .into_iter()
        .map(|name| {
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(dir.join(&name))
                .output()
                .unwrap_or_else(|e| panic!("bpftool: {e}"));
            let link: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
            (name, link["prog_id"].as_u64().unwrap_or_default())
        })
        .collect();
    programs.sort();
    programs
}

#[test]
fn a_second_daemon_on_the_same_instance_changes_nothing() {
    if !root::can_run("a_second_daemon_on_the_same_instance_changes_nothing") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::new();
    let args = setup.args("one", topology::SLUICE_TC_ARGS);
    let first = Sluice::start(&setup.topology.gateway, &args);
    let before = link_programs(&setup, "one");
    assert!(
        !before.is_empty() && before.iter().all(|(_, id)| *id > 0),
        "{before:?}"
    );
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(setup.bpffs.pin_dir("one")), 0o700);
    assert_eq!(mode(setup.bpffs.pin_dir("one").join("L4_FLOWS")), 0o600);

    // Its own admin address, so only the instance can stop it.
    let second = Sluice::spawn(&setup.topology.gateway, &[], "127.0.0.1:19001", &args);
    let (status, log) = second.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("another sluice is running with this instance"),
        "{log}"
    );
    assert_eq!(
        link_programs(&setup, "one"),
        before,
        "the first daemon's links are untouched"
    );
    assert_eq!(first.admin_get("/ready").0, 200);

    // `sluice cleanup` refuses too while the daemon runs.
    let out = Command::new(root::sluice_bin())
        .args(["cleanup", "--bpffs"])
        .arg(setup.bpffs.path())
        .args(["--instance", "one"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(link_programs(&setup, "one"), before);
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn userspace_mode_removes_a_datapath_left_pinned() {
    if !root::can_run("userspace_mode_removes_a_datapath_left_pinned") {
        return;
    }
    let setup = Setup::new();
    let mut kernel = setup.args("left", topology::SLUICE_TC_ARGS);
    kernel.push("--keep-datapath".into());
    let (status, log) = Sluice::start(&setup.topology.gateway, &kernel).stop();
    assert!(status.success(), "{log}");
    assert!(!setup.links("left").is_empty(), "{log}");

    let userspace = setup.args("left", &["--datapath", "userspace"]);
    let sluice = Sluice::start(&setup.topology.gateway, &userspace);
    assert!(
        sluice
            .log()
            .contains("removed the kernel datapath an earlier run left pinned"),
        "{}",
        sluice.log()
    );
    assert!(!setup.bpffs.pin_dir("left").exists());
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
}

/// A capability set from `/proc/<pid>/status` (`CapEff:` and the like).
fn status_field(pid: u32, field: &str) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("{e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Once serving, the daemon holds only the capabilities it still uses, in every set, with
/// no_new_privs; a reload that binds a port below 1024 (and, in kernel mode, writes the
/// maps) still works, and the exit still removes the pins.
fn keeps_only_what_it_uses(test: &str, datapath: &[&str], wanted: u64) {
    if !root::can_run(test) {
        return;
    }
    let setup = Setup::new();
    let sluice = Sluice::start(&setup.topology.gateway, &setup.args(test, datapath));
    let pid = sluice.pid();
    let wanted = format!("{wanted:016x}");
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            status_field(pid, field),
            wanted,
            "{field}\n{}",
            sluice.log()
        );
    }
    assert_eq!(status_field(pid, "CapInh:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");

    std::fs::write(
        setup.config.path().join("gateway.yaml"),
        CONFIG.replace("7000", "80"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dump = sluice.wait_config(WAIT, "the reload onto port 80", |d| {
        d["serving"]["generation"] == 2
    });
    let served = |path: &str| {
        dump["serving"][path]
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l == "0.0.0.0:80"))
    };
    assert!(served("l4_userspace"), "{dump:#}");
    if datapath != ["--datapath", "userspace"] {
        assert!(served("l4_kernel"), "{dump:#}");
    }
    assert_eq!(
        dump["serving"]["unserved"],
        serde_json::json!([]),
        "{dump:#}"
    );
    let (status, log) = sluice.stop();
    assert!(status.success(), "{log}");
    assert!(!setup.bpffs.pin_dir(test).exists(), "{log}");
}

/// CAP_DAC_READ_SEARCH (2) and CAP_NET_BIND_SERVICE (10).
const USERSPACE_CAPS: u64 = 1 << 2 | 1 << 10;

#[test]
fn userspace_mode_keeps_only_what_it_uses() {
    keeps_only_what_it_uses(
        "userspace_mode_keeps_only_what_it_uses",
        &["--datapath", "userspace"],
        USERSPACE_CAPS,
    );
}

#[test]
fn kernel_mode_keeps_only_what_it_uses() {
    // And CAP_NET_ADMIN (12) and CAP_BPF (39); the test's bpffs is not the daemon's to
    // unmount, so no CAP_SYS_ADMIN.
    keeps_only_what_it_uses(
        "kernel_mode_keeps_only_what_it_uses",
        topology::SLUICE_TC_ARGS,
        USERSPACE_CAPS | 1 << 12 | 1 << 39,
    );
}
