//! `portcullis demo --once` plays the seed's whole sequence and exits 0.

use std::process::Command;

#[test]
fn the_demo_plays_every_step_of_the_sequence() {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--once"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run portcullis demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let expected = [
        "1. Client -> Auth Service: POST",
        "<- 200 bearer token",
        "<- 200 from the upstream, which saw: {\"headers\":{\"x-auth-scope\":\"profile\",\"x-auth-subject\":\"demo-client\"",
        "<- 403 WWW-Authenticate: Bearer realm=\"demo-api\", error=\"insufficient_scope\"",
        "<- 401 WWW-Authenticate: Bearer realm=\"demo-api\", error=\"invalid_token\", error_description=\"token expired\"",
        "<- 200 new bearer token",
        "GET /resource with the new token <- 200",
        "<- 400 invalid_grant: refresh token already used",
        "All six steps behaved as the sequence says.",
    ];
    let mut rest = stdout.as_ref();
    for line in expected {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("missing, or out of order: {line:?}\nstdout:\n{stdout}"));
        rest = &rest[at + line.len()..];
    }
    assert!(
        stdout.contains("client_secret_hash: \"$argon2id$"),
        "the config shown holds a real hash"
    );
    let whole_jwt = |w: &&str| w.starts_with("eyJ") && w.matches('.').count() >= 2;
    assert!(
        !stdout.split_whitespace().any(|w| whole_jwt(&w)),
        "a whole token was printed"
    );
}
