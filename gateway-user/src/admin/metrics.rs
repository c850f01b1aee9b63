//! Prometheus metrics. Datapath counters are read from the per-CPU maps at scrape time, so a
//! scrape always shows what the kernel counted, with no copy to keep in sync.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};

use gateway_common::l4::L4Counters;

use crate::{
    compile::plan::Place,
    config::Severity,
    daemon::{snapshot::ConfigStatus, state::SharedState},
    datapath::l4::L4KernelStats,
};

/// Builds the registry served on `/stats/prometheus`.
pub fn registry(state: Arc<SharedState>) -> Registry {
    let mut registry = Registry::with_prefix("sluice");
    registry.register(
        "build",
        "Sluice build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    state.l4.register(&mut registry);
    state.sni.register(&mut registry);
    state.http.register(&mut registry);
    state.dns.register(&mut registry);
    state.health.register(&mut registry);
    registry.register_collector(Box::new(StateCollector { state }));
    registry
}

/// Selects one field of the per-reason counters.
type CounterField = fn(&gateway_common::Counters) -> u64;

#[derive(Debug)]
struct StateCollector {
    state: Arc<SharedState>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_config(&self.state.config(), &mut encoder)?;
        if let Some(stats) = self.state.kernel_l4() {
            encode_kernel_l4(&stats, &mut encoder)?;
        }
        let Some(datapath) = self.state.datapath() else {
            return Ok(());
        };
        let mode = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "datapath",
            "The running datapath (kernel or userspace)",
            None,
            mode.metric_type(),
        )?;
        mode.encode(family.encode_family(&[("mode", datapath.status.mode_label())])?)?;

        if let crate::datapath::DatapathStatus::Kernel { interfaces, .. } = &datapath.status {
            let mut family = encoder.encode_descriptor(
                "datapath_interface",
                "Interfaces the kernel datapath is attached to, and how",
                None,
                mode.metric_type(),
            )?;
            for i in interfaces {
                let labels = [
                    ("interface", i.interface.as_str()),
                    ("attachment", i.attachment.label()),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }

        let Some(reader) = &datapath.counters else {
            return Ok(());
        };
        let counters = match reader.read() {
            Ok(counters) => counters,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read datapath counters");
                return Ok(());
            }
        };
        let metrics: [(&str, &str, CounterField); 2] = [
            (
                "datapath_packets",
                "Packets seen by the kernel datapath, by reason and verdict",
                |c| c.packets,
            ),
            (
                "datapath_bytes",
                "Bytes (whole frames) seen by the kernel datapath, by reason and verdict",
                |c| c.bytes,
            ),
        ];
        for (name, help, value) in metrics {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (reason, c) in &counters {
                let labels = [
                    ("reason", reason.label()),
                    ("verdict", reason.verdict().label()),
                ];
                ConstCounter::new(value(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(&[(&str, &str)], i64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, value) in samples {
        if labels.is_empty() {
            ConstGauge::new(*value).encode(family)?;
            return Ok(());
        }
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The running config: generation, reload outcomes, diagnostics, what was left out, and
/// where the listeners run.
fn encode_config(
    status: &ConfigStatus,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let Some(current) = &status.current else {
        return Ok(());
    };
    let generation = i64::try_from(current.generation).unwrap_or(i64::MAX);
    gauge_family(
        encoder,
        "config_generation",
        "Generation of the applied config (1 at startup)",
        &[(&[], generation)],
    )?;
    let counter = ConstCounter::new(0u64);
    let mut reloads = encoder.encode_descriptor(
        "config_reloads",
        "Config reloads by result (rejected: the running config kept serving)",
        None,
        counter.metric_type(),
    )?;
    ConstCounter::new(status.reloads_succeeded)
        .encode(reloads.encode_family(&[("result", "success")])?)?;
    ConstCounter::new(status.reloads_rejected)
        .encode(reloads.encode_family(&[("result", "rejected")])?)?;
    let count = |severity: Severity| {
        current
            .diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count() as i64
    };
    gauge_family(
        encoder,
        "config_diagnostics",
        "Diagnostics of the applied config by severity",
        &[
            (&[("severity", "warning")], count(Severity::Warning)),
            (&[("severity", "info")], count(Severity::Info)),
        ],
    )?;
    gauge_family(
        encoder,
        "config_left_out",
        "Servers and routes of the config that the Plan leaves out (see /config_dump)",
        &[(&[], current.plan.left_out.len() as i64)],
    )?;
    let placed = |place: Place| {
        current
            .plan
            .listeners
            .iter()
            .filter(|l| l.runs.place == place)
            .count() as i64
    };
    gauge_family(
        encoder,
        "plan_listeners",
        "Listeners of the Plan by where their traffic is handled",
        &[
            (&[("runs", "kernel")], placed(Place::Kernel)),
            (&[("runs", "kernel-splice")], placed(Place::KernelSplice)),
            (&[("runs", "userspace")], placed(Place::Userspace)),
        ],
    )
}

/// Selects one field of the kernel's L4 counters.
type L4Field = fn(&L4Counters) -> u64;

/// What the kernel L4 path forwarded, per listener and per backend.
fn encode_kernel_l4(
    stats: &L4KernelStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let (listeners, backends) = stats.read();
    let live = i64::try_from(stats.flows_live.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(i64::MAX);
    gauge_family(
        encoder,
        "l4_kernel_flows",
        "Connection-tracking entries (two per connection) after the last expiry pass",
        &[(&[], live)],
    )?;
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let half_open = i64::try_from(stats.half_open_live.load(ordering)).unwrap_or(i64::MAX);
    gauge_family(
        encoder,
        "l4_kernel_half_open",
        "Half-open entries (two per handshake in progress) after the last expiry pass",
        &[(&[], half_open)],
    )?;
    gauge_family(
        encoder,
        "l4_kernel_syn_unanswered",
        "NATed handshakes with no client ACK yet, halving every second (new SYNs go to the stack's SYN cookies at --l4-syn-backlog), at the last expiry pass",
        &[(&[], stats.syn_unanswered.load(ordering))],
    )?;
    let mut family = encoder.encode_descriptor(
        "l4_kernel_syn_to_stack",
        "SYNs handed to the stack's SYN cookies and the userspace forwarder during a SYN flood, by listener",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (address, counters) in &listeners {
        ConstCounter::new(counters.syn_to_stack)
            .encode(family.encode_family(&[("listener", address.as_str())])?)?;
    }
    let expired = ConstCounter::new(
        stats
            .flows_expired
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let family = encoder.encode_descriptor(
        "l4_kernel_flows_expired",
        "Connection-tracking entries the daemon expired",
        None,
        expired.metric_type(),
    )?;
    expired.encode(family)?;
    let reset = ConstCounter::new(stats.flows_reset.load(std::sync::atomic::Ordering::Relaxed));
    let family = encoder.encode_descriptor(
        "l4_kernel_flows_reset",
        "Connection-tracking entries removed because their backend left the route (--l4-backend-removal reset)",
        None,
        reset.metric_type(),
    )?;
    reset.encode(family)?;
    let fields: [(&str, &str, L4Field); 3] = [
        (
            "packets",
            "Packets the kernel forwarded (both directions)",
            |c| c.packets,
        ),
        (
            "bytes",
            "Bytes (whole frames) the kernel forwarded (both directions)",
            |c| c.bytes,
        ),
        ("connections", "Connections the kernel created", |c| {
            c.connections
        }),
    ];
    for (scope, label, rows) in [
        ("", "listener", &listeners),
        ("backend_", "backend", &backends),
    ] {
        for (field, help, value) in fields {
            let name = format!("l4_kernel_{scope}{field}");
            let mut family = encoder.encode_descriptor(
                &name,
                &format!("{help}, by {label}"),
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (address, counters) in rows.iter() {
                ConstCounter::new(value(counters))
                    .encode(family.encode_family(&[(label, address.as_str())])?)?;
            }
        }
    }
    Ok(())
}
