//! The one place where failures become responses (RFC 6750 for auth).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authn::{AuthnError, TokenError};
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
    #[error("client certificate required")]
    ClientCertRequired,
    #[error("CORS preflight refused: origin or method not allowed")]
    CorsRefused,
    #[error("rate limit exceeded")]
    RateLimited(std::time::Duration),
    #[error("upgrade to this protocol not allowed on this route")]
    UpgradeRefused,
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
            // Not 401: no WWW-Authenticate scheme asks for a certificate,
            // which only a new TLS connection can bring.
            Self::ClientCertRequired | Self::CorsRefused => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpgradeRefused => StatusCode::BAD_REQUEST,
            Self::Authn(AuthnError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            Self::Authn(
                AuthnError::KeysUnavailable
                | AuthnError::IntrospectionUnavailable
                | AuthnError::DpopUnavailable,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Authn(_) => StatusCode::UNAUTHORIZED,
            Self::Authz(_) => StatusCode::FORBIDDEN,
            Self::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(UpstreamError::BodyTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
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
            Self::ClientCertRequired => "client_cert_required",
            Self::CorsRefused => "cors_refused",
            Self::RateLimited(_) => "rate_limited",
            Self::UpgradeRefused => "upgrade_refused",
            Self::Authn(e) => e.code(),
            Self::Authz(e) => e.code(),
            Self::Upstream(e) => e.code(),
        }
    }

    /// The response. `challenge` says what the route would have accepted.
    pub fn into_response(self, challenge: &Challenge<'_>) -> Response<Body> {
        let status = self.status();
        let realm = challenge.realm;
        let (error, description): (&str, String) = match &self {
            Self::BadPath(e) => ("invalid_request", e.to_string()),
            Self::EncodedSlash | Self::Semicolon | Self::LowercaseMethod => {
                ("invalid_request", self.to_string())
            }
            Self::RouteNotFound => ("not_found", "no route for this request".into()),
            Self::ClientCertRequired => (
                "client_certificate_required",
                "this route needs a verified TLS client certificate".into(),
            ),
            Self::CorsRefused => ("cors_refused", self.to_string()),
            Self::RateLimited(_) => ("rate_limited", self.to_string()),
            Self::UpgradeRefused => ("invalid_request", self.to_string()),
            Self::Authn(AuthnError::Missing) => (
                "unauthorized",
                match (challenge.bearer, challenge.api_key.is_some()) {
                    (true, true) => "bearer token or API key required",
                    (false, true) => "API key required",
                    _ => "bearer token required",
                }
                .into(),
            ),
            Self::Authn(AuthnError::InvalidRequest(why)) => ("invalid_request", (*why).into()),
            Self::Authn(AuthnError::InvalidToken(e)) => ("invalid_token", e.to_string()),
            Self::Authn(AuthnError::InvalidDpopProof(e)) => ("invalid_dpop_proof", e.to_string()),
            Self::Authn(AuthnError::DpopRequired) => ("invalid_token", self.to_string()),
            Self::Authn(AuthnError::InvalidApiKey) => {
                ("invalid_api_key", "API key not recognised".into())
            }
            Self::Authn(
                AuthnError::KeysUnavailable
                | AuthnError::IntrospectionUnavailable
                | AuthnError::DpopUnavailable,
            ) => (
                "temporarily_unavailable",
                "token cannot be verified now".into(),
            ),
            Self::Authz(e) => ("insufficient_scope", e.to_string()),
            Self::Upstream(UpstreamError::Timeout) => ("gateway_timeout", self.to_string()),
            Self::Upstream(UpstreamError::BodyTooLarge) => ("payload_too_large", self.to_string()),
            Self::Upstream(e) => ("bad_gateway", e.to_string()),
        };
        let api_key = |extra: &str| {
            challenge
                .api_key
                .map(|h| format!("ApiKey realm=\"{realm}\", header=\"{h}\"{extra}"))
        };
        // Token challenges use the DPoP scheme (with its `algs`) when the
        // request used it or the route takes nothing else (RFC 9449 §7.1).
        let dpop = challenge.dpop
            || matches!(
                self,
                Self::Authn(
                    AuthnError::InvalidDpopProof(_)
                        | AuthnError::DpopRequired
                        | AuthnError::InvalidToken(TokenError::DpopSchemeRequired)
                )
            );
        let (scheme, algs) = if dpop {
            ("DPoP", format!(", algs=\"{}\"", challenge.dpop_algs))
        } else {
            ("Bearer", String::new())
        };
        let challenges: Vec<String> = match &self {
            // RFC 6750 §3.1: no error code when no credential was sent; one
            // challenge per scheme the route takes.
            Self::Authn(AuthnError::Missing) => challenge
                .bearer
                .then(|| format!("{scheme} realm=\"{realm}\"{algs}"))
                .into_iter()
                .chain(api_key(""))
                .collect(),
            Self::Authn(AuthnError::InvalidApiKey) => {
                api_key(", error=\"invalid_api_key\"").into_iter().collect()
            }
            Self::Authn(
                AuthnError::InvalidRequest(_)
                | AuthnError::InvalidToken(_)
                | AuthnError::InvalidDpopProof(_)
                | AuthnError::DpopRequired,
            ) => {
                vec![format!(
                    "{scheme} realm=\"{realm}\", error=\"{error}\", error_description=\"{description}\"{algs}"
                )]
            }
            Self::Authz(AuthzError::MissingScope) => vec![format!(
                "{scheme} realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{}\"{algs}",
                challenge.scope
            )],
            Self::Authz(AuthzError::ClaimMismatch) => vec![format!(
                "{scheme} realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\"{algs}"
            )],
            _ => Vec::new(),
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
        for value in challenges
            .iter()
            .filter_map(|c| HeaderValue::from_str(c).ok())
        {
            headers.append(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::RateLimited(wait) = self {
            // Whole seconds, rounded up: a client retrying then is let in.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// What a refused request's route would have accepted: the parameters of
/// its `WWW-Authenticate` challenges.
pub struct Challenge<'a> {
    pub realm: &'a str,
    /// The route's required scopes, space-separated, for the 403 challenge.
    pub scope: &'a str,
    pub bearer: bool,
    /// The API key header, when the route takes API keys.
    pub api_key: Option<&'a http::HeaderName>,
    /// Challenge with the DPoP scheme: the request used it, or the route
    /// requires it.
    pub dpop: bool,
    /// The DPoP algorithms accepted, space-separated.
    pub dpop_algs: &'a str,
}
