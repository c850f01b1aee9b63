//! An HTTP test backend: answers every request with its id and what it received (method,
//! path with query, and every header, one per line), so tests can see rewrites and header
//! operations as the upstream saw them. `GET /delay/<ms>` answers after that long,
//! `/status/<code>` with that status. Its response headers say which backend answered
//! (`x-backend`), over which protocol (`x-backend-protocol`) and for which authority
//! (`x-backend-authority`: HTTP/2's `:authority` or HTTP/1.1's Host), and how many body
//! bytes it read (`x-backend-body-bytes`: it reads the whole body before answering).
//! `/delay/<ms>/status/<code>` does both; either may follow a prefix of the route's.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::netns::NetNs;

/// Requests whose authority a backend remembers.
pub const SEEN: usize = 1000;

pub struct HttpBackend {
    pub addr: SocketAddr,
    pub id: String,
    requests: Arc<AtomicUsize>,
    /// The authority and body length of each request answered, the first [`SEEN`] of them.
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Serves HTTP/1.1 and h2c on `addr` in `ns`; returns once bound.
    pub fn start(ns: &NetNs, addr: SocketAddr, id: &str) -> HttpBackend {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn({
            let (stop, requests, id) = (stop.clone(), requests.clone(), id.to_owned());
            let seen = seen.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                    let _ = bound_tx.send(());
                    while !stop.load(Ordering::Acquire) {
                        let Ok(Ok((stream, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await
                        else {
                            continue;
                        };
                        let (requests, id) = (requests.clone(), id.clone());
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |request: Request<Incoming>| {
                                requests.fetch_add(1, Ordering::Relaxed);
                                let authority = request
                                    .uri()
                                    .authority()
                                    .map(|a| a.to_string())
                                    .or_else(|| {
                                        request
                                            .headers()
                                            .get(hyper::header::HOST)
                                            .and_then(|h| h.to_str().ok())
                                            .map(str::to_owned)
                                    })
                                    .unwrap_or_default();
                                let (id, seen) = (id.clone(), seen.clone());
                                async move {
                                    let response = answer(&id, request).await;
                                    let body = response
                                        .headers()
                                        .get("x-backend-body-bytes")
                                        .and_then(|v| v.to_str().ok())
                                        .and_then(|v| v.parse().ok())
                                        .unwrap_or(0);
                                    let mut list = seen.lock().unwrap_or_else(|e| e.into_inner());
                                    if list.len() < SEEN {
                                        list.push((authority, body));
                                    }
                                    drop(list);
                                    Ok::<_, Infallible>(response)
                                }
                            });
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                        });
                    }
                });
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{addr} did not bind: {e}"));
        HttpBackend {
            addr,
            id: id.to_owned(),
            requests,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// The authority (`:authority` or `Host`) and body length of each request answered so
    /// far, the first [`SEEN`].
    pub fn seen(&self) -> Vec<(String, usize)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(id: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // The body is read whole, as a server does before answering (bounded by the tests).
    let (request, incoming) = request.into_parts();
    let received = http_body_util::BodyExt::collect(incoming)
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let path = request.uri.path().to_owned();
    let mut status = 200;
    // `/delay/<ms>`, `/status/<code>`, or both: `/delay/<ms>/status/<code>`, after any
    // prefix (`/ratings/delay/…`).
    if let Some(ms) = path
        .find("/delay/")
        .and_then(|at| path[at + "/delay/".len()..].split('/').next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
    }
    if let Some(code) = path
        .find("/status/")
        .and_then(|at| path[at + "/status/".len()..].parse::<u16>().ok())
    {
        status = code;
    }
    let mut body = format!(
        "{id}\n{} {}\n",
        request.method,
        request.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    for (name, value) in &request.headers {
        body += &format!("{name}: {}\n", value.to_str().unwrap_or("?"));
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(id) {
        response.headers_mut().insert("x-backend", value);
    }
    response.headers_mut().insert(
        "x-backend-body-bytes",
        hyper::header::HeaderValue::from(received),
    );
    // The authority as the request carried it: HTTP/2's `:authority`, HTTP/1.1's Host.
    let authority = request
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(&authority) {
        response.headers_mut().insert("x-backend-authority", value);
    }
    let protocol = format!("{:?}", request.version);
    if let Ok(value) = hyper::header::HeaderValue::from_str(&protocol) {
        response.headers_mut().insert("x-backend-protocol", value);
    }
    response
}

/// What curl got: the first response's status line parts, headers (lower-case names) and
/// everything after its head.
#[derive(Debug)]
pub struct Got {
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -sS -i --max-time 10 <args>` in `ns`; an error (curl's own message) when no
/// response came.
pub fn curl(ns: &NetNs, args: &[&str]) -> Result<Got, String> {
    let mut all = vec!["-sS", "-i", "--max-time", "10"];
    all.extend(args);
    let out = ns
        .command("curl")
        .args(&all)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let mut status_line = lines.next().unwrap_or_default().split_whitespace();
    let version = status_line.next().unwrap_or_default().to_owned();
    let Some(status) = status_line.next().and_then(|s| s.parse().ok()) else {
        return Err(format!(
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            text
        ));
    };
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Ok(Got {
        version,
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `count` requests `GET <path>` with `headers`, one after another on a kept-alive
/// HTTP/1.1 connection from `ns` to `addr` (a new one when the server closes it); the
/// status of each. Bounded: 10 s per response.
pub fn statuses_kept_alive(
    ns: &NetNs,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> Vec<u16> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    ns.run(move || {
        let connect = || {
            let stream = std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{e}"));
            BufReader::new(stream)
        };
        let mut reader = connect();
        let mut statuses = Vec::with_capacity(count);
        while statuses.len() < count {
            reader
                .get_mut()
                .write_all(request.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                reader = connect(); // closed between requests: again on a new one
                continue;
            }
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("status line {line:?}"));
            let (mut length, mut chunked, mut close) = (0usize, false, false);
            loop {
                line.clear();
                reader
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("{e}"));
                let header = line.trim_end().to_ascii_lowercase();
                if header.is_empty() {
                    break;
                }
                if let Some(v) = header.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                chunked |= header == "transfer-encoding: chunked";
                close |= header == "connection: close";
            }
            if chunked {
                loop {
                    line.clear();
                    reader
                        .read_line(&mut line)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0u8; size + 2];
                    reader
                        .read_exact(&mut chunk)
                        .unwrap_or_else(|e| panic!("{e}"));
                    if size == 0 {
                        break;
                    }
                }
            } else {
                let mut body = vec![0u8; length];
                reader
                    .read_exact(&mut body)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            statuses.push(status);
            if close {
                reader = connect();
            }
        }
        statuses
    })
}

/// An HTTP/2 (h2c) upstream that resets the first `refuse` streams it is sent with
/// `REFUSED_STREAM` and answers the others 200 `ok`; counts the streams it saw.
pub struct RefusingH2 {
    streams: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RefusingH2 {
    pub fn start(ns: &NetNs, addr: SocketAddr, refuse: usize) -> RefusingH2 {
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(AtomicUsize::new(0));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn({
            let (stop, streams) = (stop.clone(), streams.clone());
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                    let _ = bound_tx.send(());
                    while !stop.load(Ordering::Acquire) {
                        let Ok(Ok((socket, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await
                        else {
                            continue;
                        };
                        let streams = streams.clone();
                        tokio::spawn(async move {
                            let Ok(mut connection) = h2::server::handshake(socket).await else {
                                return;
                            };
                            while let Some(Ok((_, mut respond))) = connection.accept().await {
                                if streams.fetch_add(1, Ordering::Relaxed) < refuse {
                                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                                    continue;
                                }
                                let response = http::Response::new(());
                                if let Ok(mut body) = respond.send_response(response, false) {
                                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                                }
                            }
                        });
                    }
                });
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{addr} did not bind: {e}"));
        RefusingH2 {
            streams,
            stop,
            thread: Some(thread),
        }
    }

    /// Streams sent to it so far (refused ones too).
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

impl Drop for RefusingH2 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
