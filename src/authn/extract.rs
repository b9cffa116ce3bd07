//! Where the credential comes from: `Authorization: Bearer <token>` or
//! `Authorization: DPoP <token>` (RFC 9449 §7.1), or a provider's cookie.
//! Tokens in query strings are never read (they end up in logs and caches).

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::{AuthnError, Scheme};

/// The access token of a request and its scheme.
///
/// - no `Authorization` header, or another scheme (Basic…): `Missing`, so the
///   client gets a plain challenge (RFC 6750 §3.1: no error code);
/// - several `Authorization` headers, or a value that is not `Bearer`/`DPoP`
///   + one token68 (RFC 7235 §2.1): `InvalidRequest`, answered 400.
pub fn credential(headers: &HeaderMap) -> Result<(&str, Scheme), AuthnError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthnError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthnError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    // Read as bytes: for our schemes the token68 check below proves the
    // value is ASCII, so it is not scanned twice (a token is ~1 KB).
    let bytes = value.as_bytes();
    let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
        Some(space) => (&bytes[..space], &bytes[space + 1..]),
        None => (bytes, &b""[..]),
    };
    let scheme = if scheme.eq_ignore_ascii_case(b"bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case(b"dpop") {
        Scheme::Dpop
    } else if value.to_str().is_err() {
        return Err(AuthnError::InvalidRequest("malformed Authorization header"));
    } else {
        return Err(AuthnError::Missing);
    };
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    match std::str::from_utf8(&rest[start..]) {
        Ok(token) if is_token68(token) => Ok((token, scheme)),
        _ => Err(AuthnError::InvalidRequest(match scheme {
            Scheme::Bearer => "malformed bearer token",
            Scheme::Dpop => "malformed DPoP token",
        })),
    }
}

/// Does the request use the DPoP scheme? Decides the scheme of challenges.
pub fn uses_dpop(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().get(..5))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"dpop "))
}

/// A token from the first configured cookie the request carries, among
/// those of providers `accepts` (by index). A cookie given twice is refused:
/// which one a server would read differs between servers.
pub fn cookie<'h>(
    headers: &'h HeaderMap,
    cookies: &[(Box<str>, usize)],
    accepts: impl Fn(usize) -> bool,
) -> Result<Option<(&'h str, usize)>, AuthnError> {
    for (name, provider) in cookies.iter().filter(|(_, p)| accepts(*p)) {
        let mut found = None;
        let pairs = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='));
        for (key, value) in pairs {
            if key == &**name {
                if found.is_some() {
                    return Err(AuthnError::InvalidRequest("token cookie given twice"));
                }
                found = Some(value.trim_matches('"'));
            }
        }
        if let Some(token) = found {
            if !is_token68(token) {
                return Err(AuthnError::InvalidRequest("malformed token cookie"));
            }
            return Ok(Some((token, *provider)));
        }
    }
    Ok(None)
}

/// token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| TOKEN68[usize::from(b)])
}

/// The token68 characters as a table: one load per byte of a ~1 KB token
/// instead of a chain of range checks.
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0u8;
    loop {
        table[b as usize] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        if b == u8::MAX {
            break table;
        }
        b += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn bearer(headers: &HeaderMap) -> Result<&str, AuthnError> {
        credential(headers).map(|(token, _)| token)
    }

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_is_returned() {
        assert_eq!(
            bearer(&with(&["Bearer abc.def.ghi"])).unwrap(),
            "abc.def.ghi"
        );
        assert_eq!(bearer(&with(&["bEaReR abc"])).unwrap(), "abc");
        assert_eq!(bearer(&with(&["Bearer  abc=="])).unwrap(), "abc==");
        assert_eq!(
            credential(&with(&["DPoP abc"])).unwrap(),
            ("abc", Scheme::Dpop)
        );
        assert!(uses_dpop(&with(&["dpop abc"])));
        assert!(!uses_dpop(&with(&["Bearer abc"])));
    }

    #[test]
    fn no_header_or_another_scheme_is_missing() {
        assert!(matches!(bearer(&with(&[])), Err(AuthnError::Missing)));
        assert!(matches!(
            bearer(&with(&["Basic dXNlcjpwYXNz"])),
            Err(AuthnError::Missing)
        ));
        assert!(matches!(
            bearer(&with(&["Bearerabc"])),
            Err(AuthnError::Missing)
        ));
    }

    #[test]
    fn a_configured_cookie_yields_its_token_and_provider() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; at=abc.def.ghi"),
        );
        let cookies: Vec<(Box<str>, usize)> = vec![("session".into(), 0), ("at".into(), 1)];
        assert_eq!(
            cookie(&headers, &cookies, |_| true).unwrap(),
            Some(("abc.def.ghi", 1))
        );
        assert_eq!(
            cookie(&headers, &cookies, |p| p == 0).unwrap(),
            None,
            "provider 1 not accepted"
        );
        headers.append(COOKIE, HeaderValue::from_static("at=x.y.z"));
        assert!(matches!(
            cookie(&headers, &cookies, |_| true),
            Err(AuthnError::InvalidRequest(_))
        ));
        let mut bad = HeaderMap::new();
        bad.append(COOKIE, HeaderValue::from_static("at=a b"));
        assert!(matches!(
            cookie(&bad, &cookies, |_| true),
            Err(AuthnError::InvalidRequest(_))
        ));
    }

    #[test]
    fn duplicates_and_bad_syntax_are_invalid_requests() {
        for bad in [
            &["Bearer a", "Bearer b"][..],
            &["Bearer "],
            &["Bearer"],
            &["Bearer a b"],
            &["Bearer a=b"],
            &["Bearer a,b"],
            &["Bearer ="],
        ] {
            assert!(
                matches!(bearer(&with(bad)), Err(AuthnError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the header holds, parsing never panics, and a token
            /// is returned only from exactly one header of a known scheme
            /// whose rest is a single token68.
            #[test]
            fn only_one_well_formed_credential_is_ever_returned(
                values in prop::collection::vec("[ -~]{0,40}", 0..3),
            ) {
                let mut headers = HeaderMap::new();
                for v in &values {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        headers.append(AUTHORIZATION, v);
                    }
                }
                if let Ok((token, scheme)) = credential(&headers) {
                    prop_assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
                    prop_assert!(is_token68(token));
                    let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
                    let name = match scheme { Scheme::Bearer => "bearer", Scheme::Dpop => "dpop" };
                    prop_assert!(value.len() > name.len() && value[..name.len()].eq_ignore_ascii_case(name));
                    prop_assert!(value.ends_with(token));
                }
            }

            /// A well-formed bearer token always comes back unchanged.
            #[test]
            fn a_token68_round_trips(token in "[A-Za-z0-9._~+/-]{1,40}=*") {
                let headers = with(&[&format!("Bearer {token}")]);
                prop_assert_eq!(bearer(&headers).ok(), Some(token.as_str()));
            }
        }
    }
}
