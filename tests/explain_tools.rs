//! Self-test of the outside checkers the `explain` golden tests rely on
//! (`tests/explain/checkers.rs`): each must pass what is valid and fail
//! what is not, for the reason given, or a golden test proves nothing.
//!
//! Needs Node.js 20+, `npm ci --prefix tests/explain` and
//! `/usr/bin/chromium`. Without them these tests fail (they do not skip):
//! CI's `.ci/run` installs all three.

#[path = "explain/checkers.rs"]
mod checkers;

use std::path::PathBuf;

fn sample(name: &str) -> PathBuf {
    checkers::dir().join("samples").join(name)
}

fn read_sample(name: &str) -> String {
    let path = sample(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn the_valid_sequence_diagram_renders() {
    let out = checkers::mermaid_files(&[sample("valid-sequence.mmd")])
        .unwrap_or_else(|e| panic!("the valid sample must render:\n{e}"));
    assert!(out.contains("rendered 1 Mermaid diagram"), "{out}");
}

#[test]
fn the_broken_sequence_diagram_fails_with_mermaids_parse_error() {
    let err = checkers::mermaid_files(&[sample("invalid-sequence.mmd")])
        .expect_err("the broken sample must not render");
    assert!(
        err.contains("invalid-sequence.mmd"),
        "names the file: {err}"
    );
    assert!(
        err.contains("Parse error on line 7"),
        "mermaid's message: {err}"
    );
}

#[test]
fn diagrams_render_in_one_run_and_the_broken_one_is_named() {
    let valid = read_sample("valid-sequence.mmd");
    let out = checkers::mermaid(&[("first", &valid), ("second", &valid)])
        .unwrap_or_else(|e| panic!("two valid diagrams must render:\n{e}"));
    assert!(out.contains("rendered 2 Mermaid diagram"), "{out}");

    let broken = "sequenceDiagram\n    participant G as Portcullis gateway\n    deactivate G\n";
    let err = checkers::mermaid(&[("ok", &valid), ("inactive", broken), ("later", &valid)])
        .expect_err("a batch with a broken diagram must fail");
    assert!(
        err.contains("1-inactive.mmd"),
        "names the broken diagram: {err}"
    );
    assert!(
        err.contains("Trying to inactivate an inactive participant"),
        "mermaid's message: {err}"
    );
}

#[test]
fn the_valid_openapi_document_passes() {
    let out = checkers::openapi_files(&[sample("valid-openapi.yaml")])
        .unwrap_or_else(|e| panic!("the valid sample must pass:\n{e}"));
    assert!(out.contains("valid OpenAPI 3.1"), "{out}");
}

#[test]
fn the_invalid_openapi_document_fails_for_each_of_its_faults() {
    let err = checkers::openapi_files(&[sample("invalid-openapi.yaml")])
        .expect_err("the invalid sample must fail");
    for fault in [
        "must have required property 'info'",
        "/components/securitySchemes/legacy/type: must be equal to one of the allowed values",
        "/components/securitySchemes/oauth2/flows/clientCredentials: must have required property 'tokenUrl'",
    ] {
        assert!(err.contains(fault), "reports {fault:?}: {err}");
    }
}

/// One fault at a time in the valid sample, so that each is known to be
/// caught on its own.
#[test]
fn each_single_fault_in_a_valid_openapi_document_is_caught() {
    let valid = read_sample("valid-openapi.yaml");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "should fail because the document is OpenAPI 3.0",
            "openapi: 3.1.0",
            "openapi: 3.0.3",
            "expected a 3.1.x version string",
        ),
        (
            "should fail because the document is OpenAPI 3.2",
            "openapi: 3.1.0",
            "openapi: 3.2.0",
            "expected a 3.1.x version string",
        ),
        (
            "should fail because a security scheme has an unknown type",
            "type: mutualTLS",
            "type: bogus",
            "/components/securitySchemes/mtls/type: must be equal to one of the allowed values",
        ),
        (
            "should fail because info is missing",
            "info:\n  title: Orders API behind Portcullis\n",
            "x-info:\n  title: Orders API behind Portcullis\n",
            "must have required property 'info'",
        ),
        (
            "should fail because an http scheme has no scheme",
            "type: http\n      scheme: bearer\n",
            "type: http\n",
            "/components/securitySchemes/bearerJwt: must have required property 'scheme'",
        ),
        (
            "should fail because an apiKey scheme is in an unknown place",
            "in: header\n      name: x-api-key",
            "in: body\n      name: x-api-key",
            "/components/securitySchemes/apiKey/in: must be equal to one of the allowed values",
        ),
        (
            "should fail because an operation requires an undeclared scheme",
            "- apiKey: []",
            "- apiKeys: []",
            "security scheme \"apiKeys\" is not declared in components.securitySchemes",
        ),
        (
            "should fail because two operations share an operationId",
            "operationId: health",
            "operationId: getOrder",
            "operationId \"getOrder\" is already used",
        ),
        (
            "should fail because a path template has no path parameter",
            "/reports:",
            "/reports/{year}:",
            "path parameter \"year\" has no \"in: path\" parameter",
        ),
        (
            "should fail because a $ref does not resolve",
            "#/components/responses/Forbidden",
            "#/components/responses/Denied",
            "Can't resolve #/components/responses/Denied",
        ),
    ];
    for (case, from, to, expected) in cases {
        assert!(valid.contains(from), "{case}: the sample has no {from:?}");
        let broken = valid.replacen(from, to, 1);
        match checkers::openapi("fault", &broken) {
            Ok(out) => panic!("{case}: passed:\n{out}"),
            Err(err) => assert!(
                err.contains(expected),
                "{case}: wants {expected:?}, got:\n{err}"
            ),
        }
    }
}
