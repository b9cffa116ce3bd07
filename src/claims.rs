//! Reading claims out of a verified token's payload.

use serde_json::{Map, Value};

/// Where a claim lives: a top-level name, or a dotted path into nested
/// objects (`realm_access.roles`). Names that themselves contain dots (Auth0's
/// `https://example.com/roles`) are tried whole first, so both kinds work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    whole: Box<str>,
    steps: Box<[Box<str>]>,
}

impl ClaimPath {
    /// Compile a path as written in the config.
    pub fn new(path: &str) -> Self {
        Self {
            whole: path.into(),
            steps: path.split('.').map(Into::into).collect(),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.whole
    }

    /// The claim's value, if the payload has it.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(value) = claims.get(&*self.whole) {
            return Some(value);
        }
        if self.steps.len() < 2 {
            return None;
        }
        let (first, rest) = self.steps.split_first()?;
        rest.iter()
            .try_fold(claims.get(&**first)?, |value, step| value.get(&**step))
    }
}

/// Every word of the scope-like claims: a space-separated string (`scope`) or
/// an array of strings (`scp` at Entra, `permissions` at Auth0). Sorted and
/// deduplicated so that checks are exact-word lookups, never substring tests.
pub fn scopes(claims: &Map<String, Value>, paths: &[ClaimPath]) -> Box<[Box<str>]> {
    let mut words: Vec<Box<str>> = Vec::new();
    for value in paths.iter().filter_map(|p| p.lookup(claims)) {
        match value {
            Value::String(s) => words.extend(s.split_ascii_whitespace().map(Into::into)),
            // Each element is one scope, whole: splitting would turn a role
            // named "not admin" into `admin`.
            Value::Array(items) => {
                words.extend(items.iter().filter_map(Value::as_str).map(Into::into))
            }
            _ => {}
        }
    }
    words.sort_unstable();
    words.dedup();
    words.into_boxed_slice()
}

/// True when `value` equals `expected`, or is an array holding it. Numbers
/// and booleans compare by their JSON text, so `claims: { level: 3 }` works.
pub fn matches(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Number(n) => n.to_string() == expected,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == expected,
        Value::Array(items) => items
            .iter()
            .any(|item| !item.is_array() && matches(item, expected)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dotted_paths_reach_nested_claims_and_whole_names_win() {
        let claims = map(json!({
            "realm_access": {"roles": ["admin"]},
            "https://example.com/roles": ["editor"],
            "a.b": 1, "a": {"b": 2}
        }));
        assert_eq!(
            ClaimPath::new("realm_access.roles").lookup(&claims),
            Some(&json!(["admin"]))
        );
        assert_eq!(
            ClaimPath::new("https://example.com/roles").lookup(&claims),
            Some(&json!(["editor"]))
        );
        assert_eq!(ClaimPath::new("a.b").lookup(&claims), Some(&json!(1)));
        assert_eq!(ClaimPath::new("realm_access.missing").lookup(&claims), None);
        assert_eq!(ClaimPath::new("missing").lookup(&claims), None);
    }

    #[test]
    fn scopes_come_from_strings_and_arrays_as_exact_words() {
        let claims = map(
            json!({"scope": "read  write", "scp": ["admin_read", "read", "not admin"], "n": 5}),
        );
        let paths = [
            ClaimPath::new("scope"),
            ClaimPath::new("scp"),
            ClaimPath::new("n"),
        ];
        let got = scopes(&claims, &paths);
        assert_eq!(
            &*got,
            &[
                "admin_read".into(),
                "not admin".into(),
                "read".into(),
                "write".into()
            ] as &[Box<str>]
        );
        assert!(got.binary_search(&"admin".into()).is_err());
    }

    #[test]
    fn claim_values_match_exactly_or_by_membership() {
        assert!(matches(&json!("acme"), "acme"));
        assert!(!matches(&json!("acme-evil"), "acme"));
        assert!(matches(&json!(["x", "acme"]), "acme"));
        assert!(!matches(&json!([["acme"]]), "acme"));
        assert!(matches(&json!(3), "3"));
        assert!(matches(&json!(true), "true"));
        assert!(!matches(&json!({"acme": 1}), "acme"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn word() -> impl Strategy<Value = String> {
            "[a-z:._/-]{1,12}"
        }

        proptest! {
            /// A scope is granted only when it is a whole word of a
            /// space-separated claim or a whole element of an array claim:
            /// never a substring, never a piece of an element.
            #[test]
            fn a_scope_is_granted_only_as_a_whole_word(
                words in prop::collection::vec(word(), 0..6),
                elements in prop::collection::vec("[a-z ]{1,12}", 0..4),
                wanted in word(),
            ) {
                let claims = json!({"scope": words.join(" "), "scp": elements});
                let claims = claims.as_object().cloned().unwrap_or_default();
                let paths = [ClaimPath::new("scope"), ClaimPath::new("scp")];
                let granted = scopes(&claims, &paths);
                let expected = words.contains(&wanted) || elements.contains(&wanted);
                prop_assert_eq!(granted.binary_search(&wanted.as_str().into()).is_ok(), expected);
                // Sorted and deduplicated, as lookups assume.
                prop_assert!(granted.windows(2).all(|w| w[0] < w[1]));
            }

            /// A claim matches a value only by equality or array membership.
            #[test]
            fn a_claim_matches_only_equal_values_or_members(
                value in "[a-z0-9]{0,8}",
                others in prop::collection::vec("[a-z0-9]{0,8}", 0..4),
                expected in "[a-z0-9]{0,8}",
            ) {
                prop_assert_eq!(matches(&json!(value), &expected), value == expected);
                let mut all = others.clone();
                all.push(value.clone());
                prop_assert_eq!(
                    matches(&json!(all), &expected),
                    all.contains(&expected)
                );
                // An array inside an array is never looked into.
                prop_assert!(!matches(&json!([[expected.clone()]]), &expected));
            }
        }
    }
}
