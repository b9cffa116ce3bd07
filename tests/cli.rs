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

/// Write a config with only an auth service (one client) into `scratch`,
/// its keys in `keys.json` there when `with_key_file`; returns its path.
fn auth_config(scratch: &Scratch, with_key_file: bool) -> String {
    let hash = text(&portcullis(&["hash-secret"], Some("x")).stdout);
    let key_file = if with_key_file {
        format!("  key_file: {}\n", scratch.0.join("keys.json").display())
    } else {
        String::new()
    };
    let config = scratch.0.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "auth_service:\n  listen: 127.0.0.1:0\n{key_file}  clients:\n    - {{ client_id: c, client_secret_hash: \"{}\", audiences: [api] }}\n",
            hash.trim()
        ),
    )
    .expect("write config");
    config.to_string_lossy().into_owned()
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
    let config = auth_config(&scratch, true);

    let missing = portcullis(&["keys", "list", "--config", &config], None);
    assert!(
        !missing.status.success(),
        "listing does not create the key file"
    );
    assert!(!key_file.exists());

    let rotate = portcullis(&["keys", "rotate", "--config", &config], None);
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let first_kid = text(&rotate.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("new signing key ")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();

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

    let list = text(&portcullis(&["keys", "list", "--config", &config], None).stdout);
    assert_eq!(
        list.lines().filter(|l| l.ends_with("active")).count(),
        1,
        "{list}"
    );
}

#[test]
fn keys_without_a_key_file_are_refused_with_a_reason() {
    let scratch = Scratch::new("nokeys");
    let config = auth_config(&scratch, false);
    let out = portcullis(&["keys", "rotate", "--config", &config], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("key_file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn concurrent_rotations_lose_no_key_and_the_file_stays_private() {
    let scratch = Scratch::new("concurrent");
    let key_file = scratch.0.join("keys.json");
    let config = auth_config(&scratch, true);
    // A leftover temp file with loose permissions must not become the key file.
    std::fs::write(scratch.0.join("keys.tmp"), "{}").expect("leftover");
    let rotations: Vec<_> = (0..6)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || portcullis(&["keys", "rotate", "--config", &config], None))
        })
        .collect();
    let mut new_kids = Vec::new();
    for rotation in rotations {
        let out = rotation.join().expect("rotation thread");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let first = text(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        new_kids.push(
            first
                .trim_start_matches("new signing key ")
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let list = text(&portcullis(&["keys", "list", "--config", &config], None).stdout);
    for kid in &new_kids {
        assert!(list.contains(kid.as_str()), "key {kid} was lost:\n{list}");
    }
    assert_eq!(
        list.lines().filter(|l| l.ends_with("active")).count(),
        1,
        "{list}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
