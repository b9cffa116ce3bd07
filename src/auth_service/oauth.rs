//! OAuth 2.0 error responses (RFC 6749 §5.2, RFC 7009, RFC 7662) and the
//! JSON answers of the auth service.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::error::Body;

/// Why a token, revocation or introspection request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// 401, with a `Basic` challenge.
    #[error("{0}")]
    InvalidClient(&'static str),
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error("{0}")]
    UnauthorizedClient(&'static str),
    #[error("grant_type not supported: use client_credentials or refresh_token")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidScope(&'static str),
    #[error("the auth service failed; see its log")]
    ServerError,
    /// Too many client checks at once: 503 with `Retry-After`.
    #[error("busy; retry shortly")]
    TemporarilyUnavailable,
    /// A client without `introspect: true` asked to introspect: 403.
    #[error("this client may not introspect tokens")]
    IntrospectionNotAllowed,
    /// The token request's DPoP proof is wrong (RFC 9449 §5): 400.
    #[error(transparent)]
    InvalidDpopProof(crate::dpop::DpopError),
}

impl OAuthError {
    /// The RFC 6749 error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::IntrospectionNotAllowed => "unauthorized_client",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = match self {
            Self::InvalidClient(_) => StatusCode::UNAUTHORIZED,
            Self::IntrospectionNotAllowed => StatusCode::FORBIDDEN,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({"error": self.code(), "error_description": self.to_string()});
        let mut response = json(status, &body);
        if let Self::InvalidClient(_) = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\", charset=\"UTF-8\""),
            );
        }
        if let Self::TemporarilyUnavailable = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON response that must not be cached (tokens, errors, introspection).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes(status, Bytes::from(value.to_string()), "no-store")
}

/// A JSON body with the given `Cache-Control`.
pub fn bytes(status: StatusCode, body: Bytes, cache_control: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if cache_control == "no-store" {
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    response
}

/// An empty response (`/revoke` answers 200 with nothing).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
