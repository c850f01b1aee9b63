//! DestinationRule `connectionPool` as Envoy's circuit breakers: per destination, over
//! every worker, counts of requests in progress (`http2MaxRequests`), retries in progress
//! (`maxRetries`), upstream HTTP/1.1 connections (`tcp.maxConnections`) and requests waiting
//! for one (`http1MaxPendingRequests`). A request past a limit is not queued: it is answered
//! 503 with `x-envoy-overloaded` (`UO`), a retry past one is not made.
use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compile::plan::PoolLimits;

#[derive(Debug)]
pub struct Circuit {
    pub limits: PoolLimits,
    connections: Arc<Semaphore>,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// A request's place under `http2MaxRequests`, held until its response body has ended.
#[derive(Debug)]
pub struct Admitted(Arc<Circuit>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place under one of the limits, given back when dropped.
#[derive(Debug)]
pub struct Held<'a>(&'a AtomicU32);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn enter(counter: &AtomicU32, max: u32) -> Option<Held<'_>> {
    if counter.fetch_add(1, Ordering::Relaxed) >= max {
        counter.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Held(counter))
}

impl Circuit {
    pub fn new(limits: PoolLimits) -> Circuit {
        let permits = (limits.max_connections as usize).min(Semaphore::MAX_PERMITS);
        Circuit {
            limits,
            connections: Arc::new(Semaphore::new(permits)),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        }
    }

    /// A request may go upstream; it counts until the returned place is dropped.
    pub fn request(self: &Arc<Self>) -> Option<Admitted> {
        let held = enter(&self.requests, self.limits.max_requests)?;
        std::mem::forget(held);
        Some(Admitted(self.clone()))
    }

    /// A retry may be made: under `maxRetries`, or with a `retryBudget` (which replaces
    /// it, as in Envoy) while retries in progress stay within the budget's share of the
    /// requests in progress, or its minimum.
    pub fn retry(&self) -> Option<Held<'_>> {
        let max = match self.limits.retry_budget {
            None => self.limits.max_retries,
            Some(budget) => {
                let requests = u64::from(self.requests.load(Ordering::Relaxed));
                let share = requests * u64::from(budget.basis_points) / 10_000;
                u32::try_from(share)
                    .unwrap_or(u32::MAX)
                    .max(budget.min_retry_concurrency)
            }
        };
        enter(&self.retries, max)
    }

    /// A request may wait for a connection.
    pub fn pending(&self) -> Option<Held<'_>> {
        enter(&self.pending, self.limits.max_pending)
    }

    /// A new upstream connection, if one may be opened now; it holds its place until it
    /// closes.
    pub fn connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A new upstream connection, once one may be opened.
    pub async fn connection_freed(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32, requests: u32, retries: u32) -> PoolLimits {
        PoolLimits {
            max_connections: connections,
            max_pending: pending,
            max_requests: requests,
            max_retries: retries,
            ..PoolLimits::unlimited()
        }
    }

    #[test]
    fn limits_hold_and_give_back() {
        let circuit = Arc::new(Circuit::new(limits(1, 1, 2, 0)));
        let (a, b) = (circuit.request(), circuit.request());
        assert!(a.is_some() && b.is_some());
        assert!(circuit.request().is_none(), "a third request over 2");
        drop(a);
        assert!(circuit.request().is_some(), "the place was given back");
        assert!(circuit.retry().is_none(), "maxRetries 0: no retry");
        let connection = circuit.connection();
        assert!(connection.is_some());
        assert!(circuit.connection().is_none(), "a second connection over 1");
        let waiting = circuit.pending();
        assert!(waiting.is_some() && circuit.pending().is_none());
        drop(connection);
        assert!(circuit.connection().is_some());
        let unlimited = Arc::new(Circuit::new(limits(u32::MAX, u32::MAX, u32::MAX, u32::MAX)));
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.request()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn a_retry_budget_follows_the_requests_in_progress() {
        let budget = Arc::new(Circuit::new(PoolLimits {
            retry_budget: Some(crate::compile::plan::RetryBudgetLimit {
                basis_points: 2000,
                min_retry_concurrency: 2,
            }),
            ..limits(u32::MAX, u32::MAX, u32::MAX, 0)
        }));
        // Few requests: the minimum (maxRetries 0 does not apply under a budget).
        let requests: Vec<_> = (0..5).filter_map(|_| budget.request()).collect();
        let retries: Vec<_> = (0..10).filter_map(|_| budget.retry()).collect();
        assert_eq!(retries.len(), 2);
        drop(retries);
        // 50 in progress: 20 % of them.
        let more: Vec<_> = (0..45).filter_map(|_| budget.request()).collect();
        assert_eq!(requests.len() + more.len(), 50);
        let retries: Vec<_> = (0..20).filter_map(|_| budget.retry()).collect();
        assert_eq!(retries.len(), 10);
    }
}
