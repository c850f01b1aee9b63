//! A private bpffs mounted on a temporary directory, unmounted on drop. It lives in the
//! test's mount namespace, so both `sluice` (under `ip netns exec`, which remounts /sys) and
//! `bpftool` run by the test see the same pins.
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub struct TempBpffs {
    dir: Option<tempfile::TempDir>,
}

impl TempBpffs {
    pub fn new() -> TempBpffs {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bpffs-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting a bpffs on {}: {e}", dir.path().display()));
        TempBpffs { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// Where `sluice --instance <instance>` pins its maps.
    pub fn pin_dir(&self, instance: &str) -> PathBuf {
        self.path().join("sluice").join(instance)
    }
}

impl Default for TempBpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && let Err(e) = umount2(dir.path(), MntFlags::MNT_DETACH)
        {
            eprintln!("warning: could not unmount {}: {e}", dir.path().display());
        }
    }
}
