//! Credential extraction (`authn::extract`) on arbitrary header bytes: a
//! token is returned only from exactly one well-formed `Authorization`
//! header or one configured, accepted cookie, and is always one whole token68
//! taken from that header.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::authn::{AuthnError, Scheme, extract, uses_dpop};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    authorization: Vec<&'a [u8]>,
    dpop: Option<&'a [u8]>,
    cookies: Vec<&'a [u8]>,
    /// Configured token cookies: name and provider index.
    cookie_names: Vec<(&'a str, u8)>,
    /// Bit `p % 8` set: provider `p` is accepted by the route.
    accepted: u8,
}

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    // At most two: a third adds nothing a second does not.
    for value in input.authorization.iter().take(2) {
        append(&mut headers, AUTHORIZATION, value);
    }
    if let Some(proof) = input.dpop {
        append(&mut headers, HeaderName::from_static("dpop"), proof);
    }
    for value in input.cookies.iter().take(3) {
        append(&mut headers, COOKIE, value);
    }
    check_credential(&headers);
    let cookies: Vec<(Box<str>, usize)> = input
        .cookie_names
        .iter()
        .take(4)
        .map(|&(name, p)| (name.into(), usize::from(p % 8)))
        .collect();
    let accepts = |p: usize| input.accepted & (1 << (p % 8)) != 0;
    check_cookie(&headers, &cookies, accepts);
});

fn append(headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
    // hyper never hands over a value `HeaderValue` refuses.
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.append(name, value);
    }
}

fn check_credential(headers: &HeaderMap) {
    let values: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    match extract::credential(headers) {
        Ok((token, scheme)) => {
            assert_eq!(values.len(), 1);
            let value = values[0].to_str().expect("a token came from a str");
            assert!(is_token68(token), "{token:?}");
            assert!(!token.contains(char::is_whitespace), "{token:?}");
            assert!(value.ends_with(token), "{value:?} -> {token:?}");
            let name = match scheme {
                Scheme::Bearer => "bearer ",
                Scheme::Dpop => "dpop ",
            };
            let prefix = value.get(..name.len()).unwrap_or("");
            assert!(prefix.eq_ignore_ascii_case(name), "{value:?}");
            // Only spaces between the scheme and the token.
            let gap = &value[name.len()..value.len() - token.len()];
            assert!(gap.bytes().all(|b| b == b' '), "{value:?}");
            // Challenges name the scheme the client used.
            assert_eq!(uses_dpop(headers), scheme == Scheme::Dpop, "{value:?}");
        }
        Err(e) => {
            assert!(matches!(
                e,
                AuthnError::Missing | AuthnError::InvalidRequest(_)
            ));
            match values.len() {
                0 => assert_eq!(e, AuthnError::Missing),
                1 => {}
                _ => assert!(matches!(e, AuthnError::InvalidRequest(_))),
            }
            assert!(!e.to_string().is_empty());
        }
    }
}

fn check_cookie(
    headers: &HeaderMap,
    cookies: &[(Box<str>, usize)],
    accepts: impl Fn(usize) -> bool,
) {
    // Every `name=value` pair the request carries, as the docs define them.
    let pairs: Vec<(&str, &str)> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .collect();
    let count = |name: &str| pairs.iter().filter(|(k, _)| *k == name).count();
    match extract::cookie(headers, cookies, &accepts) {
        Ok(Some((token, provider))) => {
            assert!(accepts(provider));
            assert!(is_token68(token), "{token:?}");
            // The first accepted configured cookie present, given once.
            let first = cookies
                .iter()
                .find(|(name, p)| accepts(*p) && count(name) > 0)
                .expect("a token came from some cookie");
            assert_eq!(first.1, provider);
            assert_eq!(count(&first.0), 1);
            let (_, value) = pairs
                .iter()
                .find(|(k, _)| *k == &*first.0)
                .expect("counted above");
            assert_eq!(value.trim_matches('"'), token);
        }
        Ok(None) => {
            for (name, p) in cookies {
                assert!(!accepts(*p) || count(name) == 0, "{name:?} was there");
            }
        }
        Err(e) => {
            assert!(matches!(e, AuthnError::InvalidRequest(_)));
            assert!(!e.to_string().is_empty());
        }
    }
}

/// token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}
