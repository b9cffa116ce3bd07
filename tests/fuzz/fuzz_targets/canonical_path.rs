//! `path::canonicalize` on arbitrary text: never panics, and every accepted
//! path has the shape `CanonicalPath` promises (the same invariants as the
//! proptests in src/path.rs, on inputs no generator there would write).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::path::{CanonicalPath, PathError, canonicalize};

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 never reaches `canonicalize` (hyper hands over `&str`),
    // so lossy decoding loses nothing worth testing.
    let text = String::from_utf8_lossy(data);
    check(&text);
    // Most inputs do not start with '/' and are refused at once: also try
    // them as a suffix, at the root and under a prefix.
    let suffix = text.strip_prefix('/').unwrap_or(&text);
    check(&format!("/{suffix}"));
    check_under_prefix(suffix);
});

fn check(input: &str) {
    match canonicalize(input) {
        Ok(out) => {
            check_shape(&out);
            // Idempotent, flags included.
            assert_eq!(canonicalize(out.as_str()), Ok(out.clone()), "{input:?}");
            assert_eq!(out.to_string(), out.as_str());
            assert_eq!(out.clone().into_owned(), out);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if !input.starts_with('/') {
                assert_eq!(e, PathError::NotAbsolute, "{input:?}");
            }
        }
    }
}

/// Everything the `CanonicalPath` docs promise about `as_str()`.
fn check_shape(out: &CanonicalPath<'_>) {
    let s = out.as_str();
    assert!(s.starts_with('/'), "{s:?}");
    assert!(!s.contains("//"), "{s:?}");
    for segment in s.split('/').skip(1) {
        assert!(!is_dot_or_dot_with_params(segment), "{s:?}");
        // A dot segment behind an encoded slash is refused, not kept.
        if segment.contains("%2F") {
            assert!(
                !segment.split("%2F").any(is_dot_or_dot_with_params),
                "{s:?}"
            );
        }
    }
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(
            b.is_ascii_graphic() && !matches!(b, b'\\' | b'?' | b'#'),
            "byte {b:#x} in {s:?}"
        );
        if b == b'%' {
            // Every `%` begins an uppercase escape of a byte that must stay
            // encoded: not unreserved, not NUL, not a backslash.
            let hex = bytes.get(i + 1..i + 3).expect("escape cut short");
            assert!(
                hex.iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "{s:?}"
            );
            let text = std::str::from_utf8(hex).expect("ascii");
            let decoded = u8::from_str_radix(text, 16).expect("hex");
            assert!(
                !decoded.is_ascii_alphanumeric() && !matches!(decoded, b'-' | b'.' | b'_' | b'~'),
                "{s:?}"
            );
            assert!(decoded != 0 && decoded != b'\\', "{s:?}");
        }
    }
    assert_eq!(out.has_encoded_slash(), s.contains("%2F"), "{s:?}");
    assert_eq!(out.has_semicolon(), s.contains(';'), "{s:?}");
}

/// Under `/public/` a suffix resolves exactly as at the root, so a path
/// leaves `/public/` only when the suffix alone climbs above the root.
fn check_under_prefix(suffix: &str) {
    let prefixed = format!("/public/{suffix}");
    let under = canonicalize(&prefixed);
    let climbs = suffix
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .contains("..");
    match canonicalize(&format!("/{suffix}")) {
        Ok(at_root) => assert_eq!(
            under.map(|p| p.as_str().to_owned()),
            Ok(format!("/public{}", at_root.as_str())),
            "{suffix:?}"
        ),
        Err(PathError::AboveRoot) => assert!(climbs, "{suffix:?}"),
        Err(e) => assert_eq!(under, Err(e), "{suffix:?}"),
    }
    if let Ok(out) = canonicalize(&prefixed)
        && !out.as_str().starts_with("/public/")
    {
        assert!(climbs, "{suffix:?} gave {:?}", out.as_str());
    }
}

/// `.`, `..`, or either followed by `;` or `%3B` parameters (src/path.rs
/// `is_dot_with_params`).
fn is_dot_or_dot_with_params(piece: &str) -> bool {
    let head = piece.split(';').next().unwrap_or(piece);
    let head = head.split("%3B").next().unwrap_or(head);
    head == "." || head == ".."
}
