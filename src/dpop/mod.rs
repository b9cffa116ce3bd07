//! DPoP proofs (RFC 9449): checking the `DPoP` header against the request and
//! the access token, and refusing a proof seen before.
//!
//! Its usage:
//! - `DpopVerifier::new(settings)` once per process part (gateway, auth
//!   service), since each keeps its own replay cache;
//! - per request, `verify(headers, &expected, now)` gives the proof key's
//!   thumbprint, which the caller compares to the token's `cnf.jkt` (or, at a
//!   token endpoint, binds the new token to);
//! - `algs_challenge()` fills the `algs` parameter of `WWW-Authenticate: DPoP`.
//!
//! `nonce` is not supported: we never send `DPoP-Nonce`, so the claim is ignored.

use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, Method, Uri};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
mod replay;

use std::sync::Arc;
use std::time::Instant;

use replay::{Refused, ReplayCache};
use serde_json::{Map, Value};

use crate::authn::jwks::VerifyingKey;

/// The proof's header (RFC 9449 §4.1).
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// A proof carries one public key and a few short claims; even an RSA-4096
/// proof is under 3 KiB, so anything longer is not worth decoding.
const MAX_PROOF_LEN: usize = 8 * 1024;

const MAX_JTI_CHARS: usize = 256;

/// Members only a private or symmetric JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4).
/// A client that sends them has leaked its key; never accept such a proof.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Settings from config, compiled once.
#[derive(Debug, Clone)]
pub struct DpopSettings {
    /// Proof signature algorithms accepted; HMAC ones are dropped by `new`.
    pub algorithms: Box<[Algorithm]>,
    /// How long after its `iat` a proof is accepted.
    pub max_age: Duration,
    /// Clock skew allowed on either side of the `iat` window.
    pub leeway: Duration,
    /// Replay cache size; when full, new proofs are refused (503) until
    /// entries expire: forgetting live ones would allow replays.
    pub replay_cache_entries: u64,
    /// The origins clients address us by; when set, a proof's `htu` must
    /// name one of them, whatever `Host` the request carries.
    pub origins: Box<[Origin]>,
}

/// `scheme://host[:port]`, lower-case, without a default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Box<str>,
    authority: Box<str>,
}

impl Origin {
    /// Parse `https://api.example.com` (no path, query or userinfo).
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(format!("`{text}` must start with https:// or http://"));
        }
        let authority = uri
            .authority()
            .filter(|a| !a.as_str().contains('@'))
            .ok_or_else(|| format!("`{text}` needs a host and no user"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{text}` must be an origin only, without a path"));
        }
        Ok(Self {
            authority: without_default_port(authority.as_str(), &scheme)
                .to_ascii_lowercase()
                .into(),
            scheme: scheme.into(),
        })
    }

    fn matches(&self, scheme: &str, authority: &str) -> bool {
        scheme.eq_ignore_ascii_case(&self.scheme)
            && without_default_port(authority, scheme).eq_ignore_ascii_case(&self.authority)
    }
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            algorithms: Box::new([
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
                Algorithm::PS256,
                Algorithm::RS256,
            ]),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay_cache_entries: 100_000,
            origins: Box::default(),
        }
    }
}

/// What the proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub method: &'a Method,
    /// "http" or "https" as the client addressed us
    pub scheme: &'a str,
    /// host[:port] from Host / :authority
    pub authority: &'a str,
    /// the request path, already canonical (see `crate::path::canonicalize`)
    pub path: &'a str,
    /// the access token presented with the proof (then `ath` is required and
    /// must equal base64url(SHA-256(token))); None at a token endpoint (then
    /// `ath` is not checked)
    pub access_token: Option<&'a str>,
}

/// An accepted proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's `jwk`.
    pub jkt: [u8; 32],
}

impl Proof {
    /// The thumbprint as `cnf.jkt` carries it: base64url without padding.
    pub fn jkt_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.jkt)
    }
}

/// Why a proof was refused. `Display` is the short, stable
/// `error_description` for the client; `code()` is the reason for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("DPoP proof missing")]
    Missing,
    #[error("multiple DPoP proofs")]
    Multiple,
    /// Not a compact JWS of two JSON objects, too long, or with `crit`.
    #[error("DPoP proof malformed")]
    Malformed,
    #[error("DPoP proof typ must be dpop+jwt")]
    Type,
    #[error("DPoP proof algorithm not allowed")]
    Algorithm,
    /// No usable public `jwk`, or one that does not fit `alg`.
    #[error("DPoP proof key invalid")]
    Key,
    #[error("DPoP proof signature invalid")]
    Signature,
    /// For the caller: the proof's key is not the one the token is bound to
    /// (`cnf.jkt`).
    #[error("DPoP proof key does not match the token")]
    KeyMismatch,
    /// `jti`, `htm`, `htu` or `iat` absent or of the wrong type.
    #[error("DPoP proof claim missing or invalid")]
    MissingClaim,
    #[error("DPoP proof htm does not match the request")]
    Method,
    #[error("DPoP proof htu does not match the request")]
    Uri,
    #[error("DPoP proof too old")]
    Stale,
    #[error("DPoP proof issued in the future")]
    Future,
    #[error("DPoP proof ath missing")]
    MissingAth,
    #[error("DPoP proof ath does not match the access token")]
    AthMismatch,
    #[error("DPoP proof replayed")]
    Replayed,
    /// The replay cache is full: nothing can be checked for replay (503).
    #[error("DPoP proofs cannot be checked now")]
    Busy,
}

impl DpopError {
    /// Stable reason for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "dpop_missing",
            Self::Multiple => "dpop_multiple",
            Self::Malformed => "dpop_malformed",
            Self::Type => "dpop_type",
            Self::Algorithm => "dpop_algorithm",
            Self::Key => "dpop_key",
            Self::Signature => "dpop_signature",
            Self::KeyMismatch => "dpop_key_mismatch",
            Self::MissingClaim => "dpop_missing_claim",
            Self::Method => "dpop_method",
            Self::Uri => "dpop_uri",
            Self::Stale => "dpop_stale",
            Self::Future => "dpop_future",
            Self::MissingAth => "dpop_missing_ath",
            Self::AthMismatch => "dpop_ath_mismatch",
            Self::Replayed => "dpop_replayed",
            Self::Busy => "dpop_busy",
        }
    }
}

/// Verifies proofs and remembers the accepted ones until they expire.
pub struct DpopVerifier {
    algorithms: Box<[Algorithm]>,
    algs_challenge: Box<str>,
    max_age: i64,
    leeway: i64,
    /// SHA-256(jkt || jti) of accepted proofs still inside their `iat` window.
    seen: Arc<ReplayCache>,
    origins: Box<[Origin]>,
}

// === impl DpopVerifier ===

impl DpopVerifier {
    pub fn new(settings: DpopSettings) -> Self {
        // A proof is signed with the client's own public key: a shared secret
        // makes no sense there, and HS* with a `jwk` is a key-confusion attack.
        let algorithms: Box<[Algorithm]> = settings
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect();
        // The variant names are the JOSE names ("ES256", "EdDSA").
        let algs_challenge = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
            .into();
        // A proof stays acceptable from `iat - leeway` (received early) until
        // `iat + max_age + leeway`, so it must be remembered that long.
        let ttl = settings
            .max_age
            .saturating_add(settings.leeway.saturating_mul(2));
        let capacity = usize::try_from(settings.replay_cache_entries).unwrap_or(usize::MAX);
        Self {
            algorithms,
            algs_challenge,
            max_age: secs(settings.max_age),
            leeway: secs(settings.leeway),
            seen: Arc::new(ReplayCache::new(ttl, capacity)),
            origins: settings.origins,
        }
    }

    /// A verifier with new settings (a reload) that still remembers the
    /// proofs this one accepted, so a swap opens no replay window. Only a
    /// change of the cache's size or lifetime starts an empty cache.
    pub fn reconfigured(&self, settings: DpopSettings) -> Self {
        let mut next = Self::new(settings);
        if next.seen.shape() == self.seen.shape() {
            next.seen = Arc::clone(&self.seen);
        } else {
            tracing::warn!(
                "dpop replay cache resized: proofs accepted in the last {}s may be replayed once",
                self.seen.shape().0.as_secs()
            );
        }
        next
    }

    /// The accepted proof algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The accepted algorithms, space-separated, for `WWW-Authenticate`'s `algs`.
    pub fn algs_challenge(&self) -> &str {
        &self.algs_challenge
    }

    /// Check the request's single `DPoP` header (RFC 9449 §4.3) at `now`
    /// (unix seconds). On success the proof's `jti` is used up: the same proof
    /// is refused from then on. A refused proof does not use up its `jti`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        expected: &Expected<'_>,
        now: i64,
    ) -> Result<Proof, DpopError> {
        let jws = Jws::parse(single_proof(headers)?)?;
        let alg = self.check_header(&jws.header)?;
        let jkt = check_key_and_signature(&jws, alg)?;
        let claims = Claims::parse(&jws.claims)?;
        if claims.htm != expected.method.as_str() {
            return Err(DpopError::Method);
        }
        check_htu(claims.htu, expected, &self.origins)?;
        if claims.iat < now.saturating_sub(self.max_age).saturating_sub(self.leeway) {
            return Err(DpopError::Stale);
        }
        if claims.iat > now.saturating_add(self.leeway) {
            return Err(DpopError::Future);
        }
        if let Some(token) = expected.access_token {
            check_ath(claims.ath, token)?;
        }
        // Last, so that only a proof that passed everything else uses up its jti.
        // jkt has a fixed length, so jkt || jti cannot collide across keys.
        let key = crate::digest::sha256(&[&jkt, claims.jti.as_bytes()]);
        match self.seen.insert(key, Instant::now()) {
            Ok(()) => Ok(Proof { jkt }),
            Err(Refused::Replayed) => Err(DpopError::Replayed),
            Err(Refused::Full) => {
                tracing::warn!("dpop replay cache full: refusing proofs until entries expire");
                Err(DpopError::Busy)
            }
        }
    }

    /// `typ`, `crit` and `alg`.
    fn check_header(&self, header: &Map<String, Value>) -> Result<Algorithm, DpopError> {
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(DpopError::Type);
        }
        // We understand no extension, so a critical one makes the proof unusable.
        if header.contains_key("crit") {
            return Err(DpopError::Malformed);
        }
        header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<Algorithm>().ok())
            .filter(|a| self.algorithms.contains(a))
            .ok_or(DpopError::Algorithm)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The value of the one `DPoP` header.
fn single_proof(headers: &HeaderMap) -> Result<&str, DpopError> {
    let mut values = headers.get_all(&DPOP).iter();
    let value = values.next().ok_or(DpopError::Missing)?;
    if values.next().is_some() {
        return Err(DpopError::Multiple);
    }
    if value.len() > MAX_PROOF_LEN {
        return Err(DpopError::Malformed);
    }
    value.to_str().map_err(|_| DpopError::Malformed)
}

/// A compact JWS, its header and claims decoded.
struct Jws<'a> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    /// `header.claims` as sent: what the signature covers.
    signing_input: &'a str,
    signature: &'a str,
}

impl<'a> Jws<'a> {
    fn parse(compact: &'a str) -> Result<Self, DpopError> {
        let (signing_input, signature) = compact.rsplit_once('.').ok_or(DpopError::Malformed)?;
        let (header, claims) = signing_input.split_once('.').ok_or(DpopError::Malformed)?;
        // The signature is decoded by the verifier; check its alphabet here so
        // that a malformed proof is reported as such.
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if signature.is_empty() || !signature.bytes().all(base64url) {
            return Err(DpopError::Malformed);
        }
        Ok(Self {
            header: json_object(header)?,
            claims: json_object(claims)?,
            signing_input,
            signature,
        })
    }
}

/// A base64url (unpadded) JSON object. A third `.` lands here and fails.
fn json_object(part: &str) -> Result<Map<String, Value>, DpopError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DpopError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| DpopError::Malformed)
}

/// Verify the signature with the header's own `jwk`; returns its thumbprint.
fn check_key_and_signature(jws: &Jws<'_>, alg: Algorithm) -> Result<[u8; 32], DpopError> {
    let jwk = jws.header.get("jwk").ok_or(DpopError::Key)?;
    let members = jwk.as_object().ok_or(DpopError::Key)?;
    if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
        return Err(DpopError::Key);
    }
    let jkt = jwk_thumbprint(members).ok_or(DpopError::Key)?;
    let key = VerifyingKey::from_jwk(jwk)
        .ok()
        .flatten()
        .filter(|k| k.supports(alg))
        .ok_or(DpopError::Key)?;
    if !key.verify(jws.signing_input.as_bytes(), jws.signature, alg) {
        return Err(DpopError::Signature);
    }
    Ok(jkt)
}

/// The claims a proof must carry, borrowed from the decoded JSON.
struct Claims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    ath: Option<&'a str>,
}

impl<'a> Claims<'a> {
    fn parse(claims: &'a Map<String, Value>) -> Result<Self, DpopError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let missing = DpopError::MissingClaim;
        Ok(Self {
            jti: text("jti")
                .filter(|j| (1..=MAX_JTI_CHARS).contains(&j.chars().count()))
                .ok_or(missing)?,
            htm: text("htm").ok_or(missing)?,
            htu: text("htu").ok_or(missing)?,
            // `as_i64` is None for floats such as 1.7e9, which we refuse.
            iat: claims.get("iat").and_then(Value::as_i64).ok_or(missing)?,
            ath: text("ath"),
        })
    }
}

/// `htu` names the URI the client addressed, without query and fragment
/// (RFC 9449 §4.3 step 9); scheme and host compare case-insensitively and a
/// default port equals no port.
fn check_htu(htu: &str, expected: &Expected<'_>, origins: &[Origin]) -> Result<(), DpopError> {
    // A fragment does not parse as a `Uri`, so cut at whichever comes first.
    let base = htu.split(['?', '#']).next().unwrap_or(htu);
    let uri: Uri = base.parse().map_err(|_| DpopError::Uri)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(DpopError::Uri);
    };
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let path = crate::path::canonicalize(path).map_err(|_| DpopError::Uri)?;
    // Configured origins, when there are any, say who we are; otherwise the
    // request itself does.
    let origin = if origins.is_empty() {
        scheme.eq_ignore_ascii_case(expected.scheme)
            && without_default_port(authority.as_str(), scheme)
                .eq_ignore_ascii_case(without_default_port(expected.authority, expected.scheme))
    } else {
        origins
            .iter()
            .any(|o| o.matches(scheme, authority.as_str()))
    };
    // Userinfo has no place in htu and is not part of what we compare.
    let same = origin && !authority.as_str().contains('@') && path.as_str() == expected.path;
    if same { Ok(()) } else { Err(DpopError::Uri) }
}

fn without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else if scheme.eq_ignore_ascii_case("http") {
        ":80"
    } else {
        return authority;
    };
    authority.strip_suffix(port).unwrap_or(authority)
}

/// `ath` must be base64url(SHA-256(access token)) (RFC 9449 §4.2).
fn check_ath(ath: Option<&str>, token: &str) -> Result<(), DpopError> {
    let ath = ath.ok_or(DpopError::MissingAth)?;
    let mut want = [0u8; 43];
    let len = URL_SAFE_NO_PAD
        .encode_slice(crate::digest::sha256(&[token.as_bytes()]), &mut want)
        .map_err(|_| DpopError::AthMismatch)?;
    verify_slices_are_equal(ath.as_bytes(), &want[..len]).map_err(|_| DpopError::AthMismatch)
}

/// RFC 7638 thumbprint of a public JWK: SHA-256 of its required members in
/// lexicographic order (EC: crv,kty,x,y; RSA: e,kty,n; OKP: crv,kty,x).
/// `None` when `kty` is unknown or a required member is missing or not a string.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<[u8; 32]> {
    // Built by hand so the order never depends on serde_json's map type;
    // `Value`'s Display writes a string member quoted and escaped.
    let member = |name: &str| jwk.get(name).filter(|v| v.is_string());
    let kty = member("kty")?;
    let canonical = match kty.as_str()? {
        "EC" => format!(
            r#"{{"crv":{},"kty":{kty},"x":{},"y":{}}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":{kty},"n":{}}}"#,
            member("e")?,
            member("n")?
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":{kty},"x":{}}}"#,
            member("crv")?,
            member("x")?
        ),
        _ => return None,
    };
    Some(crate::digest::sha256(&[canonical.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use http::HeaderValue;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const TOKEN: &str = "an-access-token";
    const HTU: &str = "https://api.example.com/a/b";
    static GET: Method = Method::GET;

    fn expected() -> Expected<'static> {
        Expected {
            method: &GET,
            scheme: "https",
            authority: "api.example.com",
            path: "/a/b",
            access_token: Some(TOKEN),
        }
    }

    /// A client with its own P-256 key, signing proofs.
    struct Client {
        pair: EcdsaKeyPair,
        jwk: Value,
    }

    impl Client {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            let point = pair.public_key().as_ref(); // 0x04 || x || y
            let jwk = json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            });
            Self { pair, jwk }
        }

        fn header(&self) -> Value {
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk})
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        fn proof(&self, jti: &str) -> String {
            self.sign(&self.header(), &claims(jti))
        }
    }

    fn claims(jti: &str) -> Value {
        json!({"jti": jti, "htm": "GET", "htu": HTU, "iat": NOW, "ath": ath(TOKEN)})
    }

    fn ath(token: &str) -> String {
        URL_SAFE_NO_PAD.encode(crate::digest::sha256(&[token.as_bytes()]))
    }

    fn headers(proofs: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for p in proofs {
            map.append("dpop", HeaderValue::from_str(p).unwrap());
        }
        map
    }

    fn check(v: &DpopVerifier, proof: &str) -> Result<Proof, DpopError> {
        v.verify(&headers(&[proof]), &expected(), NOW)
    }

    fn verifier() -> DpopVerifier {
        DpopVerifier::new(DpopSettings::default())
    }

    #[test]
    fn a_valid_proof_gives_the_rfc_7638_thumbprint_of_its_key() {
        let client = Client::new();
        let proof = check(&verifier(), &client.proof("j1")).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            client.jwk["x"].as_str().unwrap(),
            client.jwk["y"].as_str().unwrap()
        );
        assert_eq!(proof.jkt, crate::digest::sha256(&[canonical.as_bytes()]));
        assert_eq!(proof.jkt_b64(), URL_SAFE_NO_PAD.encode(proof.jkt));
    }

    #[test]
    fn thumbprint_of_the_rfc_7638_example_key() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let jkt = jwk_thumbprint(jwk.as_object().unwrap()).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(jkt),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_equals_hashing_serde_jsons_sorted_output() {
        // What auth_service::keys hashed before it used `jwk_thumbprint`.
        for jwk in [
            json!({"crv": "P-256", "kty": "EC", "x": "a\"b", "y": "c\\d"}),
            json!({"e": "AQAB", "kty": "RSA", "n": "xyz"}),
            json!({"crv": "Ed25519", "kty": "OKP", "x": "é"}),
        ] {
            let old = crate::digest::sha256(&[jwk.to_string().as_bytes()]);
            assert_eq!(jwk_thumbprint(jwk.as_object().unwrap()), Some(old));
        }
        for bad in [
            json!({"kty": "oct", "k": "x"}),
            json!({"kty": "EC", "crv": "P-256", "x": "a"}),
            json!({"kty": "RSA", "e": 3, "n": "x"}),
        ] {
            assert_eq!(jwk_thumbprint(bad.as_object().unwrap()), None);
        }
    }

    #[test]
    fn proofs_are_checked_against_rfc_9449() {
        type Edit = fn(&mut Value);
        let keep: Edit = |_| {};
        let cases: &[(&str, Edit, Edit, Result<(), DpopError>)] = &[
            ("should pass when valid", keep, keep, Ok(())),
            (
                "should fail because typ is jwt",
                |h| h["typ"] = json!("jwt"),
                keep,
                Err(DpopError::Type),
            ),
            (
                "should fail because of crit",
                |h| h["crit"] = json!(["x"]),
                keep,
                Err(DpopError::Malformed),
            ),
            (
                "should fail because alg is none",
                |h| h["alg"] = json!("none"),
                keep,
                Err(DpopError::Algorithm),
            ),
            (
                "should fail because alg is HS256",
                |h| h["alg"] = json!("HS256"),
                keep,
                Err(DpopError::Algorithm),
            ),
            (
                "should fail because alg does not fit the key",
                |h| h["alg"] = json!("RS256"),
                keep,
                Err(DpopError::Key),
            ),
            (
                "should fail because the jwk holds d",
                |h| h["jwk"]["d"] = json!("AAAA"),
                keep,
                Err(DpopError::Key),
            ),
            (
                "should fail because there is no jwk",
                |h| h["jwk"] = json!(null),
                keep,
                Err(DpopError::Key),
            ),
            (
                "should fail because jti is missing",
                keep,
                |c| c["jti"] = json!(null),
                Err(DpopError::MissingClaim),
            ),
            (
                "should fail because iat is a float",
                keep,
                |c| c["iat"] = json!(1.7e9),
                Err(DpopError::MissingClaim),
            ),
            (
                "should fail because htm is POST",
                keep,
                |c| c["htm"] = json!("POST"),
                Err(DpopError::Method),
            ),
            (
                "should fail because htm is lowercase",
                keep,
                |c| c["htm"] = json!("get"),
                Err(DpopError::Method),
            ),
            (
                "should fail because of the host",
                keep,
                |c| c["htu"] = json!("https://evil.example.com/a/b"),
                Err(DpopError::Uri),
            ),
            (
                "should fail because of the scheme",
                keep,
                |c| c["htu"] = json!("http://api.example.com/a/b"),
                Err(DpopError::Uri),
            ),
            (
                "should fail because of the path",
                keep,
                |c| c["htu"] = json!("https://api.example.com/a/c"),
                Err(DpopError::Uri),
            ),
            (
                "should fail because of the port",
                keep,
                |c| c["htu"] = json!("https://api.example.com:8443/a/b"),
                Err(DpopError::Uri),
            ),
            (
                "should fail because htu is relative",
                keep,
                |c| c["htu"] = json!("/a/b"),
                Err(DpopError::Uri),
            ),
            (
                "should pass despite query and fragment",
                keep,
                |c| c["htu"] = json!("https://api.example.com/a/b?x=1#f?g"),
                Ok(()),
            ),
            (
                "should pass with the default port",
                keep,
                |c| c["htu"] = json!("https://api.example.com:443/a/b"),
                Ok(()),
            ),
            (
                "should pass with scheme and host in capitals",
                keep,
                |c| c["htu"] = json!("HTTPS://API.Example.COM/a/b"),
                Ok(()),
            ),
            (
                "should pass with a dot segment",
                keep,
                |c| c["htu"] = json!("https://api.example.com/a/./b"),
                Ok(()),
            ),
            (
                "should pass at the oldest iat",
                keep,
                |c| c["iat"] = json!(NOW - 65),
                Ok(()),
            ),
            (
                "should fail because iat is too old",
                keep,
                |c| c["iat"] = json!(NOW - 66),
                Err(DpopError::Stale),
            ),
            (
                "should pass at the latest iat",
                keep,
                |c| c["iat"] = json!(NOW + 5),
                Ok(()),
            ),
            (
                "should fail because iat is ahead",
                keep,
                |c| c["iat"] = json!(NOW + 6),
                Err(DpopError::Future),
            ),
            (
                "should fail because ath is missing",
                keep,
                |c| c["ath"] = json!(null),
                Err(DpopError::MissingAth),
            ),
            (
                "should fail because ath is another token's",
                keep,
                |c| c["ath"] = json!(ath("other")),
                Err(DpopError::AthMismatch),
            ),
        ];
        let client = Client::new();
        for (name, edit_header, edit_claims, want) in cases {
            let mut header = client.header();
            edit_header(&mut header);
            let mut claims = claims("j");
            edit_claims(&mut claims);
            let got = check(&verifier(), &client.sign(&header, &claims));
            assert_eq!(got.map(|_| ()), *want, "{name}");
        }
    }

    #[test]
    fn the_header_must_be_single_and_well_formed() {
        let v = verifier();
        let proof = Client::new().proof("j");
        let at = |h: &HeaderMap| v.verify(h, &expected(), NOW).map(|_| ());
        assert_eq!(at(&HeaderMap::new()), Err(DpopError::Missing));
        assert_eq!(at(&headers(&[&proof, &proof])), Err(DpopError::Multiple));
        assert_eq!(at(&headers(&["a.b"])), Err(DpopError::Malformed));
        assert_eq!(
            at(&headers(&[&format!("{proof}.x")])),
            Err(DpopError::Malformed)
        );
        assert_eq!(
            at(&headers(&[&"a".repeat(9000)])),
            Err(DpopError::Malformed)
        );
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert("dpop", HeaderValue::from_bytes(b"\xff.a.b").unwrap());
        assert_eq!(at(&non_ascii), Err(DpopError::Malformed));
    }

    #[test]
    fn a_flipped_signature_byte_fails() {
        let proof = Client::new().proof("j");
        let (input, sig) = proof.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&verifier(), &forged), Err(DpopError::Signature));
    }

    #[test]
    fn ath_is_not_checked_without_an_access_token() {
        let client = Client::new();
        let mut claims = claims("j");
        claims["ath"] = json!(null);
        let proof = client.sign(&client.header(), &claims);
        let at_token_endpoint = Expected {
            access_token: None,
            ..expected()
        };
        let got = verifier().verify(&headers(&[&proof]), &at_token_endpoint, NOW);
        assert!(got.is_ok());
    }

    #[test]
    fn a_jti_is_used_once_per_key() {
        let v = verifier();
        let (alice, bob) = (Client::new(), Client::new());
        let proof = alice.proof("same");
        assert!(check(&v, &proof).is_ok());
        assert_eq!(check(&v, &proof), Err(DpopError::Replayed));
        assert_eq!(check(&v, &alice.proof("same")), Err(DpopError::Replayed));
        assert!(check(&v, &bob.proof("same")).is_ok(), "another key's jti");
    }

    #[test]
    fn a_refused_proof_does_not_use_up_its_jti() {
        let v = verifier();
        let client = Client::new();
        let mut wrong = claims("j");
        wrong["ath"] = json!(ath("other"));
        let refused = check(&v, &client.sign(&client.header(), &wrong));
        assert_eq!(refused, Err(DpopError::AthMismatch));
        assert!(check(&v, &client.proof("j")).is_ok());
    }

    #[test]
    fn of_simultaneous_copies_exactly_one_passes() {
        let v = verifier();
        let proof = Client::new().proof("race");
        let passed = std::thread::scope(|s| {
            let runs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| check(&v, &proof).is_ok()))
                .collect();
            runs.into_iter()
                .filter_map(|r| r.join().ok())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(passed, 1);
    }

    #[test]
    fn hmac_algorithms_are_never_accepted() {
        let v = verifier();
        assert_eq!(v.algs_challenge(), "ES256 ES384 EdDSA PS256 RS256");
        let v = DpopVerifier::new(DpopSettings {
            algorithms: Box::new([Algorithm::HS256, Algorithm::ES256]),
            ..DpopSettings::default()
        });
        assert_eq!(v.algorithms(), &[Algorithm::ES256]);
        assert_eq!(v.algs_challenge(), "ES256");
    }
}
