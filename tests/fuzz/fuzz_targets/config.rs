//! `config::from_str` on arbitrary YAML text: never panics, and a refused
//! file yields at least one error, each of which renders a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config;

/// What every `${VAR}` resolves to.
const ENV_VALUE: &str = "fuzz-value";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_a_special_file(text) {
        return;
    }
    match config::from_str(text, "fuzz.yaml", |_| Some(ENV_VALUE.to_owned())) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a reason");
            for error in &errors.0 {
                assert!(!error.message.is_empty(), "{error:?}");
                let shown = error.to_string();
                assert!(shown.starts_with("fuzz.yaml"), "{shown:?}");
                assert!(shown.ends_with(&error.message), "{shown:?}");
                if let Some((line, column)) = error.position {
                    assert!(line >= 1 && column >= 1, "{error:?}");
                    // At most one past the last line: libyaml puts the end
                    // of the stream on a line of its own.
                    assert!(line <= yaml_lines(text) + 1, "{error:?}");
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
});

/// Lines as YAML counts them, a last unterminated one included. Breaks
/// are CR LF, CR, LF and (YAML 1.1, which serde_yaml follows) NEL, LS, PS;
/// `str::lines` knows only CR LF and LF, so it is no bound for a file with
/// CR-only line ends.
fn yaml_lines(text: &str) -> usize {
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let breaks = text
        .replace("\r\n", "\n")
        .chars()
        .filter(|&c| is_break(c))
        .count();
    breaks + usize::from(!text.is_empty() && !text.ends_with(is_break))
}

/// Compiling reads the files a config names (certificates, CA bundles, the
/// API key file) to check them. The fuzzer must not make it read a device
/// or a FIFO (`/dev/zero` never ends, `/dev/stdin` blocks): skip any input
/// with a string, `${VAR}` substituted, that names an existing file that is
/// neither a regular file nor a directory. Operators name these files, so
/// this is about the fuzzer, not a gap in the gateway.
fn names_a_special_file(text: &str) -> bool {
    let Ok(document) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return false;
    };
    let mut strings = Vec::new();
    collect_strings(&document, &mut strings);
    strings.iter().any(|s| {
        [s.to_string(), substituted(s)].iter().any(|path| {
            !path.is_empty() && std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
        })
    })
}

fn collect_strings<'a>(value: &'a serde_yaml::Value, out: &mut Vec<&'a str>) {
    use serde_yaml::Value;
    match value {
        Value::String(s) => out.push(s),
        Value::Sequence(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out);
        }),
        Value::Tagged(tagged) => collect_strings(&tagged.value, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `s` with each `${...}` replaced by `ENV_VALUE`.
fn substituted(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                out.push_str(ENV_VALUE);
                rest = &rest[start + end + 1..];
            }
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}
