//! The BPF filesystem that pins live on: found or mounted, and cleaned up after.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::statfs::statfs,
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A bpffs mount point, and whether this process mounted it.
#[derive(Debug)]
pub struct Bpffs {
    pub root: PathBuf,
    mounted_here: bool,
}

impl Bpffs {
    /// Uses the bpffs at `root`, mounting one there when it is not a bpffs (as on hosts
    /// without systemd's mount, or inside `ip netns exec`, which remounts /sys).
    pub fn ensure(root: &Path) -> anyhow::Result<Bpffs> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        if is_bpffs(root)? {
            return Ok(Bpffs {
                root: root.to_owned(),
                mounted_here: false,
            });
        }
        // Only root may look inside: pinned maps hold every flow's addresses.
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .with_context(|| {
            format!(
                "mounting a bpffs on {} (needs CAP_SYS_ADMIN; or mount it first)",
                root.display()
            )
        })?;
        tracing::info!(path = %root.display(), "mounted a bpffs");
        Ok(Bpffs {
            root: root.to_owned(),
            mounted_here: true,
        })
    }

    pub fn mounted_here(&self) -> bool {
        self.mounted_here
    }

    /// Unmounts the bpffs if this process mounted it and nothing else is pinned in it.
    pub fn release(self) {
        if !self.mounted_here {
            return;
        }
        let empty = fs::read_dir(&self.root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            tracing::info!(path = %self.root.display(), "leaving the bpffs mounted: other pins live in it");
            return;
        }
        if let Err(e) = umount2(&self.root, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %self.root.display(), error = %e, "could not unmount the bpffs");
        }
    }
}

/// Makes `dir` and everything pinned under it private to root (directories 0700, pins
/// 0600): pinned maps hold every flow's addresses, and a pinned link can be detached by
/// whoever may open it.
pub fn restrict(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", dir.display()))?;
    if meta.is_dir() {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            restrict(
                &entry
                    .with_context(|| format!("listing {}", dir.display()))?
                    .path(),
            )?;
        }
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let stat = statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(i64::from(stat.filesystem_type().0 as u32) == BPF_FS_MAGIC)
}
