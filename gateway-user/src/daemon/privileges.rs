//! Least privilege: once the programs are loaded and attached and the first listeners are
//! bound, the daemon keeps only the capabilities it still uses, in every set (effective,
//! permitted, inheritable, ambient and bounding), and sets `no_new_privs`, so neither it nor
//! anything it runs can take the others back.
use anyhow::Context as _;
use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon still does after its start, and so which capabilities it keeps.
#[derive(Debug, Clone, Copy)]
pub struct StillNeeded {
    /// The kernel datapath runs: map writes on reloads (`CAP_BPF`), neighbours kept
    /// resolved for new backends and the reserved-port sysctl put back at exit
    /// (`CAP_NET_ADMIN`).
    pub kernel: bool,
    /// This process mounted the bpffs and unmounts it at exit (`CAP_SYS_ADMIN`).
    pub unmounts_bpffs: bool,
}

/// The capabilities `needed` keeps. Every mode keeps `CAP_NET_BIND_SERVICE` (a reload may
/// bind a port below 1024) and `CAP_DAC_READ_SEARCH` (config and certificate files are read
/// again on reloads wherever they live, as at the start).
pub fn kept(needed: StillNeeded) -> CapsHashSet {
    let mut keep = CapsHashSet::from([
        Capability::CAP_NET_BIND_SERVICE,
        Capability::CAP_DAC_READ_SEARCH,
    ]);
    if needed.kernel {
        keep.extend([Capability::CAP_BPF, Capability::CAP_NET_ADMIN]);
    }
    if needed.unmounts_bpffs {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    keep
}

/// Drops every capability but `keep` (those the process has), and sets `no_new_privs`.
/// Returns what it kept.
pub fn drop_all_but(keep: &CapsHashSet) -> anyhow::Result<CapsHashSet> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading the capabilities")?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set first, while CAP_SETPCAP is still effective.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, &keep).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting the permitted set")?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting no_new_privs");
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_keeps_what_it_still_uses() {
        let userspace = kept(StillNeeded {
            kernel: false,
            unmounts_bpffs: false,
        });
        assert_eq!(
            userspace,
            CapsHashSet::from([
                Capability::CAP_NET_BIND_SERVICE,
                Capability::CAP_DAC_READ_SEARCH
            ])
        );
        let kernel = kept(StillNeeded {
            kernel: true,
            unmounts_bpffs: true,
        });
        for cap in [
            Capability::CAP_BPF,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SYS_ADMIN,
        ] {
            assert!(kernel.contains(&cap), "{cap}");
        }
        assert!(!kernel.contains(&Capability::CAP_SETPCAP));
        assert!(!kernel.contains(&Capability::CAP_SYS_PTRACE));
    }
}
