//! BPF_PROG_TEST_RUN of the XDP L4 NAT path. The program's FIB lookups run in the calling
//! thread's network namespace, so the test builds a small router there (a client-facing and a
//! backend-facing veth with permanent neighbours) and runs every packet from inside it. Each
//! step asserts the action, the rewritten bytes (checksums checked by the test's own RFC 1071
//! code), the counter that moved and the connection-tracking state.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::{
    PacketReason,
    addr::{from_mapped, to_mapped},
    l4::{
        FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_FIN_SENT, FLOW_SYN_SENT, Flow, Listener, NatConfig,
        SYN_GUARD_WINDOW_NS, SynGuard, TO_BACKEND, TO_CLIENT,
    },
    map_names,
    proto::{self, tcp_flags},
    select::{
        MAGLEV_TABLE_SIZE, SOURCE_PORT_ATTEMPTS, SOURCE_PORT_BASE, SOURCE_PORT_SPAN, flow_hash,
        source_port,
    },
};
use tests::{
    packets::{PacketBuilder, checksum_ok, pseudo_header},
    prog_test::{Datapath, Hook},
    root,
    router::{
        BACKEND_MAC, CLIENT_MAC, GW_BACKEND_MAC, GW_CLIENT_MAC, backend, key, listener_key, mac,
        router,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// A parsed view of an output frame, with checksums verified independently.
struct Out {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    hop_limit: u8,
}

/// `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|e| panic!("clock_gettime: {e}"));
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn inspect(frame: &[u8]) -> Out {
    let (dst_mac, src_mac) = (
        frame[0..6].try_into().unwrap_or_default(),
        frame[6..12].try_into().unwrap_or_default(),
    );
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, hop_limit, l4) = if ethertype == 0x0800 {
        assert!(checksum_ok(&[], &frame[14..34]), "IPv4 header checksum");
        let (s, d) = (
            Ipv4Addr::from(<[u8; 4]>::try_from(&frame[26..30]).unwrap_or_default()),
            Ipv4Addr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap_or_default()),
        );
        (IpAddr::V4(s), IpAddr::V4(d), frame[22], &frame[34..])
    } else {
        let (s, d) = (
            Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap_or_default()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap_or_default()),
        );
        (IpAddr::V6(s), IpAddr::V6(d), frame[21], &frame[54..])
    };
    assert!(
        checksum_ok(&pseudo_header(src, dst, 6, l4.len()), l4),
        "TCP checksum of {src} -> {dst}"
    );
    Out {
        dst_mac,
        src_mac,
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        hop_limit,
    }
}

fn tcp(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: u8,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    PacketBuilder::tcp(src, dst, sport, dport, flags)
        .macs(src_mac, dst_mac)
        .payload(b"sluice")
        .build()
}

/// Runs `frame` on `ifindex` and checks that exactly `reason`'s counters moved by it.
fn step(
    datapath: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
    action: u32,
    reason: PacketReason,
    what: &str,
) -> Vec<u8> {
    let before = datapath.counters();
    let result = datapath.run_on_device(hook, frame, ifindex);
    let after = datapath.counters();
    assert_eq!(result.return_value, action, "{what}: action");
    for r in PacketReason::ALL {
        let i = r.index() as usize;
        let moved = (
            after[i].packets - before[i].packets,
            after[i].bytes - before[i].bytes,
        );
        let want = if r == reason {
            (1, frame.len() as u64)
        } else {
            (0, 0)
        };
        assert_eq!(moved, want, "{what}: {} counters", r.label());
    }
    result.output
}

/// Return values of one hook.
struct Actions {
    redirect: u32,
    drop: u32,
    pass: u32,
}

impl Actions {
    fn of(hook: Hook) -> Actions {
        match hook {
            Hook::Xdp => Actions {
                redirect: XDP_REDIRECT,
                drop: XDP_DROP,
                pass: XDP_PASS,
            },
            Hook::Tc => Actions {
                redirect: TC_ACT_REDIRECT,
                drop: TC_ACT_SHOT,
                pass: TC_ACT_OK,
            },
        }
    }
}

#[test]
fn xdp_full_nat_with_connection_tracking() {
    full_nat_with_connection_tracking("xdp_full_nat_with_connection_tracking", Hook::Xdp);
}

/// The same NAT stage behind TC. The test run's skb has no checksum offload, so the
/// checksum helpers update the TCP checksum in full, which the test verifies independently.
#[test]
fn tc_full_nat_with_connection_tracking() {
    full_nat_with_connection_tracking("tc_full_nat_with_connection_tracking", Hook::Tc);
}

fn full_nat_with_connection_tracking(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let (ns, cl0, bk0) = router();
    let ns_name = ns.name.clone();
    ns.run(move || {
        let (client, gw_client, gw_backend, backend_ip) = (
            IpAddr::V4(v4("198.51.100.2")),
            IpAddr::V4(v4("198.51.100.1")),
            IpAddr::V4(v4("203.0.113.1")),
            IpAddr::V4(v4("203.0.113.2")),
        );
        let mut dp = Datapath::load();
        dp.put_router_addresses();
        dp.put_device(cl0);
        dp.put_device(bk0);
        let table = |id: u32| vec![id; MAGLEV_TABLE_SIZE as usize];
        // 0.0.0.0:7000 -> 203.0.113.2:8080
        dp.put_backend(0, backend(backend_ip, gw_backend, 8080));
        dp.put_listener(
            listener_key(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000),
            Listener { id: 3, set_slot: 0 },
            &table(0),
        );
        // 198.51.100.1:7001 -> 203.0.113.9 (no neighbour)
        dp.put_backend(1, backend(IpAddr::V4(v4("203.0.113.9")), gw_backend, 8080));
        dp.put_listener(
            listener_key(gw_client, 7001),
            Listener { id: 4, set_slot: 1 },
            &table(1),
        );
        // 198.51.100.1:7002 -> an empty backend entry
        dp.put_listener(
            listener_key(gw_client, 7002),
            Listener { id: 5, set_slot: 2 },
            &table(2),
        );
        // 198.51.100.1:7004 -> 192.0.2.50, to which the router has no route
        dp.put_backend(4, backend(IpAddr::V4(v4("192.0.2.50")), gw_backend, 8080));
        dp.put_listener(
            listener_key(gw_client, 7004),
            Listener { id: 7, set_slot: 4 },
            &table(4),
        );
        // [2001:db8:1::1]:7003 -> [2001:db8:2::2]:8080
        dp.put_backend(
            3,
            backend(
                IpAddr::V6(v6("2001:db8:2::2")),
                IpAddr::V6(v6("2001:db8:2::1")),
                8080,
            ),
        );
        dp.put_listener(
            listener_key(IpAddr::V6(v6("2001:db8:1::1")), 7003),
            Listener { id: 6, set_slot: 3 },
            &table(3),
        );

        // 1. A SYN creates the flow and leaves NATed towards the backend.
        let syn = tcp(
            client,
            40000,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let nated = step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "SYN",
        );
        let out = inspect(&nated);
        assert_eq!(
            (out.src, out.dst, out.dport),
            (gw_backend, backend_ip, 8080)
        );
        assert!(out.sport >= 1024, "source port {}", out.sport);
        assert_eq!(
            (out.dst_mac, out.src_mac, out.hop_limit),
            (BACKEND_MAC, GW_BACKEND_MAC, 63)
        );
        let snat_port = out.sport;
        assert_eq!(dp.flow_count(), 2);
        let forward = dp
            .flow(&key(client, 40000, gw_client, 7000))
            .unwrap_or_else(|| panic!("no forward flow"));
        assert_eq!(
            (
                forward.state,
                forward.listener,
                forward.backend,
                forward.direction
            ),
            (FLOW_SYN_SENT, 3, 0, 0)
        );

        // The reply entry remembers the client's L2 path: its SYN never reached the stack, so
        // no neighbour entry will ever exist for it. Deleting the router's entry proves the
        // reply does not need one.
        let reply_key = key(backend_ip, 8080, gw_backend, snat_port);
        let back = dp
            .flow(&reply_key)
            .unwrap_or_else(|| panic!("no reply flow"));
        assert_eq!(
            (back.direction, back.ifindex, back.mac_dst, back.mac_src),
            (TO_CLIENT, cl0, CLIENT_MAC, GW_CLIENT_MAC)
        );
        assert_eq!(forward.direction, TO_BACKEND);
        tests::netns::run(std::process::Command::new("ip").args([
            "-n",
            &ns_name,
            "neigh",
            "del",
            "198.51.100.2",
            "dev",
            "cl0",
        ]));

        // 2. The backend's SYN-ACK is reverse-NATed back to the client.
        let synack = tcp(
            backend_ip,
            8080,
            gw_backend,
            snat_port,
            tcp_flags::SYN | tcp_flags::ACK,
            BACKEND_MAC,
            GW_BACKEND_MAC,
        );
        let out = inspect(&step(
            &mut dp,
            hook,
            &synack,
            bk0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "SYN-ACK",
        ));
        assert_eq!(
            (out.src, out.sport, out.dst, out.dport),
            (gw_client, 7000, client, 40000)
        );
        assert_eq!((out.dst_mac, out.src_mac), (CLIENT_MAC, GW_CLIENT_MAC));

        // 2b. The backend's side says "fragmentation needed" about the NATed SYN: the client
        // gets it about its own connection (client -> listener), from the listener's address.
        let icmp = icmp_error(
            backend_ip,
            gw_backend,
            &nated[14..],
            BACKEND_MAC,
            GW_BACKEND_MAC,
        );
        let translated = icmp_to_client(&mut dp, hook, &icmp, bk0, "ICMP frag needed");
        let outer = &translated[14..34];
        assert!(checksum_ok(&[], outer), "outer IPv4 checksum");
        assert_eq!(
            (&outer[12..16], &outer[16..20], outer[8]),
            (&[198, 51, 100, 1][..], &[198, 51, 100, 2][..], 63)
        );
        let icmp_part = &translated[34..];
        assert!(checksum_ok(&[], icmp_part), "ICMP checksum");
        assert_eq!(
            (icmp_part[0], icmp_part[1], &icmp_part[6..8]),
            (3, 4, &1400u16.to_be_bytes()[..])
        );
        let inner = &icmp_part[8..];
        assert!(checksum_ok(&[], &inner[..20]), "quoted IPv4 checksum");
        assert_eq!(
            (&inner[12..16], &inner[16..20]),
            (&[198, 51, 100, 2][..], &[198, 51, 100, 1][..])
        );
        assert_quoted_tcp(&inner[20..], (client, 40000), (gw_client, 7000));

        // 3. Mid-flow packets keep the flow's port and backend; the flow is established.
        let ack = tcp(
            client,
            40000,
            gw_client,
            7000,
            tcp_flags::ACK | tcp_flags::PSH,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let out = inspect(&step(
            &mut dp,
            hook,
            &ack,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "ACK",
        ));
        assert_eq!((out.sport, out.dst), (snat_port, backend_ip));
        assert_eq!(
            dp.flow(&key(client, 40000, gw_client, 7000))
                .map(|f| f.state),
            Some(FLOW_ESTABLISHED)
        );

        // 4. A reset still reaches the backend and marks the flow closing.
        let rst = tcp(
            client,
            40000,
            gw_client,
            7000,
            tcp_flags::RST,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        inspect(&step(
            &mut dp,
            hook,
            &rst,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "RST",
        ));
        assert_eq!(
            dp.flow(&key(client, 40000, gw_client, 7000))
                .map(|f| f.state),
            Some(FLOW_CLOSING)
        );

        // The first flow's listener (id 3) and backend (id 0) counted SYN, SYN-ACK, ACK and
        // RST, and one connection.
        for (map, id) in [
            (map_names::L4_LISTENER_CNT, 3),
            (map_names::L4_BACKEND_CNT, 0),
        ] {
            let c = dp.l4_counters(map, id);
            assert_eq!((c.packets, c.connections), (4, 1), "{map}[{id}]");
            assert_eq!(
                c.bytes,
                (4 * syn.len()) as u64,
                "{map}[{id}]: every test frame has the same length"
            );
        }

        // 4b. The client reuses the port of its closed connection: a new SYN makes a new flow
        // (picked afresh), and the old reply entry is gone.
        let syn_again = tcp(
            client,
            40000,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let out = inspect(&step(
            &mut dp,
            hook,
            &syn_again,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "SYN on a closed tuple",
        ));
        let renewed = dp
            .flow(&key(client, 40000, gw_client, 7000))
            .unwrap_or_else(|| panic!("no flow"));
        assert_eq!(
            renewed.state, FLOW_SYN_SENT,
            "a new connection, not the closed one"
        );
        assert_eq!(dp.l4_counters(map_names::L4_LISTENER_CNT, 3).connections, 2);
        assert!(
            out.sport != snat_port
                || dp
                    .flow(&reply_key)
                    .is_some_and(|f| f.state == FLOW_SYN_SENT),
            "the old reply entry survived"
        );
        assert_eq!(dp.flow_count(), 2, "one connection: two entries");

        // 5. A non-SYN segment to a listener with no flow goes to the stack untouched.
        let stray = tcp(
            client,
            40001,
            gw_client,
            7000,
            tcp_flags::ACK,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        assert_eq!(
            step(
                &mut dp,
                hook,
                &stray,
                cl0,
                actions.pass,
                PacketReason::L4NoFlow,
                "stray ACK"
            ),
            stray
        );

        // 6. A SYN whose TTL would expire goes to the stack (ICMP time exceeded).
        let mut dying = tcp(
            client,
            40002,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        dying[22] = 1;
        let sum = tests::packets::checksum(&[&{
            let mut h = dying[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        }]);
        dying[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            step(
                &mut dp,
                hook,
                &dying,
                cl0,
                actions.pass,
                PacketReason::Tcp,
                "TTL 1"
            ),
            dying
        );

        // 7. An unresolved neighbour. XDP drops (a NATed packet cannot go to the stack); TC
        // hands the packet to the kernel's neighbour resolution (`bpf_redirect_neigh`).
        let syn = tcp(
            client,
            40003,
            gw_client,
            7001,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let (action, reason) = match hook {
            Hook::Xdp => (actions.drop, PacketReason::L4NoNeighbour),
            Hook::Tc => (actions.redirect, PacketReason::L4Forwarded),
        };
        step(&mut dp, hook, &syn, cl0, action, reason, "no neighbour");

        // 7b. No route to the backend: dropped and counted.
        let syn = tcp(
            client,
            40007,
            gw_client,
            7004,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.drop,
            PacketReason::L4Unroutable,
            "no route",
        );

        // 8. An empty backend slot refuses the connection.
        let syn = tcp(
            client,
            40004,
            gw_client,
            7002,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.drop,
            PacketReason::L4NoBackend,
            "no backend",
        );

        // 9. Every candidate source port taken: the SYN is dropped, not mis-forwarded.
        let words = |ip: IpAddr| {
            let a = to_mapped(ip);
            [0, 4, 8, 12].map(|i| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]))
        };
        let hash = flow_hash(words(client), words(gw_client), 40005, 7000, 6);
        for attempt in 0..SOURCE_PORT_ATTEMPTS {
            let port = source_port(hash, attempt, SOURCE_PORT_BASE, SOURCE_PORT_SPAN);
            dp.put_flow(key(backend_ip, 8080, gw_backend, port), Flow::default());
        }
        let syn = tcp(
            client,
            40005,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.drop,
            PacketReason::L4PortExhausted,
            "ports exhausted",
        );

        // 9b. Every candidate held by a closing flow silent for over a second: the first is
        // reclaimed, its client-side entry removed with it, and the SYN goes through.
        let hash = flow_hash(words(client), words(gw_client), 40006, 7000, 6);
        let old_client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        for attempt in 0..SOURCE_PORT_ATTEMPTS {
            let port = source_port(hash, attempt, SOURCE_PORT_BASE, SOURCE_PORT_SPAN);
            let old_port = 50_000 + attempt as u16;
            let closing = |new_src, new_dst, new_src_port, new_dst_port| Flow {
                new_src: to_mapped(new_src),
                new_dst: to_mapped(new_dst),
                new_src_port,
                new_dst_port,
                state: FLOW_CLOSING,
                last_seen_ns: 0,
                ..Flow::default()
            };
            dp.put_flow(
                key(backend_ip, 8080, gw_backend, port),
                Flow {
                    direction: TO_CLIENT,
                    ..closing(gw_client, old_client, 7000, old_port)
                },
            );
            dp.put_flow(
                key(old_client, old_port, gw_client, 7000),
                closing(gw_backend, backend_ip, port, 8080),
            );
        }
        let syn = tcp(
            client,
            40006,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let reclaimed = step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "a closing flow's port reclaimed",
        );
        let first = source_port(hash, 0, SOURCE_PORT_BASE, SOURCE_PORT_SPAN);
        assert_eq!(inspect(&reclaimed).sport, first);
        assert!(
            dp.flow(&key(old_client, 50_000, gw_client, 7000)).is_none(),
            "the reclaimed flow's client-side entry is gone"
        );
        let reply = dp
            .flow(&key(backend_ip, 8080, gw_backend, first))
            .unwrap_or_else(|| panic!("no reply entry for the new connection"));
        assert_eq!(
            (from_mapped(reply.new_dst), reply.new_dst_port),
            (client, 40006)
        );
        assert!(
            dp.flow(&key(old_client, 50_001, gw_client, 7000)).is_some(),
            "only one flow is reclaimed"
        );

        // 9c. Held by flows that closed recently: closing one way only (a half-close that
        // may still carry data) they keep their ports; once closed both ways and quiet for
        // over 100 ms, the first goes.
        let now = monotonic_ns();
        let hash = flow_hash(words(client), words(gw_client), 40007, 7000, 6);
        let hold = |dp: &mut tests::prog_test::Datapath, both: bool| {
            for attempt in 0..SOURCE_PORT_ATTEMPTS {
                let port = source_port(hash, attempt, SOURCE_PORT_BASE, SOURCE_PORT_SPAN);
                let old_port = 51_000 + attempt as u16;
                let seen = if both { now - 200_000_000 } else { now };
                dp.put_flow(
                    key(backend_ip, 8080, gw_backend, port),
                    Flow {
                        new_src: to_mapped(gw_client),
                        new_dst: to_mapped(old_client),
                        new_src_port: 7000,
                        new_dst_port: old_port,
                        state: FLOW_CLOSING,
                        direction: TO_CLIENT,
                        last_seen_ns: seen,
                        ..Flow::default()
                    },
                );
                dp.put_flow(
                    key(old_client, old_port, gw_client, 7000),
                    Flow {
                        state: if both { FLOW_CLOSING } else { FLOW_ESTABLISHED },
                        last_seen_ns: seen,
                        ..Flow::default()
                    },
                );
            }
        };
        hold(&mut dp, false);
        let syn = tcp(
            client,
            40007,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.drop,
            PacketReason::L4PortExhausted,
            "half-closed flows keep their ports",
        );
        hold(&mut dp, true);
        step(
            &mut dp,
            hook,
            &syn,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "a flow closed both ways gives its port up",
        );
        assert!(dp.flow(&key(old_client, 51_000, gw_client, 7000)).is_none());

        // 10. IPv6.
        let (client6, gw6, backend6, snat6) = (
            IpAddr::V6(v6("2001:db8:1::2")),
            IpAddr::V6(v6("2001:db8:1::1")),
            IpAddr::V6(v6("2001:db8:2::2")),
            IpAddr::V6(v6("2001:db8:2::1")),
        );
        let syn6 = tcp(
            client6,
            40000,
            gw6,
            7003,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let nated6 = step(
            &mut dp,
            hook,
            &syn6,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "IPv6 SYN",
        );
        let out = inspect(&nated6);
        assert_eq!(
            (out.src, out.dst, out.dport, out.hop_limit),
            (snat6, backend6, 8080, 63)
        );
        let reply6 = tcp(
            backend6,
            8080,
            snat6,
            out.sport,
            tcp_flags::SYN | tcp_flags::ACK,
            BACKEND_MAC,
            GW_BACKEND_MAC,
        );
        let back = inspect(&step(
            &mut dp,
            hook,
            &reply6,
            bk0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "IPv6 SYN-ACK",
        ));
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (gw6, 7003, client6, 40000)
        );

        // 10b. ICMPv6 "packet too big" about the NATed SYN, from the backend and from a
        // router on the way: the client gets it about its own connection.
        let router6 = IpAddr::V6(v6("2001:db8:2::fe"));
        for (sender, want_src) in [(backend6, gw6), (router6, router6)] {
            let icmp6 = icmp6_error(sender, snat6, &nated6[14..], BACKEND_MAC, GW_BACKEND_MAC);
            let translated = icmp_to_client(&mut dp, hook, &icmp6, bk0, "ICMPv6 packet too big");
            let outer = &translated[14..54];
            let (src, dst) = (
                IpAddr::from(<[u8; 16]>::try_from(&outer[8..24]).unwrap_or_default()),
                IpAddr::from(<[u8; 16]>::try_from(&outer[24..40]).unwrap_or_default()),
            );
            assert_eq!(
                (src, dst, outer[7]),
                (want_src, client6, 63),
                "from {sender}"
            );
            let icmp_part = &translated[54..];
            assert!(
                checksum_ok(&pseudo_header(src, dst, 58, icmp_part.len()), icmp_part),
                "ICMPv6 checksum (from {sender})"
            );
            assert_eq!(
                (icmp_part[0], &icmp_part[4..8]),
                (2, &1280u32.to_be_bytes()[..])
            );
            let inner = &icmp_part[8..];
            assert_eq!(
                (&inner[8..24], &inner[24..40]),
                (&to_mapped(client6)[..], &to_mapped(gw6)[..])
            );
            assert_quoted_tcp(&inner[40..], (client6, 40000), (gw6, 7003));
        }

        // 11. TCP to a port no listener serves is the stack's.
        let other = tcp(
            client,
            40006,
            gw_client,
            9999,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        assert_eq!(
            step(
                &mut dp,
                hook,
                &other,
                cl0,
                actions.pass,
                PacketReason::Tcp,
                "not a listener"
            ),
            other
        );
    });
}

/// The kernel honours the Maglev table's weights, and a set change (a new table in another
/// slot, then the listener flipped to it) moves new connections only: established flows keep
/// their backend.
#[test]
fn xdp_weights_and_backend_set_changes() {
    if !root::can_run("xdp_weights_and_backend_set_changes") {
        return;
    }
    let (ns, cl0, bk0) = router();
    let ns_name = ns.name.clone();
    ns.run(move || {
        let (client, gw_client, gw_backend) = (
            IpAddr::V4(v4("198.51.100.2")),
            IpAddr::V4(v4("198.51.100.1")),
            IpAddr::V4(v4("203.0.113.1")),
        );
        let backends = [
            IpAddr::V4(v4("203.0.113.2")),
            IpAddr::V4(v4("203.0.113.3")),
            IpAddr::V4(v4("203.0.113.4")),
        ];
        for (i, b) in backends.iter().enumerate() {
            let mac = mac([0x02, 0, 0, 0, 0x01, 0x10 + i as u8]);
            tests::netns::run(std::process::Command::new("ip").args([
                "-n",
                &ns_name,
                "neigh",
                "replace",
                &b.to_string(),
                "lladdr",
                &mac,
                "dev",
                "bk0",
                "nud",
                "permanent",
            ]));
        }
        let mut dp = Datapath::load();
        dp.put_router_addresses();
        dp.put_device(cl0);
        dp.put_device(bk0);
        for (id, b) in backends.iter().enumerate() {
            dp.put_backend(id as u32, backend(*b, gw_backend, 8080));
        }
        // Slot 0: an 80/20 table between backends 0 and 1, interleaved.
        let table: Vec<u32> = (0..MAGLEV_TABLE_SIZE)
            .map(|i| if i % 5 == 4 { 1 } else { 0 })
            .collect();
        let listener = listener_key(gw_client, 7000);
        dp.put_listener(listener, Listener { id: 1, set_slot: 0 }, &table);

        let mut on = [0usize; 3];
        for port in 20_000..21_000u16 {
            let syn = tcp(
                client,
                port,
                gw_client,
                7000,
                tcp_flags::SYN,
                CLIENT_MAC,
                GW_CLIENT_MAC,
            );
            let result = dp.run_xdp_on(&syn, cl0);
            assert_eq!(result.return_value, XDP_REDIRECT, "SYN from port {port}");
            let out = inspect(&result.output);
            on[backends
                .iter()
                .position(|b| *b == out.dst)
                .unwrap_or_else(|| panic!("{}", out.dst))] += 1;
        }
        assert!(
            (750..=850).contains(&on[0]) && on[0] + on[1] == 1000,
            "80/20 table: {on:?}"
        );

        // The set changes: backend 2 alone, written to slot 1, then the listener flips.
        let kept = dp
            .flow(&key(client, 20_000, gw_client, 7000))
            .unwrap_or_else(|| panic!("no flow"));
        dp.put_listener(
            listener,
            Listener { id: 1, set_slot: 1 },
            &vec![2; MAGLEV_TABLE_SIZE as usize],
        );
        let ack = tcp(
            client,
            20_000,
            gw_client,
            7000,
            tcp_flags::ACK,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let out = inspect(&dp.run_xdp_on(&ack, cl0).output);
        assert_eq!(
            out.dst,
            from_mapped(kept.new_dst),
            "an established flow keeps its backend"
        );
        let syn = tcp(
            client,
            21_000,
            gw_client,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        let out = inspect(&dp.run_xdp_on(&syn, cl0).output);
        assert_eq!(out.dst, backends[2], "a new connection follows the new set");
    });
}

/// An ICMP "fragmentation needed" (MTU 1400) from `src` to `dst` quoting `quoted` (an IP
/// packet), as a router on the path would send it.
fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    quoted: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let mut icmp = vec![
        proto::icmp::DEST_UNREACH,
        proto::icmp::FRAG_NEEDED,
        0,
        0,
        0,
        0,
    ];
    icmp.extend_from_slice(&1400u16.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let sum = tests::packets::checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = tests::packets::checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// Runs an ICMP error from the backend side, which must be translated and sent to the
/// client's link; returns the frame sent.
fn icmp_to_client(
    datapath: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
    what: &str,
) -> Vec<u8> {
    let translated = step(
        datapath,
        hook,
        frame,
        ifindex,
        Actions::of(hook).redirect,
        PacketReason::L4IcmpTranslated,
        what,
    );
    assert_eq!(
        (&translated[0..6], &translated[6..12]),
        (&CLIENT_MAC[..], &GW_CLIENT_MAC[..]),
        "{what}: to the client's link"
    );
    translated
}

/// The TCP header an ICMP error quotes is the client's own: its ports, and a checksum that
/// is right for its addresses.
fn assert_quoted_tcp(
    tcp: &[u8],
    (client, client_port): (IpAddr, u16),
    (listener, port): (IpAddr, u16),
) {
    assert_eq!(
        (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]])
        ),
        (client_port, port),
        "quoted ports"
    );
    assert!(
        checksum_ok(&pseudo_header(client, listener, 6, tcp.len()), tcp),
        "quoted TCP checksum ({client} -> {listener})"
    );
}

/// An ICMPv6 "packet too big" (MTU 1280) from `src` to `dst` quoting `quoted`.
fn icmp6_error(
    src: IpAddr,
    dst: IpAddr,
    quoted: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let (IpAddr::V6(s6), IpAddr::V6(d6)) = (src, dst) else {
        panic!("IPv6 only")
    };
    let mut icmp = vec![proto::icmpv6::PACKET_TOO_BIG, 0, 0, 0];
    icmp.extend_from_slice(&1280u32.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let sum = tests::packets::checksum(&[&pseudo_header(src, dst, 58, icmp.len()), &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 64]);
    ip.extend_from_slice(&s6.octets());
    ip.extend_from_slice(&d6.octets());
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// The per-packet cost measurement `cargo xtask bench` reports runs each path it names
/// (it checks the counters itself) and yields a time for each.
#[test]
fn packet_cost_measures_each_path() {
    if !root::can_run("packet_cost_measures_each_path") {
        return;
    }
    let costs = tests::packet_cost::measure(1000, 50);
    eprintln!("{costs:#?}");
    assert_eq!(costs.len(), 4);
    for cost in &costs {
        assert!(
            cost.xdp_ns > 0.0 && cost.tc_ns > 0.0 && cost.xdp_ns.is_finite(),
            "{cost:?}"
        );
    }
}

/// A datapath serving `0.0.0.0:7000` as listener 3 from one backend, `203.0.113.2:8080`,
/// on the fixture router (call it inside the router's namespace), and the hosts' IPv4
/// addresses: client, the gateway's client side, the gateway's backend side, backend.
fn one_backend(cl0: u32, bk0: u32) -> (Datapath, [IpAddr; 4]) {
    let hosts = ["198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.2"]
        .map(|address| IpAddr::V4(v4(address)));
    let mut dp = Datapath::load();
    dp.put_router_addresses();
    dp.put_device(cl0);
    dp.put_device(bk0);
    dp.put_backend(0, backend(hosts[3], hosts[2], 8080));
    dp.put_listener(
        listener_key(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000),
        Listener { id: 3, set_slot: 0 },
        &vec![0; MAGLEV_TABLE_SIZE as usize],
    );
    (dp, hosts)
}

#[test]
fn xdp_tracks_each_direction_close() {
    each_direction_closes("xdp_tracks_each_direction_close", Hook::Xdp);
}

#[test]
fn tc_tracks_each_direction_close() {
    each_direction_closes("tc_tracks_each_direction_close", Hook::Tc);
}

/// A FIN closes one direction: the flow is half-closed (and lives by the idle timeout)
/// until the other direction's FIN, when both entries close; a RST near what its sender
/// has sent closes both at once, one far from it is dropped and counted.
fn each_direction_closes(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let (ns, cl0, bk0) = router();
    ns.run(move || {
        let (mut dp, [client, gw_client, gw_backend, backend_ip]) = one_backend(cl0, bk0);
        let send =
            |dp: &mut Datapath, from_client: bool, port: u16, snat: u16, flags: u8, what: &str| {
                let frame = if from_client {
                    tcp(
                        client,
                        port,
                        gw_client,
                        7000,
                        flags,
                        CLIENT_MAC,
                        GW_CLIENT_MAC,
                    )
                } else {
                    tcp(
                        backend_ip,
                        8080,
                        gw_backend,
                        snat,
                        flags,
                        BACKEND_MAC,
                        GW_BACKEND_MAC,
                    )
                };
                let device = if from_client { cl0 } else { bk0 };
                inspect(&step(
                    dp,
                    hook,
                    &frame,
                    device,
                    actions.redirect,
                    PacketReason::L4Forwarded,
                    what,
                ))
            };
        // Established flows on client ports 41000 and 41001.
        let mut snat = [0u16; 2];
        for (i, port) in [41000u16, 41001].into_iter().enumerate() {
            snat[i] = send(&mut dp, true, port, 0, tcp_flags::SYN, "SYN").sport;
            send(
                &mut dp,
                false,
                port,
                snat[i],
                tcp_flags::SYN | tcp_flags::ACK,
                "SYN-ACK",
            );
            send(&mut dp, true, port, snat[i], tcp_flags::ACK, "ACK");
        }
        let states = |dp: &Datapath, port: u16, snat: u16| {
            (
                dp.flow(&key(client, port, gw_client, 7000))
                    .map(|f| f.state),
                dp.flow(&key(backend_ip, 8080, gw_backend, snat))
                    .map(|f| f.state),
            )
        };
        assert_eq!(
            states(&dp, 41000, snat[0]),
            (Some(FLOW_ESTABLISHED), Some(FLOW_ESTABLISHED))
        );

        // The client half-closes; the backend goes on sending; then it closes too.
        send(
            &mut dp,
            true,
            41000,
            snat[0],
            tcp_flags::FIN | tcp_flags::ACK,
            "client FIN",
        );
        assert_eq!(
            states(&dp, 41000, snat[0]),
            (Some(FLOW_FIN_SENT), Some(FLOW_ESTABLISHED)),
            "half-closed"
        );
        send(
            &mut dp,
            false,
            41000,
            snat[0],
            tcp_flags::ACK,
            "backend data after the client's FIN",
        );
        send(
            &mut dp,
            true,
            41000,
            snat[0],
            tcp_flags::ACK,
            "the client's ACK of it",
        );
        assert_eq!(
            states(&dp, 41000, snat[0]),
            (Some(FLOW_FIN_SENT), Some(FLOW_ESTABLISHED))
        );
        send(
            &mut dp,
            false,
            41000,
            snat[0],
            tcp_flags::FIN | tcp_flags::ACK,
            "backend FIN",
        );
        assert_eq!(
            states(&dp, 41000, snat[0]),
            (Some(FLOW_CLOSING), Some(FLOW_CLOSING)),
            "closed both ways"
        );

        // A reset far from what the backend has sent (a blind attacker's guess) is dropped
        // and changes nothing; one near it closes both directions at once.
        let blind = PacketBuilder::tcp(backend_ip, gw_backend, 8080, snat[1], tcp_flags::RST)
            .macs(BACKEND_MAC, GW_BACKEND_MAC)
            .seq(1000u32.wrapping_add(1 << 31))
            .build();
        step(
            &mut dp,
            hook,
            &blind,
            bk0,
            actions.drop,
            PacketReason::L4RstOutOfWindow,
            "a RST outside the window",
        );
        assert_eq!(
            states(&dp, 41001, snat[1]),
            (Some(FLOW_ESTABLISHED), Some(FLOW_ESTABLISHED))
        );
        send(
            &mut dp,
            false,
            41001,
            snat[1],
            tcp_flags::RST,
            "backend RST",
        );
        assert_eq!(
            states(&dp, 41001, snat[1]),
            (Some(FLOW_CLOSING), Some(FLOW_CLOSING))
        );
    });
}

#[test]
fn xdp_wildcard_listeners_take_only_the_nodes_traffic() {
    wildcard_listeners_take_only_the_nodes_traffic(
        "xdp_wildcard_listeners_take_only_the_nodes_traffic",
        Hook::Xdp,
    );
}

#[test]
fn tc_wildcard_listeners_take_only_the_nodes_traffic() {
    wildcard_listeners_take_only_the_nodes_traffic(
        "tc_wildcard_listeners_take_only_the_nodes_traffic",
        Hook::Tc,
    );
}

/// A `0.0.0.0` or `::` listener takes SYNs addressed to the node's own addresses only:
/// traffic routed through the node to the same port elsewhere goes to the stack, untouched.
fn wildcard_listeners_take_only_the_nodes_traffic(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let (ns, cl0, bk0) = router();
    ns.run(move || {
        let (client, gw_backend, backend_ip) = (
            IpAddr::V4(v4("198.51.100.2")),
            IpAddr::V4(v4("203.0.113.1")),
            IpAddr::V4(v4("203.0.113.2")),
        );
        let mut dp = Datapath::load();
        dp.put_router_addresses();
        dp.put_device(cl0);
        dp.put_device(bk0);
        dp.put_backend(0, backend(backend_ip, gw_backend, 8080));
        for wildcard in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            dp.put_listener(
                listener_key(wildcard, 7000),
                Listener { id: 3, set_slot: 0 },
                &vec![0; MAGLEV_TABLE_SIZE as usize],
            );
        }
        // Transit: to the backend's own address, port 7000, through the router.
        let transit = tcp(
            client,
            42000,
            backend_ip,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &transit,
            cl0,
            actions.pass,
            PacketReason::Tcp,
            "transit SYN",
        );
        assert_eq!(dp.flow_count(), 0);
        // To the router's own address on the other link: the node's, so the listener's.
        let local = tcp(
            client,
            42001,
            gw_backend,
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &local,
            cl0,
            actions.redirect,
            PacketReason::L4Forwarded,
            "SYN to the node",
        );
        assert_eq!(dp.flow_count(), 2);
        // IPv6 transit to the `::` listener's port.
        let transit6 = tcp(
            IpAddr::V6(v6("2001:db8:1::2")),
            42002,
            IpAddr::V6(v6("2001:db8:2::2")),
            7000,
            tcp_flags::SYN,
            CLIENT_MAC,
            GW_CLIENT_MAC,
        );
        step(
            &mut dp,
            hook,
            &transit6,
            cl0,
            actions.pass,
            PacketReason::Tcp,
            "IPv6 transit SYN",
        );
    });
}

#[test]
fn xdp_half_open_flows_and_syn_floods() {
    half_open_flows_and_syn_floods("xdp_half_open_flows_and_syn_floods", Hook::Xdp);
}

#[test]
fn tc_half_open_flows_and_syn_floods() {
    half_open_flows_and_syn_floods("tc_half_open_flows_and_syn_floods", Hook::Tc);
}

/// A SYN's entries live in the half-open table until the client acknowledges what the
/// backend sent (a blind ACK does not promote them); while more handshakes than the backlog
/// are unanswered, new SYNs go to the stack (counted per listener), and established flows,
/// half-open retransmits and completed handshakes are unaffected; the count halves every
/// second.
fn half_open_flows_and_syn_floods(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let (ns, cl0, bk0) = router();
    ns.run(move || {
        let (mut dp, [client, gw_client, gw_backend, backend_ip]) = one_backend(cl0, bk0);
        dp.put_nat_config(NatConfig {
            syn_backlog: 3,
            ..NatConfig::default()
        });
        dp.put_syn_guard(SynGuard {
            window_start_ns: monotonic_ns(),
            unanswered: 0,
        });
        let from_client = |port: u16, flags: u8| {
            PacketBuilder::tcp(client, gw_client, port, 7000, flags).macs(CLIENT_MAC, GW_CLIENT_MAC)
        };
        let from_backend = |snat: u16, flags: u8| {
            PacketBuilder::tcp(backend_ip, gw_backend, 8080, snat, flags)
                .macs(BACKEND_MAC, GW_BACKEND_MAC)
        };
        let forward = |dp: &mut Datapath, packet: PacketBuilder, device: u32, what: &str| {
            let frame = packet.build();
            inspect(&step(
                dp,
                hook,
                &frame,
                device,
                actions.redirect,
                PacketReason::L4Forwarded,
                what,
            ))
        };
        let client_key = |port: u16| key(client, port, gw_client, 7000);
        let reply_key = |snat: u16| key(backend_ip, 8080, gw_backend, snat);

        // The SYN: both entries half-open, none established.
        let snat = forward(&mut dp, from_client(42000, tcp_flags::SYN), cl0, "SYN").sport;
        assert!(dp.half_open_flow(&client_key(42000)).is_some());
        assert!(dp.half_open_flow(&reply_key(snat)).is_some());
        assert_eq!(dp.established_flow(&client_key(42000)), None);
        assert_eq!(dp.syn_guard().unanswered, 1);
        // The backend's SYN-ACK: its sequence after it is 5000 + SYN.
        forward(
            &mut dp,
            from_backend(snat, tcp_flags::SYN | tcp_flags::ACK).seq(5000),
            bk0,
            "SYN-ACK",
        );
        // An ACK of something the backend never sent is carried, and promotes nothing.
        forward(
            &mut dp,
            from_client(42000, tcp_flags::ACK).ack(5001u32.wrapping_add(1 << 30)),
            cl0,
            "blind ACK",
        );
        assert_eq!(dp.established_flow(&client_key(42000)), None);
        assert!(dp.half_open_flow(&client_key(42000)).is_some());
        // The ACK of the SYN-ACK moves both entries.
        forward(
            &mut dp,
            from_client(42000, tcp_flags::ACK).ack(5001),
            cl0,
            "ACK",
        );
        let established = |dp: &Datapath, port: u16, snat: u16| {
            (
                dp.established_flow(&client_key(port)).map(|f| f.state),
                dp.established_flow(&reply_key(snat)).map(|f| f.state),
                dp.half_open_flow(&client_key(port)).is_some()
                    || dp.half_open_flow(&reply_key(snat)).is_some(),
            )
        };
        assert_eq!(
            established(&dp, 42000, snat),
            (Some(FLOW_ESTABLISHED), Some(FLOW_ESTABLISHED), false)
        );
        assert_eq!(dp.syn_guard().unanswered, 0);

        // Three handshakes left unanswered fill the backlog of 3 ...
        let mut flood_snat = Vec::new();
        for port in 43000..43003 {
            flood_snat.push(forward(&mut dp, from_client(port, tcp_flags::SYN), cl0, "SYN").sport);
        }
        assert_eq!(dp.syn_guard().unanswered, 3);
        // ... so the next SYN goes to the stack, creates nothing, and is counted.
        step(
            &mut dp,
            hook,
            &from_client(43003, tcp_flags::SYN).build(),
            cl0,
            actions.pass,
            PacketReason::L4SynToStack,
            "SYN under a flood",
        );
        assert_eq!(dp.flow(&client_key(43003)), None);
        let counters = dp.l4_counters(map_names::L4_LISTENER_CNT, 3);
        assert_eq!(counters.syn_to_stack, 1);
        assert_eq!(counters.connections, 4, "NATed connections only");
        // Meanwhile the established flow, and a half-open flow's retransmitted SYN, go on.
        forward(
            &mut dp,
            from_client(42000, tcp_flags::ACK).ack(5001),
            cl0,
            "established data",
        );
        forward(
            &mut dp,
            from_client(43000, tcp_flags::SYN),
            cl0,
            "retransmitted SYN",
        );
        // A handshake completing makes room for one more.
        forward(
            &mut dp,
            from_backend(flood_snat[1], tcp_flags::SYN | tcp_flags::ACK).seq(7000),
            bk0,
            "SYN-ACK",
        );
        forward(
            &mut dp,
            from_client(43001, tcp_flags::ACK).ack(7001),
            cl0,
            "ACK",
        );
        assert_eq!(
            established(&dp, 43001, flood_snat[1]),
            (Some(FLOW_ESTABLISHED), Some(FLOW_ESTABLISHED), false)
        );
        assert_eq!(dp.syn_guard().unanswered, 2);
        forward(&mut dp, from_client(43004, tcp_flags::SYN), cl0, "SYN");

        // The count halves once a second: 7 unanswered a window ago are 3 now (still full);
        // 5 are 2 (room again).
        let window_ago = monotonic_ns() - SYN_GUARD_WINDOW_NS - 1;
        dp.put_syn_guard(SynGuard {
            window_start_ns: window_ago,
            unanswered: 7,
        });
        step(
            &mut dp,
            hook,
            &from_client(43005, tcp_flags::SYN).build(),
            cl0,
            actions.pass,
            PacketReason::L4SynToStack,
            "SYN after halving to 3",
        );
        dp.put_syn_guard(SynGuard {
            window_start_ns: window_ago,
            unanswered: 5,
        });
        forward(
            &mut dp,
            from_client(43006, tcp_flags::SYN),
            cl0,
            "SYN after halving to 2",
        );
        assert_eq!(dp.syn_guard().unanswered, 3);
    });
}

#[test]
fn xdp_clamps_the_mss_to_the_smaller_link() {
    clamps_the_mss_to_the_smaller_link("xdp_clamps_the_mss_to_the_smaller_link", Hook::Xdp);
}

#[test]
fn tc_clamps_the_mss_to_the_smaller_link() {
    clamps_the_mss_to_the_smaller_link("tc_clamps_the_mss_to_the_smaller_link", Hook::Tc);
}

/// With the backend link at 1400 bytes, a SYN's MSS option (after two NOPs) and the
/// SYN-ACK's come out as 1360, checksums intact; an MSS already below stays; segments
/// without SYN are not touched.
fn clamps_the_mss_to_the_smaller_link(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let (ns, cl0, bk0) = router();
    ns.ip(&["link", "set", "bk0", "mtu", "1400"]);
    ns.run(move || {
        let (mut dp, [client, gw_client, gw_backend, backend_ip]) = one_backend(cl0, bk0);
        // NOP, NOP, MSS `mss`, then window scale.
        let with_mss = |src, dst, sport, dport, flags, mss: u16, macs: ([u8; 6], [u8; 6])| {
            let [hi, lo] = mss.to_be_bytes();
            PacketBuilder::tcp(src, dst, sport, dport, flags)
                .tcp_options(&[1, 1, 2, 4, hi, lo, 3, 3, 7])
                .macs(macs.0, macs.1)
                .build()
        };
        // The MSS of an output frame (its options start after 20 + 20 bytes of headers).
        let mss_of = |frame: &[u8]| {
            inspect(frame);
            u16::from_be_bytes([frame[14 + 20 + 24], frame[14 + 20 + 25]])
        };
        let mut send = |frame: Vec<u8>, device: u32, what: &str| {
            step(
                &mut dp,
                hook,
                &frame,
                device,
                actions.redirect,
                PacketReason::L4Forwarded,
                what,
            )
        };
        let from_client = (CLIENT_MAC, GW_CLIENT_MAC);
        let from_backend = (BACKEND_MAC, GW_BACKEND_MAC);
        let syn = send(
            with_mss(
                client,
                gw_client,
                44000,
                7000,
                tcp_flags::SYN,
                1460,
                from_client,
            ),
            cl0,
            "SYN",
        );
        assert_eq!(mss_of(&syn), 1360, "the SYN's MSS");
        let snat = inspect(&syn).sport;
        let syn_ack = send(
            with_mss(
                backend_ip,
                gw_backend,
                8080,
                snat,
                tcp_flags::SYN | tcp_flags::ACK,
                1460,
                from_backend,
            ),
            bk0,
            "SYN-ACK",
        );
        assert_eq!(mss_of(&syn_ack), 1360, "the SYN-ACK's MSS");
        let small = send(
            with_mss(
                client,
                gw_client,
                44001,
                7000,
                tcp_flags::SYN,
                1200,
                from_client,
            ),
            cl0,
            "SYN with a small MSS",
        );
        assert_eq!(mss_of(&small), 1200);
        // The same option bytes without SYN are payload as far as the NAT cares.
        let ack = send(
            with_mss(
                client,
                gw_client,
                44000,
                7000,
                tcp_flags::ACK,
                1460,
                from_client,
            ),
            cl0,
            "ACK",
        );
        assert_eq!(mss_of(&ack), 1460);
    });
}

#[test]
fn xdp_answers_segments_too_big_for_the_route() {
    answers_segments_too_big_for_the_route("xdp_answers_segments_too_big_for_the_route", Hook::Xdp);
}

#[test]
fn tc_answers_segments_too_big_for_the_route() {
    answers_segments_too_big_for_the_route("tc_answers_segments_too_big_for_the_route", Hook::Tc);
}

/// With the backend link at 1400 bytes, an established flow's 1500-byte segment (DF set)
/// comes back as ICMP fragmentation needed (MTU 1400) from the listener's address to the
/// client, quoting the segment as the client sent it; IPv6 as packet too big. Without DF
/// it is dropped.
fn answers_segments_too_big_for_the_route(test: &str, hook: Hook) {
    if !root::can_run(test) {
        return;
    }
    let actions = Actions::of(hook);
    let bounced = actions.redirect;
    let (ns, cl0, bk0) = router();
    ns.ip(&["link", "set", "bk0", "mtu", "1400"]);
    ns.run(move || {
        let (mut dp, [client, gw_client, gw_backend, backend_ip]) = one_backend(cl0, bk0);
        let (client6, gw_client6, gw_backend6, backend6) = (
            IpAddr::V6(v6("2001:db8:1::2")),
            IpAddr::V6(v6("2001:db8:1::1")),
            IpAddr::V6(v6("2001:db8:2::1")),
            IpAddr::V6(v6("2001:db8:2::2")),
        );
        dp.put_backend(1, backend(backend6, gw_backend6, 8080));
        dp.put_listener(
            listener_key(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 7000),
            Listener { id: 4, set_slot: 1 },
            &vec![1; MAGLEV_TABLE_SIZE as usize],
        );
        for (client, gw_client, gw_backend, backend_ip) in [
            (client, gw_client, gw_backend, backend_ip),
            (client6, gw_client6, gw_backend6, backend6),
        ] {
            let v4 = client.is_ipv4();
            let mut handshake = |flags: u8, from_client: bool, snat: u16| {
                let frame = if from_client {
                    PacketBuilder::tcp(client, gw_client, 45000, 7000, flags)
                        .macs(CLIENT_MAC, GW_CLIENT_MAC)
                        .build()
                } else {
                    PacketBuilder::tcp(backend_ip, gw_backend, 8080, snat, flags)
                        .macs(BACKEND_MAC, GW_BACKEND_MAC)
                        .seq(1999)
                        .build()
                };
                let device = if from_client { cl0 } else { bk0 };
                inspect(&step(
                    &mut dp,
                    hook,
                    &frame,
                    device,
                    actions.redirect,
                    PacketReason::L4Forwarded,
                    "handshake",
                ))
            };
            let snat = handshake(tcp_flags::SYN, true, 0).sport;
            handshake(tcp_flags::SYN | tcp_flags::ACK, false, snat);
            handshake(tcp_flags::ACK, true, snat);

            // 1500 bytes of IP: 1460 (IPv4) or 1440 (IPv6) bytes of payload.
            let payload = vec![0x42; if v4 { 1460 } else { 1440 }];
            let segment = PacketBuilder::tcp(client, gw_client, 45000, 7000, tcp_flags::ACK)
                .macs(CLIENT_MAC, GW_CLIENT_MAC)
                .seq(7777)
                .payload(&payload)
                .build();
            let out = step(
                &mut dp,
                hook,
                &segment,
                cl0,
                bounced,
                PacketReason::L4TooBig,
                "oversize segment",
            );
            let l3 = 14;
            assert_eq!(out[0..6], CLIENT_MAC, "back to the client's MAC");
            assert_eq!(out[6..12], GW_CLIENT_MAC);
            let (icmp, quote_len) = if v4 {
                assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8);
                assert!(checksum_ok(&[], &out[l3..l3 + 20]), "IPv4 header checksum");
                assert_eq!(out[l3 + 9], proto::IPPROTO_ICMP);
                assert_eq!(
                    out[l3 + 12..l3 + 16],
                    [198, 51, 100, 1],
                    "from the listener"
                );
                assert_eq!(out[l3 + 16..l3 + 20], [198, 51, 100, 2], "to the client");
                let icmp = &out[l3 + 20..];
                assert!(checksum_ok(&[], icmp), "ICMP checksum");
                assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
                assert_eq!(
                    u16::from_be_bytes([icmp[6], icmp[7]]),
                    1400,
                    "the route's MTU"
                );
                (icmp, 20)
            } else {
                assert_eq!(out.len(), 14 + 40 + 8 + 40 + 8);
                assert_eq!(out[l3 + 6], proto::IPPROTO_ICMPV6);
                assert_eq!(out[l3 + 8..l3 + 24], v6("2001:db8:1::1").octets());
                assert_eq!(out[l3 + 24..l3 + 40], v6("2001:db8:1::2").octets());
                let icmp = &out[l3 + 40..];
                let pseudo = pseudo_header(gw_client, client, proto::IPPROTO_ICMPV6, icmp.len());
                assert!(checksum_ok(&pseudo, icmp), "ICMPv6 checksum");
                assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
                assert_eq!(
                    u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
                    1400
                );
                (icmp, 40)
            };
            // The quote is the segment as the client sent it: IP header, ports, sequence.
            let sent_l3 = &segment[l3..];
            assert_eq!(
                icmp[8..8 + quote_len],
                sent_l3[..quote_len],
                "quoted IP header"
            );
            assert_eq!(
                icmp[8 + quote_len..],
                sent_l3[quote_len..quote_len + 8],
                "quoted ports and sequence"
            );
        }

        // Without DF a router would fragment; the NAT drops it.
        let undivided = PacketBuilder::tcp(client, gw_client, 45000, 7000, tcp_flags::ACK)
            .macs(CLIENT_MAC, GW_CLIENT_MAC)
            .ipv4_fragment(false, 0)
            .payload(&[0x42; 1460])
            .build();
        step(
            &mut dp,
            hook,
            &undivided,
            cl0,
            actions.drop,
            PacketReason::L4Unroutable,
            "oversize without DF",
        );
    });
}

/// A reply that leaves by the device it arrived on (a one-armed gateway) goes out with
/// `XDP_TX` only where the daemon marked the device reliable for it; elsewhere (veth, whose
/// peer is not woken for `XDP_TX` frames) through the devmap.
#[test]
fn xdp_tx_only_on_devices_marked_for_it() {
    if !root::can_run("xdp_tx_only_on_devices_marked_for_it") {
        return;
    }
    let (ns, cl0, bk0) = router();
    ns.run(move || {
        let (mut dp, [client, gw_client, gw_backend, backend_ip]) = one_backend(cl0, bk0);
        // A connection whose client sits behind the backend-facing device too.
        dp.put_flow(
            key(backend_ip, 8080, gw_backend, 50000),
            Flow {
                new_src: to_mapped(gw_client),
                new_dst: to_mapped(client),
                new_src_port: 7000,
                new_dst_port: 41000,
                direction: TO_CLIENT,
                state: FLOW_ESTABLISHED,
                ifindex: bk0,
                mac_dst: BACKEND_MAC,
                mac_src: GW_BACKEND_MAC,
                ..Flow::default()
            },
        );
        let reply = PacketBuilder::tcp(backend_ip, gw_backend, 8080, 50000, tcp_flags::ACK)
            .macs(BACKEND_MAC, GW_BACKEND_MAC)
            .build();
        let what = "a reply out of its arrival device";
        step(
            &mut dp,
            Hook::Xdp,
            &reply,
            bk0,
            XDP_REDIRECT,
            PacketReason::L4Forwarded,
            what,
        );
        dp.put_xdp_tx(bk0);
        step(
            &mut dp,
            Hook::Xdp,
            &reply,
            bk0,
            3, // XDP_TX
            PacketReason::L4Forwarded,
            what,
        );
    });
}

/// The daemon writes a whole Maglev table with one `BPF_MAP_UPDATE_BATCH`: every entry of
/// the slot lands where the kernel reads it, and the slots around it stay as they were.
#[test]
fn maglev_tables_are_written_in_one_batch() {
    if !root::can_run("maglev_tables_are_written_in_one_batch") {
        return;
    }
    let dp = Datapath::load();
    let tables = dp.tables();
    let table: Vec<u32> = (0..MAGLEV_TABLE_SIZE).map(|i| i * 7 % 13 + 1).collect();
    gateway_user::datapath::batch::write_u32s(
        aya::maps::IterableMap::map(&tables),
        2 * MAGLEV_TABLE_SIZE,
        &table,
    )
    .unwrap_or_else(|e| panic!("batch write: {e}"));
    let read = |index: u32| {
        tables
            .get(&index, 0)
            .unwrap_or_else(|e| panic!("entry {index}: {e}"))
    };
    for (i, want) in table.iter().enumerate() {
        assert_eq!(read(2 * MAGLEV_TABLE_SIZE + i as u32), *want, "entry {i}");
    }
    assert_eq!(read(2 * MAGLEV_TABLE_SIZE - 1), 0, "the slot before");
    assert_eq!(read(3 * MAGLEV_TABLE_SIZE), 0, "the slot after");
}
