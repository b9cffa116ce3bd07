//! Test signing keys and JWT minting (aws-lc-rs based).
//!
//! Every token is built by hand (`b64url(header).b64url(claims).b64url(sig)`) so
//! tests control the header byte for byte: `jku`, `jwk`, `crit`, a wrong `kid`,
//! `alg: none`, HS256 with the RSA public key as secret, ...

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// Base64url without padding (the JOSE encoding).
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes.as_ref())
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs() as i64
}

/// `b64(header_json) + "." + b64(claims_json)`: the JWS signing input.
fn signing_input(header: &Value, claims: &Value) -> String {
    let h = serde_json::to_vec(header).expect("serialize JWT header");
    let c = serde_json::to_vec(claims).expect("serialize JWT claims");
    format!("{}.{}", b64(h), b64(c))
}

/// A compact JWS HMAC-SHA256-signed with `secret`, header used exactly as given
/// (put `"alg": "HS256"` in it yourself; any other alg value is kept as is).
pub fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// An unsigned token `b64(header).b64(claims).` (empty signature), for
/// `alg: none` style attacks. The header is used exactly as given.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

enum Material {
    Rsa(Arc<RsaKeyPair>),
    Ec(Arc<EcdsaKeyPair>),
}

/// A private signing key with a `kid`: RSA-2048 (RS256) or P-256 (ES256).
///
/// Cloning is cheap (the key material is shared).
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    material: Arc<Material>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish()
    }
}

fn generate_rsa() -> Arc<RsaKeyPair> {
    Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA-2048 key"))
}

/// Process-wide pool of pre-generated RSA key pairs (generated lazily).
const RSA_POOL_SIZE: usize = 4;
static RSA_POOL: [OnceLock<Arc<RsaKeyPair>>; RSA_POOL_SIZE] =
    [const { OnceLock::new() }; RSA_POOL_SIZE];

impl TestKey {
    /// A freshly generated RSA-2048 key (alg RS256). Every call yields new,
    /// distinct key material (tens of milliseconds each).
    pub fn rsa(kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_string(),
            material: Arc::new(Material::Rsa(generate_rsa())),
        }
    }

    /// An RSA-2048 key (RS256) from a process-wide cache: `slot` 0..=3 each
    /// name one key pair, generated once per test binary. The same `slot`
    /// always gives the same key material (whatever the `kid`); different
    /// slots give different keys. Panics if `slot >= 4`.
    pub fn rsa_shared(slot: usize, kid: &str) -> TestKey {
        let cell = RSA_POOL
            .get(slot)
            .unwrap_or_else(|| panic!("rsa_shared slot {slot} out of range 0..{RSA_POOL_SIZE}"));
        TestKey {
            kid: kid.to_string(),
            material: Arc::new(Material::Rsa(cell.get_or_init(generate_rsa).clone())),
        }
    }

    /// A freshly generated P-256 key (alg ES256). Cheap.
    pub fn ec(kid: &str) -> TestKey {
        let pair =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate P-256 key");
        TestKey {
            kid: kid.to_string(),
            material: Arc::new(Material::Ec(Arc::new(pair))),
        }
    }

    /// The same key material under another `kid`.
    pub fn with_kid(&self, kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_string(),
            material: self.material.clone(),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `"RS256"` or `"ES256"`.
    pub fn alg(&self) -> &'static str {
        match &*self.material {
            Material::Rsa(_) => "RS256",
            Material::Ec(_) => "ES256",
        }
    }

    /// RFC 7517 public JWK: `kty`, `kid`, `alg`, `use: "sig"`, plus `n`/`e`
    /// (RSA; base64url, big-endian, no leading zero) or `crv: "P-256"`/`x`/`y` (EC).
    pub fn public_jwk(&self) -> Value {
        match &*self.material {
            Material::Rsa(pair) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64(&c.n),
                    "e": b64(&c.e),
                })
            }
            Material::Ec(pair) => {
                // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
                let point = pair.public_key().as_ref();
                assert_eq!(point.len(), 65, "unexpected P-256 point encoding");
                json!({
                    "kty": "EC",
                    "kid": self.kid,
                    "alg": "ES256",
                    "use": "sig",
                    "crv": "P-256",
                    "x": b64(&point[1..33]),
                    "y": b64(&point[33..65]),
                })
            }
        }
    }

    /// DER `SubjectPublicKeyInfo` of the public key.
    pub fn public_key_der(&self) -> Vec<u8> {
        let der: PublicKeyX509Der<'static> = match &*self.material {
            Material::Rsa(pair) => pair.public_key().as_der(),
            Material::Ec(pair) => pair.public_key().as_der(),
        }
        .expect("encode public key as SPKI DER");
        der.as_ref().to_vec()
    }

    /// PEM (`-----BEGIN PUBLIC KEY-----`, 64-column lines, trailing newline) of
    /// [`TestKey::public_key_der`]: the usual "secret" in the HS256-with-public-key
    /// confusion attack.
    pub fn public_key_pem(&self) -> String {
        let b = STANDARD.encode(self.public_key_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Raw signature over `input` (RS256: PKCS#1 v1.5 SHA-256; ES256: r||s).
    pub fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &*self.material {
            Material::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .expect("RSA sign");
                sig
            }
            Material::Ec(pair) => pair
                .sign(&rng, input)
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
        }
    }

    /// Compact JWS `b64(header).b64(claims).b64(sig)` signed with this key. The
    /// header is used exactly as given (its `alg`/`kid` are not checked).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = self.sign_raw(input.as_bytes());
        format!("{input}.{}", b64(sig))
    }

    /// The standard header `{"alg": alg(), "typ": "JWT", "kid": kid()}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid})
    }

    /// [`TestKey::sign`] with [`TestKey::header`].
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}
