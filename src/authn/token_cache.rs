//! The verified-token cache: a client reusing its token skips the signature
//! check. Keyed by SHA-256 of the token (the raw token is never stored);
//! entries expire no later than the token's `exp`; capacity-bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::Principal;

pub type Digest = [u8; 32];

pub struct TokenCache {
    entries: Cache<Digest, Arc<Principal>>,
}

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
        }
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
