//! `${VAR}` substitution from the environment, inside the string values of
//! the parsed document, so that a value can never change the YAML around it
//! (a secret holding `#`, `"` or `: ` stays one string).

use serde_yaml::Value;

/// Replace every `${NAME}` in every string value (keys are left alone). The
/// result is always a string. Unset variables are errors with the key path
/// of their value, never silently empty: an empty secret is a misconfiguration.
pub fn substitute(
    value: &mut Value,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    walk(value, &mut String::new(), lookup, &mut errors);
    errors
}

fn walk(
    value: &mut Value,
    path: &mut String,
    lookup: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, String)>,
) {
    let len = path.len();
    match value {
        Value::String(text) if text.contains("${") => match expand(text, lookup) {
            Ok(expanded) => *text = expanded,
            Err(message) => errors.push((path.clone(), message)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(item, path, lookup, errors);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.as_str().unwrap_or("?"));
                walk(item, path, lookup, errors);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup, errors),
        _ => {}
    }
}

/// One string with its `${NAME}`s replaced.
fn expand(text: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or("unterminated `${` (expected `${NAME}`)")?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!("`${{{name}}}` is not a valid variable name"));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t # not a comment\", x: 1".to_owned()),
            "HOST" => Some("api".to_owned()),
            _ => None,
        }
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn values_are_replaced_whole_and_stay_one_string() {
        let mut v =
            yaml("a: ${SECRET}\nb: [\"http://${HOST}:80\"]\n# ${UNSET} in a comment\nc: 3\n");
        assert!(substitute(&mut v, &env).is_empty());
        assert_eq!(
            v,
            yaml("a: \"s3cr3t # not a comment\\\", x: 1\"\nb: [\"http://api:80\"]\nc: 3\n")
        );
    }

    #[test]
    fn unset_and_malformed_variables_are_reported_with_their_key_path() {
        let mut v = yaml("a: ok\nb: ${UNSET}\nlist:\n  - { c: \"${1X}\" }\nd: ${OPEN\n");
        let errors = substitute(&mut v, &env);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["b", "list[0].c", "d"]);
        assert!(errors[0].1.contains("UNSET is not set"));
        assert!(errors[1].1.contains("not a valid variable name"));
        assert!(errors[2].1.contains("unterminated"));
    }
}
