//! An HTTPS client for tests: trusts exactly one root, optionally presents a
//! client certificate, offers a chosen ALPN, and opens a fresh connection per
//! request (no pooling, no TLS session resumption), so every request sees the
//! server's current certificate and a full handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::ClientIdentity;
use super::{Body, Resp};

/// Which application protocols the client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Offer `http/1.1` only.
    Http1,
    /// Offer `h2` only.
    H2,
    /// Offer `h2` then `http/1.1`; the server picks.
    Both,
    /// Send no ALPN extension (HTTP/1.1 is spoken).
    Off,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Off => Vec::new(),
        }
    }
}

/// What a completed handshake showed.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The ALPN protocol the server selected (`"h2"`, `"http/1.1"`), if any.
    pub alpn: Option<String>,
    /// DER of the leaf certificate the server presented.
    pub server_cert_der: CertificateDer<'static>,
    /// The negotiated TLS version.
    pub tls_version: rustls::ProtocolVersion,
}

/// The HTTPS client. Cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    roots: Arc<rustls::RootCertStore>,
    identity: Option<ClientIdentity>,
    alpn: Alpn,
    connector: TlsConnector,
    timeout: Duration,
}

// === impl TlsClient ===

impl TlsClient {
    /// A client trusting only the certificates in `ca_pem` (no system
    /// roots), with no client certificate, offering ALPN `http/1.1`, and a
    /// 60 s timeout per request. Panics if `ca_pem` holds no valid cert.
    pub fn new(ca_pem: &str) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.expect("CA PEM parses"))
                .expect("CA certificate is a valid trust anchor");
        }
        assert!(!roots.is_empty(), "no certificate in CA PEM");
        TlsClient::build(Arc::new(roots), None, Alpn::Http1, Duration::from_secs(60))
    }

    /// The same client presenting `identity` when the server asks for a
    /// client certificate.
    pub fn with_identity(self, identity: &ClientIdentity) -> TlsClient {
        TlsClient::build(self.roots, Some(identity.clone()), self.alpn, self.timeout)
    }

    /// The same client offering `alpn`.
    pub fn with_alpn(self, alpn: Alpn) -> TlsClient {
        TlsClient::build(self.roots, self.identity, alpn, self.timeout)
    }

    /// The same client with another per-request (and per-handshake) timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> TlsClient {
        self.timeout = timeout;
        self
    }

    fn build(
        roots: Arc<rustls::RootCertStore>,
        identity: Option<ClientIdentity>,
        alpn: Alpn,
        timeout: Duration,
    ) -> TlsClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots.clone());
        let mut config = match &identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert_der.clone()], id.key_der())
                .expect("client cert and key form a pair"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.protocols();
        // A resumed session reports the certificate of the *original*
        // handshake; disabling resumption keeps reload tests honest.
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            roots,
            identity,
            alpn,
            connector: TlsConnector::from(Arc::new(config)),
            timeout,
        }
    }

    /// Send `req` (an `https://` absolute URL; host `localhost` or an IP) on
    /// a new connection and buffer the whole response. HTTP/2 is spoken iff
    /// the server selected `h2`, else HTTP/1.1. `Err` (with a description) on
    /// connect, TLS (including a refused client certificate), HTTP or body
    /// errors, and on timeout. A refused client certificate (TLS 1.3) may be
    /// reported as a broken pipe instead of the server's alert, as the client
    /// may write before the alert arrives; use [`TlsClient::handshake`] to
    /// check which alert the server sent.
    pub async fn try_send(&self, req: Request<Body>) -> Result<Resp, String> {
        let what = format!("{} {}", req.method(), req.uri());
        let fut = async {
            let (addr, server_name) = target(req.uri()).map_err(|e| format!("{what}: {e}"))?;
            let tls = self
                .connect(addr, server_name)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let resp = if h2 {
                send_h2(tls, req).await
            } else {
                send_h1(tls, req).await
            }
            .map_err(|e| format!("{what}: {e}"))?;
            super::buffered(&what, resp).await
        };
        super::within(self.timeout, &what, fut).await
    }

    /// [`TlsClient::try_send`], panicking on error.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        match self.try_send(req).await {
            Ok(resp) => resp,
            Err(e) => panic!("{e}"),
        }
    }

    /// Send `method url` with `headers` and `body`; panics on errors.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Resp {
        self.send(super::build_request(method, url, headers, body))
            .await
    }

    /// `GET url` with `headers`; panics on errors.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", url, headers, super::empty()).await
    }

    /// Handshake with `addr` (SNI/verification name `server_name`, e.g.
    /// `"localhost"` or `"127.0.0.1"`), send nothing, and report what was
    /// negotiated.
    ///
    /// In TLS 1.3 the server judges the client certificate only after the
    /// client has finished its side of the handshake, so a refusal arrives as
    /// an alert afterwards. To report it, this waits up to 250 ms for the
    /// server to say something: an alert or a close is `Err`; data (e.g. an
    /// HTTP/2 SETTINGS frame) or silence is `Ok`.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<HandshakeInfo, String> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("invalid server name {server_name:?}: {e}"))?;
        let fut = async {
            let mut tls = self.connect(addr, name).await?;
            let info = {
                let conn = tls.get_ref().1;
                HandshakeInfo {
                    alpn: conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                    server_cert_der: conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .cloned()
                        .ok_or("server presented no certificate")?,
                    tls_version: conn.protocol_version().ok_or("no TLS version")?,
                }
            };
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(250), tls.read(&mut buf)).await {
                Err(_) | Ok(Ok(1..)) => Ok(info),
                Ok(Ok(0)) => Err("server closed the connection after the handshake".to_string()),
                Ok(Err(e)) => Err(format!("server refused after the handshake: {e}")),
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| Err(format!("handshake timed out after {:?}", self.timeout)))
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        name: ServerName<'static>,
    ) -> Result<TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    }
}

/// The socket address and TLS server name for an `https` URL. `localhost`
/// connects to `127.0.0.1` (test servers never listen on `::1`).
fn target(uri: &Uri) -> Result<(SocketAddr, ServerName<'static>), String> {
    if uri.scheme_str() != Some("https") {
        return Err("TlsClient needs an https:// URL".into());
    }
    let host = uri.host().ok_or("URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let ip = if host.eq_ignore_ascii_case("localhost") {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse()
            .map_err(|_| format!("host {host:?} is neither localhost nor an IP"))?
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
    Ok((SocketAddr::new(ip, port), name))
}

async fn send_h1(
    tls: TlsStream<TcpStream>,
    mut req: Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    // HTTP/1.1 wants origin-form plus Host; hyper's connection layer sends
    // the URI as given.
    if !req.headers().contains_key(http::header::HOST) {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        if let Some(a) = authority {
            let v = http::HeaderValue::from_str(&a).map_err(|e| format!("host header: {e}"))?;
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let origin = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse::<Uri>()
        .map_err(|e| format!("origin-form URI: {e}"))?;
    *req.uri_mut() = origin;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake failed: {e:?}"))?;
    let conn = tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(e) => Err(with_conn_error(format!("request failed: {e:?}"), conn).await),
    }
}

async fn send_h2(
    tls: TlsStream<TcpStream>,
    req: Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e:?}"))?;
    let conn = tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(e) => Err(with_conn_error(format!("request failed: {e:?}"), conn).await),
    }
}

/// When a request fails because the connection died (e.g. the server's TLS
/// alert refusing our client certificate), hyper reports only "canceled" to
/// the request; the cause is the connection task's error, so append it.
async fn with_conn_error(
    msg: String,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
) -> String {
    match tokio::time::timeout(Duration::from_secs(1), conn).await {
        Ok(Ok(Err(e))) => format!("{msg}; connection failed: {e:?}"),
        _ => msg,
    }
}
