//! One request: its virtual host and route, and the answer Envoy would give for Istio: a
//! redirect, a direct response, or the request forwarded to a destination chosen by weight
//! and load balancer, hop-by-hop headers dropped and `x-forwarded-*`/`x-request-id` added,
//! bodies streamed both ways; upgrades (WebSocket) and CONNECT tunnelled. No route is a 404; no endpoint 503 "no healthy upstream"; a
//! failed connect 503; a timeout 504.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::PathAndQuery,
};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;

use super::{
    body::{Body, Counted},
    metrics::{UpstreamFailure, UpstreamMetrics},
    mirror,
    pool::SendError,
    retry::{Exchanged, Failure, Template, exchange},
    table::{CompiledRoute, HttpTable, RequestMatch, RequestView},
    upstream::{Clients, HashInput},
};
use crate::{
    compile::plan::{AbortWith, HttpAction},
    config::model::{HeaderOperations, HttpRedirect},
};

/// A response made here, as Envoy makes its own (plain text).
pub fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// How a request was served, beyond its response.
#[derive(Default)]
pub struct Outcome<'l> {
    /// The route that took it.
    pub route: Option<&'l CompiledRoute>,
    /// The endpoint it was forwarded to.
    pub upstream: Option<SocketAddr>,
    /// Envoy's response flag: `NR` no route, `UH` no healthy upstream, `UF` upstream
    /// connection failure, `UC` upstream connection termination, `UT` upstream request
    /// timeout, `FI` fault injected (an abort), `DI` delay injected; `-` none.
    pub flags: &'static str,
}

impl<'l> Outcome<'l> {
    fn flagged(flags: &'static str) -> Outcome<'l> {
        Outcome {
            flags,
            ..Outcome::default()
        }
    }
}

/// The response to `request`, and how it was served.
pub async fn handle<'l>(
    mut request: Request<Counted>,
    table: &'l HttpTable,
    listener_port: u16,
    peer: &Peer,
    scheme: &'static str,
    clients: &Arc<Clients>,
) -> (Response<Body>, Outcome<'l>) {
    // Envoy's SANITIZE_SET (Istio's gateway default): a client's own header never passes,
    // a verified client certificate sets it, before routes match on it.
    let headers = request.headers_mut();
    headers.remove(X_FORWARDED_CLIENT_CERT);
    if let Some(identity) = &peer.client_cert {
        headers.insert(X_FORWARDED_CLIENT_CERT, identity.clone());
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let Some(host) = table.host(&authority) else {
        return (local(StatusCode::NOT_FOUND, ""), Outcome::flagged("NR"));
    };
    if host.https_redirect && scheme == "http" {
        let location = format!(
            "https://{}{}",
            super::table::strip_port(&authority),
            request.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        return (
            redirect(StatusCode::MOVED_PERMANENTLY, &location),
            Outcome::flagged("-"),
        );
    }
    let view = RequestView {
        path: request.uri().path(),
        query: request.uri().query(),
        method: request.method().as_str(),
        scheme,
        authority: &authority,
        headers: request.headers(),
    };
    let Some((route, matched)) = host.route(&view) else {
        return (local(StatusCode::NOT_FOUND, ""), Outcome::flagged("NR"));
    };
    let mut outcome = Outcome {
        route: Some(route),
        upstream: None,
        flags: "-",
    };
    // CORS before faults, as Istio orders Envoy's filters.
    let mut cors_origin = None;
    if let Some(cors) = &route.route.cors {
        match cors_check(cors, route, request.method(), request.headers()) {
            CorsCheck::Answer(mut response) => {
                if let Some(ops) = &route.route.response_headers {
                    apply(ops, response.headers_mut());
                }
                return (response, outcome);
            }
            CorsCheck::Mark(origin) => cors_origin = Some(origin),
            CorsCheck::Pass => {}
        }
    }
    let mut delayed = false;
    if let Some(fault) = &route.route.fault {
        if let Some(delay) = &fault.delay
            && chosen(delay.percent)
        {
            tokio::time::sleep(std::time::Duration::from_millis(delay.fixed_ms)).await;
            route.metrics.delayed();
            delayed = true;
        }
        if let Some(abort) = &fault.abort
            && chosen(abort.percent)
        {
            route.metrics.aborted();
            let mut response = aborted(abort.with);
            if let Some(ops) = &route.route.response_headers {
                apply(ops, response.headers_mut());
            }
            outcome.flags = "FI";
            return (response, outcome);
        }
    }
    let mut response = match &route.route.action {
        HttpAction::Redirect(r) => redirect_to(r, &request, &authority, scheme, listener_port),
        HttpAction::DirectResponse { status, body } => {
            let mut response = Response::new(
                Full::new(Bytes::from(body.clone()))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *response.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response
        }
        HttpAction::Route { .. } => {
            let (response, upstream, flags) =
                forward(request, route, matched, &authority, peer, scheme, clients).await;
            outcome.upstream = upstream;
            outcome.flags = flags;
            response
        }
    };
    // Envoy's flag for an injected delay; an upstream failure's flag says more.
    if delayed && outcome.flags == "-" {
        outcome.flags = "DI";
    }
    if let (Some(origin), Some(cors)) = (cors_origin, &route.route.cors) {
        mark_cors(cors, origin, response.headers_mut());
    }
    if let Some(ops) = &route.route.response_headers {
        apply(ops, response.headers_mut());
    }
    (response, outcome)
}

/// What the CORS policy makes of a request.
enum CorsCheck {
    /// A preflight answered at the gateway.
    Answer(Response<Body>),
    /// From an allowed origin: its response gets the CORS headers.
    Mark(HeaderValue),
    /// No origin, or one not allowed: served as it is.
    Pass,
}

/// Envoy's CORS filter: a preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) from an allowed origin is answered 200 with what the
/// policy allows; from another origin it goes on, or with `unmatchedPreflights: IGNORE` is
/// answered 200 without CORS headers. Other requests from allowed origins are marked.
fn cors_check(
    cors: &crate::compile::plan::Cors,
    route: &CompiledRoute,
    method: &Method,
    headers: &HeaderMap,
) -> CorsCheck {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return CorsCheck::Pass;
    };
    let allowed = origin
        .to_str()
        .is_ok_and(|o| route.cors_origins.iter().any(|m| m.matches(o)));
    let preflight = method == Method::OPTIONS
        && headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty());
    match (preflight, allowed) {
        (true, true) => {
            let mut response = local(StatusCode::OK, "");
            response.headers_mut().remove(header::CONTENT_TYPE);
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if cors.allow_credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            for (name, value) in [
                (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
            ] {
                if let Ok(value) = HeaderValue::from_str(value)
                    && !value.is_empty()
                {
                    headers.insert(name, value);
                }
            }
            if let Some(seconds) = cors.max_age_seconds {
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(seconds));
            }
            CorsCheck::Answer(response)
        }
        (true, false) if !cors.forward_unmatched_preflights => {
            let mut response = local(StatusCode::OK, "");
            response.headers_mut().remove(header::CONTENT_TYPE);
            CorsCheck::Answer(response)
        }
        (false, true) => CorsCheck::Mark(origin.clone()),
        _ => CorsCheck::Pass,
    }
}

/// The CORS headers of a response to an allowed origin.
fn mark_cors(cors: &crate::compile::plan::Cors, origin: HeaderValue, headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&cors.expose_headers)
        && !value.is_empty()
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
}

/// Whether a request falls in `percent` (0 to 100) of them.
fn chosen(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// The response of an injected abort: the status and Envoy's body, or for gRPC a
/// trailers-only response carrying the status code.
fn aborted(with: AbortWith) -> Response<Body> {
    match with {
        AbortWith::HttpStatus(status) => local(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "fault filter abort",
        ),
        AbortWith::GrpcStatus(code) => {
            let mut response = local(StatusCode::OK, "");
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            response
        }
    }
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = local(status, "");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// An Istio `HTTPRedirect`: each part replaced when given, the request's otherwise (the
/// query string kept), code 301 by default.
fn redirect_to<B>(
    r: &HttpRedirect,
    request: &Request<B>,
    authority: &str,
    scheme: &str,
    listener_port: u16,
) -> Response<Body> {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host = r
        .authority
        .as_deref()
        .unwrap_or_else(|| super::table::strip_port(authority));
    let request_port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => Some(p as u16),
        (None, Some("FROM_REQUEST_PORT")) => request_port.or(Some(listener_port)),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => None,
        // An authority that replaces the host drops the request's port.
        (None, _) if r.authority.is_some() => None,
        (None, _) => request_port,
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = port
        .filter(|p| *p != default_port)
        .map_or(String::new(), |p| format!(":{p}"));
    let path = r.uri.as_deref().unwrap_or_else(|| request.uri().path());
    let query = request
        .uri()
        .query()
        .filter(|_| !path.contains('?'))
        .map_or(String::new(), |q| format!("?{q}"));
    let status = r
        .redirect_code
        .and_then(|c| StatusCode::from_u16(c as u16).ok())
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    redirect(status, &format!("{scheme}://{host}{port}{path}{query}"))
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `connection: keep-alive`: one pass over the names
    // first, and the names `connection` lists parsed only when they are not the usual ones.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !["keep-alive", "close", "upgrade"]
                .iter()
                .any(|usual| n.eq_ignore_ascii_case(usual))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

fn apply(ops: &HeaderOperations, headers: &mut HeaderMap) {
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with
/// `Upgrade: <protocol>`), such as `websocket`.
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// After a `101 Switching Protocols`, the client's and the upstream's connections are
/// joined and bytes copied both ways until either side closes (WebSocket, as Envoy's
/// `upgrade_configs` that Istio's gateways enable).
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    peer: SocketAddr,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%peer, error = %e, "upgraded connection ended with an error");
        }
    });
}

/// The upstream's response (or the local one for its failure), the endpoint, and Envoy's
/// response flag.
async fn forward(
    mut request: Request<Counted>,
    route: &CompiledRoute,
    matched: Option<&RequestMatch>,
    authority: &str,
    peer: &Peer,
    scheme: &str,
    clients: &Arc<Clients>,
) -> (Response<Body>, Option<SocketAddr>, &'static str) {
    let hash_input = HashInput {
        headers: request.headers(),
        query: request.uri().query(),
        source: peer.address.ip(),
    };
    let picked = match route.destinations.pick(&hash_input) {
        Ok(picked) => picked,
        Err(destination) => {
            if let Some(d) = destination {
                d.metrics.failed(UpstreamFailure::NoHealthy);
            }
            let response = local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            return (response, None, "UH");
        }
    };
    let metrics = &picked.destination.metrics;
    let upstream = Some(picked.endpoint.address);
    let (first_destination, first_endpoint) = (picked.destination, picked.endpoint);
    if request.method() == Method::CONNECT {
        let (response, flags) =
            connect_tunnel(request, picked.endpoint.address, metrics, peer).await;
        return (response, upstream, flags);
    }
    let upgrade = upgrade_asked(request.headers())
        .map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let (mut parts, body) = request.into_parts();
    let authority_in_uri = parts.uri.authority().is_some();
    let path_and_query = match rewritten(route, matched, &parts.uri) {
        Ok(rewritten) => rewritten.or_else(|| parts.uri.path_and_query().cloned()),
        Err(()) => return (local(StatusCode::BAD_REQUEST, ""), upstream, "-"),
    };
    // Origin form; the HTTP/2 client adds the endpoint as the authority.
    parts.uri = Uri::from(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
    let http2 = picked.destination.http2;
    parts.version = if http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let headers = &mut parts.headers;
    // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
    let te_trailers = http2
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some((protocol, _)) = upgrade.as_ref().filter(|_| !http2) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    match route
        .route
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.as_deref())
    {
        Some(host) => {
            if let Ok(value) = HeaderValue::from_str(host) {
                headers.insert(header::HOST, value);
            }
        }
        // HTTP/2 (and an absolute-form request) carries the authority in the URI, which
        // wins over a Host header: HTTP/1.1 upstreams get it as Host.
        None if authority_in_uri || !headers.contains_key(header::HOST) => {
            if let Ok(value) = HeaderValue::from_str(authority) {
                headers.insert(header::HOST, value);
            }
        }
        None => {}
    }
    let forwarded_for = match headers.get(X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(previous) => {
            let mut value = Vec::with_capacity(previous.len() + 2 + peer.ip.len());
            value.extend_from_slice(previous);
            value.extend_from_slice(b", ");
            value.extend_from_slice(peer.ip.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(peer.ip.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    if !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id());
    }
    if let Some(ops) = &route.route.request_headers {
        apply(ops, headers);
    }
    let destination_ops = picked.destination.headers.as_ref();
    if let Some(ops) = destination_ops.and_then(|h| h.request.as_ref()) {
        apply(ops, headers);
    }
    let set_cookie = picked.set_cookie.clone();
    let request = Request::from_parts(parts, body);
    let upgrading = upgrade.is_some();
    let mirrors = if upgrading {
        Vec::new()
    } else {
        mirror::chosen(&route.mirrors)
    };
    let exchanged = async {
        // An upgrade is not sent twice; anything else as the retry policy says, and a copy
        // to the mirrors this request falls to.
        let (request, template) = if upgrading {
            (request, None)
        } else {
            let wanted = route.retry.retries > 0 || !mirrors.is_empty();
            match Template::prepare(request, wanted).await {
                Ok(prepared) => prepared,
                Err(_) => return None,
            }
        };
        if !mirrors.is_empty() {
            match &template {
                Some(template) => {
                    let timeout = route
                        .route
                        .timeout_ms
                        .filter(|ms| *ms > 0)
                        .map_or(mirror::MIRROR_TIMEOUT, Duration::from_millis);
                    mirror::send_copies(
                        template,
                        mirrors,
                        clients,
                        peer.address.ip(),
                        timeout,
                        &route.unmirrored,
                    );
                }
                None => {
                    route.unmirrored.inc();
                }
            }
        }
        let template = template.filter(|_| route.retry.retries > 0);
        Some(exchange(request, template, picked, &route.retry, clients).await)
    };
    let exchanged = match route.route.timeout_ms {
        Some(ms) if ms > 0 => {
            match tokio::time::timeout(Duration::from_millis(ms), exchanged).await {
                Ok(exchanged) => exchanged,
                Err(_) => {
                    metrics.failed(UpstreamFailure::Timeout);
                    // As Envoy, the route's timeout counts against the endpoint (the first
                    // tried: a later retry's endpoint is not known here).
                    first_destination.report(
                        first_endpoint,
                        super::outlier::Outcome::Local { timeout: true },
                    );
                    let response = local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
                    return (response, upstream, "UT");
                }
            }
        }
        _ => exchanged.await,
    };
    // The client's body broke off before it was all received (Envoy's `DC`).
    let Some(Exchanged {
        result,
        endpoint,
        tries,
    }) = exchanged
    else {
        return (local(StatusCode::BAD_REQUEST, ""), upstream, "DC");
    };
    let upstream = Some(endpoint);
    let retried = tries > 1;
    match result {
        Ok(mut response) => {
            // Still one the policy would retry: the retries ran out (Envoy's URX).
            let exhausted = retried
                && route
                    .retry
                    .on_response(response.status().as_u16(), response.headers());
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
            let (mut parts, body) = response.into_parts();
            let protocol = parts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            match (upgrade, upstream_upgrade, protocol) {
                (Some((_, client)), Some(upstream_io), Some(protocol)) => {
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    parts.headers.insert(header::UPGRADE, protocol);
                    tunnel(client, upstream_io, peer.address);
                }
                // A 101 nobody asked for cannot be relayed.
                (None, Some(_), _) | (_, Some(_), None) => {
                    let response = local(
                        StatusCode::BAD_GATEWAY,
                        "upstream switched protocols unasked",
                    );
                    return (response, upstream, "UPE");
                }
                _ => {}
            }
            if let Some(ops) = destination_ops.and_then(|h| h.response.as_ref()) {
                apply(ops, &mut parts.headers);
            }
            if let Some(cookie) = set_cookie {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            let flags = if exhausted { "URX" } else { "-" };
            (Response::from_parts(parts, body), upstream, flags)
        }
        Err(failure) => {
            let (status, text, flags) = match failure {
                Failure::Send(SendError::Overflow) => {
                    // Envoy's circuit breaker answer.
                    let mut response = local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    );
                    response
                        .headers_mut()
                        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                    return (response, upstream, if retried { "UO,URX" } else { "UO" });
                }
                Failure::Send(SendError::Connect(_)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                    if retried { "UF,URX" } else { "UF" },
                ),
                Failure::Send(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    if retried { "UC,URX" } else { "UC" },
                ),
                Failure::PerTryTimeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    if retried { "UT,URX" } else { "UT" },
                ),
            };
            (local(status, text), upstream, flags)
        }
    }
}

/// A `CONNECT` request ends here, as Envoy's `connect_config` ends it: the route's endpoint
/// is dialled, the client gets a 200, and from then on the bytes of both connections are
/// copied both ways (HTTP/1.1 CONNECT and HTTP/2's CONNECT stream alike). A failed dial is
/// a 503 (`UF`).
async fn connect_tunnel(
    mut request: Request<Counted>,
    endpoint: SocketAddr,
    metrics: &UpstreamMetrics,
    peer: &Peer,
) -> (Response<Body>, &'static str) {
    let client = hyper::upgrade::on(&mut request);
    let Ok(mut upstream) = crate::proxy::dial(endpoint).await else {
        metrics.failed(UpstreamFailure::ConnectFailure);
        let response = local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        );
        return (response, "UF");
    };
    metrics.response(200);
    let peer = peer.address;
    tokio::spawn(async move {
        let mut client = match client.await {
            Ok(client) => TokioIo::new(client),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "CONNECT did not complete");
                return;
            }
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%peer, error = %e, "CONNECT tunnel ended with an error");
        }
    });
    (
        Response::new(Empty::new().map_err(|never| match never {}).boxed()),
        "-",
    )
}

/// The path and query the upstream sees: `rewrite.uri` replacing the matched prefix, or
/// `rewrite.uriRegexRewrite` substituting every match in the path (the query kept), as
/// Envoy's `prefix_rewrite` and `regex_rewrite`. `Ok(None)`: unchanged; `Err`: the result
/// is not a valid path.
fn rewritten(
    route: &CompiledRoute,
    matched: Option<&RequestMatch>,
    uri: &Uri,
) -> Result<Option<PathAndQuery>, ()> {
    let path = uri.path();
    let new_path =
        if let Some(new_prefix) = route.route.rewrite.as_ref().and_then(|r| r.uri.as_deref()) {
            let prefix = matched.map_or(&path[..path.len().min(1)], |m| m.rewrite_prefix(path));
            format!("{new_prefix}{}", &path[prefix.len()..])
        } else if let Some((regex, replacement)) = &route.regex_rewrite {
            regex.replace_all(path, replacement.as_str()).into_owned()
        } else {
            return Ok(None);
        };
    let with_query = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    PathAndQuery::try_from(with_query).map(Some).map_err(|_| ())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client of a connection, its address also as a header value (made once).
pub struct Peer {
    pub address: SocketAddr,
    pub ip: HeaderValue,
    /// `x-forwarded-client-cert` for a client that showed a verified certificate.
    pub client_cert: Option<HeaderValue>,
}

impl Peer {
    pub fn new(address: SocketAddr, client_cert: Option<HeaderValue>) -> Peer {
        let ip = HeaderValue::from_str(&address.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            address,
            ip,
            client_cert,
        }
    }
}

/// A random version-4 UUID, as Envoy generates `x-request-id`.
pub fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut text = [b'-'; 36];
    let digits = (0..36).filter(|i| !matches!(i, 8 | 13 | 18 | 23));
    for (n, at) in digits.enumerate() {
        text[at] = HEX[((bits >> (124 - 4 * n)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = request_id();
            let id = id.to_str().unwrap_or_else(|e| panic!("{e}"));
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "version: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
            seen.insert(id.to_owned());
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
            ("host", "a.test"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept", "host"]);
    }
}
