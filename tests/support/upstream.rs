//! A real upstream server (HTTP/1.1, or HTTP/1.1 and HTTP/2 over TLS) that
//! records every request reaching it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::task::JoinHandle;

use super::pki::{Pki, common_name};
use super::{Body, Sha256, bind_local, full, pattern_body};

/// One request as received by the [`Upstream`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// e.g. `"GET"`.
    pub method: String,
    /// Request target as received, e.g. `"/api/x?a=1"`.
    pub path_and_query: String,
    /// `(lowercase name, value)` pairs. Names are in order of first
    /// appearance; repeated headers are all kept, adjacent to each other.
    /// Non-UTF-8 values are converted lossily.
    pub headers: Vec<(String, String)>,
    /// Number of body bytes received (before any error cut the body short).
    pub body_len: u64,
    /// Lowercase hex SHA-256 of the body bytes received.
    pub body_sha256: String,
    /// Subject CN of the client certificate presented on the connection
    /// (only over TLS, see [`Upstream::start_tls`]); `None` without one.
    pub client_cert_cn: Option<String>,
    /// The gateway's end of the connection it came on (plain HTTP only):
    /// tells which requests shared an upstream connection.
    pub peer: Option<SocketAddr>,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Is header `name` present at all?
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

struct State {
    requests: Vec<Recorded>,
    delay: Duration,
    extra_headers: Vec<(String, String)>,
}

/// A recording upstream on `127.0.0.1:0`. Stopped when dropped.
///
/// Every request body is consumed as a stream and hashed chunk by chunk, and
/// the request is recorded once its body has ended (or failed), *before* the
/// response (and any delay). Responses:
///
/// * `GET` (or `HEAD`) `.../download/{n}` → `200`, `content-length: n`, body = the first `n`
///   pattern bytes streamed in 64 KiB chunks (SHA-256 = [`download_sha256`]`(n)`).
/// * `.../status/{code}` (any method) → that status with the default JSON body.
/// * anything else → `200`, `content-type: application/json`,
///   body `{"path": <path>, "method": <method>}`.
///
/// Every response carries `x-upstream: yes`, `x-body-sha256: <hex of request
/// body>`, `x-body-len: <request body length>`, plus any headers set with
/// [`Upstream::set_response_headers`].
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Start an upstream that answers immediately.
    pub async fn start() -> Upstream {
        Upstream::start_with_delay(Duration::ZERO).await
    }

    /// Start an upstream that waits `delay` before every response (after the
    /// request body has been read and recorded).
    pub async fn start_with_delay(delay: Duration) -> Upstream {
        Upstream::serve(bind_local().await, delay)
    }

    /// Start an upstream on `addr`, e.g. where a stopped one was.
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Upstream::serve(listener, Duration::ZERO)
    }

    /// Stop serving and close every open connection, as a crashed upstream
    /// would; the port is free once this returns.
    pub async fn stop_and_wait(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    fn serve(listener: tokio::net::TcpListener, delay: Duration) -> Upstream {
        let addr = listener.local_addr().expect("upstream local_addr");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            delay,
            extra_headers: Vec::new(),
        }));
        let st = state.clone();
        let task = super::spawn_server(listener, move |req| {
            let st = st.clone();
            async move { handle(st, None, req).await }
        });
        Upstream {
            addr,
            tls: false,
            state,
            task,
        }
    }

    /// Start an upstream serving the same responses over TLS with the
    /// server certificate `pki` has on disk now (read once, here: a later
    /// [`Pki::reissue_server`] does not affect it). ALPN offers `h2` and
    /// `http/1.1`. Client certificates are verified against the test CA; with
    /// `require_client_cert` a handshake without one is refused, otherwise
    /// one is optional (see [`Pki::server_config`]). A refused or failed
    /// handshake is logged and records nothing. [`Upstream::url`] is then
    /// `https://localhost:PORT`.
    pub async fn start_tls(pki: &Pki, require_client_cert: bool) -> Upstream {
        let listener = bind_local().await;
        let addr = listener.local_addr().expect("upstream local_addr");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            delay: Duration::ZERO,
            extra_headers: Vec::new(),
        }));
        let st = state.clone();
        let config = pki.server_config(require_client_cert);
        let task = super::spawn_tls_server(listener, config, move |peer, req| {
            let st = st.clone();
            let cn = peer.client_cert.as_deref().and_then(common_name);
            async move { handle(st, cn, req).await }
        });
        Upstream {
            addr,
            tls: true,
            state,
            task,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when started
    /// with [`Upstream::start_tls`] (no trailing slash).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// All requests recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("upstream state").requests.clone()
    }

    /// The most recent recorded request; panics if none arrived.
    pub fn last(&self) -> Recorded {
        self.state
            .lock()
            .expect("upstream state")
            .requests
            .last()
            .cloned()
            .expect("upstream received no request")
    }

    /// Number of requests recorded so far.
    pub fn count(&self) -> usize {
        self.state.lock().expect("upstream state").requests.len()
    }

    /// Change the per-response delay from the next request on.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().expect("upstream state").delay = delay;
    }

    /// Extra `(name, value)` headers appended to every response (e.g. to test
    /// that hop-by-hop response headers are stripped). Replaces earlier ones.
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        self.state.lock().expect("upstream state").extra_headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that keeps nothing: each request is handed to `observe`
/// (method and request target as received, e.g. `"/api/x?a=1"`) once its
/// body has been read, then answered `200`, `x-upstream: yes`,
/// `content-type: application/json`, body `{"ok":true}`. For soak tests,
/// where [`Upstream`] would hold millions of [`Recorded`] requests; the
/// caller decides what to keep. Stopped when dropped.
pub struct TallyUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TallyUpstream {
    /// Start it; `observe` runs on the connection's task, so keep it short.
    pub async fn start<F>(observe: F) -> TallyUpstream
    where
        F: Fn(&http::Method, &str) + Send + Sync + 'static,
    {
        let listener = bind_local().await;
        let addr = listener.local_addr().expect("upstream local_addr");
        let observe = Arc::new(observe);
        let task = super::spawn_server(listener, move |req: Request<Incoming>| {
            let observe = Arc::clone(&observe);
            async move {
                let (parts, mut body) = req.into_parts();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
                let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
                observe(&parts.method, target);
                Response::builder()
                    .header("x-upstream", "yes")
                    .header("content-type", "application/json")
                    .body(full(r#"{"ok":true}"#))
                    .expect("build upstream response")
            }
        });
        TallyUpstream { addr, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TallyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Expected lowercase hex SHA-256 of the `n`-byte body of `GET /download/{n}`
/// (and of [`super::pattern_body`]`(n, _)`).
pub fn download_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(super::PATTERN_CHUNK as u64) as usize;
        h.update(&super::pattern_bytes(off, len));
        off += len as u64;
    }
    h.finish_hex()
}

/// A `127.0.0.1` address that refuses connections: the port is bound by a
/// socket that never listens and is kept for the life of the process (so no
/// other server can take it).
pub fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("closed_port socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("closed_port bind");
    let addr = socket.local_addr().expect("closed_port local_addr");
    std::mem::forget(socket);
    addr
}

/// Last path segment after `/download/`, if it parses as a number.
fn download_len(path: &str) -> Option<u64> {
    let (_, n) = path.rsplit_once("/download/")?;
    n.parse().ok()
}

/// Status after `/status/`, if valid.
fn status_code(path: &str) -> Option<StatusCode> {
    let (_, n) = path.rsplit_once("/status/")?;
    StatusCode::from_u16(n.parse().ok()?).ok()
}

async fn handle(
    state: Arc<Mutex<State>>,
    client_cert_cn: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut hasher = Sha256::new();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            body_len += data.len() as u64;
        }
    }
    let body_sha256 = hasher.finish_hex();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let path = parts.uri.path().to_string();
    let method = parts.method.as_str().to_string();

    let (delay, extra) = {
        let mut st = state.lock().expect("upstream state");
        st.requests.push(Recorded {
            peer: parts.extensions.get::<super::PeerAddr>().map(|p| p.0),
            method: method.clone(),
            path_and_query,
            headers,
            body_len,
            body_sha256: body_sha256.clone(),
            client_cert_cn,
        });
        (st.delay, st.extra_headers.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut builder = Response::builder()
        .header("x-upstream", "yes")
        .header("x-body-sha256", body_sha256)
        .header("x-body-len", body_len.to_string());
    for (k, v) in &extra {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let download = (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
        .then(|| download_len(&path))
        .flatten();
    let resp = match download {
        Some(n) => builder
            .status(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .header("content-length", n.to_string())
            .body(pattern_body(n, true)),
        None => builder
            .status(status_code(&path).unwrap_or(StatusCode::OK))
            .header("content-type", "application/json")
            .body(full(
                serde_json::to_vec(&json!({"path": path, "method": method}))
                    .expect("serialize json"),
            )),
    };
    resp.expect("build upstream response")
}
