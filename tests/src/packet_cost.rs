//! What the kernel programs cost per packet, from `BPF_PROG_TEST_RUN`: the kernel times the
//! program alone (no driver, no skb allocation, no syscall), so these are the nanoseconds
//! Sluice adds to a packet's path, by the path the packet takes. Run inside the fixture
//! router ([`crate::router`]) so FIB lookups find a real next hop. Every measurement checks
//! the counters afterwards, so a figure is only reported for the path it is named after.
use std::net::IpAddr;

use gateway_common::{
    PacketReason,
    addr::to_mapped,
    l4::{FLOW_ESTABLISHED, Flow, Listener, TO_BACKEND, TO_CLIENT},
    proto::tcp_flags,
};

use crate::{
    packets::PacketBuilder,
    prog_test::{Datapath, Hook},
    router::{self, CLIENT_MAC, GW_CLIENT_MAC},
};

/// One path's cost in each hook, in nanoseconds per packet.
#[derive(Debug, Clone)]
pub struct PacketCost {
    pub path: &'static str,
    pub xdp_ns: f64,
    pub tc_ns: f64,
}

const CLIENT: [u8; 4] = [198, 51, 100, 2];
const LISTENER: [u8; 4] = [198, 51, 100, 1];
const SNAT: [u8; 4] = [203, 0, 113, 1];
const BACKEND: [u8; 4] = [203, 0, 113, 2];
const PORT: u16 = 7000;
const BACKEND_PORT: u16 = 8080;

/// Measures four paths in XDP and TC: TCP that no listener wants (parsed, looked up, passed),
/// an established connection's packets (`repeat` runs), and new connections (`syns` SYNs,
/// one run each: every SYN must be a new one), and the client's ACK that completes each
/// of those handshakes (after the backend's SYN-ACK).
pub fn measure(repeat: u32, syns: u16) -> Vec<PacketCost> {
    let (ns, cl0, bk0) = router::router();
    let costs = ns.run(move || {
        [Hook::Xdp, Hook::Tc].map(|hook| {
            let mut dp = Datapath::load();
            dp.put_router_addresses();
            serve(&mut dp, cl0, bk0);
            let (syn, ack) = new_connections(&mut dp, hook, cl0, bk0, syns);
            [
                not_a_listener(&mut dp, hook, cl0, repeat),
                established(&mut dp, hook, cl0, repeat),
                syn,
                ack,
            ]
        })
    });
    let [xdp, tc] = costs;
    [
        "TCP to no listener (parse, flow and listener lookups, count, pass)",
        "established connection, one packet each way (flow lookup, rewrite, checksums, next hop)",
        "new connection, its SYN (listener, Maglev, source port, two half-open inserts, FIB)",
        "new connection, the client's ACK (two copies to the flow table, two deletes)",
    ]
    .into_iter()
    .zip(xdp.into_iter().zip(tc))
    .map(|(path, (xdp_ns, tc_ns))| PacketCost {
        path,
        xdp_ns,
        tc_ns,
    })
    .collect()
}

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::from(octets)
}

/// A listener on :7000 with one backend, reached through `bk0`.
fn serve(dp: &mut Datapath, cl0: u32, bk0: u32) {
    dp.put_backend(0, router::backend(ip(BACKEND), ip(SNAT), BACKEND_PORT));
    dp.put_listener(
        router::listener_key(ip(LISTENER), PORT),
        Listener { id: 0, set_slot: 0 },
        &vec![0; gateway_common::select::MAGLEV_TABLE_SIZE as usize],
    );
    dp.put_device(cl0);
    dp.put_device(bk0);
    // Every SYN here stays unanswered until its ACK: the SYN flood guard must not take
    // them for one.
    dp.put_nat_config(gateway_common::l4::NatConfig {
        syn_backlog: u32::MAX,
        ..gateway_common::l4::NatConfig::default()
    });
}

fn from_client(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::tcp(ip(CLIENT), ip(LISTENER), sport, dport, flags)
        .macs(CLIENT_MAC, GW_CLIENT_MAC)
        .payload(b"sluice")
        .build()
}

/// Packets counted under `reason` by what ran.
fn moved(dp: &Datapath, reason: PacketReason, before: &[gateway_common::Counters]) -> u64 {
    let i = reason.index() as usize;
    dp.counters()[i].packets - before[i].packets
}

fn nanos(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

fn not_a_listener(dp: &mut Datapath, hook: Hook, cl0: u32, repeat: u32) -> f64 {
    let frame = from_client(40000, 9999, tcp_flags::SYN);
    let before = dp.counters();
    let run = dp.run_repeated(hook, &frame, cl0, repeat);
    assert_eq!(
        moved(dp, PacketReason::Tcp, &before),
        u64::from(repeat),
        "{hook:?}: not every run passed the packet"
    );
    nanos(run.duration)
}

/// The program rewrites the packet in place and the kernel reruns it on the same buffer, so
/// the fixture's flow rewrites client -> listener into gateway -> backend (towards the
/// backend, through the FIB) and a second entry rewrites that back (towards the client,
/// along the remembered path): every run is an established connection's packet, the two
/// directions alternating. Each run also takes one off the TTL, so the frame starts at 255
/// and is run in batches that end before it reaches 1 (then the stack would get it).
fn established(dp: &mut Datapath, hook: Hook, cl0: u32, repeat: u32) -> f64 {
    let (client_port, snat_port) = (40001, 50001);
    let base = Flow {
        backend: 0,
        listener: 0,
        state: FLOW_ESTABLISHED,
        ..Flow::default()
    };
    dp.put_flow(
        router::key(ip(CLIENT), client_port, ip(LISTENER), PORT),
        Flow {
            new_src: to_mapped(ip(SNAT)),
            new_dst: to_mapped(ip(BACKEND)),
            new_src_port: snat_port,
            new_dst_port: BACKEND_PORT,
            direction: TO_BACKEND,
            ..base
        },
    );
    dp.put_flow(
        router::key(ip(SNAT), snat_port, ip(BACKEND), BACKEND_PORT),
        Flow {
            new_src: to_mapped(ip(CLIENT)),
            new_dst: to_mapped(ip(LISTENER)),
            new_src_port: client_port,
            new_dst_port: PORT,
            direction: TO_CLIENT,
            ifindex: cl0,
            mac_dst: GW_CLIENT_MAC,
            mac_src: CLIENT_MAC,
            ..base
        },
    );
    let mut frame = from_client(client_port, PORT, tcp_flags::ACK);
    let ip_header = 14..34;
    frame[ip_header.start + 8] = 255;
    frame[ip_header.start + 10..ip_header.start + 12].fill(0);
    let sum = crate::packets::checksum(&[&frame[ip_header.clone()]]);
    frame[ip_header.start + 10..ip_header.start + 12].copy_from_slice(&sum.to_be_bytes());
    const BATCH: u32 = 250;
    let batches = repeat.div_ceil(BATCH);
    let before = dp.counters();
    let total: f64 = (0..batches)
        .map(|_| nanos(dp.run_repeated(hook, &frame, cl0, BATCH).duration))
        .sum();
    assert_eq!(
        moved(dp, PacketReason::L4Forwarded, &before),
        u64::from(batches * BATCH),
        "{hook:?}: not every run was a forwarded packet"
    );
    total / f64::from(batches)
}

/// (a SYN's cost, the completing ACK's cost): each SYN is a new connection, the backend's
/// SYN-ACK (not timed) answers it, and the client's ACK moves it to the flow table.
fn new_connections(dp: &mut Datapath, hook: Hook, cl0: u32, bk0: u32, syns: u16) -> (f64, f64) {
    let before = dp.counters();
    let mut syn_ns = 0.0;
    let mut ack_ns = 0.0;
    for i in 0..syns {
        let client_port = 20000 + i;
        let syn = dp.run_repeated(
            hook,
            &from_client(client_port, PORT, tcp_flags::SYN),
            cl0,
            1,
        );
        syn_ns += nanos(syn.duration);
        let snat_port = u16::from_be_bytes([syn.output[34], syn.output[35]]);
        let syn_ack = PacketBuilder::tcp(
            ip(BACKEND),
            ip(SNAT),
            BACKEND_PORT,
            snat_port,
            tcp_flags::SYN | tcp_flags::ACK,
        )
        .macs(router::BACKEND_MAC, router::GW_BACKEND_MAC)
        .seq(1000)
        .build();
        dp.run_repeated(hook, &syn_ack, bk0, 1);
        let ack = PacketBuilder::tcp(ip(CLIENT), ip(LISTENER), client_port, PORT, tcp_flags::ACK)
            .macs(CLIENT_MAC, GW_CLIENT_MAC)
            .ack(1001)
            .build();
        ack_ns += nanos(dp.run_repeated(hook, &ack, cl0, 1).duration);
        assert!(
            dp.established_flow(&router::key(ip(CLIENT), client_port, ip(LISTENER), PORT))
                .is_some(),
            "{hook:?}: the ACK did not complete handshake {i}"
        );
    }
    assert_eq!(
        moved(dp, PacketReason::L4Forwarded, &before),
        3 * u64::from(syns),
        "{hook:?}: not every SYN made a connection"
    );
    (syn_ns / f64::from(syns), ack_ns / f64::from(syns))
}
