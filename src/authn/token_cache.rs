//! The verified-token cache: a client reusing its token skips the signature
//! check. Keyed by SHA-256 of the token (the raw token is never stored);
//! entries expire no later than the token's `exp`; capacity-bounded. Beside
//! it, the tokens whose signature failed, so that a flood of one forged token
//! costs a hash per request rather than a signature check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::Principal;
use super::jwks::VerifyingKey;

pub type Digest = [u8; 32];

pub struct TokenCache {
    entries: Cache<Digest, Arc<Principal>>,
    /// Forged tokens: the provider and the key their signature failed
    /// against. A verdict holds only while that key is still published.
    forged: Cache<Digest, (usize, Arc<VerifyingKey>)>,
}

/// How long a forged token is remembered.
const FORGED_TTL: Duration = Duration::from_secs(300);

/// Entry lifetime: until the token's `exp`.
struct UntilExpiry;

impl Expiry<Digest, Arc<Principal>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &Digest,
        principal: &Arc<Principal>,
        _: Instant,
    ) -> Option<Duration> {
        let left = principal.expires_at.saturating_sub(super::unix_now());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

impl TokenCache {
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
            forged: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(FORGED_TTL)
                .build(),
        }
    }

    /// The provider and key a token's signature failed against, if known.
    pub fn forged(&self, digest: &Digest) -> Option<(usize, Arc<VerifyingKey>)> {
        self.forged.get(digest)
    }

    pub fn remember_forged(&self, digest: Digest, provider: usize, key: Arc<VerifyingKey>) {
        self.forged.insert(digest, (provider, key));
    }

    pub fn digest(token: &str) -> Digest {
        crate::digest::sha256(&[token.as_bytes()])
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<Principal>> {
        self.entries.get(digest)
    }

    /// Cache a principal whose token is still valid at `now`.
    pub fn insert(&self, digest: Digest, principal: Arc<Principal>, now: i64) {
        if principal.expires_at > now {
            self.entries.insert(digest, principal);
        }
    }
}
