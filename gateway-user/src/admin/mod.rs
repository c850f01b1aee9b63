//! The admin server, after Envoy's: `/ready`, `/healthz`, `/stats/prometheus`,
//! `/config_dump`, `/version`. Bound to loopback by default.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    daemon::state::{ServerState, SharedState},
    proxy::listeners::AcceptBackoff,
};

pub mod metrics;

/// A bound admin server; `shutdown` stops it.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (so a taken port fails startup at once) and serves in the background.
    pub async fn start(addr: SocketAddr, state: Arc<SharedState>) -> anyhow::Result<AdminServer> {
        AdminServer::start_with(addr, state, AdminLimits::DEFAULT).await
    }

    /// [`AdminServer::start`] with other limits.
    pub async fn start_with(
        addr: SocketAddr,
        state: Arc<SharedState>,
        limits: AdminLimits,
    ) -> anyhow::Result<AdminServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin server to {addr} (see --admin-addr)"))?;
        let local_addr = listener.local_addr()?;
        if !local_addr.ip().is_loopback() {
            tracing::warn!(
                %local_addr,
                "the admin server is reachable beyond this host: /config_dump shows the whole \
                 config and /stats/prometheus every counter; bind --admin-addr to loopback or \
                 protect the port"
            );
        }
        let registry = Arc::new(metrics::registry(state.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, state, registry, limits, stopped));
        tracing::info!(%local_addr, "admin server listening");
        Ok(AdminServer {
            local_addr,
            stop,
            task,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Bounds on the admin server's clients.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers; a kept-alive connection
    /// waiting for its next request is closed after this long too.
    pub header_timeout: std::time::Duration,
}

impl AdminLimits {
    pub const DEFAULT: AdminLimits = AdminLimits {
        max_connections: 64,
        header_timeout: std::time::Duration::from_secs(30),
    };
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<SharedState>,
    registry: Arc<Registry>,
    limits: AdminLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let address = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded(address);
                    stream
                }
                Err(e) => {
                    tokio::time::sleep(backoff.failed(address, &e)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: {} open", limits.max_connections);
            continue;
        };
        let (state, registry) = (state.clone(), registry.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = handle(&req, &state, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn handle(
    req: &Request<Incoming>,
    state: &SharedState,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints are read-only: use GET\n",
        );
    }
    match req.uri().path() {
        "/ready" => match state.state() {
            ServerState::Live => {
                let unserved = state.unserved();
                if unserved.is_empty() {
                    text(StatusCode::OK, "LIVE\n")
                } else {
                    // Envoy's states have no word for it: every listener must be served.
                    let mut body = String::from("NOT_SERVING\n");
                    for u in unserved {
                        body += &format!("{}: {}\n", u.address, u.reason);
                    }
                    text(StatusCode::SERVICE_UNAVAILABLE, &body)
                }
            }
            ServerState::Initializing => text(StatusCode::SERVICE_UNAVAILABLE, "INITIALIZING\n"),
            ServerState::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n"),
            ServerState::Failed => text(StatusCode::SERVICE_UNAVAILABLE, "FAILED\n"),
        },
        "/healthz" => match state.state() {
            ServerState::Failed => text(StatusCode::SERVICE_UNAVAILABLE, "FAILED\n"),
            _ => text(StatusCode::OK, "OK\n"),
        },
        "/stats/prometheus" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/config_dump" => json(&state.config_dump()),
        "/version" => json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "ebpf_object": crate::datapath::ebpf_object::embedded(),
        })),
        "/" => text(
            StatusCode::OK,
            "sluice admin\n  /ready\n  /healthz\n  /stats/prometheus\n  /config_dump\n  /version\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; GET / lists the endpoints\n",
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding JSON: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        daemon::state::{DatapathView, Serving, Unserved},
        datapath::DatapathStatus,
    };

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let url = format!("http://{addr}{path}");
        let response = match ureq::get(&url).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let status = response.status();
        let content_type = response.content_type().to_owned();
        let body = response.into_string().unwrap_or_else(|e| panic!("{e}"));
        (status, content_type, body)
    }

    async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String, String) {
        tokio::task::spawn_blocking(move || get(addr, path))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn endpoints_follow_the_server_lifecycle() {
        let state = SharedState::new();
        let admin = AdminServer::start(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            state.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let addr = admin.local_addr;

        assert_eq!(
            get_async(addr, "/ready").await.0,
            503,
            "ready before the datapath is up"
        );
        assert_eq!(get_async(addr, "/healthz").await.0, 200);

        state.set_datapath(DatapathView {
            status: DatapathStatus::Userspace {
                reason: "test".into(),
            },
            counters: None,
        });
        state.set_state(ServerState::Live);
        let (status, _, body) = get_async(addr, "/ready").await;
        assert_eq!((status, body.as_str()), (200, "LIVE\n"));
        state.set_serving(Serving {
            unserved: vec![Unserved {
                address: "0.0.0.0:443".parse().unwrap_or_else(|e| panic!("{e}")),
                reason: "address in use".into(),
            }],
            ..Serving::default()
        });
        let (status, _, body) = get_async(addr, "/ready").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "NOT_SERVING\n0.0.0.0:443: address in use\n")
        );
        state.set_serving(Serving::default());

        let (status, content_type, metrics) = get_async(addr, "/stats/prometheus").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(
            metrics.contains("sluice_datapath{mode=\"userspace\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("sluice_build_info{version="), "{metrics}");
        assert!(metrics.ends_with("# EOF\n"), "{metrics}");

        let (status, _, dump) = get_async(addr, "/config_dump").await;
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dump["state"], "LIVE");
        assert_eq!(dump["datapath"]["mode"], "userspace");
        assert_eq!(dump["datapath"]["reason"], "test");

        let (_, _, version) = get_async(addr, "/version").await;
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
        assert_eq!(get_async(addr, "/nope").await.0, 404);

        state.set_state(ServerState::Draining);
        let (status, _, body) = get_async(addr, "/ready").await;
        assert_eq!((status, body.as_str()), (503, "DRAINING\n"));
        assert_eq!(get_async(addr, "/healthz").await.0, 200);
        state.set_state(ServerState::Failed);
        let (status, _, body) = get_async(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (503, "FAILED\n"));
        assert_eq!(get_async(addr, "/ready").await.0, 503);
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn a_taken_port_fails_with_the_flag_to_change() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = held.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let err = AdminServer::start(addr, SharedState::new()).await.err();
        let err = format!("{:#}", err.unwrap_or_else(|| panic!("bound a taken port")));
        assert!(err.contains("--admin-addr"), "{err}");
    }

    #[tokio::test]
    async fn clients_are_bounded_in_number_and_in_time() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let limits = AdminLimits {
            max_connections: 2,
            header_timeout: std::time::Duration::from_millis(300),
        };
        let loopback = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let admin = AdminServer::start_with(loopback, SharedState::new(), limits)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let connect = || tokio::net::TcpStream::connect(admin.local_addr);
        // Two clients holding half a request take both slots; a third is closed at once.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = connect().await.unwrap_or_else(|e| panic!("{e}"));
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            held.push(stream);
        }
        let mut third = connect().await.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            third.read_to_end(&mut buf),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // The half requests are cut at the header timeout, which frees the slots.
        for mut stream in held {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_to_end(&mut buf),
            )
            .await;
            assert!(read.is_ok(), "a slow client outlived the header timeout");
        }
        assert_eq!(get_async(admin.local_addr, "/healthz").await.0, 200);
        admin.shutdown().await;
    }
}
