//! A three-host test network: client -- gateway -- backend, each in its own network
//! namespace, joined by veth pairs and addressed from the documentation ranges.
//!
//! ```text
//! client (198.51.100.2, 2001:db8:1::2) c-gw == gw-c (198.51.100.1, 2001:db8:1::1)
//!   gateway, forwarding    gw-b (203.0.113.1, 2001:db8:2::1) == b-gw backend (203.0.113.2.., 2001:db8:2::2..)
//! ```
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::{NetNs, unique_prefix};

pub const CLIENT_IF: &str = "c-gw";
pub const GATEWAY_CLIENT_IF: &str = "gw-c";
pub const GATEWAY_BACKEND_IF: &str = "gw-b";
/// `sluice run` arguments for the kernel datapath: XDP on both of the gateway's interfaces.
pub const SLUICE_XDP_ARGS: &[&str] = &[
    "--datapath",
    "xdp",
    "--interface",
    GATEWAY_CLIENT_IF,
    "--interface",
    GATEWAY_BACKEND_IF,
];
/// `sluice run` arguments for the kernel datapath in TC: on both of the gateway's interfaces.
pub const SLUICE_TC_ARGS: &[&str] = &[
    "--datapath",
    "tc",
    "--interface",
    GATEWAY_CLIENT_IF,
    "--interface",
    GATEWAY_BACKEND_IF,
];
pub const BACKEND_IF: &str = "b-gw";

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const GATEWAY_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const GATEWAY_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const GATEWAY_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const GATEWAY_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// MAC addresses are fixed (locally administered): every test network is its own L2.
pub const CLIENT_MAC: &str = "02:00:00:00:00:01";
pub const GATEWAY_CLIENT_MAC: &str = "02:00:00:00:00:02";
pub const GATEWAY_BACKEND_MAC: &str = "02:00:00:00:01:01";
pub const BACKEND_MAC: &str = "02:00:00:00:01:02";

/// The address of backend `i` (0-based).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 2 + i as u8)
}
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2 + i as u16)
}

#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    backends: usize,
    ipv6: bool,
    static_neighbours: bool,
    default_offloads: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            backends: 1,
            ipv6: true,
            static_neighbours: false,
            default_offloads: false,
        }
    }
}

impl TopologyBuilder {
    /// How many backend addresses the backend host carries.
    pub fn backends(mut self, n: usize) -> Self {
        assert!((1..=200).contains(&n));
        self.backends = n;
        self
    }

    /// Disables IPv6 on every host: no neighbour discovery or MLD frames, so interface
    /// counters count only the test's own traffic.
    pub fn ipv4_only(mut self) -> Self {
        self.ipv6 = false;
        self
    }

    /// Permanent neighbour entries on every link, so no ARP frames cross the links.
    pub fn static_neighbours(mut self) -> Self {
        self.static_neighbours = true;
        self
    }

    /// Leaves the hosts' veth offloads as the kernel sets them (checksum offload and TSO on),
    /// for benchmarking paths that do not use XDP: with XDP on the gateway those settings
    /// lose forwarded frames (see `build`).
    pub fn default_offloads(mut self) -> Self {
        self.default_offloads = true;
        self
    }

    pub fn build(self) -> Topology {
        let prefix = unique_prefix();
        let client = NetNs::new(&format!("{prefix}-client"));
        let gateway = NetNs::new(&format!("{prefix}-gw"));
        let backend = NetNs::new(&format!("{prefix}-backend"));
        let topology = Topology {
            client,
            gateway,
            backend,
            backends: self.backends,
        };
        for ns in [&topology.client, &topology.gateway, &topology.backend] {
            let v6 = if self.ipv6 { "0" } else { "1" };
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", v6);
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", v6);
        }
        topology.link(
            &topology.client,
            CLIENT_IF,
            CLIENT_MAC,
            &topology.gateway,
            GATEWAY_CLIENT_IF,
            GATEWAY_CLIENT_MAC,
        );
        topology.link(
            &topology.gateway,
            GATEWAY_BACKEND_IF,
            GATEWAY_BACKEND_MAC,
            &topology.backend,
            BACKEND_IF,
            BACKEND_MAC,
        );
        let (c, g, b) = (&topology.client, &topology.gateway, &topology.backend);
        c.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", CLIENT_IF]);
        g.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_CLIENT_V4}/24"),
            "dev",
            GATEWAY_CLIENT_IF,
        ]);
        g.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_BACKEND_V4}/24"),
            "dev",
            GATEWAY_BACKEND_IF,
        ]);
        for i in 0..self.backends {
            b.ip(&[
                "addr",
                "add",
                &format!("{}/24", backend_v4(i)),
                "dev",
                BACKEND_IF,
            ]);
        }
        c.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &GATEWAY_CLIENT_V4.to_string(),
        ]);
        b.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &GATEWAY_BACKEND_V4.to_string(),
        ]);
        g.sysctl("net.ipv4.ip_forward", "1");
        if self.ipv6 {
            g.sysctl("net.ipv6.conf.all.forwarding", "1");
            c.ip(&[
                "addr",
                "add",
                &format!("{CLIENT_V6}/64"),
                "dev",
                CLIENT_IF,
                "nodad",
            ]);
            g.ip(&[
                "addr",
                "add",
                &format!("{GATEWAY_CLIENT_V6}/64"),
                "dev",
                GATEWAY_CLIENT_IF,
                "nodad",
            ]);
            g.ip(&[
                "addr",
                "add",
                &format!("{GATEWAY_BACKEND_V6}/64"),
                "dev",
                GATEWAY_BACKEND_IF,
                "nodad",
            ]);
            for i in 0..self.backends {
                b.ip(&[
                    "addr",
                    "add",
                    &format!("{}/64", backend_v6(i)),
                    "dev",
                    BACKEND_IF,
                    "nodad",
                ]);
            }
            c.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                &GATEWAY_CLIENT_V6.to_string(),
            ]);
            b.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:1::/64",
                "via",
                &GATEWAY_BACKEND_V6.to_string(),
            ]);
        }
        // Native XDP redirects into a veth are dropped unless its peer has GRO (or an XDP
        // program), and veth senders leave TCP checksums to "hardware" that XDP-forwarded
        // frames never reach: full checksums and GRO on the hosts' ends
        // (docs/datapath.md, "Tests and what they rely on").
        if !self.default_offloads {
            c.exec("ethtool", &["-K", CLIENT_IF, "tx", "off", "gro", "on"]);
            b.exec("ethtool", &["-K", BACKEND_IF, "tx", "off", "gro", "on"]);
        }
        if self.static_neighbours {
            let neigh = |ns: &NetNs, addr: String, mac: &str, dev: &str| {
                ns.ip(&[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ]);
            };
            neigh(
                c,
                GATEWAY_CLIENT_V4.to_string(),
                GATEWAY_CLIENT_MAC,
                CLIENT_IF,
            );
            neigh(g, CLIENT_V4.to_string(), CLIENT_MAC, GATEWAY_CLIENT_IF);
            neigh(
                b,
                GATEWAY_BACKEND_V4.to_string(),
                GATEWAY_BACKEND_MAC,
                BACKEND_IF,
            );
            for i in 0..self.backends {
                neigh(
                    g,
                    backend_v4(i).to_string(),
                    BACKEND_MAC,
                    GATEWAY_BACKEND_IF,
                );
            }
        }
        topology
    }
}

/// The three namespaces; dropping it deletes them and their links.
#[derive(Debug)]
pub struct Topology {
    pub client: NetNs,
    pub gateway: NetNs,
    pub backend: NetNs,
    pub backends: usize,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    fn link(&self, a: &NetNs, a_if: &str, a_mac: &str, b: &NetNs, b_if: &str, b_mac: &str) {
        crate::netns::run(std::process::Command::new("ip").args([
            "link", "add", "name", a_if, "netns", &a.name, "address", a_mac, "type", "veth",
            "peer", "name", b_if, "netns", &b.name, "address", b_mac,
        ]));
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }
}
