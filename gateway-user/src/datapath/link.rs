//! What kind of link an interface is (`veth`, `bridge`, …), which decides how the kernel
//! datapath attaches to it and how it sends back out of it. Read from `ip -d link`, which
//! netlink is to replace.

/// The link kind of `interface` (`veth`, `bridge`, …; none for a physical NIC or when it
/// cannot be read), from `ip -d link`.
pub fn kind(interface: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", interface])
        .output()
        .ok()?;
    parse_kind(&String::from_utf8_lossy(&out.stdout))
}

fn parse_kind(json: &str) -> Option<String> {
    let links: serde_json::Value = serde_json::from_str(json).ok()?;
    links
        .get(0)?
        .get("linkinfo")?
        .get("info_kind")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_kinds_come_from_ip_details() {
        let veth = r#"[{"ifindex":5,"ifname":"gw-c","linkinfo":{"info_kind":"veth"},"mtu":1500}]"#;
        assert_eq!(parse_kind(veth).as_deref(), Some("veth"));
        let nic = r#"[{"ifindex":2,"ifname":"eth0","mtu":1500}]"#;
        assert_eq!(parse_kind(nic), None);
        assert_eq!(parse_kind(""), None);
    }
}
