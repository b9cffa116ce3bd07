//! The auth service's signing keys: generated here, kept in a key file,
//! rotated with `portcullis keys rotate`.
//!
//! The newest key that is not retired signs; retired keys stay published
//! until every token they signed has expired, then are dropped. Private keys
//! are stored as PKCS#8 in a file only its owner may read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Which algorithm new keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    ES256,
    RS256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }
}

/// Why keys could not be loaded, made or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("key file {0} is not a Portcullis key file: {1}")]
    Format(PathBuf, String),
    #[error("key {0}: {1}")]
    Key(String, String),
    #[error("generating a key failed")]
    Generate,
}

/// A private key ready to sign.
enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// One key of the ring.
pub struct SigningKey {
    pub kid: String,
    pub alg: SigningAlg,
    /// Unix seconds.
    pub created: i64,
    /// When a newer key took over; `None` for the active key.
    pub retired: Option<i64>,
    pkcs8: Vec<u8>,
    pair: Pair,
}

impl SigningKey {
    fn generate(alg: SigningAlg, now: i64) -> Result<Self, KeyError> {
        let pkcs8 = match alg {
            SigningAlg::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| KeyError::Generate)?,
            SigningAlg::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .ok()
                .and_then(|k| k.as_der().ok())
                .map(|d| d.as_ref().to_vec())
                .ok_or(KeyError::Generate)?,
        };
        Self::from_pkcs8(String::new(), alg, now, None, pkcs8)
    }

    fn from_pkcs8(
        kid: String,
        alg: SigningAlg,
        created: i64,
        retired: Option<i64>,
        pkcs8: Vec<u8>,
    ) -> Result<Self, KeyError> {
        let bad = |e: &dyn std::fmt::Display| KeyError::Key(kid.clone(), e.to_string());
        let pair = match alg {
            SigningAlg::ES256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map_err(|e| bad(&e))?,
            ),
            SigningAlg::RS256 => Pair::Rsa(RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| bad(&e))?),
        };
        let mut key = Self {
            kid,
            alg,
            created,
            retired,
            pkcs8,
            pair,
        };
        if key.kid.is_empty() {
            key.kid = key.thumbprint();
        }
        Ok(key)
    }

    /// The public half as a JWK (RFC 7517).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public_members();
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.as_str());
        jwk["use"] = json!("sig");
        jwk
    }

    /// The required public members only, as RFC 7638 hashes them.
    fn public_members(&self) -> Value {
        match &self.pair {
            Pair::Ec(pair) => {
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(point.len().saturating_sub(1) / 2);
                json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)})
            }
            Pair::Rsa(pair) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({"e": URL_SAFE_NO_PAD.encode(&c.e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&c.n)})
            }
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256), used as the `kid`.
    fn thumbprint(&self) -> String {
        // `public_members` always holds the members RFC 7638 hashes, so this
        // is never the empty fallback.
        self.public_members()
            .as_object()
            .and_then(crate::dpop::jwk_thumbprint)
            .map(|jkt| URL_SAFE_NO_PAD.encode(jkt))
            .unwrap_or_default()
    }

    /// Check a signature this key made over `input`.
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
        };
        match &self.pair {
            Pair::Ec(pair) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                    .verify(input, signature)
                    .is_ok()
            }
            Pair::Rsa(pair) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
                    .verify(input, signature)
                    .is_ok()
            }
        }
    }

    /// A compact JWS of `claims` with header `{alg, kid, typ}`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Key(self.kid.clone(), "signing failed".into()))?,
            Pair::Rsa(pair) => {
                let mut out = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                    .map_err(|_| KeyError::Key(self.kid.clone(), "signing failed".into()))?;
                out
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The key file's shape.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: SigningAlg,
    created: i64,
    retired: Option<i64>,
    /// PKCS#8, base64.
    pkcs8: String,
}

/// All keys: the active one signs, the others are still published.
pub struct KeyRing {
    keys: Vec<Arc<SigningKey>>,
}

impl KeyRing {
    /// One new key, in memory only.
    pub fn generate(alg: SigningAlg, now: i64) -> Result<Self, KeyError> {
        Ok(Self {
            keys: vec![Arc::new(SigningKey::generate(alg, now)?)],
        })
    }

    /// Read the key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| KeyError::Io(path.to_owned(), e))?;
        Self::parse(path, &bytes)
    }

    /// Read the key file, or create it with one new key when it does not exist.
    pub fn load_or_create(path: &Path, alg: SigningAlg, now: i64) -> Result<Self, KeyError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate(alg, now)?;
                ring.save(path)?;
                tracing::info!(path = %path.display(), kid = %ring.keys[0].kid, "created a signing key file");
                Ok(ring)
            }
            Err(e) => Err(KeyError::Io(path.to_owned(), e)),
        }
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
        let format = |e: &dyn std::fmt::Display| KeyError::Format(path.to_owned(), e.to_string());
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| format(&e))?;
        let keys = file
            .keys
            .into_iter()
            .map(|k| {
                let pkcs8 = STANDARD.decode(&k.pkcs8).map_err(|e| format(&e))?;
                SigningKey::from_pkcs8(k.kid, k.alg, k.created, k.retired, pkcs8).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !keys.iter().any(|k| k.retired.is_none()) {
            return Err(format(&"no active key (every key is retired)"));
        }
        Ok(Self { keys })
    }

    /// Write the file atomically (temp file + rename), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let file = KeyFile {
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    created: k.created,
                    retired: k.retired,
                    pkcs8: STANDARD.encode(&k.pkcs8),
                })
                .collect(),
        };
        let io = |e| KeyError::Io(path.to_owned(), e);
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| KeyError::Format(path.to_owned(), e.to_string()))?;
        // A fresh, exclusively created temp file beside the target (never a
        // leftover with looser permissions), then an atomic rename.
        let mut salt = [0u8; 8];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| KeyError::Generate)?;
        let name = path
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
        let temp = path.with_file_name(format!(".{name}.{}.tmp", URL_SAFE_NO_PAD.encode(salt)));
        let written = write_private(&temp, &text).and_then(|()| std::fs::rename(&temp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(io)?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Hold an exclusive lock on `{key_file}.lock` while reading, rotating and
    /// writing, so that two `keys rotate` at once cannot lose a key.
    pub fn lock(path: &Path) -> Result<std::fs::File, KeyError> {
        let lock_path = path.with_file_name(format!(
            "{}.lock",
            path.file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy().into_owned())
        ));
        let io = |e| KeyError::Io(lock_path.clone(), e);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(file)
    }

    /// Add a new active key; the old active key is retired now. Keys retired
    /// longer ago than `keep_retired` (the longest token lifetime) are dropped.
    pub fn rotate(
        &mut self,
        alg: SigningAlg,
        now: i64,
        keep_retired: i64,
    ) -> Result<&SigningKey, KeyError> {
        let new = SigningKey::generate(alg, now)?;
        let mut keys: Vec<Arc<SigningKey>> = Vec::with_capacity(self.keys.len() + 1);
        keys.push(Arc::new(new));
        for key in &self.keys {
            let retired = key.retired.unwrap_or(now);
            if retired.saturating_add(keep_retired) < now {
                continue;
            }
            keys.push(Arc::new(SigningKey::from_pkcs8(
                key.kid.clone(),
                key.alg,
                key.created,
                Some(retired),
                key.pkcs8.clone(),
            )?));
        }
        self.keys = keys;
        self.active().map(|k| &**k).ok_or(KeyError::Generate)
    }

    /// The key that signs new tokens: the newest one not retired.
    pub fn active(&self) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .filter(|k| k.retired.is_none())
            .max_by_key(|k| k.created)
    }

    /// Every key, active first.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The published set: `{"keys": [...]}`.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()})
    }
}

/// Write `bytes` to a file that must not exist yet, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // The umask cannot widen 0600, but say it explicitly anyway.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_and_publish_with_thumbprint_kids() {
        for alg in [SigningAlg::ES256, SigningAlg::RS256] {
            let ring = KeyRing::generate(alg, 100).unwrap();
            let key = ring.active().unwrap();
            assert_eq!(key.kid.len(), 43, "base64url SHA-256");
            let jwk = key.public_jwk();
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["kid"], key.kid);
            let token = key.sign("at+jwt", &json!({"sub": "x"})).unwrap();
            let decoding =
                jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk).unwrap()).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let algorithm: jsonwebtoken::Algorithm = alg.as_str().parse().unwrap();
            let input = format!("{}.{}", parts[0], parts[1]);
            assert!(
                jsonwebtoken::crypto::verify(parts[2], input.as_bytes(), &decoding, algorithm)
                    .unwrap()
            );
        }
    }

    #[test]
    fn rotation_retires_and_later_drops_old_keys_and_the_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("portcullis-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let _ = std::fs::remove_file(&path);
        let mut ring = KeyRing::load_or_create(&path, SigningAlg::ES256, 1000).unwrap();
        let first = ring.active().unwrap().kid.clone();
        let second = ring
            .rotate(SigningAlg::ES256, 2000, 600)
            .unwrap()
            .kid
            .clone();
        assert_ne!(first, second);
        assert_eq!(ring.keys().len(), 2, "the old key stays published");
        ring.save(&path).unwrap();
        let reloaded = KeyRing::load_or_create(&path, SigningAlg::ES256, 2001).unwrap();
        assert_eq!(reloaded.active().unwrap().kid, second);
        assert_eq!(reloaded.jwks()["keys"].as_array().unwrap().len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        ring.rotate(SigningAlg::ES256, 3000, 600).unwrap();
        let kids: Vec<&str> = ring.keys().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(
            kids.len(),
            2,
            "the first key, retired at 2000, is gone after 600 s"
        );
        assert!(!kids.contains(&first.as_str()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
