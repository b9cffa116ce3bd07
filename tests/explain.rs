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
        // Logs at their default level: they must never reach stdout.
        .env_remove("RUST_LOG")
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
fn the_json_report_says_what_each_route_takes_in_match_order() {
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
        serde_json::json!([
            { "provider": "keycloak", "check": "signature" },
            { "provider": "entra", "check": "signature" }
        ])
    );
    assert_eq!(routes[2]["auth"], serde_json::json!(["bearer", "dpop"]));
    assert_eq!(
        routes[2]["providers"],
        serde_json::json!([{ "provider": "keycloak", "check": "signature" }])
    );
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
fn the_unsafe_config_triggers_every_warning_and_the_safe_ones_only_information() {
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
    // The two informational findings an unsafe config cannot have.
    let info = |name: &str, check: &str, at: &str| {
        findings(name)
            .iter()
            .any(|f| f.0 == check && f.1 == "info" && f.2 == at)
    };
    assert!(info("public-only", "unmatched-traffic", "routes"));
    assert!(info(
        "multi-provider",
        "no-revocation",
        "providers[0].revocation"
    ));
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
fn an_unset_secret_variable_is_not_needed_and_never_printed() {
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

// ---------------------------------------------------------------------------
// Edge cases, each on a small config of its own.

const UPSTREAM: &str = "upstreams:\n  app: { url: http://127.0.0.1:3000 }\n";
const PROVIDER: &str = "providers:\n  - { name: idp, issuer: https://idp.example.com, jwks_uri: https://idp.example.com/keys, audiences: [api], algorithms: [RS256] }\n";

/// `explain --format <format>` of a config written to a temporary file.
fn explain_text(name: &str, yaml: &str, format: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "portcullis-explain-{}-{name}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, yaml).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "--config"])
        .arg(&path)
        .args(["--format", format])
        .env_remove("RUST_LOG")
        .output()
        .expect("run portcullis explain");
    let _ = std::fs::remove_file(&path);
    stdout_of(output, name)
}

fn report_of(name: &str, yaml: &str) -> serde_json::Value {
    serde_json::from_str(&explain_text(name, yaml, "json")).expect("valid JSON")
}

fn has_finding(report: &serde_json::Value, check: &str, at: &str) -> bool {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["check"] == check && f["at"] == at)
}

#[test]
fn an_exact_public_root_is_not_a_catch_all_but_a_get_only_public_catch_all_is() {
    let root = report_of(
        "root",
        &format!(
            "listen: 127.0.0.1:8080\n{PROVIDER}{UPSTREAM}routes:\n  - {{ path: /, upstream: app, auth: none }}\n  - {{ path: /api/**, upstream: app }}\n"
        ),
    );
    assert_eq!(
        root["gateway"]["unmatched"]["catch_all"],
        serde_json::json!([])
    );
    assert_eq!(root["gateway"]["unmatched"]["rest_refused"], true);
    assert!(!has_finding(&root, "unmatched-traffic", "routes[0]"));

    let get_only = report_of(
        "get-only",
        &format!(
            "listen: 127.0.0.1:8080\n{PROVIDER}{UPSTREAM}routes:\n  - {{ path: /api/**, upstream: app }}\n  - {{ path: /**, methods: [GET], upstream: app, auth: none }}\n"
        ),
    );
    let catch_all = &get_only["gateway"]["unmatched"]["catch_all"][0];
    assert_eq!(catch_all["public"], true);
    assert_eq!(catch_all["methods"], serde_json::json!(["GET", "HEAD"]));
    assert_eq!(get_only["gateway"]["unmatched"]["rest_refused"], true);
    assert!(has_finding(&get_only, "unmatched-traffic", "routes[1]"));
}

#[test]
fn an_introspection_only_provider_is_described_as_introspected() {
    let yaml = format!(
        "listen: 127.0.0.1:8080\nproviders:\n  - name: opaque\n    issuer: https://idp.example.com\n    skip_audience_check: true\n    introspection: {{ endpoint: https://idp.example.com/introspect, client_id: gw, client_secret: \"${{SECRET}}\" }}\n{UPSTREAM}routes:\n  - {{ path: /api/**, upstream: app }}\n"
    );
    let report = report_of("opaque", &yaml);
    assert_eq!(
        report["routes"][0]["providers"][0]["check"],
        "introspection"
    );
    // Introspection answers are held to the audience too: skipping it counts.
    assert!(has_finding(
        &report,
        "audience-not-checked",
        "providers[0].skip_audience_check"
    ));
    let openapi = explain_text("opaque", &yaml, "openapi");
    assert!(openapi.contains("Opaque access tokens"), "{openapi}");
    assert!(!openapi.contains("bearerFormat"), "{openapi}");
    let diagram = explain_text("opaque", &yaml, "mermaid");
    assert!(
        diagram.contains("A0-->>C: opaque access token"),
        "{diagram}"
    );
    assert!(
        diagram.contains("G->>A0: POST https://idp.example.com/introspect (token)"),
        "{diagram}"
    );
}

#[test]
fn introspection_on_remote_routes_does_not_hide_unrevocable_local_ones() {
    let report = report_of(
        "mixed",
        &format!(
            "listen: 127.0.0.1:8080\nproviders:\n  - name: idp\n    issuer: https://idp.example.com\n    jwks_uri: https://idp.example.com/keys\n    audiences: [api]\n    algorithms: [RS256]\n    introspection: {{ endpoint: https://idp.example.com/introspect, client_id: gw, client_secret: \"${{SECRET}}\" }}\n{UPSTREAM}routes:\n  - {{ path: /remote/**, upstream: app, verify: remote }}\n  - {{ path: /local/**, upstream: app }}\n"
        ),
    );
    assert_eq!(
        report["routes"][0]["providers"][0]["check"],
        "introspection_every_request"
    );
    let finding = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "no-revocation")
        .expect("a no-revocation finding");
    let message = finding["message"].as_str().unwrap_or("");
    assert!(
        message.contains("/local/**") && !message.contains("/remote/**"),
        "{message}"
    );
}

#[test]
fn public_routes_pass_credentials_on_and_are_flagged_towards_plain_http() {
    let report = report_of(
        "public-plain",
        "listen: 127.0.0.1:8080\nupstreams:\n  far: { url: http://10.1.2.3:8080 }\nroutes:\n  - { path: /**, upstream: far, auth: none }\n",
    );
    assert_eq!(report["routes"][0]["to_upstream"]["credential"], true);
    assert!(has_finding(
        &report,
        "credential-to-plain-upstream",
        "routes[0].strip_authorization"
    ));
}

#[test]
fn a_listener_that_requires_client_certificates_requires_them_on_every_route() {
    let pki = Pki::new();
    let dir = pki.dir().display();
    let report = report_of(
        "mtls",
        &format!(
            "listen: 127.0.0.1:8443\ntls:\n  cert_file: {dir}/server.pem\n  key_file: {dir}/server.key\n  client_ca_file: {dir}/ca.pem\n  client_certs: required\n{UPSTREAM}routes:\n  - {{ path: /**, upstream: app, auth: none }}\n"
        ),
    );
    assert_eq!(
        report["routes"][0]["auth"],
        serde_json::json!(["none", "mtls"])
    );
}

#[test]
fn openapi_names_stay_unique_and_paths_are_the_routes_that_really_take_them() {
    let yaml = format!(
        "listen: 127.0.0.1:8080\napi_keys:\n  keys: [{{ name: ci, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }}]\nproviders:\n  - {{ name: a b, issuer: https://a.example.com, jwks_uri: https://a.example.com/k, audiences: [api], algorithms: [RS256] }}\n  - {{ name: a_b, issuer: https://b.example.com, jwks_uri: https://b.example.com/k, audiences: [api], algorithms: [RS256] }}\n  - {{ name: apiKey, issuer: https://c.example.com, jwks_uri: https://c.example.com/k, audiences: [api], algorithms: [RS256] }}\n{UPSTREAM}routes:\n  - {{ path: \"/items/{{id}}\", methods: [GET], upstream: app, auth: none }}\n  - {{ path: /items/new, methods: [GET, POST], upstream: app, scopes: [write] }}\n  - {{ path: \"/a/{{id}}\", upstream: app, providers: [a b] }}\n  - {{ path: /a/**, upstream: app, providers: [a_b] }}\n  - {{ path: \"/c/{{x}}/d/{{x}}\", upstream: app, providers: [apiKey] }}\n  - {{ path: /k/**, upstream: app, auth: api_key }}\n"
    );
    let document = explain_text("names", &yaml, "openapi");
    if let Err(report) = checkers::openapi("names.openapi.yaml", &document) {
        panic!("not valid OpenAPI 3.1:\n{report}\n{document}");
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(&document).expect("YAML");
    let schemes = &doc["components"]["securitySchemes"];
    for name in ["a_b", "a_b_2", "apiKey", "apiKey_2"] {
        assert!(!schemes[name].is_null(), "no scheme {name}:\n{document}");
    }
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey_2"]["type"], "http");
    // GET /items/new is taken by the public /items/{id} first; POST is not.
    assert_eq!(
        doc["paths"]["/items/new"]["get"]["security"],
        serde_yaml::Value::Sequence(Vec::new())
    );
    assert!(
        doc["paths"]["/items/new"]["post"]["security"][0]["a_b"].is_sequence(),
        "{document}"
    );
    assert!(doc["paths"]["/a/{path}"].is_null(), "{document}");
    assert!(!doc["paths"]["/c/{x}/d/{x2}"].is_null(), "{document}");
}

#[test]
fn a_config_with_only_the_auth_service_draws_issuance_and_refresh() {
    let yaml = "auth_service:\n  listen: 127.0.0.1:9000\n  clients:\n    - { client_id: app, client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$yN1V2iVbf/Xw7ny0MGIuTnmX3kKBPDvIW8/m6R02eqI\", scopes: [read], audiences: [api] }\n";
    let diagram = explain_text("auth-only", yaml, "mermaid");
    assert!(!diagram.contains("participant G"), "{diagram}");
    assert!(
        diagram.contains("C->>S: POST http://127.0.0.1:9000/token"),
        "{diagram}"
    );
    assert!(
        diagram.contains("C->>S: POST http://127.0.0.1:9000/token/refresh"),
        "{diagram}"
    );
    if let Err(report) = checkers::mermaid(&[("auth-only.mmd", &diagram)]) {
        panic!("{report}");
    }
    let openapi = explain_text("auth-only", yaml, "openapi");
    assert!(
        openapi.contains("tokenUrl: http://127.0.0.1:9000/token"),
        "{openapi}"
    );
    let text = explain_text("auth-only", yaml, "text");
    assert!(
        text.contains("listen: none: this config runs only the built-in auth service"),
        "{text}"
    );
}

#[test]
fn odd_names_reach_the_diagram_escaped_and_it_still_renders() {
    let yaml = format!(
        "listen: 127.0.0.1:8080\nrealm: \"a;b#c<d>\"\nproviders:\n  - {{ name: \"jwt#1;x\", issuer: https://idp.example.com, jwks_uri: https://idp.example.com/keys, audiences: [\"api;1\", \"a#b\"], algorithms: [RS256] }}\n{UPSTREAM}routes:\n  - {{ path: /api/**, upstream: app, scopes: [\"read\"] }}\n"
    );
    let diagram = explain_text("odd", &yaml, "mermaid");
    assert!(diagram.contains("jwt#35;1#59;x"), "{diagram}");
    assert!(
        diagram.contains("realm=\"a#59;b#35;c#lt;d#gt;\""),
        "{diagram}"
    );
    if let Err(report) = checkers::mermaid(&[("odd.mmd", &diagram)]) {
        panic!("{report}");
    }
}

#[test]
fn every_catch_all_counts_and_a_protected_one_is_not_default_deny() {
    let two = report_of(
        "two-catch-alls",
        &format!(
            "listen: 127.0.0.1:8080\n{UPSTREAM}routes:\n  - {{ path: /**, methods: [GET], upstream: app, auth: none }}\n  - {{ path: /**, upstream: app, auth: none }}\n"
        ),
    );
    assert_eq!(
        two["gateway"]["unmatched"]["catch_all"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(two["gateway"]["unmatched"]["rest_refused"], false);
    assert!(has_finding(&two, "unmatched-traffic", "routes[0]"));
    assert!(has_finding(&two, "unmatched-traffic", "routes[1]"));

    let protected = report_of(
        "protected-catch-all",
        &format!(
            "listen: 127.0.0.1:8080\n{PROVIDER}{UPSTREAM}routes:\n  - {{ path: /health, methods: [GET], upstream: app, auth: none }}\n  - {{ path: /**, upstream: app }}\n"
        ),
    );
    assert_eq!(
        protected["gateway"]["unmatched"]["catch_all"][0]["public"],
        false
    );
    assert_eq!(protected["gateway"]["unmatched"]["rest_refused"], false);
    // Not default deny, and nothing forwarded without a token either.
    assert!(!has_finding(&protected, "unmatched-traffic", "routes"));
    assert!(!has_finding(&protected, "unmatched-traffic", "routes[1]"));
}

#[test]
fn a_protected_route_judging_another_ones_requests_by_other_rules_is_a_finding() {
    let yaml = format!(
        "listen: 127.0.0.1:8080\n{PROVIDER}{UPSTREAM}routes:\n  - {{ path: /admin/**, methods: [GET], upstream: app, scopes: [read] }}\n  - {{ path: /admin/users, upstream: app, scopes: [admin] }}\n"
    );
    let report = report_of("pp", &yaml);
    assert!(has_finding(
        &report,
        "protected-overlaps-protected",
        "routes[0]"
    ));
    let text = explain_text("pp", &yaml, "text");
    assert!(
        text.contains("taken first: all GET,HEAD requests by routes[0]"),
        "{text}"
    );
}
