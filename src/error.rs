//! The one place where failures become responses (RFC 6750 for auth).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authn::AuthnError;
use crate::authz::AuthzError;
use crate::forward::UpstreamError;
use crate::path::PathError;

/// Body of every response the gateway sends: the upstream's, streamed, or
/// one of its own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Everything that stops a request before or while it is forwarded.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    #[error("encoded slash in path not allowed on this route")]
    EncodedSlash,
    #[error("semicolon in path not allowed on this route")]
    Semicolon,
    #[error("method must be upper-case")]
    LowercaseMethod,
    #[error("no route")]
    RouteNotFound,
    #[error(transparent)]
    Authn(#[from] AuthnError),
    #[error(transparent)]
    Authz(#[from] AuthzError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::EncodedSlash | Self::Semicolon | Self::LowercaseMethod => {
                StatusCode::BAD_REQUEST
            }
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::Authn(AuthnError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            Self::Authn(AuthnError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Authn(_) => StatusCode::UNAUTHORIZED,
            Self::Authz(_) => StatusCode::FORBIDDEN,
            Self::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Stable reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "bad_path",
            Self::EncodedSlash => "encoded_slash",
            Self::Semicolon => "semicolon",
            Self::LowercaseMethod => "lowercase_method",
            Self::RouteNotFound => "no_route",
            Self::Authn(e) => e.code(),
            Self::Authz(e) => e.code(),
            Self::Upstream(e) => e.code(),
        }
    }

    /// The response. `scope` is the route's required scopes, for the 403
    /// challenge.
    pub fn into_response(self, realm: &str, scope: &str) -> Response<Body> {
        let status = self.status();
        let (error, description): (&str, String) = match &self {
            Self::BadPath(e) => ("invalid_request", e.to_string()),
            Self::EncodedSlash | Self::Semicolon | Self::LowercaseMethod => {
                ("invalid_request", self.to_string())
            }
            Self::RouteNotFound => ("not_found", "no route for this request".into()),
            Self::Authn(AuthnError::Missing) => ("unauthorized", "bearer token required".into()),
            Self::Authn(AuthnError::InvalidRequest(why)) => ("invalid_request", (*why).into()),
            Self::Authn(AuthnError::InvalidToken(e)) => ("invalid_token", e.to_string()),
            Self::Authn(AuthnError::KeysUnavailable) => (
                "temporarily_unavailable",
                "token cannot be verified now".into(),
            ),
            Self::Authz(e) => ("insufficient_scope", e.to_string()),
            Self::Upstream(UpstreamError::Timeout) => ("gateway_timeout", self.to_string()),
            Self::Upstream(e) => ("bad_gateway", e.to_string()),
        };
        let challenge = match &self {
            // RFC 6750 §3.1: no error code when no credential was sent.
            Self::Authn(AuthnError::Missing) => Some(format!("Bearer realm=\"{realm}\"")),
            Self::Authn(AuthnError::InvalidRequest(_) | AuthnError::InvalidToken(_)) => {
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{description}\""
                ))
            }
            Self::Authz(AuthzError::MissingScope) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{scope}\""
            )),
            Self::Authz(AuthzError::ClaimMismatch) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\""
            )),
            _ => None,
        };
        let body =
            serde_json::json!({"error": error, "error_description": description}).to_string();
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
