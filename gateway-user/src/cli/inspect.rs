//! `sluice inspect`: the kernel L4 state, read from the pinned maps, for people: listeners
//! and their backends, live connections, and which backend a client's connection is on.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use gateway_common::{
    addr::from_mapped,
    l4::{
        Backend, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_SENT, Flow, FlowKey, Listener,
        ListenerKey, TO_BACKEND,
    },
    map_names,
    select::MAGLEV_TABLE_SIZE,
};

use super::args::{InspectArgs, InspectWhat};

fn open(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is sluice running with this --bpffs and --instance?)",
            path.display()
        )
    })
}

fn state(flow: &Flow) -> &'static str {
    match flow.state {
        FLOW_SYN_SENT => "syn-sent",
        FLOW_ESTABLISHED => "established",
        FLOW_CLOSING => "closing",
        gateway_common::l4::FLOW_FIN_SENT => "half-closed",
        _ => "?",
    }
}

/// Runs `sluice inspect`, printing to stdout.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let dir = args.bpffs.join("sluice").join(&args.instance);
    let text = match &args.what {
        InspectWhat::Listeners => listeners(&dir)?,
        InspectWhat::Flows => flows(&dir, None)?,
        InspectWhat::Flow { client, port } => flows(&dir, Some(SocketAddr::new(*client, *port)))?,
    };
    print!("{text}");
    Ok(())
}

fn listeners(dir: &Path) -> anyhow::Result<String> {
    let listeners: HashMap<MapData, ListenerKey, Listener> =
        HashMap::try_from(Map::HashMap(open(dir, map_names::L4_LISTENERS)?))?;
    let tables: Array<MapData, u32> =
        Array::try_from(Map::Array(open(dir, map_names::L4_TABLES)?))?;
    let backends: Array<MapData, Backend> =
        Array::try_from(Map::Array(open(dir, map_names::L4_BACKENDS)?))?;
    let mut out = String::new();
    let mut rows: Vec<(ListenerKey, Listener)> = listeners.iter().filter_map(Result::ok).collect();
    rows.sort_by_key(|(k, _)| (k.port, k.addr));
    for (key, listener) in rows {
        let _ = writeln!(
            out,
            "listener {} (id {}, Maglev slot {})",
            SocketAddr::new(from_mapped(key.addr), key.port),
            listener.id,
            listener.set_slot
        );
        // Share of the table per backend id: the effective weights.
        let mut share: BTreeMap<u32, u32> = BTreeMap::new();
        for i in 0..MAGLEV_TABLE_SIZE {
            if let Ok(id) = tables.get(&(listener.set_slot * MAGLEV_TABLE_SIZE + i), 0) {
                *share.entry(id).or_default() += 1;
            }
        }
        for (id, slots) in share {
            let backend = backends.get(&id, 0)?;
            let _ = writeln!(
                out,
                "  backend {} via {} (id {id}): {:.1} % of new connections",
                SocketAddr::new(from_mapped(backend.addr), backend.port),
                from_mapped(backend.snat_addr),
                100.0 * f64::from(slots) / f64::from(MAGLEV_TABLE_SIZE)
            );
        }
    }
    if out.is_empty() {
        out.push_str("no kernel L4 listeners\n");
    }
    Ok(out)
}

fn flows(dir: &Path, client: Option<SocketAddr>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut count = 0usize;
    // Established (and closing) connections, then handshakes in progress.
    let mut entries = Vec::new();
    for name in [map_names::L4_FLOWS, map_names::L4_HALF_OPEN] {
        let table: HashMap<MapData, FlowKey, Flow> =
            HashMap::try_from(Map::LruHashMap(open(dir, name)?))?;
        for entry in table.iter() {
            entries.push(entry?);
        }
    }
    for (key, flow) in entries {
        if flow.direction != TO_BACKEND {
            continue; // each connection once, from its client side
        }
        let from = SocketAddr::new(from_mapped(key.src), key.src_port);
        if client.is_some_and(|c| c != from) {
            continue;
        }
        count += 1;
        let _ = writeln!(
            out,
            "{from} -> {}  backend {} (from {})  {}",
            SocketAddr::new(from_mapped(key.dst), key.dst_port),
            SocketAddr::new(from_mapped(flow.new_dst), flow.new_dst_port),
            SocketAddr::new(from_mapped(flow.new_src), flow.new_src_port),
            state(&flow)
        );
    }
    match (client, count) {
        (Some(c), 0) => anyhow::bail!("no kernel connection from {c}"),
        (None, n) => {
            let _ = writeln!(out, "{n} connections");
        }
        _ => {}
    }
    Ok(out)
}
