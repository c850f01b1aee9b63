//! The NAT fixture router: a namespace with a client-facing veth `cl0` (198.51.100.1,
//! 2001:db8:1::1) and a backend-facing veth `bk0` (203.0.113.1, 2001:db8:2::1) whose peers
//! stay inside, permanent neighbours for the client (.2) and the backend (.2), and
//! forwarding on. `BPF_PROG_TEST_RUN` FIB lookups happen in the calling thread's namespace,
//! so fixtures and the per-packet cost measurement run their packets from inside it.
use std::net::IpAddr;

use gateway_common::{
    addr::to_mapped,
    l4::{Backend, FAMILY_IPV4, FAMILY_IPV6, FlowKey, ListenerKey},
};

use crate::netns::{NetNs, unique_prefix};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GW_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const GW_BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

/// The router's own addresses: what the daemon writes into `L4_LOCAL_ADDRS`, so wildcard
/// listeners match them (and not transit traffic).
pub const ADDRESSES: [&str; 4] = [
    "198.51.100.1",
    "203.0.113.1",
    "2001:db8:1::1",
    "2001:db8:2::1",
];

/// `aa:bb:…` as `ip` takes it.
pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Builds the router; returns it with the ifindexes of `cl0` and `bk0`.
pub fn router() -> (NetNs, u32, u32) {
    let ns = NetNs::new(&format!("{}-nat", unique_prefix()));
    ns.ip(&[
        "link",
        "add",
        "name",
        "cl0",
        "address",
        &mac(GW_CLIENT_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "cl1",
    ]);
    ns.ip(&[
        "link",
        "add",
        "name",
        "bk0",
        "address",
        &mac(GW_BACKEND_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "bk1",
    ]);
    for dev in ["cl0", "cl1", "bk0", "bk1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "cl0"]);
    ns.ip(&["addr", "add", "203.0.113.1/24", "dev", "bk0"]);
    ns.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "cl0", "nodad"]);
    ns.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "bk0", "nodad"]);
    for (ip, lladdr, dev) in [
        ("198.51.100.2", CLIENT_MAC, "cl0"),
        ("203.0.113.2", BACKEND_MAC, "bk0"),
        ("2001:db8:1::2", CLIENT_MAC, "cl0"),
        ("2001:db8:2::2", BACKEND_MAC, "bk0"),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac(lladdr),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    ns.sysctl("net.ipv4.ip_forward", "1");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    let index = |dev: &'static str| {
        ns.run(move || nix::net::if_::if_nametoindex(dev).unwrap_or_else(|e| panic!("{dev}: {e}")))
    };
    let (cl0, bk0) = (index("cl0"), index("bk0"));
    (ns, cl0, bk0)
}

/// A TCP flow key.
pub fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
    FlowKey {
        src: to_mapped(src),
        dst: to_mapped(dst),
        src_port: sport,
        dst_port: dport,
        protocol: 6,
        _pad: [0; 3],
    }
}

/// A backend entry reached from `snat`.
pub fn backend(addr: IpAddr, snat: IpAddr, port: u16) -> Backend {
    Backend {
        addr: to_mapped(addr),
        snat_addr: to_mapped(snat),
        port,
        family: if addr.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        _pad: 0,
    }
}

/// The listener key of `addr`:`port`/TCP.
pub fn listener_key(addr: IpAddr, port: u16) -> ListenerKey {
    ListenerKey {
        addr: to_mapped(addr),
        port,
        protocol: 6,
        _pad: 0,
    }
}
