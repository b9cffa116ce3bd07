//! `${VAR}` substitution from the environment, done on the text before
//! parsing so that line numbers in errors still point into the file.

/// Replace every `${NAME}` with the variable's value. Unset variables are
/// errors (with their line), never silently empty: an empty secret is a
/// misconfiguration. Comment lines are left alone.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                errors.push((
                    index + 1,
                    "unterminated `${` (expected `${NAME}`)".to_owned(),
                ));
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                errors.push((
                    index + 1,
                    format!("`${{{name}}}` is not a valid variable name"),
                ));
            } else {
                match lookup(name) {
                    Some(value) if value.contains('\n') => errors.push((
                        index + 1,
                        format!("environment variable {name} contains a newline"),
                    )),
                    Some(value) => out.push_str(&value),
                    None => {
                        errors.push((index + 1, format!("environment variable {name} is not set")))
                    }
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_owned())
    }

    #[test]
    fn variables_are_replaced_and_comments_kept() {
        let text = "a: ${SECRET}\n# ${UNSET} in a comment\nb: x${SECRET}y\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "a: s3cr3t\n# ${UNSET} in a comment\nb: xs3cr3ty\n"
        );
    }

    #[test]
    fn unset_and_malformed_variables_are_reported_with_their_line() {
        let errors = substitute("a: 1\nb: ${UNSET}\nc: ${1X}\nd: ${OPEN\n", env).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(errors[0].1.contains("UNSET is not set"));
    }
}
