//! Retries as Istio configures Envoy's: without `retries` on a route, Istio's default (2
//! retries on `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
//! with 503 retriable); `attempts: 0` turns them off; `retryOn` replaces the conditions,
//! its numbers being retriable status codes. A retry goes to another endpoint of the same
//! destination when there is one (Envoy's previous-hosts predicate), after a jittered
//! backoff (25 ms base, doubling, at most 250 ms), each try bounded by `perTryTimeout` and
//! all of them by the route's `timeout`.
//!
//! A request body is held in memory to be sent again when its length is known and at most
//! [`MAX_HELD_BODY`] (Envoy buffers bodies for retries too, up to its buffer limit); a
//! longer body, or one of unknown length, is streamed and its request sent once.
use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;

use super::{
    body::{Body, Counted},
    circuit::Circuit,
    metrics::UpstreamFailure,
    outlier::Outcome,
    pool::SendError,
    upstream::{Clients, Picked},
};
use crate::compile::plan::Retries;

/// When a request is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    connect_failure: bool,
    reset: bool,
    /// An HTTP/2 upstream refused the stream (`RST_STREAM` with `REFUSED_STREAM`): the
    /// request was not processed, so sending it again is safe.
    refused_stream: bool,
    five_xx: bool,
    gateway_error: bool,
    retriable_4xx: bool,
    /// `retriable-status-codes` with these codes.
    codes: Vec<u16>,
    /// gRPC statuses (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`) in a response's `grpc-status`.
    grpc: Vec<u32>,
    /// The backoff's base (`retries.backoff`, else Envoy's 25 ms); the cap is ten times it.
    backoff_base: Duration,
    /// A retry goes to an endpoint not tried yet where there is one
    /// (`retryIgnorePreviousHosts`, true unless set false).
    avoid_tried: bool,
}

/// Envoy's retry backoff base when `retries.backoff` is not set.
const DEFAULT_BACKOFF_MS: u64 = 25;

/// Istio's `retryOn` when a route names none.
const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

impl RetryPolicy {
    /// The policy of a route's `retries` (`None`: Istio's default).
    pub fn of(retries: Option<&Retries>) -> RetryPolicy {
        let (count, per_try_timeout, retry_on) = match retries {
            None => (2, None, None),
            Some(r) => (r.attempts, r.per_try_timeout_ms, r.retry_on.as_deref()),
        };
        let backoff_base = Duration::from_millis(
            retries
                .and_then(|r| r.backoff_ms)
                .unwrap_or(DEFAULT_BACKOFF_MS),
        );
        let avoid_tried = retries.is_none_or(|r| r.avoid_tried);
        let mut policy = RetryPolicy {
            retries: count,
            per_try_timeout: per_try_timeout.map(Duration::from_millis),
            connect_failure: false,
            reset: false,
            refused_stream: false,
            five_xx: false,
            gateway_error: false,
            retriable_4xx: false,
            codes: Vec::new(),
            grpc: Vec::new(),
            backoff_base,
            avoid_tried,
        };
        let on = retry_on.filter(|r| !r.is_empty());
        for condition in on.unwrap_or(ISTIO_DEFAULT_RETRY_ON).split(',') {
            let condition = condition.trim();
            if let Ok(code) = condition.parse::<u16>() {
                policy.codes.push(code);
                continue;
            }
            match condition {
                "connect-failure" => policy.connect_failure = true,
                "reset" | "reset-before-request" => policy.reset = true,
                "refused-stream" => policy.refused_stream = true,
                "5xx" => policy.five_xx = true,
                "gateway-error" => policy.gateway_error = true,
                "retriable-4xx" => policy.retriable_4xx = true,
                "cancelled" => policy.grpc.push(1),
                "deadline-exceeded" => policy.grpc.push(4),
                "resource-exhausted" => policy.grpc.push(8),
                "internal" => policy.grpc.push(13),
                "unavailable" => policy.grpc.push(14),
                // The others (e.g. `http3-post-connect-failure`) have no counterpart here.
                _ => {}
            }
        }
        // Istio's default makes 503 retriable; a `retryOn` of its own lists its codes.
        if on.is_none() {
            policy.codes.push(503);
        }
        policy
    }

    /// The longest wait before retry number `tries` (1 after the first try): Envoy's
    /// exponential backoff, the base doubling per retry up to ten times the base; the wait
    /// itself is drawn at random below it (full jitter).
    pub fn backoff_ceiling(&self, tries: u32) -> Duration {
        let doubled = self
            .backoff_base
            .saturating_mul(1u32 << tries.saturating_sub(1).min(16));
        doubled.min(self.backoff_base.saturating_mul(10))
    }

    /// Whether a response is tried again.
    pub fn on_response(&self, status: u16, headers: &HeaderMap) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && (502..=504).contains(&status))
            || (self.retriable_4xx && status == 409)
            || self.codes.contains(&status)
            || (!self.grpc.is_empty()
                && headers
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .is_some_and(|s| self.grpc.contains(&s)))
    }

    /// Whether a try that got no response is tried again.
    pub fn on_failure(&self, failure: &Failure) -> bool {
        let broad = self.five_xx || self.gateway_error;
        match failure {
            // The gateway's own configuration failed, not the endpoint: no use trying again.
            Failure::Send(SendError::Connect(e))
                if e.kind() == std::io::ErrorKind::InvalidInput =>
            {
                false
            }
            Failure::Send(SendError::Connect(_)) => self.connect_failure || broad,
            Failure::Send(SendError::Overflow) => false,
            Failure::Send(SendError::Upstream(e)) if refused(e) => {
                self.refused_stream || self.reset || broad
            }
            Failure::Send(_) => self.reset || broad,
            Failure::PerTryTimeout => self.reset || broad,
        }
    }
}

/// Whether an HTTP/2 upstream reset the stream with `REFUSED_STREAM`.
fn refused(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM)
}

/// Why a try got no response.
#[derive(Debug)]
pub enum Failure {
    Send(SendError),
    PerTryTimeout,
}

impl Failure {
    pub fn counted_as(&self) -> UpstreamFailure {
        match self {
            Failure::Send(SendError::Connect(_)) => UpstreamFailure::ConnectFailure,
            Failure::Send(SendError::Overflow) => UpstreamFailure::Overflow,
            Failure::Send(_) => UpstreamFailure::Reset,
            Failure::PerTryTimeout => UpstreamFailure::Timeout,
        }
    }
}

/// The largest request body held to be sent again.
pub const MAX_HELD_BODY: u64 = 64 * 1024;

/// What a request that can be sent again is made of.
pub struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    /// `request` ready to be sent, and what to send again (a retry, a mirror's copy) when
    /// `wanted`: its head and, when it has one of at most [`MAX_HELD_BODY`] bytes of known
    /// length, its body, received whole first. `Err` when the client's body failed on the
    /// way.
    pub async fn prepare(
        request: Request<Counted>,
        wanted: bool,
    ) -> Result<(Request<Counted>, Option<Template>), hyper::Error> {
        if !wanted {
            return Ok((request, None));
        }
        let empty = request.body().is_end_stream();
        let small = request
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_HELD_BODY);
        if !empty && !small {
            return Ok((request, None));
        }
        let (parts, body) = request.into_parts();
        let body = if empty {
            Bytes::new()
        } else {
            body.collect().await?.to_bytes()
        };
        let template = Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        Ok((
            Request::from_parts(parts, Counted::held(body)),
            Some(template),
        ))
    }

    pub fn request(&self) -> Request<Counted> {
        let mut request = Request::new(Counted::held(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The outcome of the last try, the endpoint it went to, and how many tries there were.
pub struct Exchanged {
    pub result: Result<Response<Body>, Failure>,
    pub endpoint: SocketAddr,
    pub tries: u32,
}

/// Sends `request` to `first`'s endpoint, and again while the policy says so (a `template`
/// given), each try counted on the destination.
pub async fn exchange(
    request: Request<Counted>,
    template: Option<Template>,
    first: Picked<'_>,
    policy: &RetryPolicy,
    clients: &Clients,
) -> Exchanged {
    let destination = first.destination;
    let metrics = &destination.metrics;
    // Envoy's max_requests: over it the request is not sent at all.
    let circuit = destination.circuit.as_deref();
    let admitted = match destination.circuit.as_ref().map(Circuit::request) {
        Some(None) => {
            metrics.failed(UpstreamFailure::Overflow);
            return Exchanged {
                result: Err(Failure::Send(SendError::Overflow)),
                endpoint: first.endpoint.address,
                tries: 1,
            };
        }
        admitted => admitted,
    };
    // The retry in progress holds its place under maxRetries until the next try ends.
    let mut _retrying = None;
    let mut picked = first;
    let mut this = request;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let endpoint = picked.endpoint.address;
        tried.push(endpoint);
        let sent = clients.send(destination, picked.endpoint, this);
        let result = match policy.per_try_timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(result) => result.map_err(Failure::Send),
                Err(_) => Err(Failure::PerTryTimeout),
            },
            None => sent.await.map_err(Failure::Send),
        };
        let tried_endpoint = picked.endpoint;
        drop(picked);
        match &result {
            Ok(response) => {
                let status = response.status().as_u16();
                metrics.response(status);
                destination.report(tried_endpoint, Outcome::Status(status));
            }
            Err(Failure::Send(SendError::Overflow)) => metrics.failed(UpstreamFailure::Overflow),
            // Not the endpoint's doing (a TLS origination that could not be set up).
            Err(Failure::Send(SendError::Connect(e)))
                if e.kind() == std::io::ErrorKind::InvalidInput =>
            {
                metrics.failed(UpstreamFailure::ConnectFailure);
            }
            Err(failure) => {
                metrics.failed(failure.counted_as());
                let timeout = matches!(failure, Failure::PerTryTimeout);
                destination.report(tried_endpoint, Outcome::Local { timeout });
            }
        }
        let tries = tried.len() as u32;
        let again = tries <= policy.retries
            && match &result {
                Ok(response) => policy.on_response(response.status().as_u16(), response.headers()),
                Err(failure) => policy.on_failure(failure),
            };
        // Envoy's max_retries or retry budget: a retry over it is not made. The retry
        // just tried is over, so its place is given back before the next is asked for.
        _retrying = None;
        _retrying = match circuit {
            Some(c) if again => c.retry(),
            _ => None,
        };
        if again && circuit.is_some() && _retrying.is_none() {
            metrics.retry_overflowed();
        }
        let again = again && (circuit.is_none() || _retrying.is_some());
        let next = match &template {
            Some(template) if again => destination
                .retry_pick(if policy.avoid_tried { &tried } else { &[] })
                .map(|next| (next, template.request())),
            _ => None,
        };
        let Some((next, request)) = next else {
            // The request counts as in progress until its response has ended.
            let result = match (result, admitted) {
                (Ok(response), Some(Some(admitted))) => Ok(response.map(|body| {
                    http_body_util::BodyExt::boxed(super::body::Holding::new(body, admitted))
                })),
                (result, _) => result,
            };
            return Exchanged {
                result,
                endpoint,
                tries,
            };
        };
        metrics.retried();
        let ceiling = policy.backoff_ceiling(tries).as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ceiling))).await;
        picked = next;
        this = request;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(attempts: u32, retry_on: Option<&str>) -> Retries {
        Retries {
            attempts,
            per_try_timeout_ms: None,
            retry_on: retry_on.map(str::to_owned),
            backoff_ms: None,
            avoid_tried: true,
        }
    }

    #[test]
    fn backoff_doubles_up_to_ten_times_its_base() {
        let ms = |policy: &RetryPolicy, tries: u32| policy.backoff_ceiling(tries).as_millis();
        let default = RetryPolicy::of(None);
        assert_eq!(
            (1..=6).map(|t| ms(&default, t)).collect::<Vec<_>>(),
            [25, 50, 100, 200, 250, 250]
        );
        let set = RetryPolicy::of(Some(&Retries {
            backoff_ms: Some(100),
            ..retries(5, None)
        }));
        assert_eq!(
            (1..=6).map(|t| ms(&set, t)).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1000, 1000]
        );
        assert!(default.avoid_tried);
        let again = RetryPolicy::of(Some(&Retries {
            avoid_tried: false,
            ..retries(2, None)
        }));
        assert!(!again.avoid_tried);
    }

    #[test]
    fn policies_as_istio_sets_them() {
        let none = HeaderMap::new();
        let mut grpc_unavailable = HeaderMap::new();
        grpc_unavailable.insert("grpc-status", http::HeaderValue::from_static("14"));
        let refused = Failure::Send(SendError::Connect(std::io::Error::other("refused")));
        let reset = Failure::PerTryTimeout;
        // (policy, retries, on 503, on 500, on 502, on grpc unavailable, on connect failure, on reset)
        let cases = [
            (
                RetryPolicy::of(None),
                2,
                true,
                false,
                false,
                true,
                true,
                false,
            ),
            (
                RetryPolicy::of(Some(&retries(0, None))),
                0,
                true,
                false,
                false,
                true,
                true,
                false,
            ),
            (
                RetryPolicy::of(Some(&retries(3, None))),
                3,
                true,
                false,
                false,
                true,
                true,
                false,
            ),
            (
                RetryPolicy::of(Some(&retries(3, Some("5xx")))),
                3,
                true,
                true,
                true,
                false,
                true,
                true,
            ),
            (
                RetryPolicy::of(Some(&retries(1, Some("gateway-error")))),
                1,
                true,
                false,
                true,
                false,
                true,
                true,
            ),
            (
                RetryPolicy::of(Some(&retries(1, Some("reset,502")))),
                1,
                false,
                false,
                true,
                false,
                false,
                true,
            ),
            (
                RetryPolicy::of(Some(&retries(1, Some("connect-failure")))),
                1,
                false,
                false,
                false,
                false,
                true,
                false,
            ),
        ];
        for (i, (policy, count, r503, r500, r502, grpc, connect, on_reset)) in
            cases.into_iter().enumerate()
        {
            assert_eq!(policy.retries, count, "case {i}");
            assert_eq!(policy.on_response(503, &none), r503, "case {i}: 503");
            assert_eq!(policy.on_response(500, &none), r500, "case {i}: 500");
            assert_eq!(policy.on_response(502, &none), r502, "case {i}: 502");
            assert_eq!(
                policy.on_response(200, &grpc_unavailable),
                grpc,
                "case {i}: grpc"
            );
            assert_eq!(policy.on_failure(&refused), connect, "case {i}: connect");
            assert_eq!(policy.on_failure(&reset), on_reset, "case {i}: reset");
            assert!(!policy.on_response(200, &none), "case {i}: 200");
        }
    }
}
