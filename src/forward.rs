//! Sending a permitted request to its upstream, streaming both ways.

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

use crate::fetch::https_connector;
use std::sync::Arc;

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
}

impl UpstreamError {
    /// Stable reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable => "upstream_unreachable",
            Self::Failed => "upstream_failed",
            Self::Timeout => "upstream_timeout",
        }
    }
}

/// A named upstream with its own connection pool.
pub struct Upstream {
    pub name: Box<str>,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header the upstream gets.
    pub host: HeaderValue,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// `url` must be `http(s)://authority` with no path beyond `/`.
    pub fn new(
        name: &str,
        url: &str,
        connect_timeout: Duration,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, String> {
        // Messages never repeat the URL: it may carry a substituted secret.
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("needs a scheme: http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err("the scheme must be http or https".into());
        }
        let authority = uri.authority().cloned().ok_or("needs a host")?;
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err("a path or query is not supported; requests keep their own path".into());
        }
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        let tls_config = tls;
        if tls_config.is_some() && scheme != Scheme::HTTPS {
            return Err("a CA or client certificate needs an https:// URL".into());
        }
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        Ok(Self {
            name: name.into(),
            scheme,
            authority,
            host,
            timeout,
            // Upstreams are spoken to in HTTP/1.1, whatever the client used.
            client: builder.build(https_connector(
                Some(connect_timeout),
                tls_config.as_deref(),
                false,
            )),
        })
    }

    /// The absolute URI for a canonical path and the original query.
    pub fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| UpstreamError::Failed)
    }

    /// Send the request; the response body streams back unbuffered.
    pub async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(error)) => {
                tracing::debug!(upstream = %self.name, %error, "upstream request failed");
                if error.is_connect() {
                    Err(UpstreamError::Unreachable)
                } else {
                    Err(UpstreamError::Failed)
                }
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
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
