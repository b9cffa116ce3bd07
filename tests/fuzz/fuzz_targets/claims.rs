//! `claims` on arbitrary token payloads and claim paths: lookups follow the
//! documented rule (whole name first, then dotted steps), scopes are exactly
//! the words of string claims and the string elements of array claims,
//! sorted and deduplicated, and `matches` is equality or array membership.
//!
//! Input: JSON text, then a NUL byte (never raw in JSON text), then claim
//! paths one per line; the last line is the expected value for `matches`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::claims::{ClaimPath, matches, scopes};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let (json, rest) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    let mut lines: Vec<&str> = rest.split('\n').collect();
    let expected = lines.pop().unwrap_or("");
    let mut paths: Vec<ClaimPath> = lines.iter().take(8).map(|p| ClaimPath::new(p)).collect();
    if paths.is_empty() {
        paths = ["scope", "scp", "realm_access.roles"]
            .map(ClaimPath::new)
            .into();
    }

    for (path, text) in paths.iter().zip(&lines) {
        assert_eq!(path.as_str(), *text);
        let found = path.lookup(&claims);
        assert_eq!(found, lookup_model(&claims, text), "{text:?}");
        if let Some(value) = found {
            check_matches(value, expected);
        }
    }
    for value in claims.values() {
        check_matches(value, expected);
    }

    let granted = scopes(&claims, &paths);
    assert!(
        granted.windows(2).all(|w| w[0] < w[1]),
        "sorted, no duplicates"
    );
    let mut model: Vec<&str> = Vec::new();
    for value in paths.iter().filter_map(|p| p.lookup(&claims)) {
        match value {
            Value::String(s) => model.extend(s.split_ascii_whitespace()),
            Value::Array(items) => model.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    model.sort_unstable();
    model.dedup();
    let granted: Vec<&str> = granted.iter().map(|s| &**s).collect();
    assert_eq!(granted, model);
    // Words of a space-separated claim never hold ASCII whitespace and are
    // never empty; array elements are whole scopes, kept as they are.
    for value in paths.iter().filter_map(|p| p.lookup(&claims)) {
        if let Value::String(s) = value {
            for word in s.split_ascii_whitespace() {
                assert!(!word.is_empty() && !word.contains(|c: char| c.is_ascii_whitespace()));
            }
        }
    }
});

/// `ClaimPath::lookup` as its docs describe it.
fn lookup_model<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut steps = path.split('.');
    let first = steps.next()?;
    if !path.contains('.') {
        return None;
    }
    let mut value = claims.get(first)?;
    for step in steps {
        value = value.as_object()?.get(step)?;
    }
    Some(value)
}

/// `matches` as its docs describe it.
fn check_matches(value: &Value, expected: &str) {
    let want = match value {
        Value::String(s) => s == expected,
        Value::Number(n) => n.to_string() == expected,
        Value::Bool(b) => b.to_string() == expected,
        Value::Array(items) => items
            .iter()
            .any(|item| !item.is_array() && matches(item, expected)),
        Value::Null | Value::Object(_) => false,
    };
    assert_eq!(matches(value, expected), want, "{value} vs {expected:?}");
    // An array holding the value matches as the value does; nested arrays never.
    if !value.is_array() {
        let wrapped = Value::Array(vec![value.clone()]);
        assert_eq!(matches(&wrapped, expected), want);
    }
    assert!(!matches(
        &Value::Array(vec![Value::Array(vec![value.clone()])]),
        expected
    ));
}
