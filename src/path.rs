//! Canonicalisation of request paths.
//!
//! Routing and forwarding both use the canonical form, so what a route matched
//! is exactly what the upstream receives: a route for `/public/**` can never be
//! a way into `/admin/**` through dot segments, encoded dots, doubled slashes or
//! the `..;` trick that Tomcat and Jetty honour.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Why a request path was refused (the caller answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (empty, `*`, relative, absolute-form).
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadPercentEncoding,
    /// A backslash, raw or encoded as `%5C`.
    #[error("backslash in path")]
    Backslash,
    /// A NUL byte, raw or encoded as `%00`.
    #[error("NUL byte in path")]
    Nul,
    /// A raw byte that has no place in a path: a control character, space,
    /// DEL, non-ASCII, `?` or `#`.
    #[error("invalid character in path")]
    InvalidCharacter,
    /// A `..` segment that would climb above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// A `.` or `..` segment carrying `;` parameters (`..;x`), which some
    /// servers treat as a dot segment.
    #[error("dot segment with parameters in path")]
    DotSegmentWithParams,
    /// A `.` or `..` between encoded slashes (`..%2F`), which an upstream that
    /// decodes `%2F` before resolving dot segments would climb with.
    #[error("dot segment behind an encoded slash in path")]
    DotSegmentWithEncodedSlash,
}

/// A request path in canonical form.
///
/// `as_str()` is what routes match on and what is forwarded upstream. It
/// always starts with `/`, has no empty, `.` or `..` segments (a trailing `/`
/// is kept), and every `%` in it begins an uppercase escape of a byte that must
/// stay encoded. Canonicalising it again yields the same path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath<'a> {
    path: Cow<'a, str>,
    encoded_slash: bool,
    semicolon: bool,
}

impl<'a> CanonicalPath<'a> {
    /// The canonical path text.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// True when the path contains an encoded slash (kept as uppercase `%2F`,
    /// not a separator). The caller refuses such a path unless the matched
    /// route opted in, since an upstream may decode it into a separator.
    pub fn has_encoded_slash(&self) -> bool {
        self.encoded_slash
    }

    /// True when the path contains a raw `;`. Servlet containers and others
    /// strip `;params` from segments before routing (`/admin;x/users` is
    /// `/admin/users` to Tomcat), so the caller refuses such a path unless the
    /// matched route opted in.
    pub fn has_semicolon(&self) -> bool {
        self.semicolon
    }

    /// Detaches the path from the request it was borrowed from.
    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath {
            path: Cow::Owned(self.path.into_owned()),
            encoded_slash: self.encoded_slash,
            semicolon: self.semicolon,
        }
    }
}

impl AsRef<str> for CanonicalPath<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Canonicalises the raw path component of a request target (the caller has
/// split off the query).
///
/// - The path must start with `/`.
/// - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
///   `%2F` stays encoded as `%2F` (see [`CanonicalPath::has_encoded_slash`]);
///   every other escape stays encoded with uppercase hex digits.
///   `%00`, `%5C` and malformed escapes are refused.
/// - A raw `\`, NUL, control, space, non-ASCII, `?` or `#` byte is refused.
/// - Empty segments are merged; a trailing slash is kept.
/// - After decoding, `.` segments are removed and `..` removes the previous
///   segment; climbing above the root is refused, never clamped. A trailing
///   dot segment leaves a trailing slash (`/a/b/..` gives `/a/`).
/// - A segment that is `.` or `..` before a `;` (or `%3B`) is refused.
///
/// A path that is already canonical is returned borrowed, without allocating.
pub fn canonicalize(raw: &str) -> Result<CanonicalPath<'_>, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if let Some(semicolon) = plainly_canonical(raw) {
        return Ok(CanonicalPath {
            path: Cow::Borrowed(raw),
            encoded_slash: false,
            semicolon,
        });
    }

    let mut out = String::with_capacity(raw.len());
    // Offset in `out` of the `/` that starts each kept segment, so `..` can
    // truncate back to it.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut segment = String::new();
    for piece in rest.split('/') {
        segment.clear();
        decode_segment(piece, &mut segment)?;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
            }
            kept => {
                if is_dot_with_params(kept) {
                    return Err(PathError::DotSegmentWithParams);
                }
                if kept.contains("%2F") && kept.split("%2F").any(is_dot_or_dot_with_params) {
                    return Err(PathError::DotSegmentWithEncodedSlash);
                }
                starts.push(out.len());
                out.push('/');
                out.push_str(kept);
            }
        }
        // Only the last piece decides: `/a/`, `/a/.` and `/a/b/..` all end in `/`.
        trailing_slash = matches!(segment.as_str(), "" | "." | "..");
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    // Judged on the output, not the input: a `%2F` segment removed by `..` is
    // gone. Every `%` in the output starts an escape, so this finds only those.
    let encoded_slash = out.contains("%2F");
    let semicolon = out.contains(';');
    Ok(CanonicalPath {
        path: Cow::Owned(out),
        encoded_slash,
        semicolon,
    })
}

/// For a path with no escapes, no `//`, no segment starting with `.` and no
/// refused byte (nothing in it can change, so it can be returned borrowed):
/// whether it has a `;`. `None` for any other path.
fn plainly_canonical(raw: &str) -> Option<bool> {
    let mut previous = 0u8;
    let mut semicolon = false;
    for byte in raw.bytes() {
        if byte == b'%' || check_raw_byte(byte).is_err() {
            return None;
        }
        if previous == b'/' && (byte == b'/' || byte == b'.') {
            return None;
        }
        semicolon |= byte == b';';
        previous = byte;
    }
    Some(semicolon)
}

/// Appends the normalised form of one segment (the text between two slashes)
/// to `out`: unreserved escapes decoded, the others uppercased.
fn decode_segment(piece: &str, out: &mut String) -> Result<(), PathError> {
    let mut bytes = piece.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            check_raw_byte(byte)?;
            out.push(char::from(byte));
            continue;
        }
        let high = bytes.next().and_then(hex_value);
        let low = bytes.next().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(PathError::BadPercentEncoding);
        };
        match (high << 4) | low {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'/' => out.push_str("%2F"),
            decoded if is_unreserved(decoded) => out.push(char::from(decoded)),
            // Writing to a String cannot fail.
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    Ok(())
}

/// Refuses raw bytes that must never reach a route or an upstream.
fn check_raw_byte(byte: u8) -> Result<(), PathError> {
    match byte {
        0 => Err(PathError::Nul),
        b'\\' => Err(PathError::Backslash),
        // Controls, space, DEL and non-ASCII: hyper refuses them, so they only
        // come from a bug or an attack. `?` and `#` cannot be in a path
        // component: the query was split off and fragments are never sent.
        ..=b' ' | 0x7f.. | b'?' | b'#' => Err(PathError::InvalidCharacter),
        _ => Ok(()),
    }
}

/// A segment such as `..;x`, `.;` or `..%3Bx`: Tomcat and Jetty strip the
/// parameters and then treat it as a dot segment. `%3B` is included because
/// some servers decode before stripping parameters.
fn is_dot_with_params(segment: &str) -> bool {
    let head = segment.split(';').next().unwrap_or(segment);
    let head = head.split("%3B").next().unwrap_or(head);
    head == "." || head == ".."
}

fn is_dot_or_dot_with_params(piece: &str) -> bool {
    piece == "." || piece == ".." || is_dot_with_params(piece)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 unreserved characters, whose escapes are equivalent to themselves.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Each input must be accepted with exactly this output and flag.
    fn assert_accepted(cases: &[(&str, &str, bool)]) {
        for &(input, expected, slash) in cases {
            match canonicalize(input) {
                Ok(path) => {
                    assert_eq!(path.as_str(), expected, "input {input:?}");
                    assert_eq!(path.has_encoded_slash(), slash, "flag for {input:?}");
                }
                Err(e) => panic!("{input:?} refused with {e:?}, expected {expected:?}"),
            }
        }
    }

    /// Each input must be refused with exactly this error.
    fn assert_refused(cases: &[(&str, PathError)]) {
        for &(input, expected) in cases {
            assert_eq!(canonicalize(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn a_path_must_start_with_a_slash() {
        assert_refused(&[
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("../admin", PathError::NotAbsolute),
            ("http://host/a", PathError::NotAbsolute),
            ("%2Fadmin", PathError::NotAbsolute),
        ]);
    }

    #[test]
    fn an_already_canonical_path_is_borrowed_unchanged() {
        for input in [
            "/", "/a", "/a/b", "/a/b/", "/a;v=1/b", "/a.b/c.", "/a-b_c~d", "/x.../y",
        ] {
            let path = canonicalize(input).unwrap();
            assert_eq!(path.as_str(), input);
            assert!(
                matches!(path.path, Cow::Borrowed(_)),
                "{input:?} was copied"
            );
            assert!(!path.has_encoded_slash());
        }
    }

    #[test]
    fn a_path_that_changes_is_returned_owned() {
        for input in ["//a", "/a/./b", "/%41", "/a/.."] {
            let path = canonicalize(input).unwrap();
            assert!(matches!(path.path, Cow::Owned(_)), "{input:?}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_accepted(&[
            ("/%41%7a%30%2d%2E%5f%7E", "/Az0-._~", false),
            ("/a%3ab", "/a%3Ab", false),
            ("/a%20b", "/a%20b", false),
            ("/%25", "/%25", false),
            ("/%ff%fE", "/%FF%FE", false),
            ("/a%3B/b", "/a%3B/b", false),
            ("/%3F%23", "/%3F%23", false),
        ]);
    }

    #[test]
    fn an_encoded_slash_stays_encoded_and_is_flagged() {
        assert_accepted(&[
            ("/a%2fb", "/a%2Fb", true),
            ("/a%2Fb", "/a%2Fb", true),
            ("/%2F", "/%2F", true),
            ("/a/%2f/", "/a/%2F/", true),
            // The flag describes the output: a removed `%2F` segment is gone.
            ("/a/%2f/..", "/a/", false),
            ("/a%2fb/../c", "/c", false),
        ]);
    }

    #[test]
    fn malformed_escapes_are_refused() {
        assert_refused(&[
            ("/%", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%4/b", PathError::BadPercentEncoding),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%g1", PathError::BadPercentEncoding),
            ("/a%u002e", PathError::BadPercentEncoding),
            ("/a%%41", PathError::BadPercentEncoding),
            ("/a%é", PathError::BadPercentEncoding),
        ]);
    }

    #[test]
    fn backslashes_and_nul_bytes_are_refused_raw_or_encoded() {
        assert_refused(&[
            ("/a\\b", PathError::Backslash),
            ("/public\\..\\admin", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/a%5Cb", PathError::Backslash),
            ("/a\0b", PathError::Nul),
            ("/a%00b", PathError::Nul),
            ("/a/..%00/b", PathError::Nul),
        ]);
    }

    #[test]
    fn controls_spaces_non_ascii_and_delimiters_are_refused() {
        assert_refused(&[
            ("/a b", PathError::InvalidCharacter),
            ("/a\tb", PathError::InvalidCharacter),
            ("/a\r\nb", PathError::InvalidCharacter),
            ("/a\x7fb", PathError::InvalidCharacter),
            ("/caf\u{e9}", PathError::InvalidCharacter),
            ("/a?b", PathError::InvalidCharacter),
            ("/a#b", PathError::InvalidCharacter),
        ]);
    }

    #[test]
    fn empty_segments_are_merged_and_a_trailing_slash_is_kept() {
        assert_accepted(&[
            ("//", "/", false),
            ("///", "/", false),
            ("//a///b", "/a/b", false),
            ("/a/b/", "/a/b/", false),
            ("/a//", "/a/", false),
            ("//admin", "/admin", false),
        ]);
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_accepted(&[
            ("/.", "/", false),
            ("/./", "/", false),
            ("/a/./b", "/a/b", false),
            ("/a/b/.", "/a/b/", false),
            ("/a/b/..", "/a/", false),
            ("/a/..", "/", false),
            ("/a/../", "/", false),
            ("/a/b/../c", "/a/c", false),
            ("/a/b/../../c/", "/c/", false),
            ("/a/.//../b", "/b", false),
            ("/.a/..b/.../b..", "/.a/..b/.../b..", false),
        ]);
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_accepted(&[
            ("/a/%2e/b", "/a/b", false),
            ("/a/b/%2e%2e", "/a/", false),
            ("/a/b/%2E%2e/c", "/a/c", false),
            ("/a/b/.%2E/c", "/a/c", false),
            ("/a/b/%2e./c", "/a/c", false),
        ]);
    }

    #[test]
    fn climbing_above_the_root_is_refused_not_clamped() {
        assert_refused(&[
            ("/..", PathError::AboveRoot),
            ("/../a", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/a/./../../b", PathError::AboveRoot),
            ("/%2e%2e/a", PathError::AboveRoot),
            ("//../a", PathError::AboveRoot),
        ]);
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        assert_refused(&[
            ("/a/..;/b", PathError::DotSegmentWithParams),
            ("/a/..;x=1/b", PathError::DotSegmentWithParams),
            ("/a/.;/b", PathError::DotSegmentWithParams),
            ("/a/%2e%2e;/b", PathError::DotSegmentWithParams),
            ("/a/.%2e;jsessionid=1", PathError::DotSegmentWithParams),
            ("/a/..%3b/b", PathError::DotSegmentWithParams),
            ("/a/..;", PathError::DotSegmentWithParams),
        ]);
    }

    #[test]
    fn other_semicolons_are_kept_as_they_are() {
        assert_accepted(&[
            ("/a;v=1/b", "/a;v=1/b", false),
            ("/a/;/b", "/a/;/b", false),
            ("/a/...;x", "/a/...;x", false),
            ("/a/b;..", "/a/b;..", false),
            ("/a/;x/../b", "/a/b", false),
        ]);
    }

    #[test]
    fn a_semicolon_is_kept_and_flagged_borrowed_or_not() {
        for (input, output) in [
            ("/admin;x/users", "/admin;x/users"),
            ("/a;jsessionid=1", "/a;jsessionid=1"),
            ("/a//b;v=1", "/a/b;v=1"),
        ] {
            let path = canonicalize(input).unwrap();
            assert_eq!(path.as_str(), output);
            assert!(path.has_semicolon(), "{input}");
        }
        assert!(!canonicalize("/a/b").unwrap().has_semicolon());
        assert!(!canonicalize("/a%3Bb").unwrap().has_semicolon());
    }

    #[test]
    fn route_bypass_attempts_are_resolved_or_refused() {
        assert_accepted(&[
            ("/public/../admin", "/admin", false),
            ("/public/%2e%2e/admin", "/admin", false),
            ("/public/./../admin", "/admin", false),
            ("//admin", "/admin", false),
            ("/public/a%2Fb", "/public/a%2Fb", true),
            ("/public/...%2F.x", "/public/...%2F.x", true),
            (
                "/public/%252e%252e/admin",
                "/public/%252e%252e/admin",
                false,
            ),
        ]);
        assert_refused(&[
            ("/public/..;/admin", PathError::DotSegmentWithParams),
            (
                "/public/%2E%2E%2Fadmin",
                PathError::DotSegmentWithEncodedSlash,
            ),
            ("/public/a%2F..%2Fb", PathError::DotSegmentWithEncodedSlash),
            ("/public/a%2F.", PathError::DotSegmentWithEncodedSlash),
            ("/public/x%2F..;y", PathError::DotSegmentWithEncodedSlash),
            ("/public\\..\\admin", PathError::Backslash),
            ("/public/%5c..%5cadmin", PathError::Backslash),
            ("/public/../../admin", PathError::AboveRoot),
        ]);
    }

    #[test]
    fn canonical_output_is_stable() {
        for input in [
            "/public/a%2f%2e%2ex",
            "/a/b/..",
            "/%7e%3a",
            "/a//b/./",
            "/a%2fb/%2e",
        ] {
            let once = canonicalize(input).unwrap();
            assert_eq!(
                canonicalize(once.as_str()),
                Ok(once.clone()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn into_owned_keeps_the_path_and_flag() {
        let raw = String::from("/a/%2f/./b");
        let owned = canonicalize(&raw).unwrap().into_owned();
        drop(raw);
        assert_eq!(owned.as_str(), "/a/%2F/b");
        assert!(owned.has_encoded_slash());
    }

    #[test]
    fn errors_have_short_messages() {
        assert_eq!(
            PathError::AboveRoot.to_string(),
            "path climbs above the root"
        );
        assert_eq!(
            PathError::NotAbsolute.to_string(),
            "path must start with '/'"
        );
    }

    // Property tests.

    const ALPHABET: &[char] = &[
        '/', '.', '%', '2', 'e', 'E', 'F', 'f', 'a', ';', '5', 'c', '0', '3', 'B',
    ];

    /// Paths from single characters that make escapes, dots and slashes.
    fn char_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..24)
            .prop_map(|chars| chars.into_iter().collect())
    }

    const TOKENS: &[&str] = &[
        "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%25", "%3b", ";", "a",
        "admin", "public", "%41", "%3a", "%",
    ];

    /// Paths from tokens, which hit dot segments and escapes far more often.
    fn token_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOKENS), 0..12).prop_map(|t| t.concat())
    }

    fn any_suffix() -> impl Strategy<Value = String> {
        prop_oneof![char_path(), token_path()]
    }

    /// Lowercases and decodes `%2e`, so every decoded `..` shows up as `..`.
    fn dots_decoded(s: &str) -> String {
        s.to_ascii_lowercase().replace("%2e", ".")
    }

    /// Checks everything an accepted output must satisfy.
    fn check_canonical_shape(out: &CanonicalPath<'_>) {
        let s = out.as_str();
        assert!(s.starts_with('/'), "{s:?}");
        assert!(!s.contains("//"), "{s:?}");
        for segment in s.split('/').skip(1) {
            assert!(segment != "." && segment != "..", "{s:?}");
            assert!(!is_dot_with_params(segment), "{s:?}");
        }
        assert!(s.bytes().all(|b| check_raw_byte(b).is_ok()), "{s:?}");
        assert_eq!(out.has_encoded_slash(), s.contains("%2F"), "{s:?}");
    }

    proptest! {
        // Cheap cases: run enough to reach rare token combinations.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn accepted_output_is_idempotent(suffix in any_suffix()) {
            let input = format!("/{suffix}");
            if let Ok(once) = canonicalize(&input) {
                let twice = canonicalize(once.as_str());
                prop_assert_eq!(twice.as_ref(), Ok(&once));
                // Output without escapes or dot-led segments takes the fast path.
                if !once.as_str().contains('%') && !once.as_str().contains("/.") {
                    prop_assert!(matches!(twice.map(|t| t.path), Ok(Cow::Borrowed(_))));
                }
            }
        }

        #[test]
        fn accepted_output_has_canonical_shape(suffix in any_suffix()) {
            if let Ok(out) = canonicalize(&format!("/{suffix}")) {
                check_canonical_shape(&out);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(input in any::<String>()) {
            if let Ok(out) = canonicalize(&input) {
                check_canonical_shape(&out);
            }
        }

        // The no-escape guarantee: under `/public/` a suffix resolves exactly
        // as it would at the root, so leaving `/public/` needs a suffix that on
        // its own climbs above the root.
        #[test]
        fn a_prefix_is_left_only_by_climbing_above_it(suffix in any_suffix()) {
            let prefixed = format!("/public/{suffix}");
            let under_public = canonicalize(&prefixed);
            match canonicalize(&format!("/{suffix}")) {
                Ok(at_root) => {
                    let expected = format!("/public{}", at_root.as_str());
                    prop_assert_eq!(under_public.map(|p| p.as_str().to_owned()), Ok(expected));
                }
                Err(PathError::AboveRoot) => {
                    prop_assert!(dots_decoded(&suffix).contains(".."));
                }
                Err(e) => prop_assert_eq!(under_public, Err(e)),
            }
        }

        #[test]
        fn without_a_dot_dot_the_output_stays_under_the_prefix(suffix in any_suffix()) {
            if dots_decoded(&suffix).contains("..") {
                return Ok(());
            }
            if let Ok(out) = canonicalize(&format!("/public/{suffix}")) {
                prop_assert!(out.as_str().starts_with("/public/"), "{:?}", out.as_str());
            }
        }

        #[test]
        fn an_output_outside_the_prefix_came_from_a_dot_dot(suffix in any_suffix()) {
            if let Ok(out) = canonicalize(&format!("/public/{suffix}")) {
                if !out.as_str().starts_with("/public/") {
                    prop_assert!(dots_decoded(&suffix).contains(".."));
                }
                if out.as_str().starts_with("/admin") {
                    prop_assert!(dots_decoded(&suffix).contains(".."), "{:?}", suffix);
                }
            }
        }
    }
}
