//! A request's life, in order. The only place stages are sequenced:
//! canonical path → route → access (authn + authz) → headers → upstream.
//! Every request ends in exactly one access-log event, errors included
//! (see `access`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;

use crate::access::{self, Logged, Record};
use crate::authz::{self, Permit};
use crate::cors::{Cors, Preflight};
use crate::error::{Body, Challenge, GatewayError};
use crate::forward;
use crate::headers::{self, ClientInfo};
use crate::path;
use crate::routes::Access;
use crate::runtime::Runtime;
use crate::upgrade;

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
    let origin = parts.headers.get(http::header::ORIGIN).cloned();
    let preflight = Cors::preflight_method(&parts.method, &parts.headers).is_some();
    let mut body = Some(body);
    let result = proxy(parts, &mut body, client, &rt, &mut record).await;
    let route = record.route.and_then(|i| rt.routes.get(i));
    let mut response = match result {
        Ok(response) => {
            let metrics = record.route.and_then(|i| rt.route_metrics.get(i));
            match (metrics, record.upstream) {
                (Some(metrics), Some(upstream)) => {
                    metrics.forwarded(response.status().as_u16(), upstream);
                }
                // Answered here (a CORS preflight): counted, never timed as upstream.
                _ => {
                    rt.metrics
                        .answered(metrics, response.status().as_u16(), "allow", record.reason)
                }
            }
            response
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
            rt.metrics.answered(
                record.route.and_then(|i| rt.route_metrics.get(i)),
                response.status().as_u16(),
                "deny",
                record.reason,
            );
            response
        }
    };
    if let Some(cors) = route.and_then(|r| r.cors.as_ref()) {
        cors.decorate(origin.as_ref(), &mut response, preflight);
    }
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
) -> Result<Response<Body>, GatewayError> {
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
    // A CORS preflight is judged for the route of the method it asks about,
    // and answered here, without a token.
    if let Some(asked) = Cors::preflight_method(&parts.method, &parts.headers)
        && let Some(route) = rt.routes.find(&asked, canonical.as_str())
        && let Some(cors) = &route.cors
        && let Some(origin) = parts.headers.get(http::header::ORIGIN)
    {
        record.route = Some(route.index);
        return match cors.preflight(origin, &asked) {
            Preflight::Allowed => {
                record.reason = "preflight";
                let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
                *response.status_mut() = http::StatusCode::NO_CONTENT;
                Ok(response)
            }
            Preflight::Refused => Err(GatewayError::CorsRefused),
        };
    }
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
    if let Some(limiter) = &route.rate_limit {
        let caller = permit.principal().map_or(&client.caller, |p| &p.caller);
        limiter.check(caller).map_err(GatewayError::RateLimited)?;
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body) {
        return Err(forward::UpstreamError::BodyTooLarge.into());
    }
    // A browser opens a WebSocket from any page and sends its cookies along
    // (no CORS check applies): a token from a cookie upgrades only from an
    // origin the route's CORS policy allows (cross-site WebSocket hijacking).
    let asked_upgrade = upgrade::requested(&parts.headers);
    if asked_upgrade.is_some()
        && !parts.headers.contains_key(http::header::AUTHORIZATION)
        && parts.headers.contains_key(http::header::COOKIE)
        && rt.authn.token_cookies().next().is_some()
    {
        let allowed = match (&route.cors, parts.headers.get(http::header::ORIGIN)) {
            (Some(cors), Some(origin)) => cors.allows(origin),
            _ => false,
        };
        if !allowed {
            return Err(GatewayError::CorsRefused);
        }
    }
    // Only the one protocol checked goes upstream: `websocket, h2c` must
    // not smuggle a second offer past the check.
    let upgrade = match asked_upgrade {
        Some(protocol) if upgrade::is_h2c(protocol) => None,
        Some(protocol) if upgrade::allows(&route.upgrades, protocol) => {
            Some(http::HeaderValue::from_str(protocol).map_err(|_| GatewayError::UpgradeRefused)?)
        }
        Some(_) => return Err(GatewayError::UpgradeRefused),
        None => None,
    };
    // Judged before the hop-by-hop headers go.
    let keeps_upstream = parts.version == http::Version::HTTP_11
        && !headers::connection_has(&parts.headers, "close");
    headers::to_upstream(
        &mut parts.headers,
        route,
        permit.principal(),
        client,
        &rt.identity_headers,
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
        parts.headers.remove(crate::dpop::DPOP);
        headers::remove_cookies(&mut parts.headers, rt.authn.token_cookies());
    }
    // The hop-by-hop headers are gone; an allowed upgrade gets its own back.
    let client_upgrade = match &upgrade {
        Some(protocol) => {
            parts
                .headers
                .insert(http::header::CONNECTION, UPGRADE_TOKEN);
            parts
                .headers
                .insert(http::header::UPGRADE, protocol.clone());
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        }
        None => None,
    };
    // A client's HTTP/1.1 connection has one request at a time and can keep
    // an upstream connection of its own, if it stays open; HTTP/1.0, closing
    // connections, HTTP/2 streams and upgrades share the pool.
    let affinity = (keeps_upstream && upgrade.is_none()).then_some(&client.upstream);
    // Upstreams get HTTP/1.1 semantics (or HTTP/2 where configured),
    // whatever the client used.
    parts.version = http::Version::HTTP_11;
    let Some(body) = body.take() else {
        return Err(GatewayError::Upstream(forward::UpstreamError::Failed));
    };
    let limit = usize::try_from(route.max_body).unwrap_or(usize::MAX);
    let request = Request::from_parts(parts, Either::Left(Limited::new(body, limit)));
    let sent = Instant::now();
    let mut response = route
        .upstream
        .send(request, &path_and_query, route.timeout, affinity)
        .await?;
    record.upstream = Some(sent.elapsed());
    let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let upstream_protocol = response.headers().get(http::header::UPGRADE).cloned();
    headers::remove_hop_by_hop(response.headers_mut());
    if switched {
        // Only a switch to exactly the protocol asked for and allowed is
        // passed on; any other 101 would open a tunnel nobody judged.
        match (client_upgrade, upgrade, upstream_protocol, &client.tunnels) {
            (Some(client), Some(asked), Some(answered), Some(tunnels))
                if upgrade::same_protocol(&asked, &answered) =>
            {
                let upstream = hyper::upgrade::on(&mut response);
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, UPGRADE_TOKEN);
                response
                    .headers_mut()
                    .insert(http::header::UPGRADE, answered);
                tunnels
                    .send(upgrade::Tunnel { client, upstream })
                    .map_err(|_| GatewayError::Upstream(forward::UpstreamError::Failed))?;
            }
            _ => return Err(GatewayError::Upstream(forward::UpstreamError::Failed)),
        }
    }
    Ok(response.map(Either::Left))
}

const UPGRADE_TOKEN: http::HeaderValue = http::HeaderValue::from_static("upgrade");

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
