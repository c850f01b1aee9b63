//! A client for Sluice's admin server, usable from inside a namespace, and a reader for
//! Prometheus text samples.
use std::{net::SocketAddr, time::Duration};

use crate::netns::NetNs;

/// GET `path` on `addr` from inside `ns`; returns the status and body.
pub fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let url = format!("http://{addr}{path}");
    ns.run(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        match agent.get(&url).call() {
            Ok(response) => {
                let status = response.status();
                response
                    .into_string()
                    .map(|body| (status, body))
                    .map_err(|e| e.to_string())
            }
            Err(ureq::Error::Status(status, response)) => {
                Ok((status, response.into_string().unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        }
    })
}

/// The value of the sample whose name and labels are exactly `series` in a Prometheus text
/// exposition, e.g. `sluice_datapath_packets_total{reason="tcp",verdict="pass"}`.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_matches_the_whole_series() {
        let body = "# TYPE x counter\nx_total{a=\"1\"} 5\nx_total{a=\"10\"} 7\n";
        assert_eq!(sample(body, "x_total{a=\"1\"}"), Some(5.0));
        assert_eq!(sample(body, "x_total{a=\"10\"}"), Some(7.0));
        assert_eq!(sample(body, "x_total{a=\"2\"}"), None);
    }
}
