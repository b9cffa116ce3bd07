//! `portcullis explain`: golden outputs of several configs in every format,
//! the Mermaid diagrams rendered by the mermaid CLI, the OpenAPI documents
//! validated as OpenAPI 3.1, and the README kept in step with the shipped
//! gateway.yaml. `UPDATE_GOLDEN=1 cargo test --test explain` rewrites the
//! golden files and the README sections.

#[path = "explain/checkers.rs"]
mod checkers;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::pki::Pki;

const CONFIGS: [&str; 5] = [
    "public-only",
    "multi-provider",
    "introspection",
    "auth-service",
    "unsafe",
];

/// Format → golden file extension.
const FORMATS: [(&str, &str); 5] = [
    ("text", "txt"),
    ("markdown", "md"),
    ("json", "json"),
    ("mermaid", "mmd"),
    ("openapi", "openapi.yaml"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some()
}

/// `portcullis explain --config <config> --format <format>`, run from the
/// repository root so that file names in the output are relative.
fn explain(config: &str, format: &str, pki: &Pki) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(root())
        .args(["explain", "--config", config, "--format", format])
        .env("RUST_LOG", "error")
        .env("PKI_DIR", pki.dir())
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("LEDGER_INTROSPECTION_SECRET")
        .output()
        .expect("run portcullis explain")
}

fn stdout_of(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Compare with the golden file, or write it under `UPDATE_GOLDEN`.
fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if updating() {
        std::fs::write(path, actual).expect("write golden");
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    let line = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or(expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the output at line {}:\n  golden: {:?}\n  output: {:?}\n(UPDATE_GOLDEN=1 rewrites it)",
        path.display(),
        line + 1,
        expected.lines().nth(line).unwrap_or("<end>"),
        actual.lines().nth(line).unwrap_or("<end>")
    ))
}

fn config_path(name: &str) -> String {
    format!("tests/explain/configs/{name}.yaml")
}

fn golden_path(name: &str, ext: &str) -> PathBuf {
    root().join(format!("tests/explain/golden/{name}.{ext}"))
}

#[test]
fn every_format_of_every_config_matches_its_golden_file() {
    let pki = Pki::new();
    std::fs::create_dir_all(root().join("tests/explain/golden")).expect("golden dir");
    let mut failures = Vec::new();
    for name in CONFIGS {
        for (format, ext) in FORMATS {
            let out = stdout_of(
                explain(&config_path(name), format, &pki),
                &format!("{name} --format {format}"),
            );
            if let Err(e) = golden(&golden_path(name, ext), &out) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every diagram renders with the mermaid CLI (mmdc in Debian's chromium),
/// the README's included: what GitHub draws is mermaid.
#[test]
fn every_diagram_renders_with_the_mermaid_cli() {
    let pki = Pki::new();
    let mut diagrams: Vec<(String, String)> = CONFIGS
        .iter()
        .map(|name| {
            let out = stdout_of(explain(&config_path(name), "mermaid", &pki), name);
            (format!("{name}.mmd"), out)
        })
        .collect();
    diagrams.push(("gateway.yaml".into(), shipped("mermaid")));
    let borrowed: Vec<(&str, &str)> = diagrams
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_str()))
        .collect();
    if let Err(report) = checkers::mermaid(&borrowed) {
        panic!("a diagram does not render:\n{report}");
    }
}

/// Every OpenAPI document is valid OpenAPI 3.1 (the official schema, and
/// the rules it cannot express: declared schemes, path parameters).
#[test]
fn every_openapi_document_is_valid_openapi_3_1() {
    let pki = Pki::new();
    let mut documents: Vec<(String, String)> = CONFIGS
        .iter()
        .map(|name| {
            let out = stdout_of(explain(&config_path(name), "openapi", &pki), name);
            (format!("{name}.openapi.yaml"), out)
        })
        .collect();
    documents.push(("gateway.yaml".into(), shipped("openapi")));
    for (name, document) in &documents {
        if let Err(report) = checkers::openapi(name, document) {
            panic!("{name} is not valid OpenAPI 3.1:\n{report}");
        }
    }
}

#[test]
fn the_json_report_is_the_same_policy_as_the_text() {
    let pki = Pki::new();
    let json = stdout_of(
        explain(&config_path("multi-provider"), "json", &pki),
        "json",
    );
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let routes = report["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 4);
    // Match order is config order, and each route says what it takes.
    assert_eq!(routes[0]["path"], "/healthz");
    assert_eq!(routes[0]["auth"], serde_json::json!(["none"]));
    assert_eq!(routes[1]["auth"], serde_json::json!(["bearer", "api_key"]));
    assert_eq!(
        routes[1]["providers"],
        serde_json::json!(["keycloak", "entra"])
    );
    assert_eq!(routes[2]["auth"], serde_json::json!(["bearer", "dpop"]));
    assert_eq!(routes[2]["providers"], serde_json::json!(["keycloak"]));
    assert_eq!(
        routes[2]["to_upstream"]["claim_headers"][0]["header"],
        "x-payer"
    );
    assert_eq!(routes[3]["auth"], serde_json::json!(["bearer", "mtls"]));
    assert_eq!(routes[3]["to_upstream"]["credential"], false);
    assert_eq!(routes[3]["to_upstream"]["client_cert"], true);
    assert_eq!(report["providers"][1]["keys"], "discovery");
    assert_eq!(report["providers"][1]["leeway_seconds"], 60);
    // Never a secret: the API key's digest is not in the report.
    assert!(!json.contains("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"));
}

#[test]
fn the_unsafe_config_triggers_every_finding_and_the_safe_ones_none_above_info() {
    let pki = Pki::new();
    let findings = |name: &str| -> Vec<(String, String, String)> {
        let json = stdout_of(explain(&config_path(name), "json", &pki), name);
        let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| {
                (
                    f["check"].as_str().unwrap_or("").to_owned(),
                    f["severity"].as_str().unwrap_or("").to_owned(),
                    f["at"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let unsafe_findings = findings("unsafe");
    for (check, severity, at) in [
        (
            "inline-secret",
            "high",
            "providers[1].introspection.client_secret",
        ),
        ("public-overlaps-protected", "medium", "routes[0]"),
        ("unmatched-traffic", "medium", "routes[2]"),
        (
            "audience-not-checked",
            "medium",
            "providers[0].skip_audience_check",
        ),
        (
            "long-lived-without-revocation",
            "medium",
            "providers[0].revocation",
        ),
        ("keys-over-http", "medium", "providers[1].allow_http"),
        ("plain-http-listener", "medium", "listen"),
        ("plain-http-listener", "medium", "auth_service.listen"),
        (
            "credential-to-plain-upstream",
            "medium",
            "routes[1].strip_authorization",
        ),
        ("long-leeway", "low", "providers[0].leeway"),
        ("admin-exposed", "low", "admin.listen"),
    ] {
        assert!(
            unsafe_findings
                .iter()
                .any(|f| f.0 == check && f.1 == severity && f.2 == at),
            "no {severity} {check} at {at} in {unsafe_findings:?}"
        );
    }
    for name in ["public-only", "introspection", "auth-service"] {
        let serious: Vec<_> = findings(name)
            .into_iter()
            .filter(|f| f.1 != "info")
            .collect();
        assert!(serious.is_empty(), "{name}: {serious:?}");
    }
}

#[test]
fn a_symmetric_algorithm_is_a_config_error_not_a_finding() {
    let pki = Pki::new();
    let output = explain(&config_path("hs256"), "text", &pki);
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "no report for a config that does not load"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "tests/explain/configs/hs256.yaml:8:17: providers[0].algorithms[0]: `HS256` is refused"
        ),
        "{stderr}"
    );
}

#[test]
fn an_unset_variable_is_shown_as_written_and_never_resolved_from_nowhere() {
    let pki = Pki::new();
    let text = stdout_of(explain(&config_path("introspection"), "text", &pki), "text");
    // The secret is neither needed nor printed.
    assert!(!text.contains("LEDGER_INTROSPECTION_SECRET"));
    assert!(!text.contains("client_secret"));
    assert!(text.contains("as client ledger-gateway"));
}

// ---------------------------------------------------------------------------
// The README shows the diagram and the findings of the shipped gateway.yaml.

const README_SECTIONS: [(&str, &str); 2] = [("mermaid", "mermaid"), ("findings", "markdown")];

fn shipped(format: &str) -> String {
    let pki = Pki::new();
    stdout_of(explain("gateway.yaml", format, &pki), format)
}

/// The part of the README between `<!-- explain:<name> -->` and
/// `<!-- /explain:<name> -->`, and where it sits.
fn readme_section(readme: &str, name: &str) -> Option<(usize, usize)> {
    let begin = format!("<!-- explain:{name} -->\n");
    let end = format!("<!-- /explain:{name} -->");
    let start = readme.find(&begin)? + begin.len();
    let stop = start + readme[start..].find(&end)?;
    Some((start, stop))
}

fn expected_section(name: &str, output: &str) -> String {
    match name {
        "mermaid" => format!("```mermaid\n{output}```\n"),
        // The findings table of the markdown report.
        _ => {
            let table = output
                .split("## Findings\n\n")
                .nth(1)
                .expect("a findings section");
            table.to_owned()
        }
    }
}

#[test]
fn the_readme_shows_the_diagram_and_findings_of_the_shipped_config() {
    let path = root().join("README.md");
    let mut readme = std::fs::read_to_string(&path).expect("README.md");
    let mut stale = Vec::new();
    for (name, format) in README_SECTIONS {
        let expected = expected_section(name, &shipped(format));
        let (start, stop) = readme_section(&readme, name)
            .unwrap_or_else(|| panic!("README.md has no <!-- explain:{name} --> section"));
        if readme[start..stop] != expected {
            stale.push(name);
            readme.replace_range(start..stop, &expected);
        }
    }
    if updating() {
        std::fs::write(&path, readme).expect("write README.md");
        return;
    }
    assert!(
        stale.is_empty(),
        "README.md's explain sections {stale:?} no longer match `portcullis explain` of gateway.yaml (UPDATE_GOLDEN=1 rewrites them)"
    );
}
