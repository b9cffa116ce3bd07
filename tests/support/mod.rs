//! Integration-test support: a real JWKS/OIDC server ([`idp::Idp`]), a recording
//! upstream ([`upstream::Upstream`], also over TLS) and one that only reports
//! each request ([`upstream::TallyUpstream`], for soak runs), test signing keys
//! ([`keys::TestKey`]), a test PKI ([`pki::Pki`]), small HTTP client helpers
//! ([`Client`], [`raw_http`]) and an HTTPS client ([`tls_client::TlsClient`]).
//!
//! Everything listens on `127.0.0.1:0` and is stopped when its handle drops.
//! Use from an integration test with `mod support;`.
#![allow(dead_code)]

pub mod gateway;
pub mod idp;
pub mod keys;
pub mod pki;
pub mod process;
pub mod tls_client;
pub mod upstream;

// Re-exports for `use support::*;` (unused in some test binaries).
#[allow(unused_imports)]
pub use gateway::{TestGateway, provider_yaml};
#[allow(unused_imports)]
pub use idp::{Idp, IdpMode};
#[allow(unused_imports)]
pub use keys::{TestKey, b64, hs256, now, unsigned};
#[allow(unused_imports)]
pub use pki::{ClientIdentity, Pki};
#[allow(unused_imports)]
pub use tls_client::{Alpn, HandshakeInfo, TlsClient};
#[allow(unused_imports)]
pub use upstream::{Recorded, TallyUpstream, Upstream, closed_port, download_sha256};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Boxed error used by [`Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request/response body type used throughout the support module.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut ctx = Sha256::new();
    ctx.update(data);
    ctx.finish_hex()
}

/// Incremental SHA-256 (aws-lc, fast even in debug builds).
pub struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    /// A fresh hasher.
    pub fn new() -> Sha256 {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Lowercase hex digest.
    pub fn finish_hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Size of each chunk produced by [`pattern_body`] and `/download/{n}`.
pub const PATTERN_CHUNK: usize = 64 * 1024;

/// Bytes `[offset, offset + len)` of the deterministic pseudo-random pattern
/// (byte `i` is byte `i % 8` (little-endian) of `splitmix64(i / 8)`).
pub fn pattern_bytes(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut word = offset / 8;
    let skip = (offset % 8) as usize;
    while out.len() < len + skip {
        out.extend_from_slice(&splitmix64(word).to_le_bytes());
        word += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Streaming body of `n` pattern bytes in 64 KiB chunks, never held whole.
struct PatternBody {
    offset: u64,
    remaining: u64,
    exact_size: bool,
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(PATTERN_CHUNK as u64) as usize;
        let chunk = pattern_bytes(self.offset, len);
        self.offset += len as u64;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_size {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// A streamed body of the first `n` bytes of the deterministic pattern (its
/// SHA-256 is [`download_sha256`]`(n)`). With `known_length` the body reports
/// its exact size (hyper sends `content-length: n`); without it hyper sends
/// `transfer-encoding: chunked`.
pub fn pattern_body(n: u64, known_length: bool) -> Body {
    PatternBody {
        offset: 0,
        remaining: n,
        exact_size: known_length,
    }
    .boxed()
}

/// Install a `tracing` subscriber once per test binary (respects `RUST_LOG`,
/// default `info`; output captured by the test harness).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Bind `127.0.0.1:0`.
pub(crate) async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Serve HTTP/1.1 on `listener` with `handler` until the returned task is
/// aborted; aborting also drops every open connection (they live in a JoinSet
/// owned by the accept task).
pub(crate) fn spawn_server<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// The client address of the connection a request came on, put in the
/// request's extensions by [`spawn_server`].
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What a TLS connection negotiated, handed to a [`spawn_tls_server`] handler.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The ALPN protocol selected, if any.
    pub alpn: Option<Vec<u8>>,
    /// The client's leaf certificate, if it presented one.
    pub client_cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// Like [`spawn_server`] but over TLS with `config`: HTTP/2 when ALPN selects
/// `h2`, else HTTP/1.1. A failed or slow (> 10 s) handshake is logged and the
/// connection dropped; the server keeps accepting.
pub(crate) fn spawn_tls_server<F, Fut>(
    listener: TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(std::sync::Arc<TlsPeer>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            conns.spawn(async move {
                let tls = match tokio::time::timeout(
                    Duration::from_secs(10),
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(client.addr = %remote, error = %e, "test TLS server: handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(client.addr = %remote, "test TLS server: handshake timed out");
                        return;
                    }
                };
                let conn = tls.get_ref().1;
                let peer = std::sync::Arc::new(TlsPeer {
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    client_cert: conn.peer_certificates().and_then(|c| c.first()).cloned(),
                });
                let h2 = peer.alpn.as_deref() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(peer.clone(), req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                };
            });
        }
    })
}

/// A buffered HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// HTTP version the response came with (`HTTP_11`, or `HTTP_2` from a
    /// [`tls_client::TlsClient`] that negotiated `h2`).
    pub version: http::Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// First value of header `name` (case-insensitive), if valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// Lowercase hex SHA-256 of the body.
    pub fn body_sha256(&self) -> String {
        sha256_hex(&self.body)
    }
}

/// A small HTTP/1.1 client (hyper-util legacy client, no connection pooling so
/// each request uses a fresh connection). Every request has a 60 s timeout.
#[derive(Clone)]
pub struct Client {
    inner: LegacyClient<HttpConnector, Body>,
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A new client (60 s per-request timeout).
    pub fn new() -> Client {
        let inner = LegacyClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Client {
            inner,
            timeout: Duration::from_secs(60),
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Send `req` and buffer the whole response. `Err` (with a description)
    /// on connection errors, timeouts, or a body cut short.
    pub async fn try_send(&self, req: Request<Body>) -> Result<Resp, String> {
        let what = format!("{} {}", req.method(), req.uri());
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{what}: request failed: {e:?}"))?;
            buffered(&what, resp).await
        };
        within(self.timeout, &what, fut).await
    }

    /// [`Client::try_send`], panicking on error.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        match self.try_send(req).await {
            Ok(resp) => resp,
            Err(e) => panic!("{e}"),
        }
    }

    /// Send `method url` with `headers` and `body`; panics on transport errors.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Resp {
        self.send(build_request(method, url, headers, body)).await
    }

    /// `GET url` with `headers`; panics on transport errors.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", url, headers, empty()).await
    }

    /// `GET url` with `Authorization: Bearer {token}` plus `headers`.
    pub async fn get_bearer(&self, url: &str, token: &str, headers: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {token}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.get(url, &all).await
    }
}

/// Read a whole response into a [`Resp`]; `what` names the request in errors.
pub async fn buffered(what: &str, resp: Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{what}: reading body failed: {e:?}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// `work` within `timeout`, or an error naming `what`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: timed out after {timeout:?}")))
}

/// Build a request; panics on an invalid method, URL or header.
pub fn build_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body)
        .unwrap_or_else(|e| panic!("invalid request {method} {url} {headers:?}: {e}"))
}

/// Write `request_bytes` verbatim to a new TCP connection to `addr` and read
/// the response as (lossy) text. Reading stops at EOF, or once one complete
/// response has arrived (by `content-length`, a final `0` chunk, or just the
/// head for `HEAD` requests and 1xx/204/304 statuses), or after 5 s without
/// completion (returns whatever arrived, possibly empty). Interim `1xx`
/// responses are skipped when judging completeness but kept in the text.
/// The write side is never half-closed; add `Connection: close` yourself if
/// you want the server to close.
pub async fn raw_http(addr: SocketAddr, request_bytes: &[u8]) -> String {
    let is_head = request_bytes.starts_with(b"HEAD ");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("raw_http: connect to {addr}: {e}"));
    stream
        .write_all(request_bytes)
        .await
        .unwrap_or_else(|e| panic!("raw_http: write to {addr}: {e}"));
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if response_complete(&buf, is_head) {
            break;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break,                 // timed out
            Ok(Err(_)) | Ok(Ok(0)) => break, // reset or EOF
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Status code of the first (final, non-1xx) response in a [`raw_http`]
/// answer; panics if there is none.
pub fn raw_status(response: &str) -> u16 {
    let mut rest = response;
    loop {
        let code = rest
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no HTTP status line in raw response: {response:?}"));
        if !(100..200).contains(&code) || code == 101 {
            return code;
        }
        match rest.find("\r\n\r\n") {
            Some(i) => rest = &rest[i + 4..],
            None => return code,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Does `buf` hold a complete (final) HTTP/1 response?
fn response_complete(buf: &[u8], is_head: bool) -> bool {
    let mut start = 0;
    loop {
        let Some(end) = find(&buf[start..], b"\r\n\r\n").map(|i| start + i + 4) else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[start..end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start = end; // interim response: look at the next one
            continue;
        }
        if is_head || status == 101 || status == 204 || status == 304 {
            return true;
        }
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let body = &buf[end..];
        if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            return body.starts_with(b"0\r\n\r\n") || find(body, b"\r\n0\r\n\r\n").is_some();
        }
        return match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(len) => body.len() >= len,
            None => false, // read until close
        };
    }
}

/// A free port on 127.0.0.1 (bound, read, released), for configs that must
/// name a port before the server binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Poll `check` every 100 ms until it holds; panic naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An argon2id hash of `secret` with the cheapest parameters, so that tests
/// of the auth service spend no time hashing (production hashes cost more).
pub fn cheap_hash(secret: &str) -> String {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("argon2 params");
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"portcullis-tests").expect("salt");
    argon2
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

/// The values of the samples `name{…}` in Prometheus text whose labels
/// include every pair of `labels` (others are ignored). Label values here
/// never hold `"`, `,` or `}`.
pub fn metric_samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let found: Vec<(&str, &str)> = label_text
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|want| found.contains(want))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
}
