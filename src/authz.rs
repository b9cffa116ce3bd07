//! Authorisation: does an authenticated principal meet a route's requirement?

use crate::authn::sender::{self, Presented};
use crate::authn::{AuthnError, Principal};
use crate::claims::{self, ClaimPath};
use crate::dpop::Expected;
use crate::error::GatewayError;
use crate::headers::ClientInfo;
use crate::routes::{Access, Route};
use crate::runtime::Runtime;

/// What a bearer route asks of a token, compiled at load.
#[derive(Debug)]
pub struct Requirement {
    /// Providers whose tokens the route accepts; `None` means all.
    pub providers: Option<Box<[usize]>>,
    /// Every one of these must be among the token's scopes.
    pub scopes: Box<[Box<str>]>,
    /// Each claim must equal the value, or be an array holding it.
    pub claims: Box<[(ClaimPath, Box<str>)]>,
    /// `scopes` joined by spaces, for the RFC 6750 `scope` attribute.
    pub scope_challenge: Box<str>,
    /// `verify: remote`: tokens are introspected on every request, with no
    /// cache in between, never judged from local keys.
    pub remote: bool,
}

/// Why an authenticated request was refused (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("token lacks a required scope")]
    MissingScope,
    #[error("token lacks a required claim")]
    ClaimMismatch,
}

impl AuthzError {
    /// Stable reason code for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingScope => "missing_scope",
            Self::ClaimMismatch => "claim_mismatch",
        }
    }
}

impl Requirement {
    /// Does the route accept tokens from this provider?
    pub fn accepts_provider(&self, provider: usize) -> bool {
        self.providers
            .as_ref()
            .is_none_or(|p| p.contains(&provider))
    }

    /// Check scopes and claims. The provider was checked during authentication.
    pub fn authorize(&self, principal: &Principal) -> Result<(), AuthzError> {
        let has_all_scopes = self
            .scopes
            .iter()
            .all(|s| principal.scopes.binary_search(s).is_ok());
        if !has_all_scopes {
            return Err(AuthzError::MissingScope);
        }
        let claims_ok = self.claims.iter().all(|(path, expected)| {
            path.lookup(&principal.claims)
                .is_some_and(|v| claims::matches(v, expected))
        });
        if !claims_ok {
            return Err(AuthzError::ClaimMismatch);
        }
        Ok(())
    }
}

/// Proof that a request may be forwarded. Only `admit` makes one and
/// `pipeline` forwards only with one, so no path reaches an upstream without
/// passing its route's access rule.
pub struct Permit {
    principal: Option<std::sync::Arc<Principal>>,
}

impl Permit {
    /// The authenticated caller; `None` on public routes.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_deref()
    }

    /// The same, shared, for whoever must keep it past the request.
    pub fn principal_arc(&self) -> Option<&std::sync::Arc<Principal>> {
        self.principal.as_ref()
    }
}

/// Apply a route's access rule: a route that needs a client certificate
/// needs one first; public routes then pass; protected routes need a valid
/// credential of a kind they take (authentication), held to its bindings
/// (`cnf`, DPoP), that meets the requirement (authorisation). A bearer
/// token, when sent and taken, is the credential; otherwise an API key.
/// There is no fallback from a bad one to the other.
pub async fn admit(
    route: &Route,
    parts: &http::request::Parts,
    canonical_path: &str,
    client: &ClientInfo,
    rt: &Runtime,
) -> Result<Permit, GatewayError> {
    if route.client_cert_required && client.peer.is_none() {
        return Err(GatewayError::ClientCertRequired);
    }
    let Access::Protected(protected) = &route.access else {
        return Ok(Permit { principal: None });
    };
    let headers = &parts.headers;
    let requirement = &protected.requirement;
    let api_keys = rt.api_keys.as_ref().filter(|_| protected.api_key);
    let has_authorization = headers.contains_key(http::header::AUTHORIZATION);
    let principal = match api_keys {
        Some(keys) if !(protected.bearer && has_authorization) && keys.present(headers) => {
            keys.authenticate(headers)?
        }
        _ if protected.bearer => {
            let authenticated = rt.authn.authenticate(headers, requirement).await?;
            let presented = Presented {
                scheme: authenticated.scheme,
                headers,
                expected: Expected {
                    method: &parts.method,
                    scheme: rt.public_scheme,
                    authority: authority(parts),
                    path: canonical_path,
                    access_token: Some(authenticated.token),
                },
                peer: client.peer.as_ref(),
            };
            sender::check(
                &authenticated.principal,
                &presented,
                protected.dpop_required,
                &rt.dpop,
                crate::authn::unix_now(),
            )?;
            authenticated.principal
        }
        _ => return Err(AuthnError::Missing.into()),
    };
    requirement.authorize(&principal)?;
    Ok(Permit {
        principal: Some(principal),
    })
}

/// The authority the client addressed: HTTP/2's `:authority` or an
/// absolute-form target first (RFC 9112 §3.2.2: it wins over `Host`), else
/// `Host`. Client-chosen either way: `dpop.origins` pins it.
fn authority(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}
