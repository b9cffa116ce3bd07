//! Header rules between client and upstream: hop-by-hop removal (RFC 9110
//! §7.6.1), forwarded headers, identity headers from claims.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::authn::Principal;
use crate::routes::Route;
use crate::tls::peer::PeerCert;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Connection-scoped headers that never cross a proxy. (`Trailer` is not
/// one, RFC 9110 §6.6.2: it announces the trailers that follow, and hyper
/// sends HTTP/1.1 trailers only when it is there.)
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including every header the `Connection`
/// header names. Must run before the gateway adds its own headers, so that
/// `Connection: x-auth-subject` cannot remove what the gateway sets.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |_| false);
}

/// Remove the hop-by-hop headers and every header `also` picks, in one pass
/// over the names (a lookup per rule would hash every rule's name on every
/// request). The names `Connection` lists are matched in place, not parsed
/// into header names; no list is allocated unless more than a few go.
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let connection = headers.get_all(header::CONNECTION);
    let listed = |name: &HeaderName| lists(&connection, name.as_str());
    // `TE: trailers` may cross (gRPC needs it); any other TE may not.
    let te_goes = headers.contains_key(header::TE) && !only_trailers(headers);
    let mut doomed = Doomed::default();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name)
            || (te_goes && name == header::TE)
            || also(name)
            || listed(name)
        {
            doomed.push(name.clone());
        }
    }
    for name in doomed.names() {
        headers.remove(name);
    }
}

/// The header names to remove: a few on the stack (a response usually has
/// just `Connection`), the rest on the heap.
#[derive(Default)]
struct Doomed {
    few: [Option<HeaderName>; 4],
    more: Vec<HeaderName>,
}

impl Doomed {
    fn push(&mut self, name: HeaderName) {
        match self.few.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(name),
            None => self.more.push(name),
        }
    }

    fn names(self) -> impl Iterator<Item = HeaderName> {
        self.few.into_iter().flatten().chain(self.more)
    }
}

/// Does the `Connection` header list `token`?
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    lists(headers.get_all(header::CONNECTION), token)
}

/// Do these comma-separated values list `token` (case-insensitively)?
fn lists<'a>(values: impl IntoIterator<Item = &'a HeaderValue>, token: &str) -> bool {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn only_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Headers that tell an upstream where a request came from or what it
/// "really" is; only the gateway may say that.
const UNTRUSTED: [&str; 7] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What a client must not tell the upstream: every `X-Forwarded-*`,
/// `Forwarded`, `X-Real-IP`, URL and method overrides (Symfony, IIS and
/// others route on them), and every header with an underscore: CGI, WSGI,
/// Rack and PHP read `X_Auth_Subject` as `X-Auth-Subject` (nginx drops them
/// too).
fn is_untrusted(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_') || name.starts_with("x-forwarded-") || UNTRUSTED.contains(&name)
}

pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the gateway knows of the client connection, computed once per
/// connection rather than per request.
pub struct ClientInfo {
    /// The peer address as an `X-Forwarded-For` value.
    pub forwarded_for: HeaderValue,
    pub proto: HeaderValue,
    /// The client certificate the TLS handshake verified.
    pub peer: Option<PeerCert>,
    /// Where an upgraded exchange goes to be piped by the connection's task.
    pub tunnels: Option<tokio::sync::mpsc::UnboundedSender<crate::upgrade::Tunnel>>,
    /// Who a rate limit counts when there is no principal: `ip:<addr>`
    /// (IPv6 by its /64, so one client cannot rotate through addresses).
    pub caller: Box<str>,
    /// This connection's own upstream connection, where one is kept.
    pub upstream: crate::forward::Affinity,
}

/// Rewrite a request's headers for the upstream.
///
/// Client-supplied forwarding and identity headers are dropped (a client
/// cannot send `X-Auth-Subject: admin`), then the gateway's own are set.
/// `Host` is removed here and set per target by `forward`.
pub fn to_upstream(
    headers: &mut HeaderMap,
    route: &Route,
    principal: Option<&Principal>,
    client: &ClientInfo,
    identity_headers: &[HeaderName],
    authority: Option<&http::uri::Authority>,
) {
    remove_where(headers, |name| {
        is_untrusted(name) || identity_headers.contains(name)
    });
    // The authority the client addressed: HTTP/2's `:authority` or an
    // absolute-form target first (RFC 9112 §3.2.2: it wins over `Host`),
    // else `Host` — the order DPoP's `htu` check uses too (`authz`).
    let host = headers.remove(header::HOST);
    let original_host = authority
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or(host);
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_FORWARDED_FOR, client.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, client.proto.clone());
    if route.strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    // Incoming copies went with the other `x-forwarded-*` headers.
    if route.forward_client_cert
        && let Some(value) = client.peer.as_ref().and_then(|p| p.forwarded.clone())
    {
        headers.insert(X_FORWARDED_CLIENT_CERT, value);
    }
    if let Some(principal) = principal {
        for (claim, name) in route.forward_claims.iter() {
            if let Some(value) = claim.lookup(&principal.claims).and_then(claim_header_value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// Remove the named cookies from every `Cookie` header, keeping the rest.
pub fn remove_cookies<'a>(headers: &mut HeaderMap, names: impl Iterator<Item = &'a str>) {
    let names: Vec<&str> = names.collect();
    if names.is_empty() || !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let rest: Vec<&str> = value
                .to_str()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                    !pair.is_empty() && !names.contains(&name)
                })
                .collect();
            (!rest.is_empty()).then(|| HeaderValue::from_str(&rest.join("; ")).ok())?
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// A claim as a header value: strings as they are, anything else as JSON.
/// Values that cannot be a header (control characters) are not sent.
fn claim_header_value(value: &serde_json::Value) -> Option<HeaderValue> {
    match value {
        serde_json::Value::String(s) => HeaderValue::from_str(s).ok(),
        serde_json::Value::Null => None,
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , x-other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn forwarding_override_and_underscore_headers_are_untrusted() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x_auth_subject",
            "x-kept",
            "x-forwardedness",
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        remove_where(&mut h, is_untrusted);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-forwardedness", "x-kept"]);
    }

    #[test]
    fn token_cookies_are_removed_and_the_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; at=secret.jwt.x; lang=en"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("at=other"));
        remove_cookies(&mut h, ["at"].into_iter());
        let left: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(left, ["theme=dark; lang=en"]);
    }

    #[test]
    fn te_trailers_crosses() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }
}
