//! A request's life, in order. The only place stages are sequenced:
//! canonical path → route → access (authn + authz) → headers → upstream.
//! Every request ends in exactly one access-log event, errors included
//! (see `access`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::Body as _;
use hyper::body::Incoming;

use crate::access::{self, Logged, Record};
use crate::authz::{self, Permit};
use crate::error::{Body, Challenge, GatewayError};
use crate::forward;
use crate::headers::{self, ClientInfo};
use crate::path;
use crate::routes::Access;
use crate::runtime::Runtime;

/// Handle one request. Never fails: errors become responses here. The
/// exchange is logged and timed when the response body ends.
pub async fn handle(
    request: Request<Incoming>,
    client: &ClientInfo,
    rt: Arc<Runtime>,
) -> Response<Logged<Body>> {
    let started = Instant::now();
    let mut record = Record {
        started,
        request_id: access::request_id(request.headers(), &rt.request_ids),
        method: request.method().clone(),
        path: None,
        route: None,
        principal: None,
        status: 0,
        reason: "allowed",
        upstream: None,
        runtime: Arc::clone(&rt),
    };
    let (parts, body) = request.into_parts();
    // Reading the body of an `Expect: 100-continue` request would invite it.
    let linger = !body.is_end_stream() && !parts.headers.contains_key(http::header::EXPECT);
    let dpop_scheme = crate::authn::uses_dpop(&parts.headers);
    let mut body = Some(body);
    let result = proxy(parts, &mut body, client, &rt, &mut record).await;
    let route = record.route.and_then(|i| rt.routes.get(i));
    let mut response = match result {
        Ok(response) => {
            if let Some(metrics) = record.route.and_then(|i| rt.route_metrics.get(i)) {
                metrics.forwarded(
                    response.status().as_u16(),
                    record.upstream.unwrap_or_default(),
                );
            }
            response.map(Either::Left)
        }
        Err(error) => {
            if let Some(body) = body.filter(|_| linger) {
                discard_unread(body);
            }
            record.reason = error.code();
            let protected = match route.map(|r| &r.access) {
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
            let response = error.into_response(&challenge);
            rt.metrics.denied(
                record.route.and_then(|i| rt.route_metrics.get(i)),
                response.status().as_u16(),
                record.reason,
            );
            response
        }
    };
    record.status = response.status().as_u16();
    response
        .headers_mut()
        .insert(access::X_REQUEST_ID, record.request_id.clone());
    response.map(|body| Logged::new(body, record))
}

/// The stages. `body` is taken only when the request is forwarded; a
/// refused request leaves it for `discard_unread`.
async fn proxy(
    mut parts: http::request::Parts,
    body: &mut Option<Incoming>,
    client: &ClientInfo,
    rt: &Runtime,
    record: &mut Record,
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
            record.path = parts.uri.path_and_query().cloned();
            return Err(error.into());
        }
    };
    let path_and_query = forward::path_and_query(parts.uri.path_and_query(), canonical.as_str())?;
    record.path = Some(path_and_query.clone());
    let route = rt
        .routes
        .find(&parts.method, canonical.as_str())
        .ok_or(GatewayError::RouteNotFound)?;
    record.route = Some(route.index);
    if canonical.has_encoded_slash() && !route.allow_encoded_slash {
        return Err(GatewayError::EncodedSlash);
    }
    if canonical.has_semicolon() && !route.allow_semicolon {
        return Err(GatewayError::Semicolon);
    }
    let permit: Permit = authz::admit(route, &parts, canonical.as_str(), client, rt).await?;
    record.principal = permit.principal_arc().cloned();
    headers::to_upstream(
        &mut parts.headers,
        route,
        permit.principal(),
        client,
        &rt.identity_headers,
        &route.upstream.host,
        parts.uri.authority(),
    );
    parts
        .headers
        .insert(access::X_REQUEST_ID, record.request_id.clone());
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
    let sent = Instant::now();
    let mut response = route
        .upstream
        .send(Request::from_parts(parts, body))
        .await?;
    record.upstream = Some(sent.elapsed());
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
