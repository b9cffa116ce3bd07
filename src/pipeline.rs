//! A request's life, in order. The only place stages are sequenced:
//! canonical path → route → access (authn + authz) → headers → upstream.
//! Every request ends in exactly one access-log event, errors included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::Body as _;
use hyper::body::Incoming;

use crate::authn::Principal;
use crate::authz::{self, Permit};
use crate::error::{Body, Challenge, GatewayError};
use crate::forward;
use crate::headers::{self, ClientInfo};
use crate::path;
use crate::routes::{Access, Route};
use crate::runtime::Runtime;

/// What the log line needs to know about how far a request got.
#[derive(Default)]
struct Trace<'rt> {
    route: Option<&'rt Route>,
    principal: Option<Arc<Principal>>,
    /// The canonical path, or the raw one when it could not be canonicalised.
    path: Option<http::uri::PathAndQuery>,
}

/// Handle one request. Never fails: errors become responses here.
pub async fn handle(
    request: Request<Incoming>,
    client: &ClientInfo,
    rt: &Runtime,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let mut trace = Trace::default();
    let (parts, body) = request.into_parts();
    // Reading the body of an `Expect: 100-continue` request would invite it.
    let linger = !body.is_end_stream() && !parts.headers.contains_key(http::header::EXPECT);
    let dpop_scheme = crate::authn::uses_dpop(&parts.headers);
    let mut body = Some(body);
    let result = proxy(parts, &mut body, client, rt, &mut trace).await;
    let (response, reason) = match result {
        Ok(response) => (response.map(Either::Left), "allowed"),
        Err(error) => {
            if let Some(body) = body.filter(|_| linger) {
                discard_unread(body);
            }
            let code = error.code();
            let protected = match trace.route.map(|r| &r.access) {
                Some(Access::Protected(protected)) => Some(protected),
                _ => None,
            };
            let challenge = Challenge {
                realm: &rt.realm,
                scope: protected.map_or("", |p| &p.requirement.scope_challenge),
                bearer: protected.is_none_or(|p| p.bearer),
                api_key: protected
                    .filter(|p| p.api_key)
                    .and(rt.api_keys.as_ref())
                    .map(|k| &k.header),
                dpop: dpop_scheme || protected.is_some_and(|p| p.dpop_required),
                dpop_algs: rt.dpop.algs_challenge(),
            };
            (error.into_response(&challenge), code)
        }
    };
    tracing::info!(
        target: "portcullis::access",
        method = %method,
        path = trace.path.as_ref().map(|p| p.path()),
        route = trace.route.map(|r| r.pattern.as_str()),
        route.index = trace.route.map(|r| r.index),
        status = response.status().as_u16(),
        decision = if reason == "allowed" { "allow" } else { "deny" },
        reason,
        subject = trace.principal.as_ref().and_then(|p| p.subject.as_deref()),
        duration_us = started.elapsed().as_micros() as u64,
    );
    response
}

/// The stages. `body` is taken only when the request is forwarded; a
/// refused request leaves it for `discard_unread`.
async fn proxy<'rt>(
    mut parts: http::request::Parts,
    body: &mut Option<Incoming>,
    client: &ClientInfo,
    rt: &'rt Runtime,
    trace: &mut Trace<'rt>,
) -> Result<Response<Incoming>, GatewayError> {
    // Methods are case-sensitive, but some servers upper-case them: `get`
    // must not slip past a route that judges `GET`.
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(GatewayError::LowercaseMethod);
    }
    let canonical = match path::canonicalize(parts.uri.path()) {
        Ok(canonical) => canonical,
        Err(error) => {
            trace.path = parts.uri.path_and_query().cloned();
            return Err(error.into());
        }
    };
    let path_and_query = forward::path_and_query(parts.uri.path_and_query(), canonical.as_str())?;
    trace.path = Some(path_and_query.clone());
    let route = rt
        .routes
        .find(&parts.method, canonical.as_str())
        .ok_or(GatewayError::RouteNotFound)?;
    trace.route = Some(route);
    if canonical.has_encoded_slash() && !route.allow_encoded_slash {
        return Err(GatewayError::EncodedSlash);
    }
    if canonical.has_semicolon() && !route.allow_semicolon {
        return Err(GatewayError::Semicolon);
    }
    let permit: Permit = authz::admit(route, &parts, canonical.as_str(), client, rt).await?;
    trace.principal = permit.principal_arc().cloned();
    headers::to_upstream(
        &mut parts.headers,
        route,
        permit.principal(),
        client,
        &rt.identity_headers,
        &route.upstream.host,
        parts.uri.authority(),
    );
    // `strip_authorization` strips every credential: the API key, the DPoP
    // proof and the token cookies too.
    if route.strip_authorization {
        if let Some(keys) = &rt.api_keys {
            parts.headers.remove(&keys.header);
        }
        parts.headers.remove(DPOP);
        headers::remove_cookies(&mut parts.headers, rt.authn.token_cookies());
    }
    parts.uri = route.upstream.uri(path_and_query)?;
    // Upstreams are spoken to in HTTP/1.1, whatever the client used.
    parts.version = http::Version::HTTP_11;
    let Some(body) = body.take() else {
        return Err(GatewayError::Upstream(forward::UpstreamError::Failed));
    };
    let mut response = route
        .upstream
        .send(Request::from_parts(parts, body))
        .await?;
    headers::remove_hop_by_hop(response.headers_mut());
    Ok(response)
}

const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// Most a refused request's body is read before the connection is dropped.
const DISCARD_LIMIT: usize = 8 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Read and drop what is left of a refused request's body, within limits, so
/// that a client still uploading sees our 401 instead of a connection reset
/// (nginx's lingering close).
fn discard_unread(mut body: Incoming) {
    tokio::spawn(async move {
        let mut read = 0usize;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > DISCARD_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}
