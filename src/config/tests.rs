// Unit tests of the parent module, which declares this file under #[cfg(test)].
use super::*;

const MINIMAL: &str = "listen: 127.0.0.1:0\nupstreams:\n  app: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - { path: /, upstream: app, auth: none }\n";

#[test]
fn a_minimal_public_config_compiles() {
    let config = from_str(MINIMAL, "t.yaml", |_| None).unwrap();
    assert_eq!(config.routes.iter().count(), 1);
    assert!(config.providers.is_empty());
    assert_eq!(&*config.realm, "portcullis");
    assert_eq!(config.token_cache_entries, 10_000);
}

#[test]
fn serde_positions_are_printed_once() {
    assert_eq!(
        without_position("unknown field `x` at line 3 column 5, while parsing"),
        "unknown field `x`, while parsing"
    );
    assert_eq!(without_position("no position here"), "no position here");
    let errors = from_str("listen: x\nbogus: 2\n", "t.yaml", |_| None).unwrap_err();
    let text = errors.to_string();
    assert!(
        text.starts_with("t.yaml:2:1: bogus: unknown field `bogus`"),
        "{text}"
    );
    let errors = from_str("listen: [\n", "t.yaml", |_| None).unwrap_err();
    assert_eq!(errors.0[0].position.map(|p| p.0), Some(2), "{errors}");
    assert!(!text.contains("at line"), "{text}");
}

#[test]
fn environment_values_are_substituted_before_parsing() {
    let text = MINIMAL.replace("127.0.0.1:0", "${ADDR}");
    let config = from_str(&text, "t.yaml", |v| {
        (v == "ADDR").then(|| "127.0.0.1:9".into())
    })
    .unwrap();
    assert_eq!(config.listen.unwrap().port(), 9);
    let errors = from_str(&text, "t.yaml", |_| None).unwrap_err();
    assert_eq!(errors.0[0].position, Some((1, 1)));
    assert_eq!(errors.0[0].path, "listen");
    assert!(errors.0[0].message.contains("ADDR is not set"));
}
