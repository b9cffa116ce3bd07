//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2 (h2 by
//! ALPN over TLS, h2c with prior knowledge) via hyper-util, within the
//! listener's limits; on shutdown, connections drain gracefully.
//! Serves anything that is a `Service`: the gateway, the auth service, the
//! admin endpoints.

mod activity;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use activity::{Activity, Tracked};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Errors a response body may end with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
use crate::headers::ClientInfo;
use crate::tls::peer::PeerCert;

/// How long a connection closed for sending no request may take to go.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's limits (`server:` in the config for the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Longest a client may take to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving and no request in flight this long
    /// is closed gracefully.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2); `431` beyond.
    pub max_header_bytes: usize,
    /// Most header fields in a request (HTTP/1.1); `431` beyond.
    pub max_headers: usize,
    /// Connections open at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_headers: 100,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Something that answers requests. Errors are its own business: every
/// request gets a response.
pub trait Service: Send + Sync + 'static {
    /// The response body.
    type Body: hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static;

    fn call(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// TLS for a new connection, when the listener speaks it. Asked per
    /// connection, so a reload or a renewed certificate applies to the next.
    fn tls(&self) -> Option<TlsAcceptor> {
        None
    }

    /// A connection opened (`true`) or closed, for the open-connections gauge.
    fn connection(&self, _open: bool) {}
}

/// Serve until `shutdown` turns true; then stop accepting, ask every open
/// connection to finish (HTTP/1.1: after its current response; HTTP/2: a
/// GOAWAY) and wait for them up to `drain_timeout`.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&settings));
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        // At the connection limit, stop accepting: clients wait in the
        // kernel's backlog rather than being refused.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            service: Arc::clone(&service),
            builder: Arc::clone(&builder),
            idle_timeout: settings.idle_timeout,
            first_request_timeout: settings.header_read_timeout,
            draining: draining.clone(),
        };
        // Taken now, so a reload never changes a handshake under way.
        let tls = service.tls();
        connections.spawn(async move {
            let _permit = permit;
            let service = Arc::clone(&connection.service);
            service.connection(true);
            match tls {
                None => {
                    let client = client_info(peer, "http", None);
                    connection.serve(stream, client).await;
                }
                Some(acceptor) => {
                    if let Some((stream, client)) = handshake(acceptor, stream, peer).await {
                        connection.serve(stream, client).await;
                    }
                }
            }
            service.connection(false);
        });
    }
    drop(listener);
    let _ = drain.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "draining connections");
    }
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "drain timeout: closing the connections still open"
        );
        connections.abort_all();
    }
}

fn builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// A TLS handshake within `HANDSHAKE_TIMEOUT`, and what it tells of the client.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ClientInfo,
)> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    // The verifier has checked the chain; only the leaf matters here.
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| PeerCert::from_der(leaf));
    Some((stream, client_info(peer, "https", cert)))
}

/// What one connection task needs.
struct Connection<S> {
    service: Arc<S>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    /// A connection must bring a whole first request within this (hyper
    /// times request heads only once it knows the protocol).
    first_request_timeout: Duration,
    draining: watch::Receiver<bool>,
}

impl<S: Service> Connection<S> {
    /// Serve one connection, HTTP/1.1 or HTTP/2, until it closes: on its
    /// own, when idle, or when the listener drains.
    async fn serve<I>(mut self, io: I, mut client: ClientInfo)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tunnels, mut upgraded) = tokio::sync::mpsc::unbounded_channel();
        client.tunnels = Some(tunnels);
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Tracked::new(io, Arc::clone(&activity)));
        let shared = Arc::new((self.service, client, Arc::clone(&activity)));
        let handler = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move {
                let (service, client, activity) = &*shared;
                let _in_flight = activity.request();
                Ok::<_, Infallible>(service.call(request, client).await)
            }
        });
        let connection = self.builder.serve_connection_with_upgrades(io, handler);
        tokio::pin!(connection);
        // Looked at twice per period: closed after one to one and a half
        // idle periods.
        let mut watchdog = tokio::time::interval(self.idle_timeout / 2);
        watchdog.reset();
        let mut closing = *self.draining.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        let mut quiet_looks = 0u8;
        let first_request = tokio::time::sleep(self.first_request_timeout);
        let mut silent = false;
        // `select!` judges a branch's condition when it starts waiting, not
        // when the timer fires: a connection that got its first request
        // meanwhile must be left alone, so the timer's branch checks again
        // and then turns itself off.
        let mut first_request_done = false;
        tokio::pin!(first_request);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                // Silent or trickling clients (slowloris, a stalled HTTP/2
                // preface) are dropped, not drained: there is nothing to finish.
                // Closed gracefully (an HTTP/2 client gets a GOAWAY), then
                // for good after a short grace.
                _ = &mut first_request, if !first_request_done => {
                    if activity.seen_request() && !silent {
                        first_request_done = true;
                        continue;
                    }
                    if silent {
                        return;
                    }
                    tracing::debug!("no request within the header read timeout: closing");
                    silent = true;
                    if !closing {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    first_request.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                _ = self.draining.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = watchdog.tick(), if !closing => {
                    quiet_looks = if activity.idle_since_last_look() { quiet_looks + 1 } else { 0 };
                    if quiet_looks >= 2 {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        // An upgraded connection lives on here, holding this connection's
        // slot: its bytes still pass through `Tracked`, so the same
        // watchdog closes it when idle, and the drain waits for it.
        while let Ok(tunnel) = upgraded.try_recv() {
            let run = tunnel.run();
            tokio::pin!(run);
            let mut quiet_looks = 0u8;
            loop {
                tokio::select! {
                    _ = run.as_mut() => break,
                    _ = watchdog.tick() => {
                        quiet_looks = if activity.idle_since_last_look() { quiet_looks + 1 } else { 0 };
                        if quiet_looks >= 2 {
                            tracing::debug!("upgraded connection idle: closing");
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn client_info(peer: SocketAddr, proto: &'static str, cert: Option<PeerCert>) -> ClientInfo {
    let caller = match peer.ip() {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        ip => format!("ip:{}", ip.to_canonical()),
    };
    ClientInfo {
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        proto: HeaderValue::from_static(proto),
        peer: cert,
        tunnels: None,
        caller: caller.into(),
        upstream: Default::default(),
    }
}
