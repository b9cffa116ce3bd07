//! SHA-256 as a fixed array: cache keys, certificate and JWK thumbprints,
//! file fingerprints.

use aws_lc_rs::digest::{Context, SHA256};

/// SHA-256 of `parts`, one after the other.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}
