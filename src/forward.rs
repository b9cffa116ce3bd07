//! Sending a permitted request to its upstream, streaming both ways: one
//! pooled client per upstream, its targets taken round-robin, a target that
//! refuses connections skipped for a while (passive health), and a request
//! that never reached any target retried on the next one when that is safe.
//!
//! An upstream with a single plain-HTTP/1.1 target (the sidecar's case) is
//! reached more cheaply: each client connection keeps its own upstream
//! connection ([`Affinity`]), so a request skips the pool's locking, its
//! connector and the absolute URI it needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::fetch::https_connector;

/// How long a request waits for its client connection's kept upstream
/// connection to be idle again before it opens another.
const READY_WAIT: Duration = Duration::from_millis(100);

/// What goes upstream: the client's body (capped), or nothing on a retry.
pub type UpstreamBody = Either<Limited<Incoming>, Empty<Bytes>>;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused or failed: 502.
    #[error("upstream unreachable")]
    Unreachable,
    /// The upstream broke the exchange: 502.
    #[error("upstream failed")]
    Failed,
    /// No response headers within the timeout: 504.
    #[error("upstream timed out")]
    Timeout,
    /// The request body went over the route's `max_body`: 413.
    #[error("request body too large")]
    BodyTooLarge,
}

impl UpstreamError {
    /// Stable reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable => "upstream_unreachable",
            Self::Failed => "upstream_failed",
            Self::Timeout => "upstream_timeout",
            Self::BodyTooLarge => "body_too_large",
        }
    }
}

/// How an upstream is reached, as configured.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Until the response headers; a route may set its own.
    pub timeout: Duration,
    /// Speak HTTP/2 (h2c with prior knowledge over http, ALPN over https).
    pub http2: bool,
    /// How long a target that refused a connection is skipped.
    pub eject_for: Duration,
    /// Further targets tried when a request without a body never reached one.
    pub retries: usize,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// One address of an upstream.
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header it gets.
    host: HeaderValue,
    /// Milliseconds since `Upstream::epoch` until which it is skipped.
    ejected_until: AtomicU64,
}

/// A named upstream with its own connection pool.
pub struct Upstream {
    pub name: Box<str>,
    /// Tells this upstream from others, and from the one a reload
    /// replaces, for [`Affinity`].
    id: u64,
    /// Gone with this upstream: a client connection's kept connection to
    /// an upstream no longer configured may then be replaced.
    alive: Arc<()>,
    /// Its only target is plain HTTP/1.1: it is reached through a
    /// connection kept per client connection rather than through the pool.
    per_client_connection: bool,
    targets: Box<[Target]>,
    next: AtomicUsize,
    epoch: Instant,
    settings: UpstreamSettings,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<&str> = self.targets.iter().map(|t| t.authority.as_str()).collect();
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &targets)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Every URL must be `http(s)://authority` with no path beyond `/`.
    pub fn new(name: &str, urls: &[String], settings: UpstreamSettings) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("needs at least one target".into());
        }
        let targets = urls
            .iter()
            .map(|url| target(url, settings.tls.is_some()))
            .collect::<Result<Box<[Target]>, String>>()?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(settings.http2);
        let client = builder.build(https_connector(
            Some(settings.connect_timeout),
            settings.tls.as_deref(),
            settings.http2,
        ));
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let per_client_connection =
            targets.len() == 1 && targets[0].scheme == Scheme::HTTP && !settings.http2;
        Ok(Self {
            name: name.into(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            per_client_connection,
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            settings,
            client,
        })
    }

    /// Its targets as `scheme://authority`, in order.
    pub fn target_urls(&self) -> impl Iterator<Item = String> + '_ {
        self.targets
            .iter()
            .map(|t| format!("{}://{}", t.scheme, t.authority))
    }

    /// Does it speak HTTP/2 (where upgrades do not exist)?
    pub fn is_http2(&self) -> bool {
        self.settings.http2
    }

    /// Send the request to a healthy target; the response body streams
    /// back unbuffered. `timeout` overrides the upstream's own. `affinity`
    /// is the client connection's own upstream connection, for a request
    /// that may use one (HTTP/1.1 from the client, no upgrade).
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        path_and_query: &PathAndQuery,
        timeout: Option<Duration>,
        affinity: Option<&Affinity>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // One deadline for all attempts: retries never stretch the timeout.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout.unwrap_or(self.settings.timeout))
            .unwrap_or(now + Duration::from_secs(86_400));
        if let Some(affinity) = affinity.filter(|_| self.per_client_connection) {
            let kept = match affinity.take(self) {
                Kept::Mine(sender) => Some(Some(sender)),
                Kept::Nothing => Some(None),
                // The client connection's own upstream connection leads to
                // another upstream it still uses: this one goes by the pool.
                Kept::Other => None,
            };
            if let Some(kept) = kept {
                return self
                    .send_per_client_connection(request, path_and_query, deadline, affinity, kept)
                    .await;
            }
        }
        let (parts, body) = request.into_parts();
        // Only a request that can be sent again unchanged is retried: an
        // idempotent method and no body (a streamed body is gone once sent).
        let retries = if is_idempotent(&parts.method) && is_empty(&body) && self.targets.len() > 1 {
            self.settings.retries
        } else {
            0
        };
        // hyper takes a request by value: a retry needs its own copy.
        let spare = (retries > 0).then(|| parts.clone());
        let mut first = Some(Request::from_parts(parts, body));
        for attempt in 0..=retries {
            let target = self.pick();
            let outgoing = first.take().or_else(|| {
                spare
                    .clone()
                    .map(|parts| Request::from_parts(parts, Either::Right(Empty::new())))
            });
            let Some(mut outgoing) = outgoing else { break };
            *outgoing.uri_mut() = target.uri(path_and_query)?;
            outgoing
                .headers_mut()
                .insert(header::HOST, target.host.clone());
            match tokio::time::timeout_at(deadline, self.client.request(outgoing)).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => {
                    tracing::debug!(upstream = %self.name, target = %target.authority, %error, "upstream request failed");
                    if exceeded_body_limit(&error) {
                        return Err(UpstreamError::BodyTooLarge);
                    }
                    if !error.is_connect() {
                        return Err(UpstreamError::Failed);
                    }
                    self.eject(target);
                    if attempt < retries {
                        tracing::debug!(upstream = %self.name, "retrying on the next target");
                    }
                }
            }
        }
        Err(UpstreamError::Unreachable)
    }

    /// Send on the client connection's own upstream connection, `kept`, or
    /// on a new one that it keeps.
    async fn send_per_client_connection(
        &self,
        mut request: Request<UpstreamBody>,
        path_and_query: &PathAndQuery,
        deadline: tokio::time::Instant,
        affinity: &Affinity,
        kept: Option<http1::SendRequest<UpstreamBody>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = &self.targets[0];
        // Origin form: the connection already says where it goes.
        *request.uri_mut() = Uri::from(path_and_query.clone());
        request
            .headers_mut()
            .insert(header::HOST, target.host.clone());
        // A kept connection may still be wrapping up the previous exchange
        // (the client can have the whole response before the connection's
        // task is idle again): wait for it briefly, else open another.
        let kept = match kept {
            Some(mut sender) => {
                let soon = tokio::time::Instant::now() + READY_WAIT;
                match tokio::time::timeout_at(soon.min(deadline), sender.ready()).await {
                    Ok(Ok(())) => Some(sender),
                    _ => None,
                }
            }
            None => None,
        };
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(sender) => sender,
            None => self.connect(target, deadline).await?,
        };
        let sent = tokio::time::timeout_at(deadline, sender.try_send_request(request)).await;
        let response = match sent {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Ok(response)) => response,
            Ok(Err(mut error)) => {
                // A kept connection the upstream closed before the request
                // went out: the request is handed back, unsent, for a new one.
                let unsent = error.take_message().filter(|_| reused);
                let Some(request) = unsent else {
                    return Err(failure(error.error(), &self.name, target));
                };
                sender = self.connect(target, deadline).await?;
                match tokio::time::timeout_at(deadline, sender.send_request(request)).await {
                    Err(_) => return Err(UpstreamError::Timeout),
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => return Err(failure(&error, &self.name, target)),
                }
            }
        };
        affinity.keep(self, sender);
        Ok(response)
    }

    /// A new HTTP/1.1 connection to `target`, within the connect timeout.
    async fn connect(
        &self,
        target: &Target,
        deadline: tokio::time::Instant,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let connect_by = tokio::time::Instant::now()
            .checked_add(self.settings.connect_timeout)
            .map_or(deadline, |by| by.min(deadline));
        // `[::1]` in a URL is `::1` to the resolver.
        let host = target
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = target.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout_at(
            connect_by,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(upstream = %self.name, target = %target.authority, %error, "upstream connect failed");
                return Err(UpstreamError::Unreachable);
            }
            Err(_) if connect_by < deadline => {
                tracing::debug!(upstream = %self.name, target = %target.authority, "upstream connect timed out");
                return Err(UpstreamError::Unreachable);
            }
            Err(_) => return Err(UpstreamError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| UpstreamError::Unreachable)?;
        let (upstream, authority) = (self.name.clone(), target.authority.clone());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%upstream, target = %authority, %error, "upstream connection failed");
            }
        });
        Ok(sender)
    }

    /// The next target round-robin, skipping ejected ones; when all are
    /// ejected, the next one anyway (the upstream may be back).
    fn pick(&self) -> &Target {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let n = self.targets.len();
        (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| t.ejected_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(&self.targets[start % n])
    }

    fn eject(&self, target: &Target) {
        if self.targets.len() < 2 || self.settings.eject_for.is_zero() {
            return;
        }
        let eject_ms = u64::try_from(self.settings.eject_for.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(eject_ms);
        target.ejected_until.store(until, Ordering::Relaxed);
        tracing::warn!(upstream = %self.name, target = %target.authority, eject_for = ?self.settings.eject_for, "target refused a connection: skipped for a while");
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

fn target(url: &str, has_tls_settings: bool) -> Result<Target, String> {
    // Messages never repeat the URL: it may carry a substituted secret.
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("needs a scheme: http:// or https://")?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err("the scheme must be http or https".into());
    }
    if has_tls_settings && scheme != Scheme::HTTPS {
        return Err("a CA or client certificate needs an https:// URL".into());
    }
    let authority = uri.authority().cloned().ok_or("needs a host")?;
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err("a path or query is not supported; requests keep their own path".into());
    }
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
    Ok(Target {
        scheme,
        authority,
        host,
        ejected_until: AtomicU64::new(0),
    })
}

impl Target {
    /// The absolute URI for a canonical path and the original query.
    fn uri(&self, path_and_query: &PathAndQuery) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.clone())
            .build()
            .map_err(|_| UpstreamError::Failed)
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_empty(body: &UpstreamBody) -> bool {
    use hyper::body::Body as _;
    body.is_end_stream()
}

/// What a failed exchange on a per_client_connection connection means for the client.
fn failure(error: &hyper::Error, upstream: &str, target: &Target) -> UpstreamError {
    tracing::debug!(%upstream, target = %target.authority, %error, "upstream request failed");
    if exceeded_body_limit(error) {
        UpstreamError::BodyTooLarge
    } else {
        UpstreamError::Failed
    }
}

/// Did the request fail because its body went over the route's limit?
fn exceeded_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// `path` plus `?query`, reusing the original bytes when nothing changed.
pub fn path_and_query(
    original: Option<&PathAndQuery>,
    canonical: &str,
) -> Result<PathAndQuery, UpstreamError> {
    if let Some(original) = original
        && original.path() == canonical
    {
        return Ok(original.clone());
    }
    let joined = match original.and_then(PathAndQuery::query) {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical.to_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(joined)).map_err(|_| UpstreamError::Failed)
}

/// The upstream connection one client connection keeps for itself, and the
/// upstream it leads to. A client's HTTP/1.1 connection sends one request
/// at a time, so the lock is never contended; it is only tried, never
/// waited on.
#[derive(Default)]
pub struct Affinity(std::sync::Mutex<Option<KeptConnection>>);

struct KeptConnection {
    upstream: u64,
    alive: std::sync::Weak<()>,
    sender: http1::SendRequest<UpstreamBody>,
}

/// What a client connection has for an upstream.
enum Kept {
    /// Its open, idle connection to this upstream.
    Mine(http1::SendRequest<UpstreamBody>),
    /// Nothing usable: a new connection is opened and kept.
    Nothing,
    /// A live connection to another upstream, left in place.
    Other,
}

impl Affinity {
    fn take(&self, upstream: &Upstream) -> Kept {
        let Ok(mut slot) = self.0.try_lock() else {
            return Kept::Other;
        };
        match slot.take() {
            None => Kept::Nothing,
            Some(kept) if kept.upstream == upstream.id && !kept.sender.is_closed() => {
                Kept::Mine(kept.sender)
            }
            Some(kept) if kept.upstream == upstream.id => Kept::Nothing,
            // Replaced only when its upstream is gone (a reload) or closed.
            Some(kept) if kept.alive.strong_count() == 0 || kept.sender.is_closed() => {
                Kept::Nothing
            }
            Some(kept) => {
                *slot = Some(kept);
                Kept::Other
            }
        }
    }

    fn keep(&self, upstream: &Upstream, sender: http1::SendRequest<UpstreamBody>) {
        if let Ok(mut slot) = self.0.try_lock() {
            *slot = Some(KeptConnection {
                upstream: upstream.id,
                alive: Arc::downgrade(&upstream.alive),
                sender,
            });
        }
    }
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Affinity")
    }
}
