//! The gateway's own outbound HTTP(S) client, for key sets and discovery
//! documents (and, later, introspection). Not the upstream proxy client.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Documents larger than this are refused: a key set is a few KiB.
const MAX_DOCUMENT: usize = 1 << 20;

/// Why a fetch failed. Logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("body unreadable or over {MAX_DOCUMENT} bytes")]
    Body,
    #[error("invalid document: {0}")]
    Document(String),
}

/// A fetched document and how long the server said it may be cached.
pub struct Document {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// Pooled client for http and https (system roots).
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(https_connector(None, None, true)),
        }
    }

    /// GET `uri`, expecting 200 and a body under 1 MiB, within `timeout`.
    pub async fn get(&self, uri: &Uri, timeout: Duration) -> Result<Document, FetchError> {
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Document(e.to_string()))?;
        let work = async {
            let response = self.client.request(request).await?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status(response.status()));
            }
            let max_age = response
                .headers()
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(max_age);
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|_| FetchError::Body)?
                .to_bytes();
            Ok(Document { body, max_age })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

/// An http/https connector with a connect timeout: trusting the system's
/// roots, or as `tls` says; speaking HTTP/1.1, and HTTP/2 when `http2`.
pub fn https_connector(
    connect_timeout: Option<Duration>,
    tls: Option<&rustls::ClientConfig>,
    http2: bool,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.unwrap_or_else(|| client_tls()).clone())
        .https_or_http()
        .enable_http1();
    if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// The system's root certificates, read once per process. A machine without
/// a root store still gets a working client: plain http works and https
/// fails with a certificate error naming the cause.
pub fn system_roots() -> rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading system root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates: https to key servers and upstreams will fail"
                );
            }
            roots
        })
        .clone()
}

/// The TLS client settings with the system roots, built once per process.
fn client_tls() -> &'static rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        rustls::ClientConfig::builder()
            .with_root_certificates(system_roots())
            .with_no_client_auth()
    })
}

/// `max-age` from a Cache-Control value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=5, must-revalidate"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
