//! Client authentication at the token, revocation and introspection
//! endpoints: `client_secret_basic` and `client_secret_post` (RFC 6749
//! §2.3.1), secrets checked against argon2 hashes (constant time).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use moka::sync::Cache;
use tokio::sync::Semaphore;

use super::ClientConfig;
use super::oauth::OAuthError;

/// A PHC argon2 hash of `secret`, as `client_secret_hash` wants it.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Is this a usable argon2 PHC string?
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not an argon2 hash ({e}); make one with `portcullis hash-secret`"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "`{}` hashes are not accepted; use argon2 (`portcullis hash-secret`)",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// The credentials a request presented.
pub struct Credentials {
    pub client_id: String,
    secret: String,
}

/// Read the client's credentials from `Authorization: Basic` or the form;
/// using both is an error (RFC 6749 §2.3: one method per request).
pub fn credentials(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Credentials, OAuthError> {
    let basic = match headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            parse_basic(value.as_bytes())
                .ok_or(OAuthError::InvalidClient("malformed Basic credentials"))?,
        ),
    };
    match (basic, form_secret) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "client credentials given twice (Basic and form)",
        )),
        (Some((id, secret)), None) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the Basic credentials",
                ));
            }
            Ok(Credentials {
                client_id: id,
                secret,
            })
        }
        (None, Some(secret)) => Ok(Credentials {
            client_id: form_id
                .ok_or(OAuthError::InvalidRequest(
                    "client_secret without client_id",
                ))?
                .to_owned(),
            secret: secret.to_owned(),
        }),
        (None, None) => Err(OAuthError::InvalidClient("client authentication required")),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// Most argon2 checks at once: each takes a core and ~19 MiB, so an
/// unbounded number of them is a denial of service anyone can start.
fn max_checks() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
/// How long a request waits for a check slot before a 503.
const CHECK_WAIT: Duration = Duration::from_secs(2);
/// How long a verified secret is remembered (as an HMAC), sparing argon2.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// Authenticates clients: argon2 against the configured hashes, bounded in
/// concurrency, with recently verified credentials remembered by HMAC.
pub struct ClientAuth {
    clients: Arc<[ClientConfig]>,
    /// Verified when the client id is unknown: made with the clients' own
    /// argon2 parameters, so an unknown id costs what a known one does.
    dummy_hash: Arc<str>,
    checks: Arc<Semaphore>,
    verified: Cache<[u8; 32], usize>,
    mac_key: hmac::Key,
}

impl ClientAuth {
    pub fn new(clients: Arc<[ClientConfig]>) -> Result<Self, String> {
        let first = clients.first().ok_or("no clients")?;
        let dummy_hash = hash_like(&first.secret_hash, "portcullis-timing-equaliser")?.into();
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| "the system random number generator failed")?;
        Ok(Self {
            clients,
            dummy_hash,
            checks: Arc::new(Semaphore::new(max_checks())),
            verified: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The client these credentials prove, or `invalid_client`; 503
    /// `temporarily_unavailable` when every check slot stays busy.
    pub async fn authenticate(
        &self,
        credentials: Credentials,
    ) -> Result<&ClientConfig, OAuthError> {
        let mut mac = hmac::Context::with_key(&self.mac_key);
        mac.update(credentials.client_id.as_bytes());
        mac.update(&[0]);
        mac.update(credentials.secret.as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(mac.sign().as_ref());
        if let Some(index) = self.verified.get(&fingerprint) {
            return self.clients.get(index).ok_or(OAuthError::ServerError);
        }
        let _permit = tokio::time::timeout(CHECK_WAIT, self.checks.acquire())
            .await
            .map_err(|_| OAuthError::TemporarilyUnavailable)?
            .map_err(|_| OAuthError::ServerError)?;
        let (clients, dummy) = (Arc::clone(&self.clients), Arc::clone(&self.dummy_hash));
        let index = tokio::task::spawn_blocking(move || verify(&clients, &dummy, &credentials))
            .await
            .map_err(|_| OAuthError::ServerError)??;
        self.verified.insert(fingerprint, index);
        self.clients.get(index).ok_or(OAuthError::ServerError)
    }
}

/// Check credentials against the configured clients (slow on purpose).
/// Returns the index of the client in `clients`.
fn verify(
    clients: &[ClientConfig],
    dummy_hash: &str,
    credentials: &Credentials,
) -> Result<usize, OAuthError> {
    let index = clients.iter().position(|c| *c.id == *credentials.client_id);
    let hash = index
        .and_then(|i| clients.get(i))
        .map_or(dummy_hash, |c| &*c.secret_hash);
    let verified = PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(credentials.secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false);
    match index {
        Some(index) if verified => Ok(index),
        _ => Err(OAuthError::InvalidClient("unknown client or wrong secret")),
    }
}

/// A hash of `secret` with the algorithm, version and parameters of `model`.
fn hash_like(model: &str, secret: &str) -> Result<String, String> {
    let model = PasswordHash::new(model).map_err(|e| e.to_string())?;
    let algorithm = argon2::Algorithm::try_from(model.algorithm).map_err(|e| e.to_string())?;
    let version = model
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let params = argon2::Params::try_from(&model).map_err(|e| e.to_string())?;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::new(algorithm, version, params)
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The argon2 algorithm, version and parameters of a hash, to compare hashes.
pub fn hash_parameters(hash: &str) -> Option<String> {
    let parsed = PasswordHash::new(hash).ok()?;
    Some(format!(
        "{}${:?}${}",
        parsed.algorithm, parsed.version, parsed.params
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn basic_credentials_are_url_decoded() {
        let encoded = STANDARD.encode("my%20app:p%40ss%3Aword");
        let got = parse_basic(format!("Basic {encoded}").as_bytes()).unwrap();
        assert_eq!(got, ("my app".to_owned(), "p@ss:word".to_owned()));
        assert!(parse_basic(b"Bearer xyz").is_none());
        assert!(parse_basic(b"Basic !!!").is_none());
    }

    #[test]
    fn one_method_per_request() {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("a:b"))).unwrap(),
        );
        assert!(matches!(
            credentials(&headers, None, Some("b")),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(credentials(&headers, Some("a"), None).is_ok());
        assert!(matches!(
            credentials(&headers, Some("z"), None),
            Err(OAuthError::InvalidRequest(_))
        ));
        let none = HeaderMap::new();
        assert!(matches!(
            credentials(&none, Some("a"), None),
            Err(OAuthError::InvalidClient(_))
        ));
        assert_eq!(
            credentials(&none, Some("a"), Some("b")).unwrap().client_id,
            "a"
        );
    }

    #[test]
    fn hashes_verify_and_bad_hashes_are_refused() {
        let hash = hash_secret("s3cret").unwrap();
        assert!(check_hash(&hash).is_ok());
        assert!(check_hash("plaintext").is_err());
        let client = ClientConfig {
            id: "app".into(),
            secret_hash: hash.clone().into(),
            scopes: Box::new([]),
            audiences: Box::new([]),
            access_ttl: std::time::Duration::from_secs(1),
            refresh_ttl: None,
            introspect: false,
        };
        let clients = [client];
        let creds = |id: &str, secret: &str| Credentials {
            client_id: id.into(),
            secret: secret.into(),
        };
        assert!(verify(&clients, &hash, &creds("app", "s3cret")).is_ok());
        assert!(verify(&clients, &hash, &creds("app", "wrong")).is_err());
        assert!(
            verify(&clients, &hash, &creds("other", "s3cret")).is_err(),
            "the dummy hash never admits"
        );
        let dummy = hash_like(&hash, "x").unwrap();
        assert_eq!(
            hash_parameters(&dummy),
            hash_parameters(&hash),
            "the dummy costs what a client does"
        );
    }
}
