//! The command line around the auth service: `hash-secret` and `keys`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn portcullis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("portcullis ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("portcullis-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hash_secret_reads_standard_input_and_prints_an_argon2_hash_that_verifies() {
    let out = portcullis(&["hash-secret"], Some("s3cret\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(
        !text(&out.stdout).contains("s3cret"),
        "the secret was echoed"
    );
    let parsed = argon2::PasswordHash::new(&hash).expect("a PHC string");
    use argon2::PasswordVerifier as _;
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret\n", &parsed)
            .is_err()
    );

    let empty = portcullis(&["hash-secret"], Some(""));
    assert!(!empty.status.success(), "an empty secret must be refused");
}

#[test]
fn keys_rotate_adds_an_active_key_and_keeps_the_old_one_published() {
    let scratch = Scratch::new("keys");
    let key_file = scratch.0.join("keys.json");
    let config = scratch.0.join("gateway.yaml");
    let hash = text(&portcullis(&["hash-secret"], Some("x")).stdout);
    std::fs::write(
        &config,
        format!(
            "auth_service:\n  listen: 127.0.0.1:0\n  key_file: {}\n  clients:\n    - {{ client_id: c, client_secret_hash: \"{}\", audiences: [api] }}\n",
            key_file.display(),
            hash.trim()
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();

    let list = portcullis(&["keys", "list", "--config", &config], None);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let first: Vec<String> = text(&list.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        first.len(),
        1,
        "the key file is created with one key: {first:?}"
    );
    assert!(first[0].ends_with("active"), "{first:?}");
    let first_kid = first[0].split(' ').next().unwrap_or_default().to_owned();

    let rotate = portcullis(&["keys", "rotate", "--config", &config], None);
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let out = text(&rotate.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("new signing key "), "{out}");
    let new_kid = lines[0]
        .trim_start_matches("new signing key ")
        .split(';')
        .next()
        .unwrap_or_default();
    assert_ne!(new_kid, first_kid);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(new_kid) && l.ends_with("active")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&first_kid) && l.contains("retired at")),
        "{out}"
    );
}

#[test]
fn keys_without_a_key_file_are_refused_with_a_reason() {
    let scratch = Scratch::new("nokeys");
    let config = scratch.0.join("gateway.yaml");
    let hash = text(&portcullis(&["hash-secret"], Some("x")).stdout);
    std::fs::write(
        &config,
        format!(
            "auth_service:\n  listen: 127.0.0.1:0\n  clients:\n    - {{ client_id: c, client_secret_hash: \"{}\", audiences: [api] }}\n",
            hash.trim()
        ),
    )
    .expect("write config");
    let out = portcullis(
        &["keys", "rotate", "--config", &config.to_string_lossy()],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("key_file"),
        "{}",
        text(&out.stderr)
    );
}
