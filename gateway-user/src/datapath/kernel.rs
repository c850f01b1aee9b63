//! The kernel datapath: loads the embedded eBPF object, pins its maps under
//! `<bpffs>/sluice/<instance>/` and its links under `.../links/`, attaches the ingress
//! program per interface (with fallbacks), forwards the programs' aya-log records into
//! `tracing`, and on shutdown either undoes all of it or, with `--keep-datapath`, leaves the
//! programs forwarding so the next run takes over their maps and links (the established
//! connections in the flow map never notice the restart).
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::instance_lock::{InstanceBusy, InstanceLock};
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    maps::{MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use gateway_common::{Counters, PacketReason, map_names, program_names};

use super::ebpf_object::EBPF_OBJECT;
use super::{
    Attachment, DatapathStatus, InterfaceStatus, ReasonCounters, bpffs::Bpffs, ports::Reservation,
};

/// Loaded programs and pinned maps, not yet attached.
pub struct Loaded {
    ebpf: Ebpf,
    bpffs: Bpffs,
    pin_dir: PathBuf,
    pins: Vec<PathBuf>,
    counters: CounterReader,
    /// The maps were a previous run's (it exited with `--keep-datapath`).
    reused: bool,
    /// Held while this run owns the pins.
    _lock: InstanceLock,
}

/// How the program sits on one interface.
enum Link {
    /// A bpf_link pinned at `path`: it stays attached while the pin exists, across restarts.
    /// Our fd is held so that unpinning and then dropping it detaches.
    Pinned {
        path: PathBuf,
        _fd: FdLink,
    },
    /// A netlink attachment (kernels without bpf_link for the hook): cannot outlive us.
    Xdp(XdpLink),
    Tc(SchedClassifierLink),
}

/// What happens to the attached programs and pinned state when the daemon exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Detach, unpin and unmount what this run created.
    Remove,
    /// Leave programs attached and maps and links pinned, for the next run to take over.
    Keep,
}

pub struct KernelDatapath {
    loaded: Loaded,
    interfaces: Vec<InterfaceStatus>,
    links: Vec<(String, Link)>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    l4: Option<super::l4::KernelL4>,
    /// The NAT's source ports, kept out of the host's own port choice while the kernel NATs.
    reservation: Option<Reservation>,
    /// The TLS passthrough socket splice, when the kernel supports it.
    sockets: Option<Arc<super::sockets::SocketSplice>>,
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
        // Before any pin is read or written: a second daemon on this instance changes nothing.
        let lock = match InstanceLock::take(&pin_dir) {
            Ok(lock) => lock,
            Err(e) => {
                bpffs.release();
                return Err(e);
            }
        };
        let pins: Vec<PathBuf> = map_names::ALL
            .iter()
            .map(|name| pin_dir.join(name))
            .collect();
        let reused = match check_reusable(&pins) {
            Ok(reused) => reused,
            Err(e) => {
                bpffs.release();
                return Err(e);
            }
        };
        let mut loader = EbpfLoader::new();
        for (name, pin) in map_names::ALL.iter().zip(&pins) {
            loader.map_pin_path(name, pin.as_path());
        }
        let loaded = loader.load(EBPF_OBJECT).context(
            "loading the eBPF object (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON; \
             run with --datapath userspace to serve without BPF)",
        );
        // Once loaded, the maps are pinned: every error path must remove the pins again
        // (unless they were a previous run's, still serving its connections).
        let prepared = loaded.and_then(|mut ebpf| {
            for name in [program_names::XDP_INGRESS, program_names::TC_INGRESS] {
                load_program(&mut ebpf, name)?;
            }
            let counters = take_counters(&mut ebpf)?;
            Ok((ebpf, counters))
        });
        match prepared {
            Ok((ebpf, counters)) => {
                if reused {
                    tracing::info!(pin_dir = %pin_dir.display(), "loaded the eBPF programs on the maps a previous run pinned: its connections carry on");
                } else {
                    tracing::info!(pin_dir = %pin_dir.display(), "loaded the eBPF programs and pinned their maps");
                }
                Ok(Loaded {
                    ebpf,
                    bpffs,
                    pin_dir,
                    pins,
                    counters,
                    reused,
                    _lock: lock,
                })
            }
            Err(e) => {
                if !reused {
                    remove_pins(&pins, &pin_dir);
                }
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

    /// The TLS passthrough socket splice, if the kernel took its program.
    pub fn socket_splice(&self) -> Option<Arc<super::sockets::SocketSplice>> {
        self.sockets.clone()
    }

    pub fn counter_reader(&self) -> CounterReader {
        self.loaded.counters.clone()
    }

    /// Stops the datapath; what stays behind is up to `on_exit`.
    pub fn shutdown(mut self, on_exit: OnExit) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
        // The L4 adapter holds map fds; they close with it.
        drop(self.l4.take());
        // A kept datapath goes on NATing from the range, so its ports stay reserved (the
        // next run finds them so and keeps them).
        if on_exit == OnExit::Remove
            && let Some(reservation) = self.reservation.take()
        {
            reservation.release();
        }
        match on_exit {
            OnExit::Keep => {
                for (interface, link) in self.links.drain(..) {
                    match link {
                        // Closing our fd leaves the pinned link (and so the program) attached.
                        Link::Pinned { .. } => {}
                        Link::Xdp(_) | Link::Tc(_) => tracing::warn!(
                            %interface,
                            "this interface is attached through netlink, which cannot outlive \
                             the daemon: detaching it"
                        ),
                    }
                }
                self.loaded.keep();
            }
            OnExit::Remove => {
                for (interface, link) in self.links.drain(..) {
                    if let Link::Pinned { path, .. } = &link
                        && let Err(e) = fs::remove_file(path)
                    {
                        tracing::warn!(%interface, pin = %path.display(), error = %e, "could not unpin the link");
                    }
                    // Dropping the last reference detaches.
                    drop(link);
                    tracing::info!(%interface, "detached the datapath");
                }
                self.loaded.discard();
            }
        }
    }

    /// Stops a datapath whose start failed half-way: a fresh one is removed, a previous run's
    /// (still carrying its connections) is left as it was.
    /// Whether this run mounted the bpffs its pins are on (and so unmounts it at exit).
    pub fn mounted_bpffs(&self) -> bool {
        self.loaded.bpffs.mounted_here()
    }

    pub fn abandon(self) {
        let on_exit = if self.loaded.reused {
            tracing::warn!(
                pin_dir = %self.loaded.pin_dir.display(),
                "leaving the previous run's datapath in place"
            );
            OnExit::Keep
        } else {
            OnExit::Remove
        };
        self.shutdown(on_exit);
    }
}

impl Loaded {
    /// Attaches the ingress program to every interface, trying `order` per interface; each
    /// fallback is logged with the reason the previous attachment failed.
    pub fn attach(
        self,
        orders: &[(String, Vec<Attachment>)],
        nat: super::NatOptions,
    ) -> anyhow::Result<KernelDatapath> {
        let mut datapath = KernelDatapath {
            loaded: self,
            interfaces: Vec::new(),
            links: Vec::new(),
            log_task: None,
            l4: None,
            reservation: None,
            sockets: None,
        };
        if let Err(e) = fs::create_dir_all(datapath.loaded.links_dir()) {
            datapath.abandon();
            return Err(e).context("creating the link pin directory");
        }
        for (interface, order) in orders {
            if let Err(e) = datapath.attach_interface(interface, order) {
                datapath.abandon();
                return Err(e);
            }
        }
        let interfaces: Vec<String> = orders.iter().map(|(i, _)| i.clone()).collect();
        datapath.release_other_links(&interfaces);
        let sluice_dir = datapath.loaded.bpffs.root.join("sluice");
        if let Err(e) = super::bpffs::restrict(&sluice_dir) {
            tracing::warn!("the pins stay readable by others: {e:#}");
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
            match super::l4::KernelL4::new(&mut datapath.loaded.ebpf, devices, nat) {
                Ok(l4) => datapath.l4 = Some(l4),
                Err(e) => tracing::warn!("the kernel L4 path is unavailable: {e:#}"),
            }
        }
        match super::sockets::SocketSplice::new(&mut datapath.loaded.ebpf) {
            Ok(sockets) => datapath.sockets = Some(sockets),
            Err(e) => tracing::warn!("the socket splice is unavailable: {e:#}"),
        }
        if datapath.l4.is_some() {
            // Before any listener reaches the maps: no NAT flow exists yet.
            match Reservation::reserve(nat.ports) {
                Ok(reservation) => datapath.reservation = Some(reservation),
                Err(e) => {
                    datapath.abandon();
                    return Err(e);
                }
            }
        }
        Ok(datapath)
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join(LINKS_DIR)
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
            reused: _,
            _lock,
        } = self;
        drop(counters);
        drop(ebpf);
        remove_pins(&pins, &pin_dir);
        bpffs.release();
        tracing::info!(pin_dir = %pin_dir.display(), "removed the pinned maps");
    }

    /// Closes our handles and leaves the pins (and the bpffs) for the next run.
    fn keep(self) {
        if self.bpffs.mounted_here() {
            tracing::warn!(
                bpffs = %self.bpffs.root.display(),
                "this process mounted the bpffs the datapath is pinned on: if the mount goes \
                 away with its mount namespace, so do the kept programs (mount it on the host)"
            );
        }
        tracing::info!(
            pin_dir = %self.pin_dir.display(),
            "left the datapath attached and its maps and links pinned for the next run \
             (`sluice cleanup` removes them)"
        );
    }
}

impl KernelDatapath {
    fn attach_interface(&mut self, interface: &str, order: &[Attachment]) -> anyhow::Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| {
            anyhow!("interface {interface:?} not found in this network namespace: {e}")
        })?;
        let links_dir = self.loaded.links_dir();
        let (attachment, link, replaced) = match self.take_over(&links_dir, interface, order) {
            Some((attachment, link)) => (attachment, link, true),
            None => {
                let (attachment, link) =
                    attach_first(&mut self.loaded.ebpf, interface, ifindex, order)?;
                let path = links_dir.join(link_pin_name(interface, attachment));
                (attachment, pin_link(link, path)?, false)
            }
        };
        if replaced {
            tracing::info!(%interface, ifindex, attachment = attachment.label(), "replaced the previous run's program on its link, atomically");
        } else {
            tracing::info!(%interface, ifindex, attachment = attachment.label(), "attached the datapath");
        }
        if attachment == Attachment::XdpNative
            && super::link::kind(interface).as_deref() == Some("veth")
        {
            tracing::warn!(
                %interface,
                "native XDP on a veth: frames redirected into a veth reach its peer only if the \
                 peer has GRO on or runs an XDP program (otherwise the kernel drops them after \
                 they were counted as forwarded); replies out of this veth go through the \
                 devmap, not XDP_TX. TC (`--datapath tc`, or `auto`) has neither condition"
            );
        }
        self.interfaces.push(InterfaceStatus {
            interface: interface.to_owned(),
            ifindex,
            attachment,
        });
        self.links.push((interface.to_owned(), link));
        Ok(())
    }

    /// Takes over the link a previous run pinned for `interface`, swapping in this run's
    /// program with one bpf_link update: no packet goes unprocessed. A link for an
    /// attachment `order` does not allow, or one that no longer works (its interface was
    /// deleted), is removed so a fresh attachment can be made.
    fn take_over(
        &mut self,
        links_dir: &Path,
        interface: &str,
        order: &[Attachment],
    ) -> Option<(Attachment, Link)> {
        let mut found = None;
        for attachment in [
            Attachment::XdpNative,
            Attachment::XdpGeneric,
            Attachment::Tc,
        ] {
            let path = links_dir.join(link_pin_name(interface, attachment));
            if !path.exists() {
                continue;
            }
            if found.is_none() && order.contains(&attachment) {
                match replace_program(&mut self.loaded.ebpf, &path, attachment) {
                    Ok(link) => {
                        found = Some((attachment, Link::Pinned { path, _fd: link }));
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        %interface,
                        attachment = attachment.label(),
                        error = %format!("{e:#}"),
                        "cannot take over the previous run's link; attaching afresh"
                    ),
                }
            } else {
                tracing::warn!(
                    %interface,
                    attachment = attachment.label(),
                    "removing the previous run's link: this run attaches differently"
                );
            }
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(pin = %path.display(), error = %e, "could not remove a link pin");
            }
        }
        found
    }

    /// Removes links a previous run pinned for interfaces this run does not attach to.
    fn release_other_links(&self, interfaces: &[String]) {
        let Ok(entries) = fs::read_dir(self.loaded.links_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = interfaces.iter().any(|interface| {
                [
                    Attachment::XdpNative,
                    Attachment::XdpGeneric,
                    Attachment::Tc,
                ]
                .iter()
                .any(|a| link_pin_name(interface, *a) == name)
            });
            if !ours {
                tracing::warn!(link = %name, "detaching a previous run's link: its interface is not in this run's --interface list");
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(link = %name, error = %e, "could not remove a link pin");
                }
            }
        }
    }
}

/// The directory under the pin directory that holds one pinned link per attached interface.
const LINKS_DIR: &str = "links";

/// `<attachment>@<interface>`, so the next run (and a person with `ls`) sees how the link
/// was made. bpffs refuses names with dots, which interface names may have (`eth0.100`), so
/// those become colons, which interface names cannot have.
fn link_pin_name(interface: &str, attachment: Attachment) -> String {
    format!("{}@{}", attachment.label(), interface.replace('.', ":"))
}

/// Points the pinned link at this run's program (`BPF_LINK_UPDATE`).
fn replace_program(ebpf: &mut Ebpf, path: &Path, attachment: Attachment) -> anyhow::Result<FdLink> {
    let pinned = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the pinned link {}", path.display()))?;
    let link = FdLink::from(pinned);
    match attachment {
        Attachment::XdpNative | Attachment::XdpGeneric => {
            let program = xdp_program(ebpf)?;
            let id = program.attach_to_link(XdpLink::try_from(link)?)?;
            Ok(FdLink::try_from(program.take_link(id)?)?)
        }
        Attachment::Tc => {
            let program = tc_program(ebpf)?;
            let id = program.attach_to_link(SchedClassifierLink::try_from(link)?)?;
            Ok(FdLink::try_from(program.take_link(id)?)?)
        }
    }
}

/// aya attaches XDP with a bpf_link from Linux 5.9 on, through netlink before.
fn xdp_links_are_bpf_links() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 9, 0))
}

/// Pins a fresh bpf_link so it can outlive this process. Netlink attachments (XDP before
/// Linux 5.9, TC before TCX in 6.6) have no link to pin: they stay owned and detach with us.
fn pin_link(link: Link, path: PathBuf) -> anyhow::Result<Link> {
    let fd_link = match link {
        Link::Xdp(link) if xdp_links_are_bpf_links() => FdLink::try_from(link)?,
        Link::Tc(link) if <&FdLink>::try_from(&link).is_ok() => FdLink::try_from(link)?,
        other => return Ok(other),
    };
    let pinned = fd_link
        .pin(&path)
        .with_context(|| format!("pinning the link at {}", path.display()))?;
    Ok(Link::Pinned {
        path,
        _fd: FdLink::from(pinned),
    })
}

/// The parts of a map's definition its programs' accesses are verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapShape {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-byte keys, {}-byte values, {} entries",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Whether pinned maps from a previous run exist and fit this build's programs. A map left
/// by a Sluice build with another layout would be read with the wrong sizes, so that is an
/// error that says how to start over, not a silent reuse.
fn check_reusable(pins: &[PathBuf]) -> anyhow::Result<bool> {
    let mut existing = Vec::new();
    for (name, pin) in map_names::ALL.iter().zip(pins) {
        if pin.exists() {
            let info = MapInfo::from_pin(pin)
                .with_context(|| format!("reading the pinned map {}", pin.display()))?;
            let have = MapShape {
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            existing.push((*name, pin, have));
        }
    }
    if existing.is_empty() {
        return Ok(false);
    }
    let object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the eBPF object")?;
    for (name, pin, have) in existing {
        let want = object
            .maps
            .get(name)
            .map(|def| MapShape {
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
            })
            .ok_or_else(|| anyhow!("the eBPF object has no {name} map"))?;
        if let Some(problem) = shape_mismatch(name, want, have) {
            bail!(
                "{problem} ({}): a Sluice build with another map layout left it. Stop that \
                 daemon, run `sluice cleanup` with the same --bpffs and --instance (its \
                 connections are dropped), then start again",
                pin.display()
            );
        }
    }
    Ok(true)
}

fn shape_mismatch(name: &str, want: MapShape, have: MapShape) -> Option<String> {
    (want != have).then(|| format!("the pinned map {name} has {have}, this build needs {want}"))
}

/// `sluice cleanup`: removes what a daemon that exited with `--keep-datapath` left under
/// `<bpffs>/sluice/<instance>/`. Unpinning the links detaches the programs (unless a running
/// daemon still holds them). Returns the pins removed.
/// For a daemon serving in userspace: removes the datapath an earlier kernel-mode run left
/// pinned on this instance (its programs would otherwise go on taking the listeners'
/// packets beside the userspace servers). Refused while another daemon holds the instance;
/// nothing to do without a bpffs or pins.
pub fn remove_leftovers(bpffs_root: &Path, instance: &str) -> anyhow::Result<()> {
    let pin_dir = bpffs_root.join("sluice").join(instance);
    if !pin_dir.is_dir() {
        return Ok(());
    }
    match cleanup(bpffs_root, instance) {
        Ok(removed) if removed.is_empty() => Ok(()),
        Ok(removed) => {
            tracing::warn!(
                pin_dir = %pin_dir.display(),
                removed = removed.len(),
                "removed the kernel datapath an earlier run left pinned: this run serves in userspace"
            );
            Ok(())
        }
        Err(e) if e.is::<InstanceBusy>() => Err(e),
        Err(e) => {
            tracing::warn!("could not remove what an earlier run left pinned: {e:#}");
            Ok(())
        }
    }
}

/// `sluice cleanup`: removes a kept datapath's links, maps and directories, unless a daemon
/// runs on the instance.
pub fn cleanup(bpffs_root: &Path, instance: &str) -> anyhow::Result<Vec<PathBuf>> {
    let pin_dir = bpffs_root.join("sluice").join(instance);
    let _lock = match InstanceLock::take(&pin_dir) {
        Ok(lock) => Some(lock),
        Err(e) if e.is::<InstanceBusy>() => return Err(e),
        // Nothing pinned there (or no directory to lock): nothing to race with.
        Err(_) => None,
    };
    let mut removed = Vec::new();
    let links_dir = pin_dir.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&links_dir) {
        for entry in entries {
            let path = entry.context("listing the link pins")?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    let _ = fs::remove_dir(&links_dir);
    for name in map_names::ALL {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let _ = fs::remove_dir(&pin_dir);
    let _ = fs::remove_dir(bpffs_root.join("sluice"));
    Ok(removed)
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
    let _ = fs::remove_dir(pin_dir.join(LINKS_DIR));
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
            // The links are taken out of the programs: they are ours to pin or drop.
            Attachment::XdpNative | Attachment::XdpGeneric => {
                let mode = if attachment == Attachment::XdpNative {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                xdp_program(ebpf)
                    .and_then(|p| {
                        let id = p.attach_to_if_index(ifindex, mode)?;
                        Ok(p.take_link(id)?)
                    })
                    .map(Link::Xdp)
            }
            // On kernels >= 6.6 this is a TCX link and needs no clsact qdisc.
            Attachment::Tc => tc_program(ebpf)
                .and_then(|p| {
                    let id = p.attach(interface, TcAttachType::Ingress)?;
                    Ok(p.take_link(id)?)
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_are_valid_bpffs_names_and_distinct() {
        let cases = [
            ("eth0", Attachment::XdpNative, "xdp-native@eth0"),
            ("eth0", Attachment::XdpGeneric, "xdp-generic@eth0"),
            ("eth0", Attachment::Tc, "tc@eth0"),
            ("eth0.100", Attachment::Tc, "tc@eth0:100"),
        ];
        for (interface, attachment, want) in cases {
            let name = link_pin_name(interface, attachment);
            assert_eq!(name, want);
            assert!(!name.contains('.') && !name.contains('/'), "{name}");
        }
    }

    #[test]
    fn a_map_of_another_layout_is_named_with_both_shapes() {
        let want = MapShape {
            key_size: 40,
            value_size: 80,
            max_entries: 262_144,
        };
        assert_eq!(shape_mismatch("L4_FLOWS", want, want), None);
        let have = MapShape {
            value_size: 64,
            ..want
        };
        assert_eq!(
            shape_mismatch("L4_FLOWS", want, have).as_deref(),
            Some(
                "the pinned map L4_FLOWS has 40-byte keys, 64-byte values, 262144 entries, \
                 this build needs 40-byte keys, 80-byte values, 262144 entries"
            )
        );
    }
}
