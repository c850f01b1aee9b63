//! One daemon per instance: an exclusive `flock` on the instance's pin directory, held for
//! the daemon's life and released by the kernel when the process ends however it ends (so a
//! SIGKILL leaves no stale lock). A second `sluice run` with the same `--bpffs` and
//! `--instance` fails before it touches a pin; without it, it would have swapped its own
//! program onto the running daemon's links.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The error of a lock another daemon holds: never a reason to fall back to userspace
/// (the other daemon's datapath would go on serving beside this one).
#[derive(Debug)]
pub struct InstanceBusy(pub PathBuf);

impl std::fmt::Display for InstanceBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another sluice is running with this instance (its pin directory {} is locked); \
             stop it first, or give this one its own --instance",
            self.0.display()
        )
    }
}

impl std::error::Error for InstanceBusy {}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _dir: File,
    pub pin_dir: PathBuf,
}

impl InstanceLock {
    /// Locks `pin_dir` (which must exist), or says which daemon holds it.
    pub fn take(pin_dir: &Path) -> anyhow::Result<InstanceLock> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(pin_dir)
            .with_context(|| format!("opening the pin directory {}", pin_dir.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(InstanceBusy(pin_dir.to_owned()).into());
            }
            return Err(error)
                .with_context(|| format!("locking the pin directory {}", pin_dir.display()));
        }
        Ok(InstanceLock {
            _dir: dir,
            pin_dir: pin_dir.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = InstanceLock::take(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
        let second = InstanceLock::take(dir.path())
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            second
                .as_deref()
                .is_some_and(|e| e.contains("another sluice is running with this instance")),
            "{second:?}"
        );
        drop(first);
        assert!(InstanceLock::take(dir.path()).is_ok());
    }
}
