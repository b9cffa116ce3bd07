//! Protocol upgrades (WebSocket): forwarded only after the request passed
//! its route's access rule, and only to protocols the route names; then the
//! two connections are piped both ways. `h2c` is never upgraded to: the
//! header is dropped with the other hop-by-hop headers, as RFC 9113 §3.2
//! lets a server do, so the tunnel it asks for never exists.

use http::HeaderMap;
use http::header::{CONNECTION, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` and `Upgrade: <protocol>`), if any.
pub fn requested(headers: &HeaderMap) -> Option<&str> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let protocol = headers
        .get(UPGRADE)?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .trim();
    (!protocol.is_empty()).then_some(protocol)
}

/// Does a route's allowed name (`websocket`) cover `protocol`
/// (`WebSocket`, or `websocket/13`)?
pub fn allows(allowed: &[Box<str>], protocol: &str) -> bool {
    let name = protocol.split('/').next().unwrap_or(protocol);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(protocol) || a.eq_ignore_ascii_case(name))
}

pub fn is_h2c(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("h2c")
}

/// The two halves of an upgraded exchange, handed by the request handler to
/// its connection's task, which pipes them: so a tunnel holds its
/// connection's slot under `max_connections`, counts as open, is closed when
/// idle, and is drained on shutdown like any connection.
pub struct Tunnel {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
}

impl Tunnel {
    /// Once both sides have switched, copy bytes both ways until either closes.
    pub async fn run(self) {
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    }
}

/// Does the upstream's `101` switch to the protocol the client asked for?
pub fn same_protocol(asked: &http::HeaderValue, answered: &http::HeaderValue) -> bool {
    asked.as_bytes().eq_ignore_ascii_case(answered.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_upgrade_needs_both_headers_and_matches_by_name() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None, "no Connection: upgrade");
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&h), Some("websocket"));
        let allowed: Box<[Box<str>]> = Box::new(["websocket".into()]);
        assert!(allows(&allowed, "WebSocket"));
        assert!(allows(&allowed, "websocket/13"));
        assert!(!allows(&allowed, "spdy/3"));
        assert!(is_h2c("H2C"));
    }
}
