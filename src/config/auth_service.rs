//! `auth_service:` → `AuthServiceConfig`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::file;
use crate::auth_service::keys::SigningAlg;
use crate::auth_service::{AuthServiceConfig, ClientConfig};

type Errors = Vec<(String, String)>;

pub fn compile(a: &file::AuthService, errors: &mut Errors) -> Option<AuthServiceConfig> {
    let before = errors.len();
    let listen = a
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| {
            errors.push((
                "auth_service.listen".into(),
                format!("`{}` is not an address:port ({e})", a.listen),
            ))
        })
        .ok();
    let issuer = match (&a.issuer, listen) {
        (Some(issuer), _) => issuer.trim_end_matches('/').to_owned(),
        (None, Some(listen)) => format!("http://{listen}"),
        (None, None) => String::new(),
    };
    // RFC 8414 §2: an https URL with no query or fragment (http allowed for
    // local trials). It must parse: its parts are what DPoP proofs name.
    let parses = |i: &str| {
        i.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http"))
                && u.authority().is_some_and(|a| !a.as_str().contains('@'))
                && u.query().is_none()
        }) && !i.contains('#')
    };
    if a.issuer.as_deref().is_some_and(|i| !parses(i)) {
        errors.push((
            "auth_service.issuer".into(),
            "must be an http(s) URL with a host and no user, query or fragment (RFC 8414)".into(),
        ));
    }
    let algorithm = a.signing_algorithm.unwrap_or(SigningAlg::ES256);
    if a.issuer.is_none() && listen.is_some_and(|l| l.ip().is_unspecified()) {
        errors.push((
            "auth_service.listen".into(),
            "is an unspecified address (0.0.0.0): set `issuer` to the URL clients reach the service at".into(),
        ));
    }
    let mut ids = HashSet::new();
    let clients: Vec<ClientConfig> = a
        .clients
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let at = format!("auth_service.clients[{i}]");
            if !ids.insert(c.client_id.as_str()) {
                errors.push((
                    format!("{at}.client_id"),
                    format!("`{}` is listed twice", c.client_id),
                ));
            }
            compile_client(c, &at, errors)
        })
        .collect();
    if a.clients.is_empty() {
        errors.push((
            "auth_service.clients".into(),
            "list at least one client".into(),
        ));
    }
    // One set of argon2 parameters for all: an unknown client id is checked
    // against a dummy hash of those parameters, so it costs what a known one
    // does and timing does not tell which ids exist.
    let mut parameters = a
        .clients
        .iter()
        .filter_map(|c| crate::auth_service::clients::hash_parameters(&c.client_secret_hash));
    if let Some(first) = parameters.next()
        && parameters.any(|p| p != first)
    {
        errors.push((
            "auth_service.clients".into(),
            "every client_secret_hash must use the same argon2 parameters (make them all with `portcullis hash-secret`)".into(),
        ));
    }
    if errors.len() != before {
        return None;
    }
    Some(AuthServiceConfig {
        listen: listen?,
        issuer: issuer.into(),
        issuer_from_listen: a.issuer.is_none(),
        algorithm,
        key_file: a.key_file.as_ref().map(PathBuf::from),
        state_file: a.state_file.as_ref().map(PathBuf::from),
        clients: clients.into(),
        // Set from the top-level `dpop:` once that is compiled.
        dpop: Default::default(),
    })
}

fn compile_client(c: &file::AuthClient, at: &str, errors: &mut Errors) -> Option<ClientConfig> {
    let before = errors.len();
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    };
    if !is_token(&c.client_id) || c.client_id.contains(':') {
        errors.push((
            format!("{at}.client_id"),
            "must be printable ASCII without spaces, quotes or `:`".into(),
        ));
    }
    if let Err(e) = crate::auth_service::clients::check_hash(&c.client_secret_hash) {
        errors.push((format!("{at}.client_secret_hash"), e));
    }
    for (j, scope) in c.scopes.iter().enumerate() {
        if !is_token(scope) {
            errors.push((
                format!("{at}.scopes[{j}]"),
                format!("`{scope}` is not a scope token"),
            ));
        }
    }
    if c.audiences.is_empty() {
        errors.push((
            format!("{at}.audiences"),
            "list the APIs (aud) this client's tokens are for".into(),
        ));
    }
    let access_ttl = c
        .access_token_ttl
        .map_or(Duration::from_secs(15 * 60), |d| d.0);
    let refresh_ttl = c
        .refresh_token_ttl
        .map_or(Duration::from_secs(7 * 86_400), |d| d.0);
    if access_ttl < Duration::from_secs(1) || refresh_ttl < Duration::from_secs(1) {
        errors.push((at.into(), "token lifetimes must be at least 1s".into()));
    }
    if !c.refresh_tokens && c.refresh_token_ttl.is_some() {
        errors.push((
            format!("{at}.refresh_token_ttl"),
            "contradicts `refresh_tokens: false`".into(),
        ));
    }
    if errors.len() != before {
        return None;
    }
    Some(ClientConfig {
        id: c.client_id.as_str().into(),
        secret_hash: c.client_secret_hash.as_str().into(),
        scopes: c.scopes.iter().map(|s| s.as_str().into()).collect(),
        audiences: c.audiences.iter().map(|s| s.as_str().into()).collect(),
        access_ttl,
        refresh_ttl: c.refresh_tokens.then_some(refresh_ttl),
        introspect: c.introspect,
    })
}
