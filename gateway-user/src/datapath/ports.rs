//! The kernel NAT's source-port range (`--l4-nat-ports`) and its reservation from the host.
//!
//! The kernel picks a source port for each NATed connection without seeing the host's
//! sockets. A connection the host opens itself (the userspace proxies connect to backends)
//! to the same backend from the same address could take a port a NAT flow holds, and its
//! replies would go to the NAT's client. So the NAT draws from its own range, and the daemon
//! adds that range to `net.ipv4.ip_local_reserved_ports` (both address families), which
//! keeps the host's automatic port choice (`connect()`, `bind()` to port 0) out of it.
//! Explicit binds are not affected. The parsing and list arithmetic are pure; the sysctl is
//! read and written at the edge.
use std::{fmt, path::PathBuf, str::FromStr};

use anyhow::{Context as _, bail};
use gateway_common::{l4::NatConfig, select::SOURCE_PORT_STRIDE};

/// Inclusive port ranges, sorted and merged, as `ip_local_reserved_ports` lists them.
pub type PortList = Vec<(u16, u16)>;

/// `--l4-nat-ports FIRST-LAST`: the NAT's source ports, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The documented default: below Linux's default ephemeral range (32768-60999), so a
    /// host with default settings loses none of its own ports.
    pub const DEFAULT: PortRange = PortRange {
        first: 1024,
        last: 32767,
    };

    /// How many ports the range holds.
    pub fn count(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The value the kernel reads.
    pub fn config(self) -> NatConfig {
        NatConfig {
            source_port_base: u32::from(self.first),
            source_port_span: self.count(),
            syn_backlog: 0,
            _pad: 0,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Fewer ports than this would exhaust at a few connections per second per backend.
const MIN_PORTS: u32 = 16;

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 1024-32767"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let range = PortRange {
            first: port(first)?,
            last: port(last)?,
        };
        if range.first > range.last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        if range.count() < MIN_PORTS {
            return Err(format!(
                "{s:?}: {} ports is too few for the NAT (at least {MIN_PORTS})",
                range.count()
            ));
        }
        // Candidates step by a prime: a range whose size it divides would offer one port.
        if range.count().is_multiple_of(SOURCE_PORT_STRIDE) {
            return Err(format!(
                "{s:?}: a range of {} ports (a multiple of {SOURCE_PORT_STRIDE}) is not \
                 supported; make it one port larger or smaller",
                range.count()
            ));
        }
        Ok(range)
    }
}

/// Parses `ip_local_reserved_ports` (`"1024-2000,8080"`; empty for none).
pub fn parse_list(text: &str) -> Result<PortList, String> {
    let mut list = Vec::new();
    for item in text.trim().split(',').filter(|i| !i.trim().is_empty()) {
        let (first, last) = item.split_once('-').unwrap_or((item, item));
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{item:?} in {text:?}: {e}"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("{item:?} in {text:?}: descending range"));
        }
        list.push((first, last));
    }
    Ok(merge(list))
}

/// The list as the sysctl takes it.
pub fn format_list(list: &[(u16, u16)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    items.join(",")
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut list: PortList) -> PortList {
    list.sort_unstable();
    let mut out: PortList = Vec::with_capacity(list.len());
    for (first, last) in list {
        match out.last_mut() {
            Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

pub fn union(list: &[(u16, u16)], add: &[(u16, u16)]) -> PortList {
    merge(list.iter().chain(add).copied().collect())
}

/// `list` without any port of `remove`.
pub fn subtract(list: &[(u16, u16)], remove: &[(u16, u16)]) -> PortList {
    let mut out = list.to_vec();
    for &(rf, rl) in remove {
        out = out
            .into_iter()
            .flat_map(|(f, l)| {
                let mut parts = Vec::new();
                if l < rf || f > rl {
                    parts.push((f, l));
                } else {
                    if f < rf {
                        parts.push((f, rf - 1));
                    }
                    if l > rl {
                        parts.push((rl + 1, l));
                    }
                }
                parts
            })
            .collect();
    }
    merge(out)
}

/// How many ports of `first..=last` are not in `list`.
pub fn free_in(list: &[(u16, u16)], first: u16, last: u16) -> u32 {
    let taken: u32 = list
        .iter()
        .map(|&(f, l)| {
            let (f, l) = (f.max(first), l.min(last));
            if f > l {
                0
            } else {
                u32::from(l) - u32::from(f) + 1
            }
        })
        .sum();
    (u32::from(last) - u32::from(first) + 1) - taken
}

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const EPHEMERAL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The NAT range reserved from the host by this run: what it added to the sysctl, removed
/// again by [`Reservation::release`].
#[derive(Debug)]
pub struct Reservation {
    path: PathBuf,
    added: PortList,
}

impl Reservation {
    /// Adds `range` to the host's reserved ports, unless that leaves the host no ephemeral
    /// port of its own.
    pub fn reserve(range: PortRange) -> anyhow::Result<Reservation> {
        let path = PathBuf::from(RESERVED);
        let current = read_list(&path)?;
        let ephemeral =
            std::fs::read_to_string(EPHEMERAL).with_context(|| format!("reading {EPHEMERAL}"))?;
        let (low, high) = parse_ephemeral(&ephemeral)
            .with_context(|| format!("{EPHEMERAL} reads {:?}", ephemeral.trim()))?;
        let wanted = union(&current, &[(range.first, range.last)]);
        let left = free_in(&wanted, low, high);
        if left == 0 {
            bail!(
                "--l4-nat-ports {range} covers every port of this host's ephemeral range \
                 ({low}-{high}, {EPHEMERAL}): its own connections would find no port. Choose \
                 a NAT range outside it"
            );
        }
        let added = subtract(&[(range.first, range.last)], &current);
        if !added.is_empty() {
            write_list(&path, &wanted)?;
        }
        tracing::info!(
            nat_ports = %range,
            reserved = %format_list(&wanted),
            ephemeral_left = left,
            "NAT source ports reserved from the host's own connections"
        );
        Ok(Reservation { path, added })
    }

    /// Removes what [`Reservation::reserve`] added (ports reserved before it stay reserved).
    pub fn release(self) {
        if self.added.is_empty() {
            return;
        }
        let result = read_list(&self.path)
            .and_then(|current| write_list(&self.path, &subtract(&current, &self.added)));
        match result {
            Ok(()) => tracing::info!(
                released = %format_list(&self.added),
                "NAT source ports no longer reserved"
            ),
            Err(e) => tracing::warn!("releasing the reserved NAT ports: {e:#}"),
        }
    }
}

fn parse_ephemeral(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some((low, high)),
        _ => None,
    }
}

fn read_list(path: &std::path::Path) -> anyhow::Result<PortList> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_list(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_list(path: &std::path::Path, list: &[(u16, u16)]) -> anyhow::Result<()> {
    // A lone newline clears the list (the sysctl refuses a lone comma).
    let text = format_list(list) + "\n";
    std::fs::write(path, &text).with_context(|| format!("writing {text:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_reasons() {
        let ok = |s: &str| s.parse::<PortRange>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ok("1024-32767"),
            PortRange {
                first: 1024,
                last: 32767
            }
        );
        assert_eq!(ok("1024-32767").count(), 31744);
        assert_eq!(ok("1024-32767").config().source_port_span, 31744);
        for (bad, why) in [
            ("1024", "FIRST-LAST"),
            ("0-100", "not a port"),
            ("2000-1000", "above the last"),
            ("1000-1005", "too few"),
            ("1000-8918", "multiple of 7919"),
            ("1000-70000", "not a port"),
        ] {
            let err = bad.parse::<PortRange>().err().unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(PortRange::DEFAULT.to_string(), "1024-32767");
    }

    #[test]
    fn reserved_lists_round_trip_and_merge() {
        let list = parse_list("8080, 1024-2000,2001-2005,\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list, vec![(1024, 2005), (8080, 8080)]);
        assert_eq!(format_list(&list), "1024-2005,8080");
        assert_eq!(parse_list("").unwrap_or_else(|e| panic!("{e}")), vec![]);
        assert!(parse_list("5-3").is_err());
        assert!(parse_list("a-3").is_err());
    }

    #[test]
    fn union_and_subtract_are_inverse_on_what_was_added() {
        let before = vec![(1000, 1100), (5000, 5000)];
        let range = [(1050, 2000)];
        let added = subtract(&range, &before);
        assert_eq!(added, vec![(1101, 2000)]);
        let after = union(&before, &range);
        assert_eq!(after, vec![(1000, 2000), (5000, 5000)]);
        assert_eq!(subtract(&after, &added), before);
        assert_eq!(subtract(&[(10, 20)], &[(12, 14)]), vec![(10, 11), (15, 20)]);
    }

    #[test]
    fn free_ports_count_what_the_list_leaves() {
        assert_eq!(free_in(&[], 32768, 60999), 28232);
        assert_eq!(free_in(&[(1024, 32767)], 32768, 60999), 28232);
        assert_eq!(free_in(&[(1024, 40000)], 32768, 60999), 20999);
        assert_eq!(free_in(&[(1024, 65535)], 32768, 60999), 0);
        assert_eq!(parse_ephemeral("32768\t60999\n"), Some((32768, 60999)));
    }
}
