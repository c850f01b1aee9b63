//! Table-driven BPF_PROG_TEST_RUN fixtures for the ingress classifier: each row is a crafted
//! frame, the reason it must be counted under, and (for this stage of the datapath) the pass
//! verdict with the frame unchanged. Every row runs through both the XDP and the TC program.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::{
    PacketReason,
    proto::{self, tcp_flags},
};
use tests::{
    packets::{PacketBuilder, Transport},
    prog_test::{Datapath, Hook},
    root,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
const GATEWAY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));

struct Fixture {
    description: &'static str,
    input: Vec<u8>,
    reason: PacketReason,
    /// The kernel's skb test-run (TC) rejects, with EINVAL, IP-typed frames shorter than an
    /// IP header, so those rows run through XDP only. Real TC ingress does see such runts.
    xdp_only: bool,
}

fn syn(src: IpAddr, dst: IpAddr) -> PacketBuilder {
    PacketBuilder::tcp(src, dst, 40000, 443, tcp_flags::SYN)
}

/// Sets byte `at` of `frame` to `value`.
fn with_byte(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn fixtures() -> Vec<Fixture> {
    use PacketReason::*;
    let v4 = syn(CLIENT, GATEWAY).build();
    let v6 = syn(CLIENT6, GATEWAY6).build();
    let eth = proto::ETH_HDR_LEN;
    let mut rows = vec![
        Fixture {
            description: "IPv4 TCP SYN",
            input: v4.clone(),
            reason: Tcp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 TCP with payload and options",
            input: PacketBuilder::new(
                CLIENT,
                GATEWAY,
                Transport::Tcp {
                    src: 1,
                    dst: 2,
                    flags: tcp_flags::ACK | tcp_flags::PSH,
                    options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
                },
            )
            .payload(&[0xab; 300])
            .build(),
            reason: Tcp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 TCP SYN",
            input: v6.clone(),
            reason: Tcp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 UDP",
            input: PacketBuilder::udp(CLIENT, GATEWAY, 5353, 53)
                .payload(b"q")
                .build(),
            reason: Udp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 UDP",
            input: PacketBuilder::udp(CLIENT6, GATEWAY6, 5353, 53)
                .payload(b"q")
                .build(),
            reason: Udp,
            xdp_only: false,
        },
        Fixture {
            description: "ICMP echo",
            input: PacketBuilder::new(CLIENT, GATEWAY, Transport::Icmp).build(),
            reason: Icmp,
            xdp_only: false,
        },
        Fixture {
            description: "ICMPv6 echo",
            input: PacketBuilder::new(CLIENT6, GATEWAY6, Transport::Icmp).build(),
            reason: Icmp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 GRE (other protocol)",
            input: PacketBuilder::new(CLIENT, GATEWAY, Transport::Raw { protocol: 47 })
                .payload(&[0; 8])
                .build(),
            reason: OtherL4,
            xdp_only: false,
        },
        Fixture {
            description: "802.1Q-tagged IPv4 TCP",
            input: syn(CLIENT, GATEWAY).vlan(proto::ETH_P_8021Q, 100).build(),
            reason: Tcp,
            xdp_only: false,
        },
        Fixture {
            description: "QinQ (802.1ad + 802.1Q) IPv6 TCP",
            input: syn(CLIENT6, GATEWAY6)
                .vlan(proto::ETH_P_8021AD, 10)
                .vlan(proto::ETH_P_8021Q, 20)
                .build(),
            reason: Tcp,
            xdp_only: false,
        },
        Fixture {
            description: "three VLAN tags: beyond what the parser walks",
            input: syn(CLIENT, GATEWAY)
                .vlan(proto::ETH_P_8021AD, 1)
                .vlan(proto::ETH_P_8021Q, 2)
                .vlan(proto::ETH_P_8021Q, 3)
                .build(),
            reason: NonIp,
            xdp_only: false,
        },
        Fixture {
            description: "ARP (non-IP ethertype)",
            input: {
                let mut arp = v4[..eth].to_vec();
                arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                arp.extend_from_slice(&[0; 20]);
                arp
            },
            reason: NonIp,
            xdp_only: false,
        },
        Fixture {
            description: "VLAN tag cut short",
            input: truncated(
                syn(CLIENT, GATEWAY).vlan(proto::ETH_P_8021Q, 7).build(),
                eth + 2,
            ),
            reason: TruncatedEthernet,
            xdp_only: false,
        },
        Fixture {
            description: "one byte of IPv4 after the Ethernet header",
            input: truncated(v4.clone(), eth + 1),
            reason: TruncatedIp,
            xdp_only: true,
        },
        Fixture {
            description: "IPv4 header cut at 19 bytes",
            input: truncated(v4.clone(), eth + 19),
            reason: TruncatedIp,
            xdp_only: true,
        },
        Fixture {
            description: "IPv6 header cut at 39 bytes",
            input: truncated(v6.clone(), eth + 39),
            reason: TruncatedIp,
            xdp_only: true,
        },
        Fixture {
            description: "IPv4 total length beyond the frame",
            input: truncated(v4.clone(), v4.len() - 1),
            reason: TruncatedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 payload length beyond the frame",
            input: truncated(v6.clone(), v6.len() - 1),
            reason: TruncatedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 version field says 6",
            input: with_byte(v4.clone(), eth, 0x65),
            reason: MalformedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 IHL below 5",
            input: with_byte(v4.clone(), eth, 0x44),
            reason: MalformedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 total length below the header",
            input: with_byte(with_byte(v4.clone(), eth + 2, 0), eth + 3, 16),
            reason: MalformedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 version field says 4",
            input: with_byte(v6.clone(), eth, 0x40),
            reason: MalformedIp,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 with options (record route)",
            input: syn(CLIENT, GATEWAY)
                .ipv4_options(&[7, 7, 4, 0, 0, 0, 0])
                .build(),
            reason: Ipv4Options,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 first fragment (MF)",
            input: syn(CLIENT, GATEWAY).ipv4_fragment(true, 0).build(),
            reason: IpFragment,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 later fragment (offset)",
            input: syn(CLIENT, GATEWAY).ipv4_fragment(false, 185).build(),
            reason: IpFragment,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 fragment header",
            input: syn(CLIENT6, GATEWAY6)
                .ipv6_extension(proto::IPPROTO_IPV6_FRAGMENT)
                .build(),
            reason: IpFragment,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 hop-by-hop header",
            input: syn(CLIENT6, GATEWAY6).ipv6_extension(0).build(),
            reason: Ipv6ExtensionHeaders,
            xdp_only: false,
        },
        Fixture {
            description: "IPv6 destination options header",
            input: syn(CLIENT6, GATEWAY6).ipv6_extension(60).build(),
            reason: Ipv6ExtensionHeaders,
            xdp_only: false,
        },
        Fixture {
            description: "IPv4 TCP header cut at 19 bytes (IP length agrees)",
            input: {
                let mut f = truncated(v4.clone(), eth + 20 + 19);
                f[eth + 2..eth + 4].copy_from_slice(&39u16.to_be_bytes());
                f
            },
            reason: TruncatedL4,
            xdp_only: false,
        },
        Fixture {
            description: "TCP data offset beyond the IP payload",
            input: with_byte(v4.clone(), eth + 20 + 12, 0xf0),
            reason: TruncatedL4,
            xdp_only: false,
        },
        Fixture {
            description: "TCP data offset below 5",
            input: with_byte(v4.clone(), eth + 20 + 12, 0x40),
            reason: MalformedTcp,
            xdp_only: false,
        },
        Fixture {
            description: "UDP length beyond the IP payload",
            input: {
                let mut f = PacketBuilder::udp(CLIENT, GATEWAY, 1, 2)
                    .payload(b"abcd")
                    .build();
                f[eth + 20 + 4..eth + 20 + 6].copy_from_slice(&100u16.to_be_bytes());
                f
            },
            reason: TruncatedL4,
            xdp_only: false,
        },
    ];
    // Ethernet padding after a short datagram is normal and must not count as malformed.
    let mut padded = v4.clone();
    padded.extend_from_slice(&[0; 6]);
    rows.push(Fixture {
        description: "IPv4 TCP with Ethernet padding",
        input: padded,
        reason: Tcp,
        xdp_only: false,
    });
    rows
}

fn run_fixtures(hook: Hook, pass: u32) {
    let mut datapath = Datapath::load();
    for fixture in fixtures() {
        if hook == Hook::Tc && fixture.xdp_only {
            continue;
        }
        let before = datapath.counters();
        let result = datapath.run(hook, &fixture.input);
        let after = datapath.counters();
        let what = format!("{hook:?}: {}", fixture.description);
        assert_eq!(result.return_value, pass, "{what}: action");
        assert_eq!(
            result.output, fixture.input,
            "{what}: a passed frame must leave unchanged"
        );
        for reason in PacketReason::ALL {
            let (b, a) = (
                before[reason.index() as usize],
                after[reason.index() as usize],
            );
            let (packets, bytes) = if reason == fixture.reason {
                (1, fixture.input.len() as u64)
            } else {
                (0, 0)
            };
            assert_eq!(
                a.packets - b.packets,
                packets,
                "{what}: {} packets",
                reason.label()
            );
            assert_eq!(a.bytes - b.bytes, bytes, "{what}: {} bytes", reason.label());
        }
    }
}

#[test]
fn xdp_classifies_and_counts_every_fixture() {
    if root::can_run("xdp_classifies_and_counts_every_fixture") {
        run_fixtures(Hook::Xdp, XDP_PASS);
    }
}

#[test]
fn tc_classifies_and_counts_every_fixture() {
    if root::can_run("tc_classifies_and_counts_every_fixture") {
        run_fixtures(Hook::Tc, TC_ACT_OK);
    }
}

/// Every reason is exercised: the classifier's here, the L4 NAT stage's in datapath_nat.rs.
#[test]
fn every_reason_is_covered_by_a_fixture() {
    let mut covered: Vec<PacketReason> = fixtures().iter().map(|f| f.reason).collect();
    covered.extend([
        PacketReason::L4Forwarded,
        PacketReason::L4NoFlow,
        PacketReason::L4NoBackend,
        PacketReason::L4PortExhausted,
        PacketReason::L4NoNeighbour,
        PacketReason::L4Unroutable,
        PacketReason::L4IcmpTranslated,
        // `*_tracks_each_direction_close`.
        PacketReason::L4RstOutOfWindow,
        // `*_half_open_flows_and_syn_floods`.
        PacketReason::L4SynToStack,
        // `*_answers_segments_too_big_for_the_route`.
        PacketReason::L4TooBig,
    ]);
    for reason in PacketReason::ALL {
        assert!(covered.contains(&reason), "no fixture for {reason:?}");
    }
}
