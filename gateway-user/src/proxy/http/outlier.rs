//! Passive outlier detection (DestinationRule `outlierDetection`) as Envoy applies it with
//! Istio's settings: every try's outcome is counted on its endpoint; enough consecutive 5xx
//! responses (or 502/503/504, or local failures when counted apart) eject the endpoint from
//! load balancing for the base ejection time times its ejection count, unless that would
//! eject more than `maxEjectionPercent` of the destination (one endpoint always may). The
//! state lives per destination name and endpoint address, shared by every worker and route
//! and kept across config reloads, as Envoy keeps a host's across cluster updates.
//!
//! Where this differs from Envoy: an ejected endpoint returns as soon as its time is up
//! (Envoy returns it at the next interval sweep after that), and the ejection count decays
//! by one per interval without an ejection, reckoned when the next ejection comes.
use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::compile::plan::OutlierPolicy;

/// Milliseconds on the process's monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A try's outcome as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// No response: a connect failure or reset (503 to Envoy) or a timeout (504).
    Local { timeout: bool },
}

/// Ejections longer than this are not made (Envoy's `max_ejection_time` default), unless
/// the base time itself is longer.
const MAX_EJECTION_MS: u64 = 300_000;

/// One endpoint's record.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

impl EndpointHealth {
    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Counts `outcome`; true when it completes a run that ejects under `policy`.
    pub fn record(&self, policy: &OutlierPolicy, outcome: Outcome) -> bool {
        let bump = |counter: &AtomicU32, limit: u32| {
            let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            limit > 0 && n >= limit
        };
        let reset = |counter: &AtomicU32| counter.store(0, Ordering::Relaxed);
        match outcome {
            Outcome::Local { .. } if policy.split_local => {
                bump(&self.consecutive_local, policy.consecutive_local)
            }
            Outcome::Status(status) if policy.split_local || status < 500 => {
                reset(&self.consecutive_local);
                if status < 500 {
                    reset(&self.consecutive_5xx);
                    reset(&self.consecutive_gateway);
                    return false;
                }
                self.count_5xx(policy, status)
            }
            Outcome::Status(status) => self.count_5xx(policy, status),
            // Not split: a local failure is the 503 or 504 Envoy makes of it.
            Outcome::Local { timeout } => self.count_5xx(policy, if timeout { 504 } else { 503 }),
        }
    }

    fn count_5xx(&self, policy: &OutlierPolicy, status: u16) -> bool {
        let five = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let gateway = if (502..=504).contains(&status) {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        (policy.consecutive_5xx > 0 && five >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0 && gateway >= policy.consecutive_gateway)
    }

    /// Ejects the endpoint from `now`; returns until when, or `None` when it is ejected
    /// already (another worker got there first). Its runs start again, and its ejection
    /// count (which lengthens the next) first decays by the intervals it spent without one.
    pub fn eject(&self, policy: &OutlierPolicy, now: u64) -> Option<u64> {
        let last_end = self.ejected_until.load(Ordering::Acquire);
        if last_end > now {
            return None;
        }
        let quiet = now.saturating_sub(last_end) / policy.interval_ms.max(1);
        let previous = self.ejections.load(Ordering::Relaxed);
        let count = if last_end == 0 {
            1
        } else {
            previous
                .saturating_sub(u32::try_from(quiet).unwrap_or(u32::MAX))
                .saturating_add(1)
        };
        let ceiling = MAX_EJECTION_MS.max(policy.base_ejection_ms);
        let until = now
            + policy
                .base_ejection_ms
                .saturating_mul(u64::from(count))
                .min(ceiling);
        if self
            .ejected_until
            .compare_exchange(last_end, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        self.ejections.store(count, Ordering::Relaxed);
        for counter in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_local,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        Some(until)
    }
}

/// Whether one more of `endpoints` may be ejected while `ejected` are: at most
/// `max_percent` of them, but always one (Envoy's rule).
pub fn may_eject(max_percent: u32, ejected: usize, endpoints: usize) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= max_percent as usize * endpoints
}

/// Whether so few endpoints are left that all are used (Envoy's panic threshold).
pub fn panic(min_health_percent: u32, healthy: usize, endpoints: usize) -> bool {
    healthy * 100 < min_health_percent as usize * endpoints
}

/// A destination's record: until when any of its endpoints is ejected, so the request path
/// looks at endpoints one by one only then.
#[derive(Debug, Default)]
pub struct DestinationHealth {
    pub ejected_until: AtomicU64,
}

impl DestinationHealth {
    pub fn any_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn ejected(&self, until: u64) {
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(five: u32, gateway: u32, split: bool) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: five,
            consecutive_gateway: gateway,
            split_local: split,
            consecutive_local: 2,
            interval_ms: 1000,
            base_ejection_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }

    const LOCAL: Outcome = Outcome::Local { timeout: false };

    #[test]
    fn runs_that_eject() {
        use Outcome::Status;
        let cases: &[(&str, OutlierPolicy, &[Outcome], bool)] = &[
            (
                "three 5xx of three",
                policy(3, 0, false),
                &[Status(500), Status(503), Status(500)],
                true,
            ),
            (
                "a success breaks the run",
                policy(3, 0, false),
                &[Status(500), Status(200), Status(500), Status(500)],
                false,
            ),
            (
                "a 4xx is a success",
                policy(2, 0, false),
                &[Status(500), Status(404), Status(500)],
                false,
            ),
            (
                "local failures are 5xx unless split",
                policy(2, 0, false),
                &[LOCAL, Status(502)],
                true,
            ),
            (
                "split: local failures apart",
                policy(2, 0, true),
                &[LOCAL, Status(500)],
                false,
            ),
            (
                "split: their own run",
                policy(5, 0, true),
                &[LOCAL, LOCAL],
                true,
            ),
            (
                "split: a response breaks the local run",
                policy(5, 0, true),
                &[LOCAL, Status(500), LOCAL],
                false,
            ),
            (
                "gateway errors only",
                policy(0, 2, false),
                &[Status(502), Status(504)],
                true,
            ),
            (
                "a 500 breaks a gateway run",
                policy(0, 2, false),
                &[Status(502), Status(500), Status(503)],
                false,
            ),
            ("5xx off", policy(0, 0, false), &[Status(500); 10], false),
        ];
        for (what, policy, outcomes, want) in cases {
            let health = EndpointHealth::default();
            let ejected = outcomes.iter().map(|o| health.record(policy, *o)).last();
            assert_eq!(ejected, Some(*want), "{what}");
        }
    }

    #[test]
    fn ejections_lengthen_and_decay() {
        let policy = policy(1, 0, false);
        let health = EndpointHealth::default();
        let until = health.eject(&policy, 1_000);
        assert_eq!(until, Some(31_000));
        assert!(health.ejected(30_999) && !health.ejected(31_000));
        // While ejected, a second ejection (another worker's) does nothing.
        assert_eq!(health.eject(&policy, 20_000), None);
        // Ejected again at once: twice the base.
        assert_eq!(health.eject(&policy, 31_000), Some(91_000));
        // After 60 quiet intervals the count is back to nothing: the base again.
        assert_eq!(health.eject(&policy, 151_000), Some(181_000));
        // Capped at Envoy's 300 s.
        let mut now = 181_000;
        for _ in 0..20 {
            now = health.eject(&policy, now).unwrap_or(now);
        }
        assert_eq!(health.eject(&policy, now), Some(now + 300_000));
    }

    #[test]
    fn ejection_and_panic_limits() {
        // 10 %: one of three may go, never two; one of twenty, then a second.
        assert!(may_eject(10, 0, 3));
        assert!(!may_eject(10, 1, 3));
        assert!(may_eject(10, 1, 20));
        assert!(!may_eject(10, 2, 20));
        assert!(may_eject(100, 2, 3));
        assert!(!panic(0, 0, 3));
        assert!(panic(50, 1, 3));
        assert!(!panic(50, 2, 3));
    }
}
