//! The datapath: which one runs (kernel XDP/TC or userspace), how it is chosen, and what it
//! reports. Choosing is pure and unit-tested; the kernel side lives in [`kernel`].
pub mod batch;
pub mod bpffs;
pub mod ebpf_object;
pub mod instance_lock;
pub mod kernel;
pub mod l4;
pub mod link;
pub mod ports;
pub mod sockets;
pub mod sync;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use gateway_common::{Counters, PacketReason};
use serde::Serialize;

/// `--datapath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// XDP, then TC per interface; userspace when BPF cannot be loaded.
    Auto,
    /// XDP only.
    Xdp,
    /// TC (clsact ingress) only.
    Tc,
    /// No BPF: every listener is served by the userspace proxy.
    Userspace,
}

/// `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic mode per interface.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// How the kernel program is attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Attachment {
    #[serde(rename = "xdp-native")]
    XdpNative,
    #[serde(rename = "xdp-generic")]
    XdpGeneric,
    #[serde(rename = "tc")]
    Tc,
}

impl Attachment {
    pub const fn label(self) -> &'static str {
        match self {
            Attachment::XdpNative => "xdp-native",
            Attachment::XdpGeneric => "xdp-generic",
            Attachment::Tc => "tc",
        }
    }
}

/// The attachments to try on each interface, in order, for a datapath and XDP mode choice.
/// Empty for userspace mode.
pub fn attach_order(mode: DatapathMode, xdp_mode: XdpModeChoice) -> Vec<Attachment> {
    let xdp = match xdp_mode {
        XdpModeChoice::Auto => vec![Attachment::XdpNative, Attachment::XdpGeneric],
        XdpModeChoice::Native => vec![Attachment::XdpNative],
        XdpModeChoice::Generic => vec![Attachment::XdpGeneric],
    };
    match mode {
        DatapathMode::Auto => [xdp, vec![Attachment::Tc]].concat(),
        DatapathMode::Xdp => xdp,
        DatapathMode::Tc => vec![Attachment::Tc],
        DatapathMode::Userspace => Vec::new(),
    }
}

/// The attachments to try on one interface: [`attach_order`], except that `auto` (with
/// `--xdp-mode auto`) tries TC first on a veth. There XDP costs more than it saves: a native
/// XDP program turns off the peer's TSO and needs full checksums, so bulk traffic crosses as
/// MTU-sized frames, while TC keeps 64 KiB GSO packets whole (docs/bench.md: TC 0.94-0.98x
/// the direct path in bulk, XDP 0.14-0.17x). `kind` is the link kind (`IFLA_INFO_KIND`),
/// none for a physical NIC. Returns the order and, when it deviates, why.
pub fn interface_attach_order(
    mode: DatapathMode,
    xdp_mode: XdpModeChoice,
    kind: Option<&str>,
) -> (Vec<Attachment>, Option<&'static str>) {
    let mut order = attach_order(mode, xdp_mode);
    if mode == DatapathMode::Auto && xdp_mode == XdpModeChoice::Auto && kind == Some("veth") {
        order.retain(|a| *a != Attachment::Tc);
        order.insert(0, Attachment::Tc);
        return (
            order,
            Some("veth: TC first, it keeps GSO where XDP turns the peer's TSO off"),
        );
    }
    (order, None)
}

/// What the daemon asked of the datapath.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    pub mode: DatapathMode,
    pub xdp_mode: XdpModeChoice,
    pub interfaces: Vec<String>,
    pub bpffs: PathBuf,
    pub instance: String,
    /// `--keep-datapath`: on exit, leave the programs forwarding for the next run.
    pub keep_on_exit: bool,
    /// The kernel NAT's settings.
    pub nat: NatOptions,
}

/// What the daemon tells the kernel NAT (`l4::NatConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatOptions {
    /// `--l4-nat-ports`: the source ports towards backends.
    pub ports: ports::PortRange,
    /// `--l4-syn-backlog`: unanswered handshakes before SYNs go to the stack's cookies.
    pub syn_backlog: u32,
}

impl NatOptions {
    /// The value the kernel reads.
    pub fn config(self) -> gateway_common::l4::NatConfig {
        gateway_common::l4::NatConfig {
            syn_backlog: self.syn_backlog,
            ..self.ports.config()
        }
    }
}

/// One interface and how the kernel program sits on it.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStatus {
    pub interface: String,
    pub ifindex: u32,
    pub attachment: Attachment,
}

/// What runs, for logs, `/config_dump` and metrics.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum DatapathStatus {
    Kernel {
        interfaces: Vec<InterfaceStatus>,
        pin_dir: PathBuf,
    },
    Userspace {
        reason: String,
    },
}

impl DatapathStatus {
    pub fn mode_label(&self) -> &'static str {
        match self {
            DatapathStatus::Kernel { .. } => "kernel",
            DatapathStatus::Userspace { .. } => "userspace",
        }
    }
}

/// A running datapath.
pub enum Datapath {
    Kernel {
        kernel: Box<kernel::KernelDatapath>,
        on_exit: kernel::OnExit,
    },
    Userspace {
        reason: String,
    },
}

impl Datapath {
    /// Starts the datapath `options` ask for. `auto` falls back to userspace when the kernel
    /// programs cannot be loaded at all; an interface that cannot be attached is an error in
    /// every mode, since serving without it would silently bypass the gateway.
    pub fn start(options: &DatapathOptions) -> anyhow::Result<Datapath> {
        let userspace = |reason: String| {
            tracing::warn!(%reason, "running the userspace datapath");
            Ok(Datapath::Userspace { reason })
        };
        if options.mode == DatapathMode::Userspace {
            kernel::remove_leftovers(&options.bpffs, &options.instance)?;
            return Ok(Datapath::Userspace {
                reason: "--datapath userspace".into(),
            });
        }
        let auto = options.mode == DatapathMode::Auto;
        if !ebpf_object::embedded() {
            let why = "this sluice binary was built without its eBPF object (build it with `cargo xtask build`)";
            if auto {
                return userspace(why.into());
            }
            bail!("--datapath {:?}: {why}", options.mode);
        }
        if options.interfaces.is_empty() {
            if auto {
                return userspace("no --interface given".into());
            }
            bail!(
                "--datapath {:?} needs at least one --interface",
                options.mode
            );
        }
        let loaded = match kernel::KernelDatapath::load(&options.bpffs, &options.instance) {
            Ok(loaded) => loaded,
            Err(e) if auto && !e.is::<instance_lock::InstanceBusy>() => {
                kernel::remove_leftovers(&options.bpffs, &options.instance)?;
                return userspace(format!("{e:#}"));
            }
            Err(e) => return Err(e),
        };
        let orders: Vec<(String, Vec<Attachment>)> = options
            .interfaces
            .iter()
            .map(|interface| {
                let kind = link::kind(interface);
                let (order, why) =
                    interface_attach_order(options.mode, options.xdp_mode, kind.as_deref());
                if let Some(why) = why {
                    tracing::info!(%interface, "{why}");
                }
                (interface.clone(), order)
            })
            .collect();
        let on_exit = if options.keep_on_exit {
            kernel::OnExit::Keep
        } else {
            kernel::OnExit::Remove
        };
        loaded
            .attach(&orders, options.nat)
            .map(|kernel| Datapath::Kernel {
                kernel: Box::new(kernel),
                on_exit,
            })
            .context("attaching the datapath")
    }

    pub fn status(&self) -> DatapathStatus {
        match self {
            Datapath::Kernel { kernel, .. } => kernel.status(),
            Datapath::Userspace { reason } => DatapathStatus::Userspace {
                reason: reason.clone(),
            },
        }
    }

    /// The kernel L4 adapter, when the XDP program is attached somewhere.
    pub fn take_l4(&mut self) -> Option<l4::KernelL4> {
        match self {
            Datapath::Kernel { kernel, .. } => kernel.take_l4(),
            Datapath::Userspace { .. } => None,
        }
    }

    /// The TLS passthrough socket splice; none in userspace mode or where it cannot load.
    pub fn socket_splice(&self) -> Option<std::sync::Arc<sockets::SocketSplice>> {
        match self {
            Datapath::Kernel { kernel, .. } => kernel.socket_splice(),
            Datapath::Userspace { .. } => None,
        }
    }

    /// A handle the metrics endpoint reads packet counters through; none in userspace mode.
    pub fn counter_reader(&self) -> Option<kernel::CounterReader> {
        match self {
            Datapath::Kernel { kernel, .. } => Some(kernel.counter_reader()),
            Datapath::Userspace { .. } => None,
        }
    }

    /// Detaches programs and removes pins, mounts and directories this run created; with
    /// `--keep-datapath`, leaves them forwarding for the next run instead.
    /// Whether the kernel datapath runs on a bpffs this run mounted (and unmounts at exit).
    pub fn mounted_bpffs(&self) -> bool {
        match self {
            Datapath::Kernel { kernel, .. } => kernel.mounted_bpffs(),
            Datapath::Userspace { .. } => false,
        }
    }

    pub fn shutdown(self) {
        if let Datapath::Kernel { kernel, on_exit } = self {
            kernel.shutdown(on_exit);
        }
    }

    /// Stops a datapath whose daemon failed to start serving: what this run created is
    /// removed, a previous run's kept datapath is left serving.
    pub fn abandon(self) {
        if let Datapath::Kernel { kernel, .. } = self {
            kernel.abandon();
        }
    }
}

/// Instance names become a directory name under bpffs.
pub fn parse_instance(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a valid instance name: use 1-64 characters of [A-Za-z0-9_-]"
        ))
    }
}

/// Packet counters summed over CPUs, in reason order.
pub type ReasonCounters = Vec<(PacketReason, Counters)>;

#[cfg(test)]
mod tests {
    use super::*;
    use Attachment::*;

    #[test]
    fn attach_order_follows_the_flags() {
        let cases = [
            (
                DatapathMode::Auto,
                XdpModeChoice::Auto,
                vec![XdpNative, XdpGeneric, Tc],
            ),
            (
                DatapathMode::Auto,
                XdpModeChoice::Native,
                vec![XdpNative, Tc],
            ),
            (
                DatapathMode::Auto,
                XdpModeChoice::Generic,
                vec![XdpGeneric, Tc],
            ),
            (
                DatapathMode::Xdp,
                XdpModeChoice::Auto,
                vec![XdpNative, XdpGeneric],
            ),
            (DatapathMode::Xdp, XdpModeChoice::Native, vec![XdpNative]),
            (DatapathMode::Xdp, XdpModeChoice::Generic, vec![XdpGeneric]),
            (DatapathMode::Tc, XdpModeChoice::Auto, vec![Tc]),
            (DatapathMode::Userspace, XdpModeChoice::Auto, vec![]),
        ];
        for (mode, xdp_mode, want) in cases {
            assert_eq!(attach_order(mode, xdp_mode), want, "{mode:?} {xdp_mode:?}");
        }
    }

    #[test]
    fn auto_tries_tc_first_on_veth_only() {
        let cases = [
            (
                DatapathMode::Auto,
                XdpModeChoice::Auto,
                Some("veth"),
                vec![Tc, XdpNative, XdpGeneric],
                true,
            ),
            (
                DatapathMode::Auto,
                XdpModeChoice::Auto,
                None,
                vec![XdpNative, XdpGeneric, Tc],
                false,
            ),
            (
                DatapathMode::Auto,
                XdpModeChoice::Auto,
                Some("bond"),
                vec![XdpNative, XdpGeneric, Tc],
                false,
            ),
            // An explicit XDP mode or datapath is the operator's choice.
            (
                DatapathMode::Auto,
                XdpModeChoice::Native,
                Some("veth"),
                vec![XdpNative, Tc],
                false,
            ),
            (
                DatapathMode::Xdp,
                XdpModeChoice::Auto,
                Some("veth"),
                vec![XdpNative, XdpGeneric],
                false,
            ),
            (
                DatapathMode::Tc,
                XdpModeChoice::Auto,
                Some("veth"),
                vec![Tc],
                false,
            ),
        ];
        for (mode, xdp_mode, kind, want, deviates) in cases {
            let (order, why) = interface_attach_order(mode, xdp_mode, kind);
            assert_eq!(order, want, "{mode:?} {xdp_mode:?} {kind:?}");
            assert_eq!(why.is_some(), deviates, "{mode:?} {xdp_mode:?} {kind:?}");
        }
    }

    fn options(mode: DatapathMode, interfaces: &[&str]) -> DatapathOptions {
        DatapathOptions {
            mode,
            xdp_mode: XdpModeChoice::Auto,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            bpffs: PathBuf::from("/nonexistent"),
            instance: "test".into(),
            keep_on_exit: false,
            nat: NatOptions {
                ports: ports::PortRange::DEFAULT,
                syn_backlog: gateway_common::l4::DEFAULT_SYN_BACKLOG,
            },
        }
    }

    #[test]
    fn instance_names_are_path_safe() {
        assert!(parse_instance("edge-1").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(parse_instance(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn userspace_mode_never_touches_bpf() {
        let datapath = Datapath::start(&options(DatapathMode::Userspace, &["eth0"]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(matches!(
            datapath.status(),
            DatapathStatus::Userspace { .. }
        ));
        assert!(datapath.counter_reader().is_none());
    }

    #[test]
    fn auto_without_interfaces_runs_in_userspace_and_says_why() {
        let datapath =
            Datapath::start(&options(DatapathMode::Auto, &[])).unwrap_or_else(|e| panic!("{e:#}"));
        match datapath.status() {
            DatapathStatus::Userspace { reason } => {
                assert!(
                    reason.contains("no --interface") || reason.contains("without its eBPF object"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_kernel_modes_need_an_interface_or_an_object() {
        for mode in [DatapathMode::Xdp, DatapathMode::Tc] {
            let err = Datapath::start(&options(mode, &[]))
                .err()
                .map(|e| format!("{e:#}"));
            let err = err.unwrap_or_else(|| panic!("{mode:?} started without interfaces"));
            assert!(
                err.contains("--interface") || err.contains("eBPF object"),
                "{err}"
            );
        }
    }
}
