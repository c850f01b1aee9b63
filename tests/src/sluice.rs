//! Runs the `sluice` binary inside a namespace, waits on its `/ready`, and stops it (SIGTERM,
//! then SIGKILL) when dropped, so a failing test never leaves a daemon behind.
use std::{
    ffi::OsStr,
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{admin, netns::NetNs};

pub const ADMIN_ADDR: &str = "127.0.0.1:19000";

/// Counts of a process's open file descriptors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFds {
    pub sockets: usize,
    pub pipes: usize,
}

pub struct Sluice {
    child: Option<Child>,
    pub admin: SocketAddr,
    ns: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sluice {
    /// Starts `sluice run <args…> --admin-addr 127.0.0.1:19000` inside `ns` and waits until
    /// `/ready` answers 200, or panics with the daemon's log.
    pub fn start<S: AsRef<OsStr>>(ns: &NetNs, args: &[S]) -> Sluice {
        Sluice::start_with(ns, &[], ADMIN_ADDR, args)
    }

    /// Like [`Sluice::start`], with the admin server on `admin` and the binary run through
    /// `wrapper` (e.g. `setpriv …` to drop privileges).
    pub fn start_with<S: AsRef<OsStr>>(
        ns: &NetNs,
        wrapper: &[&str],
        admin: &str,
        args: &[S],
    ) -> Sluice {
        let mut sluice = Sluice::spawn(ns, wrapper, admin, args);
        sluice.wait_ready(Duration::from_secs(30));
        sluice
    }

    /// Starts the daemon without waiting for readiness.
    pub fn spawn<S: AsRef<OsStr>>(ns: &NetNs, wrapper: &[&str], admin: &str, args: &[S]) -> Sluice {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let log = dir.path().join("sluice.log");
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let stderr = log_file.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let bin = crate::root::sluice_bin();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = ns.command(program);
                command.args(rest).arg(&bin);
                command
            }
            None => ns.command(&bin.to_string_lossy()),
        };
        let child = command
            .arg("run")
            .args(args)
            .args(["--admin-addr", admin])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sluice: {e}"));
        Sluice {
            child: Some(child),
            admin: admin
                .parse()
                .unwrap_or_else(|e| panic!("admin address {admin}: {e}")),
            ns: ns.name.clone(),
            log,
            _dir: dir,
        }
    }

    fn ns(&self) -> NetNs {
        NetNs::borrowed(&self.ns)
    }

    /// Polls `/ready` (the daemon's readiness signal) until 200, the process exits, or the
    /// timeout passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let (status, body) = self.wait_live(timeout);
        assert_eq!(
            status,
            200,
            "sluice is live but not ready: {body}\n{}",
            self.log()
        );
    }

    /// Polls `/ready` until the daemon has applied its config and bound what it could: 200,
    /// or 503 `NOT_SERVING` with the listeners it could not serve. Returns that answer.
    pub fn wait_live(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        let ns = self.ns();
        loop {
            match admin::get(&ns, self.admin, "/ready") {
                Ok((200, body)) => return (200, body),
                Ok((503, body)) if body.starts_with("NOT_SERVING") => return (503, body),
                _ => {}
            }
            if let Some(status) = self.exited() {
                panic!(
                    "sluice exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, if the daemon has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// Waits for the daemon to exit on its own; panics with its log after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sluice still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin server, from inside the gateway namespace.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        admin::get(&self.ns(), self.admin, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// Reads one sample of the Prometheus output, e.g.
    /// `metric(r#"sluice_datapath_packets_total{reason="tcp",verdict="pass"}"#)`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.admin_get("/stats/prometheus");
        assert_eq!(status, 200, "{body}");
        admin::sample(&body, series)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("sluice already stopped"));
        kill(Pid::from_raw(child.id() as i32), signal)
            .unwrap_or_else(|e| panic!("kill {signal}: {e}"));
    }

    /// GET `/config_dump` as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/config_dump is not JSON: {e}\n{body}"))
    }

    /// Polls `/config_dump` until `done` holds for it, for at most `timeout`; returns it.
    pub fn wait_config(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let dump = self.config_dump();
            if done(&dump) {
                return dump;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{dump:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("sluice already stopped"))
    }

    /// The daemon's open sockets and pipes (from `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> OpenFds {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut fds = OpenFds::default();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let Ok(target) = entry.and_then(|e| std::fs::read_link(e.path())) else {
                continue; // closed while listing
            };
            let target = target.to_string_lossy();
            if target.starts_with("socket:") {
                fds.sockets += 1;
            } else if target.starts_with("pipe:") {
                fds.pipes += 1;
            }
        }
        fds
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line `wanted` accepts, waiting for it at most 5 s (an access-log line
    /// is written once the response's end is sent, which the client may see first).
    pub fn wait_log(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| wanted(l)) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such log line:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.stop_in_place()
    }

    /// [`Sluice::stop`] for a daemon held in a struct field, to be replaced by the next run.
    pub fn stop_in_place(&mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        (status, self.log())
    }

    fn terminate(&mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("sluice already stopped");
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child
                        .wait()
                        .unwrap_or_else(|e| panic!("waiting for sluice: {e}"));
                }
            }
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// Replaces a config file the way editors and config-sync tools do: write aside, then
/// rename over, so the daemon never reads half a file.
pub fn replace_config(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("yaml.tmp");
    std::fs::write(&aside, text).unwrap_or_else(|e| panic!("{}: {e}", aside.display()));
    std::fs::rename(&aside, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
