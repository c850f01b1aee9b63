//! The kernel datapath: loads the embedded eBPF object, pins its maps under
//! `<bpffs>/sluice/<instance>/`, attaches the ingress program per interface (with fallbacks),
//! forwards the programs' aya-log records into `tracing`, and undoes all of it on shutdown.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use gateway_common::{Counters, PacketReason, map_names, program_names};

use super::{Attachment, DatapathStatus, InterfaceStatus, ReasonCounters, bpffs::Bpffs};
use crate::ebpf_object::EBPF_OBJECT;

/// Loaded programs and pinned maps, not yet attached.
pub struct Loaded {
    ebpf: Ebpf,
    bpffs: Bpffs,
    pin_dir: PathBuf,
    pins: Vec<PathBuf>,
    counters: CounterReader,
}

/// A link this run created, kept to detach it on shutdown.
enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

pub struct KernelDatapath {
    loaded: Loaded,
    interfaces: Vec<InterfaceStatus>,
    links: Vec<(String, Link)>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    l4: Option<super::l4::KernelL4>,
}

/// Reads the per-CPU reason counters; cheap to clone, shared with the metrics endpoint.
#[derive(Clone)]
pub struct CounterReader {
    map: Arc<PerCpuArray<MapData, Counters>>,
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterReader")
    }
}

impl CounterReader {
    /// Every reason's counters, summed over CPUs.
    pub fn read(&self) -> anyhow::Result<ReasonCounters> {
        PacketReason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self
                    .map
                    .get(&reason.index(), 0)
                    .with_context(|| format!("reading {} counters", reason.label()))?;
                let sum: Counters = per_cpu.iter().sum();
                Ok((reason, sum))
            })
            .collect()
    }
}

impl KernelDatapath {
    /// Loads the programs and creates (or reuses) the pinned maps.
    pub fn load(bpffs_root: &Path, instance: &str) -> anyhow::Result<Loaded> {
        let bpffs = Bpffs::ensure(bpffs_root)?;
        let pin_dir = bpffs.root.join("sluice").join(instance);
        if let Err(e) = fs::create_dir_all(&pin_dir) {
            bpffs.release();
            return Err(e)
                .with_context(|| format!("creating the pin directory {}", pin_dir.display()));
        }
        let pins: Vec<PathBuf> = map_names::ALL
            .iter()
            .map(|name| pin_dir.join(name))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, pin) in map_names::ALL.iter().zip(&pins) {
            loader.map_pin_path(name, pin.as_path());
        }
        let loaded = loader.load(EBPF_OBJECT).context(
            "loading the eBPF object (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON; \
             run with --datapath userspace to serve without BPF)",
        );
        // Once loaded, the maps are pinned: every error path must remove the pins again.
        let prepared = loaded.and_then(|mut ebpf| {
            for name in [program_names::XDP_INGRESS, program_names::TC_INGRESS] {
                load_program(&mut ebpf, name)?;
            }
            let counters = take_counters(&mut ebpf)?;
            Ok((ebpf, counters))
        });
        match prepared {
            Ok((ebpf, counters)) => {
                tracing::info!(pin_dir = %pin_dir.display(), "loaded the eBPF programs and pinned their maps");
                Ok(Loaded {
                    ebpf,
                    bpffs,
                    pin_dir,
                    pins,
                    counters,
                })
            }
            Err(e) => {
                remove_pins(&pins, &pin_dir);
                bpffs.release();
                Err(e)
            }
        }
    }

    pub fn status(&self) -> DatapathStatus {
        DatapathStatus::Kernel {
            interfaces: self.interfaces.clone(),
            pin_dir: self.loaded.pin_dir.clone(),
        }
    }

    /// The kernel L4 adapter, for whoever applies Plans.
    pub fn take_l4(&mut self) -> Option<super::l4::KernelL4> {
        self.l4.take()
    }

    pub fn counter_reader(&self) -> CounterReader {
        self.loaded.counters.clone()
    }

    pub fn shutdown(mut self) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
        for (interface, link) in self.links.drain(..) {
            let detached = match link {
                Link::Xdp(id) => xdp_program(&mut self.loaded.ebpf).and_then(|p| Ok(p.detach(id)?)),
                Link::Tc(id) => tc_program(&mut self.loaded.ebpf).and_then(|p| Ok(p.detach(id)?)),
            };
            match detached {
                Ok(()) => tracing::info!(%interface, "detached the datapath"),
                Err(e) => tracing::warn!(%interface, error = %format!("{e:#}"), "detach failed"),
            }
        }
        self.loaded.discard();
    }
}

impl Loaded {
    /// Attaches the ingress program to every interface, trying `order` per interface; each
    /// fallback is logged with the reason the previous attachment failed.
    pub fn attach(
        self,
        interfaces: &[String],
        order: &[Attachment],
    ) -> anyhow::Result<KernelDatapath> {
        let mut datapath = KernelDatapath {
            loaded: self,
            interfaces: Vec::new(),
            links: Vec::new(),
            log_task: None,
            l4: None,
        };
        for interface in interfaces {
            if let Err(e) = datapath.attach_interface(interface, order) {
                datapath.shutdown();
                return Err(e);
            }
        }
        datapath.log_task = forward_logs(&mut datapath.loaded.ebpf);
        // Both programs run the NAT stage, so every attached interface forwards and is a
        // redirect target (XDP redirects through the devmap, TC by ifindex).
        let devices: std::collections::BTreeMap<String, u32> = datapath
            .interfaces
            .iter()
            .map(|i| (i.interface.clone(), i.ifindex))
            .collect();
        if !devices.is_empty() {
            match super::l4::KernelL4::new(&mut datapath.loaded.ebpf, devices) {
                Ok(l4) => datapath.l4 = Some(l4),
                Err(e) => tracing::warn!("the kernel L4 path is unavailable: {e:#}"),
            }
        }
        Ok(datapath)
    }

    /// Closes the programs and maps, removes the pins and directories this run created, and
    /// unmounts the bpffs if this run mounted it.
    fn discard(self) {
        let Loaded {
            ebpf,
            bpffs,
            pin_dir,
            pins,
            counters,
        } = self;
        drop(counters);
        drop(ebpf);
        remove_pins(&pins, &pin_dir);
        bpffs.release();
        tracing::info!(pin_dir = %pin_dir.display(), "removed the pinned maps");
    }
}

impl KernelDatapath {
    fn attach_interface(&mut self, interface: &str, order: &[Attachment]) -> anyhow::Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| {
            anyhow!("interface {interface:?} not found in this network namespace: {e}")
        })?;
        let (attachment, link) = attach_first(&mut self.loaded.ebpf, interface, ifindex, order)?;
        tracing::info!(%interface, ifindex, attachment = attachment.label(), "attached the datapath");
        self.interfaces.push(InterfaceStatus {
            interface: interface.to_owned(),
            ifindex,
            attachment,
        });
        self.links.push((interface.to_owned(), link));
        Ok(())
    }
}

fn remove_pins(pins: &[PathBuf], pin_dir: &Path) {
    for pin in pins {
        if let Err(e) = fs::remove_file(pin)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pin = %pin.display(), error = %e, "could not remove pin");
        }
    }
    // Only empty directories are removed: another instance may live beside this one.
    let _ = fs::remove_dir(pin_dir);
    if let Some(parent) = pin_dir.parent() {
        let _ = fs::remove_dir(parent);
    }
}

fn take_counters(ebpf: &mut Ebpf) -> anyhow::Result<CounterReader> {
    let map = ebpf
        .take_map(map_names::REASON_COUNTERS)
        .ok_or_else(|| anyhow!("the eBPF object has no {} map", map_names::REASON_COUNTERS))?;
    let map = PerCpuArray::try_from(map).context("REASON_COUNTERS has an unexpected type")?;
    Ok(CounterReader { map: Arc::new(map) })
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    let loaded = match program {
        aya::programs::Program::Xdp(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    };
    loaded.with_context(|| format!("the verifier rejected {name}"))
}

fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    let program = ebpf
        .program_mut(program_names::XDP_INGRESS)
        .ok_or_else(|| anyhow!("no program {}", program_names::XDP_INGRESS))?;
    Ok(program.try_into()?)
}

fn tc_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    let program = ebpf
        .program_mut(program_names::TC_INGRESS)
        .ok_or_else(|| anyhow!("no program {}", program_names::TC_INGRESS))?;
    Ok(program.try_into()?)
}

fn attach_first(
    ebpf: &mut Ebpf,
    interface: &str,
    ifindex: u32,
    order: &[Attachment],
) -> anyhow::Result<(Attachment, Link)> {
    let mut failures = Vec::new();
    for (i, &attachment) in order.iter().enumerate() {
        let attached = match attachment {
            Attachment::XdpNative => xdp_program(ebpf)
                .and_then(|p| Ok(p.attach_to_if_index(ifindex, XdpMode::Driver)?))
                .map(Link::Xdp),
            Attachment::XdpGeneric => xdp_program(ebpf)
                .and_then(|p| Ok(p.attach_to_if_index(ifindex, XdpMode::Skb)?))
                .map(Link::Xdp),
            // On kernels >= 6.6 this is a TCX link and needs no clsact qdisc.
            Attachment::Tc => tc_program(ebpf)
                .and_then(|p| Ok(p.attach(interface, TcAttachType::Ingress)?))
                .map(Link::Tc),
        };
        match attached {
            Ok(link) => return Ok((attachment, link)),
            Err(e) => {
                if let Some(next) = order.get(i + 1) {
                    tracing::warn!(
                        %interface,
                        failed = attachment.label(),
                        error = %format!("{e:#}"),
                        "attach failed; falling back to {}",
                        next.label()
                    );
                }
                failures.push(format!("{}: {e:#}", attachment.label()));
            }
        }
    }
    bail!("could not attach to {interface}: {}", failures.join("; "))
}

/// Forwards the programs' aya-log records into `tracing` (through the `log` bridge). The
/// object carries the log ring buffer only when built with the `packet-log` feature.
fn forward_logs(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::debug!(error = %e, "no eBPF log records to forward (build with --features packet-log)");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd; it stays open and unchanged until the
    // AsyncFd (which owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the eBPF log ring buffer");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
