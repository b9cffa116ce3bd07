//! API keys: "the client already has one and sends it in every request"
//! (the seed). Keys are configured as SHA-256 hashes, each mapped to a
//! principal and scopes, so the routes' scope rules apply unchanged.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value, json};

use super::{AuthnError, Origin, Principal};

/// One configured key.
#[derive(Debug)]
pub struct ApiKey {
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    pub principal: Arc<Principal>,
}

impl ApiKey {
    /// A key named `name` (its subject) with these scopes.
    pub fn new(name: &str, digest: [u8; 32], scopes: &[String]) -> Self {
        let mut scopes: Vec<Box<str>> = scopes.iter().map(|s| s.as_str().into()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(name));
        claims.insert("scope".into(), Value::String(scopes.join(" ")));
        Self {
            digest,
            principal: Arc::new(Principal {
                origin: Origin::ApiKey,
                subject: Some(name.into()),
                claims,
                scopes: scopes.into(),
                expires_at: i64::MAX,
                jti: None,
                issued_at: None,
                confirmation: Default::default(),
                caller: format!("key:{name}").into(),
            }),
        }
    }
}

/// The configured keys and the header they come in.
#[derive(Debug)]
pub struct ApiKeys {
    pub header: HeaderName,
    keys: Box<[ApiKey]>,
}

impl ApiKeys {
    pub fn new(header: HeaderName, keys: Vec<ApiKey>) -> Self {
        Self {
            header,
            keys: keys.into(),
        }
    }

    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// Does the request carry a key (in any form)?
    pub fn present(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(&self.header)
    }

    /// The principal of the request's key. Every configured digest is
    /// compared, in constant time, whatever matches: how long the check
    /// takes says nothing about which key is close.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, AuthnError> {
        let mut values = headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Err(AuthnError::Missing);
        };
        if values.next().is_some() {
            return Err(AuthnError::InvalidRequest("more than one API key header"));
        }
        let key = value.as_bytes();
        if key.is_empty() {
            return Err(AuthnError::InvalidApiKey);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
        let mut found = None;
        for candidate in self.keys.iter() {
            let equal = aws_lc_rs::constant_time::verify_slices_are_equal(
                &candidate.digest,
                digest.as_ref(),
            )
            .is_ok();
            if equal && found.is_none() {
                found = Some(Arc::clone(&candidate.principal));
            }
        }
        found.ok_or(AuthnError::InvalidApiKey)
    }
}

/// Parse a configured hex SHA-256.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sha(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref(),
        );
        out
    }

    #[test]
    fn a_key_is_found_by_its_hash_and_carries_its_scopes() {
        let keys = ApiKeys::new(
            HeaderName::from_static("x-api-key"),
            vec![
                ApiKey::new("cron", sha("k1"), &["reports".into()]),
                ApiKey::new("ops", sha("k2"), &[]),
            ],
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k1"));
        let principal = keys.authenticate(&headers).unwrap();
        assert_eq!(principal.subject.as_deref(), Some("cron"));
        assert_eq!(&*principal.scopes, &["reports".into()] as &[Box<str>]);
        headers.insert("x-api-key", HeaderValue::from_static("k3"));
        assert_eq!(
            keys.authenticate(&headers).unwrap_err(),
            AuthnError::InvalidApiKey
        );
        headers.append("x-api-key", HeaderValue::from_static("k1"));
        assert!(matches!(
            keys.authenticate(&headers),
            Err(AuthnError::InvalidRequest(_))
        ));
    }

    #[test]
    fn digests_are_64_hex_digits() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_digest(hex), Some(sha("test")));
        assert_eq!(parse_digest(&hex.to_uppercase()), Some(sha("test")));
        assert_eq!(parse_digest(&hex[1..]), None);
        assert_eq!(parse_digest(&hex.replace('9', "g")), None);
    }
}
