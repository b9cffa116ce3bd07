//! `gateway.yaml` validation: the shipped file compiles, every mistake is
//! reported with its key path, line and reason (all of them at once), and
//! `portcullis check` turns that into an exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use portcullis::config::{self, Config, ConfigError, ConfigErrors};
use portcullis::routes::Access;

/// The name every fixture is compiled under; errors must carry it.
const FILE: &str = "case.yaml";

fn compile(yaml: &str) -> Result<Config, ConfigErrors> {
    config::from_str(yaml, FILE, |_| None)
}

fn errors_of(yaml: &str) -> Vec<ConfigError> {
    match compile(yaml) {
        Ok(_) => panic!("config was accepted, expected errors:\n{yaml}"),
        Err(errors) => errors.0,
    }
}

fn shipped_gateway_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The shipped file
// ---------------------------------------------------------------------------

#[test]
fn the_shipped_gateway_yaml_compiles_without_any_environment_variable() {
    let config = config::from_str(&shipped_gateway_yaml(), "gateway.yaml", |_| None)
        .unwrap_or_else(|errors| panic!("shipped gateway.yaml is refused:\n{errors}"));

    assert_eq!(config.listen.unwrap().to_string(), "0.0.0.0:8080");
    assert_eq!(&*config.realm, "orders-api");
    assert_eq!(config.token_cache_entries, 10_000);
    let [provider] = &config.providers[..] else {
        panic!("expected exactly one provider: {:?}", config.providers);
    };
    assert_eq!(&*provider.name, "main");
    assert_eq!(&*provider.issuer, "http://127.0.0.1:9000/realms/main");
    assert_eq!(provider.leeway, 30);
    assert_eq!(
        provider.algorithms[..],
        [
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256
        ]
    );
    // The identity header set from claims is stripped from every request.
    let identity: Vec<&str> = config.identity_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(identity, ["x-auth-subject"]);
}

#[test]
fn the_shipped_gateway_yaml_has_the_routes_it_documents() {
    let config = config::from_str(&shipped_gateway_yaml(), "gateway.yaml", |_| None)
        .unwrap_or_else(|errors| panic!("shipped gateway.yaml is refused:\n{errors}"));

    assert_eq!(
        portcullis::cli::describe(&config),
        "\
listen 0.0.0.0:8080
provider main issuer=http://127.0.0.1:9000/realms/main algorithms=[RS256,ES256] leeway=30s
route[0] GET,HEAD /health -> orders (public)
route[1] GET,HEAD /profile -> orders (bearer scopes=[profile])
route[2] * /admin/** -> orders (bearer scopes=[admin])
route[3] * /orders/** -> orders (bearer)
route[4] GET,HEAD /tenants/{tenant}/reports -> orders (bearer realm_access.roles=reports-reader)
"
    );

    // (method, path) -> index of the route that takes it; None = refused (404).
    let lookups: &[(Method, &str, Option<usize>)] = &[
        (Method::GET, "/health", Some(0)),
        (Method::POST, "/health", None),
        (Method::GET, "/profile", Some(1)),
        (Method::DELETE, "/admin/users/7", Some(2)),
        (Method::GET, "/admin", Some(2)),
        (Method::POST, "/orders/42", Some(3)),
        (Method::GET, "/tenants/acme/reports", Some(4)),
        (Method::POST, "/tenants/acme/reports", None),
        (Method::GET, "/tenants/reports", None),
        (Method::GET, "/", None),
        (Method::GET, "/healthz", None),
    ];
    for (method, path, expected) in lookups {
        let found = config.routes.find(method, path).map(|r| r.index);
        assert_eq!(found, *expected, "{method} {path}");
    }

    let routes: Vec<_> = config.routes.iter().collect();
    assert!(matches!(routes[0].access, Access::Public));
    assert!(
        routes[1..]
            .iter()
            .all(|r| matches!(&r.access, Access::Protected(p) if p.bearer && !p.api_key)),
        "every route but /health needs a token"
    );
    let forwarded: Vec<(&str, &str)> = routes[3]
        .forward_claims
        .iter()
        .map(|(claim, header)| (claim.as_str(), header.as_str()))
        .collect();
    assert_eq!(forwarded, [("sub", "x-auth-subject")]);
    assert!(routes[4].strip_authorization);
    assert!(
        routes[..4].iter().all(|r| !r.strip_authorization),
        "only the reports route strips the token"
    );
}

// ---------------------------------------------------------------------------
// One fixture per mistake
// ---------------------------------------------------------------------------

/// A file with exactly one mistake, and how it must be reported.
struct Case {
    name: &'static str,
    yaml: &'static str,
    /// `ConfigError.path` (empty only for YAML syntax errors).
    path: &'static str,
    /// 1-based line of `ConfigError.position`.
    line: usize,
    /// Must appear in `ConfigError.message`.
    message: &'static str,
}

const CASES: &[Case] = &[
    // --- shape of the file (found by the parser) ---
    Case {
        name: "an unknown top-level key is refused and the known ones are listed",
        yaml: "\
listen: 127.0.0.1:0
bogus: 1
",
        path: "bogus",
        line: 2,
        message: "unknown field `bogus`, expected one of `listen`, `realm`, `providers`",
    },
    Case {
        name: "an unknown key inside a provider is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    bogus: 1
",
        path: "providers[0].bogus",
        line: 8,
        message: "unknown field `bogus`, expected one of `name`",
    },
    Case {
        name: "an unknown key inside a flow-style route is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, bogus: 1 }
",
        path: "routes[0].bogus",
        line: 5,
        message: "unknown field `bogus`, expected one of `path`",
    },
    Case {
        name: "an unknown auth kind is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, auth: basic }
",
        path: "routes[0].auth",
        line: 5,
        message: "unknown variant `basic`, expected one of `none`, `bearer`, `api_key`",
    },
    Case {
        name: "an unset environment variable is named with its line",
        yaml: "\
listen: 127.0.0.1:0
# ${IN_A_COMMENT} is not substituted, so not an error
realm: ${UNSET}
",
        path: "realm",
        line: 3,
        message: "environment variable UNSET is not set",
    },
    // --- top level ---
    Case {
        name: "a listen address without a port is refused",
        yaml: "\
listen: 0.0.0.0
",
        path: "listen",
        line: 1,
        message: "`0.0.0.0` is not an address:port",
    },
    Case {
        name: "a realm with a quote is refused",
        yaml: "\
listen: 127.0.0.1:0
realm: 'orders\"api'
",
        path: "realm",
        line: 2,
        message: "must be non-empty, without quotes",
    },
    // --- providers ---
    Case {
        name: "an unknown algorithm name is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256, XS999]
",
        path: "providers[0].algorithms[1]",
        line: 7,
        message: "`XS999` is not a supported algorithm",
    },
    Case {
        name: "HS256 is refused because a published key set cannot verify it",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [HS256]
",
        path: "providers[0].algorithms[0]",
        line: 7,
        message: "`HS256` is refused: symmetric algorithms",
    },
    Case {
        name: "the none algorithm is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256, none]
",
        path: "providers[0].algorithms[1]",
        line: 7,
        message: "`none` is not a supported algorithm",
    },
    Case {
        name: "an empty algorithm list is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: []
",
        path: "providers[0].algorithms",
        line: 7,
        message: "list at least one algorithm",
    },
    Case {
        name: "a provider with neither jwks_uri nor discovery is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    audiences: [orders-api]
    algorithms: [RS256]
",
        path: "providers[0]",
        line: 3,
        message: "needs `jwks_uri`, or `discovery: true`",
    },
    Case {
        name: "a provider with both jwks_uri and discovery is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    discovery: true
",
        path: "providers[0].discovery",
        line: 8,
        message: "give either `jwks_uri` or `discovery: true`, not both",
    },
    Case {
        // The key is missing, so the provider itself is pointed at.
        name: "a provider without audiences must opt out of the audience check explicitly",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    algorithms: [RS256]
",
        path: "providers[0].audiences",
        line: 3,
        message: "list the audiences this API accepts, or set `skip_audience_check: true`",
    },
    Case {
        name: "skip_audience_check together with audiences is a contradiction",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    skip_audience_check: true
",
        path: "providers[0].skip_audience_check",
        line: 8,
        message: "contradicts `audiences`",
    },
    Case {
        name: "a leeway over five minutes is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    leeway: 6m
",
        path: "providers[0].leeway",
        line: 8,
        message: "360s is more than the 300s allowed for clock skew",
    },
    Case {
        name: "a key refresh interval under one second is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    jwks:
      refresh_interval: 500ms
      max_staleness: 1h
",
        path: "providers[0].jwks.refresh_interval",
        line: 9,
        message: "must be at least 1s",
    },
    Case {
        name: "two providers with the same name are refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: main, issuer: https://a.example, jwks_uri: https://a.example/jwks, audiences: [x], algorithms: [RS256] }
  - { name: main, issuer: https://b.example, jwks_uri: https://b.example/jwks, audiences: [x], algorithms: [RS256] }
",
        path: "providers[1].name",
        line: 4,
        message: "`main` is already the name of providers[0]",
    },
    Case {
        name: "two providers with the same issuer are refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: a, issuer: https://idp.example, jwks_uri: https://idp.example/a, audiences: [x], algorithms: [RS256] }
  - { name: b, issuer: https://idp.example, jwks_uri: https://idp.example/b, audiences: [x], algorithms: [RS256] }
",
        path: "providers[1].issuer",
        line: 4,
        message: "providers[0] has the same issuer",
    },
    Case {
        name: "protected routes without any provider are refused",
        yaml: "\
listen: 127.0.0.1:0
providers: []
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o }
",
        path: "providers",
        line: 2,
        message: "routes require a bearer token but no provider is configured",
    },
    // --- upstreams ---
    Case {
        name: "an upstream URL with a path is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  orders: { url: http://127.0.0.1:3000/api }
",
        path: "upstreams.orders.url",
        line: 3,
        message: "a path or query is not supported",
    },
    Case {
        name: "an upstream URL without a scheme is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  orders:
    url: 127.0.0.1:3000
",
        path: "upstreams.orders.url",
        line: 4,
        message: "needs a scheme: http:// or https://",
    },
    Case {
        name: "a zero upstream timeout is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  orders: { url: http://127.0.0.1:3000, timeout: 0s }
",
        path: "upstreams.orders",
        line: 3,
        message: "timeouts must be more than 0",
    },
    // --- routes ---
    Case {
        name: "a route naming an unknown upstream lists the defined ones",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  orders: { url: http://127.0.0.1:3000 }
  billing: { url: http://127.0.0.1:3001 }
routes:
  - { path: /x, upstream: shipping, auth: none }
",
        path: "routes[0].upstream",
        line: 6,
        message: "unknown upstream `shipping`; defined: billing, orders",
    },
    Case {
        name: "a route naming an unknown provider is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, providers: [main, other] }
",
        path: "routes[0].providers[1]",
        line: 11,
        message: "unknown provider `other`",
    },
    Case {
        name: "a public route cannot ask for scopes",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, auth: none, scopes: [admin] }
",
        path: "routes[0].auth",
        line: 5,
        message: "`auth: none` cannot have scopes",
    },
    Case {
        name: "a path pattern must start with a slash",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: admin, upstream: o, auth: none }
",
        path: "routes[0].path",
        line: 5,
        message: "`admin`: must start with `/`",
    },
    Case {
        name: "a path pattern may use ** only as its last segment",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a/**/b, upstream: o, auth: none }
",
        path: "routes[0].path",
        line: 5,
        message: "`/a/**/b`: `**` is allowed only as the last segment",
    },
    Case {
        name: "a path pattern with a dot segment could never match and is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a/../b, upstream: o, auth: none }
",
        path: "routes[0].path",
        line: 5,
        message: "segment `..` is not in canonical form",
    },
    Case {
        name: "a route shadowed by an earlier prefix route is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a/**, upstream: o, auth: none }
  - { path: /a/b, upstream: o, auth: none }
",
        path: "routes[1]",
        line: 6,
        message: "can never match: routes[0] (`/a/**`) comes first",
    },
    Case {
        name: "the same route twice is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a/b, upstream: o, auth: none }
  - { path: /a/b, upstream: o, auth: none }
",
        path: "routes[1]",
        line: 6,
        message: "can never match: routes[0] (`/a/b`) comes first",
    },
    Case {
        name: "a route for every method shadows a later route for GET on the same path",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a, upstream: o, auth: none }
  - { path: /a, methods: [GET], upstream: o, auth: none }
",
        path: "routes[1]",
        line: 6,
        message: "can never match: routes[0] (`/a`) comes first",
    },
    Case {
        name: "a method that is not an HTTP token is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a, methods: [GET, \"GET POST\"], upstream: o, auth: none }
",
        path: "routes[0].methods[1]",
        line: 5,
        message: "`GET POST` is not an HTTP method",
    },
    Case {
        name: "an empty methods list is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a, methods: [], upstream: o, auth: none }
",
        path: "routes[0].methods",
        line: 5,
        message: "an empty list matches nothing",
    },
    Case {
        name: "a claim cannot be forwarded as the Authorization header",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - path: /x
    upstream: o
    forward_claims: { sub: Authorization }
",
        path: "routes[0].forward_claims.sub",
        line: 13,
        message: "`Authorization` is a header clients or the gateway use",
    },
    Case {
        name: "a claim cannot be forwarded as X-Forwarded-For",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - path: /x
    upstream: o
    forward_claims:
      sub: X-Forwarded-For
",
        path: "routes[0].forward_claims.sub",
        line: 14,
        message: "`X-Forwarded-For` is a header clients or the gateway use",
    },
    Case {
        name: "a claim cannot be forwarded under an invalid header name",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - path: /x
    upstream: o
    forward_claims:
      sub: X Subject
",
        path: "routes[0].forward_claims.sub",
        line: 14,
        message: "`X Subject` is not a header name",
    },
    Case {
        name: "a required claim value must be a scalar",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - path: /x
    upstream: o
    claims:
      tenant: [a, b]
",
        path: "routes[0].claims.tenant",
        line: 14,
        message: "must be a string, number or boolean",
    },
    Case {
        name: "a key set over plain http to a remote host is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: http://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
",
        path: "providers[0].jwks_uri",
        line: 5,
        message: "is plain http to a non-loopback host",
    },
    Case {
        name: "discovery over plain http to a remote host is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: http://idp.example
    discovery: true
    audiences: [orders-api]
    algorithms: [RS256]
",
        path: "providers[0].issuer",
        line: 4,
        message: "is plain http to a non-loopback host",
    },
    Case {
        name: "credentials in a key-set URL are refused and not echoed",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://user:hunter2@idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
",
        path: "providers[0].jwks_uri",
        line: 5,
        message: "`https://***@idp.example/jwks` has credentials in it",
    },
    Case {
        name: "an unknown-kid cooldown of zero is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    jwks: { unknown_kid_cooldown: 0s }
",
        path: "providers[0].jwks.unknown_kid_cooldown",
        line: 8,
        message: "must be at least 1s",
    },
    Case {
        name: "a max staleness under twice the refresh interval is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    jwks: { refresh_interval: 1m, max_staleness: 1m }
",
        path: "providers[0].jwks.max_staleness",
        line: 8,
        message: "must be at least twice",
    },
    Case {
        name: "an empty required typ is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    require_typ: \"\"
",
        path: "providers[0].require_typ",
        line: 8,
        message: "must not be empty",
    },
    Case {
        name: "an empty issuer is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: \"\"
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
",
        path: "providers[0].issuer",
        line: 4,
        message: "must not be empty",
    },
    Case {
        name: "audience_claim with skip_audience_check is a contradiction",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    skip_audience_check: true
    audience_claim: client_id
    algorithms: [RS256]
",
        path: "providers[0].skip_audience_check",
        line: 6,
        message: "contradicts",
    },
    Case {
        name: "a pattern with an empty segment is refused",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a//b, upstream: o, auth: none }
",
        path: "routes[0].path",
        line: 5,
        message: "can never match",
    },
    Case {
        name: "a claim cannot be forwarded as Cookie",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, forward_claims: { sub: Cookie } }
",
        path: "routes[0].forward_claims.sub",
        line: 11,
        message: "`Cookie` is a header clients or the gateway use",
    },
    Case {
        name: "a claim cannot be forwarded under a header with an underscore",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, forward_claims: { sub: X_Sub } }
",
        path: "routes[0].forward_claims.sub",
        line: 11,
        message: "is a header clients or the gateway use",
    },
    Case {
        name: "brackets in a claim name do not crash the locator",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - path: /x
    upstream: o
    forward_claims: { \"a[0]]\": \"bad header\" }
",
        path: "routes[0].forward_claims.a[0]]",
        line: 13,
        message: "is not a header name",
    },
    Case {
        name: "client secret hashes with different argon2 parameters are refused",
        yaml: "\
auth_service:
  listen: 127.0.0.1:0
  clients:
    - { client_id: a, client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$TrkDHG1qfUvlgz0DaSaqrA$OS1rEMTFt9tdk9C+NaQd55Hnkf2SLYUjJZc73ny1uSU\", audiences: [x] }
    - { client_id: b, client_secret_hash: \"$argon2id$v=19$m=8,t=1,p=1$cG9ydGN1bGxpcy10ZXN0cw$Hp8cEkJ33zFtT8z6pgH1TXDgmxZ3mCk9ezMm6kj0y40\", audiences: [x] }
",
        path: "auth_service.clients",
        line: 3,
        message: "must use the same argon2 parameters",
    },
    Case {
        name: "a plaintext client secret is refused",
        yaml: "\
auth_service:
  listen: 127.0.0.1:0
  clients:
    - { client_id: a, client_secret_hash: hunter2, audiences: [x] }
",
        path: "auth_service.clients[0].client_secret_hash",
        line: 4,
        message: "not an argon2 hash",
    },
    Case {
        name: "an auth service on 0.0.0.0 needs an explicit issuer",
        yaml: "\
auth_service:
  listen: 0.0.0.0:9000
  clients:
    - { client_id: a, client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$TrkDHG1qfUvlgz0DaSaqrA$OS1rEMTFt9tdk9C+NaQd55Hnkf2SLYUjJZc73ny1uSU\", audiences: [x] }
",
        path: "auth_service.listen",
        line: 2,
        message: "is an unspecified address (0.0.0.0): set `issuer`",
    },
    Case {
        name: "an unknown signing algorithm is refused at parse",
        yaml: "\
auth_service:
  listen: 127.0.0.1:0
  signing_algorithm: HS256
  clients:
    - { client_id: a, client_secret_hash: \"$argon2id$v=19$m=19456,t=2,p=1$TrkDHG1qfUvlgz0DaSaqrA$OS1rEMTFt9tdk9C+NaQd55Hnkf2SLYUjJZc73ny1uSU\", audiences: [x] }
",
        path: "auth_service.signing_algorithm",
        line: 3,
        message: "unknown variant `HS256`, expected `ES256` or `RS256`",
    },
    Case {
        name: "a provider for a missing auth service is refused",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: builtin, auth_service: true, audiences: [x], algorithms: [ES256] }
",
        path: "providers[0].auth_service",
        line: 3,
        message: "there is no `auth_service` section",
    },
    Case {
        name: "an api_key route needs an api_keys section",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, auth: api_key }
",
        path: "routes[0].auth",
        line: 5,
        message: "`api_key` needs an `api_keys` section",
    },
    Case {
        name: "none cannot be combined with other kinds",
        yaml: "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, auth: [none, api_key] }
",
        path: "routes[0].auth",
        line: 5,
        message: "`none` cannot be combined",
    },
    Case {
        name: "an API key hash must be 64 hex digits",
        yaml: "\
listen: 127.0.0.1:0
api_keys:
  keys:
    - { name: a, sha256: abc }
upstreams:
  o: { url: http://127.0.0.1:3000 }
",
        path: "api_keys.keys[0].sha256",
        line: 4,
        message: "must be the key's SHA-256 as 64 hex digits",
    },
    Case {
        name: "the same API key twice is refused",
        yaml: "\
listen: 127.0.0.1:0
api_keys:
  keys:
    - { name: a, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }
    - { name: b, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }
upstreams:
  o: { url: http://127.0.0.1:3000 }
",
        path: "api_keys.keys[1].sha256",
        line: 5,
        message: "the same key is listed twice",
    },
    Case {
        name: "an API key header must not be Authorization",
        yaml: "\
listen: 127.0.0.1:0
api_keys:
  header: Authorization
  keys:
    - { name: a, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }
upstreams:
  o: { url: http://127.0.0.1:3000 }
",
        path: "api_keys.header",
        line: 3,
        message: "is a header with another meaning",
    },
    Case {
        name: "a missing API keys file is refused",
        yaml: "\
listen: 127.0.0.1:0
api_keys:
  file: /nonexistent/keys.yaml
upstreams:
  o: { url: http://127.0.0.1:3000 }
",
        path: "api_keys.file",
        line: 3,
        message: "`/nonexistent/keys.yaml`: No such file",
    },
    Case {
        name: "verify remote needs introspection on the route's providers",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, verify: remote }
",
        path: "routes[0].verify",
        line: 11,
        message: "`remote` needs `introspection` on every provider",
    },
    Case {
        name: "two providers cannot read the same cookie",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: a, issuer: https://a.example, audiences: [x], introspection: { endpoint: https://a.example/i, client_id: g, client_secret: s }, cookie: at }
  - { name: b, issuer: https://b.example, audiences: [x], introspection: { endpoint: https://b.example/i, client_id: g, client_secret: s }, cookie: at }
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, providers: [a] }
",
        path: "providers[1].cookie",
        line: 4,
        message: "providers[0] reads the same cookie",
    },
    Case {
        name: "a route cannot accept two introspecting providers",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: a, issuer: https://a.example, audiences: [x], introspection: { endpoint: https://a.example/i, client_id: g, client_secret: s }, cookie: at }
  - { name: b, issuer: https://b.example, audiences: [x], introspection: { endpoint: https://b.example/i, client_id: g, client_secret: s }, cookie: BCOOKIE }
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o }
",
        path: "routes[0].providers",
        line: 8,
        message: "accepts several providers with `introspection`",
    },
    Case {
        name: "verify remote needs bearer tokens on the route",
        yaml: "\
listen: 127.0.0.1:0
providers:
  - { name: a, issuer: https://a.example, audiences: [x], introspection: { endpoint: https://a.example/i, client_id: g, client_secret: s }, cookie: at }
  - { name: b, issuer: https://b.example, audiences: [x], introspection: { endpoint: https://b.example/i, client_id: g, client_secret: s }, cookie: BCOOKIE }
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o, auth: none, verify: remote }
",
        path: "routes[0].auth",
        line: 8,
        message: "cannot have scopes, claims, providers, forward_claims, verify or dpop",
    },
];

#[test]
fn every_mistake_is_reported_once_with_its_key_path_line_and_reason() {
    let mut failures = Vec::new();
    for case in CASES {
        let errors = match compile(case.yaml) {
            Ok(_) => {
                failures.push(format!("{}: the config was accepted", case.name));
                continue;
            }
            Err(errors) => errors,
        };
        let problems = match &errors.0[..] {
            [error] => {
                let mut problems = Vec::new();
                if error.file != FILE {
                    problems.push(format!("file {:?}, expected {FILE:?}", error.file));
                }
                if error.path != case.path {
                    problems.push(format!("path {:?}, expected {:?}", error.path, case.path));
                }
                match error.position {
                    Some((line, column)) if line == case.line && column >= 1 => {}
                    other => {
                        problems.push(format!("position {other:?}, expected line {}", case.line))
                    }
                }
                if !error.message.contains(case.message) {
                    problems.push(format!(
                        "message {:?} lacks {:?}",
                        error.message, case.message
                    ));
                }
                problems
            }
            _ => vec![format!(
                "expected exactly one error, got {}",
                errors.0.len()
            )],
        };
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n  reported:\n{errors}",
                case.name,
                problems.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_case_name_is_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "duplicate case names");
}

#[test]
fn a_bad_duration_is_refused_with_the_accepted_units() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    leeway: 10x
",
    );
    let [error] = &errors[..] else {
        panic!("expected exactly one error: {errors:#?}");
    };
    assert_eq!(error.file, FILE);
    assert_eq!(error.path, "providers[0].leeway");
    assert!(
        error.message.contains(
            "invalid duration `10x`: expected a whole number followed by ms, s, m, h or d"
        ),
        "{error}"
    );
    // Where it points: see the next test.
    assert!(error.position.is_some(), "{error}");
}

/// A duration error points at the value (`leeway:` on line 8), not at the
/// start of the provider.
#[test]
fn a_bad_duration_points_at_its_own_line() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: https://idp.example
    jwks_uri: https://idp.example/jwks
    audiences: [orders-api]
    algorithms: [RS256]
    leeway: 10x
",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].position.map(|p| p.0), Some(8), "{}", errors[0]);
    assert_eq!(errors[0].path, "providers[0].leeway", "{}", errors[0]);
}

/// A trailing comment after `routes:` (or `providers:`) is not the start of
/// the value: errors under it still point at their own lines. The shipped
/// gateway.yaml comments exactly these lines.
#[test]
fn errors_under_a_commented_key_point_at_the_offending_line() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:                     # first match wins
  - { path: /x, upstream: o, auth: none }
  - { path: /y, upstream: nowhere, auth: none }
",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "routes[1].upstream");
    assert_eq!(errors[0].position, Some((6, 17)), "{}", errors[0]);
}

/// An upstream with an invalid URL is reported once, not again as
/// "unknown" on every route that uses it.
#[test]
fn an_invalid_upstream_url_is_reported_once_not_again_on_its_routes() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
upstreams:
  orders: { url: http://127.0.0.1:3000/api }
routes:
  - { path: /x, upstream: orders, auth: none }
",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["upstreams.orders.url"], "{errors:#?}");
}

#[test]
fn narrower_routes_before_broader_ones_are_not_reported_as_shadowed() {
    let yaml = "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /a/b, upstream: o, auth: none }
  - { path: \"/a/{id}\", upstream: o, auth: none }
  - { path: /a/**, upstream: o, auth: none }
  - { path: /c, methods: [GET], upstream: o, auth: none }
  - { path: /c, methods: [POST], upstream: o, auth: none }
  - { path: /c, upstream: o, auth: none }
  - { path: /d/**, methods: [GET], upstream: o, auth: none }
  - { path: /d/e, upstream: o, auth: none }
";
    let config = compile(yaml).unwrap_or_else(|errors| panic!("refused:\n{errors}"));
    assert_eq!(config.routes.iter().count(), 8);
    let found = |method: Method, path: &str| config.routes.find(&method, path).map(|r| r.index);
    assert_eq!(found(Method::GET, "/a/b"), Some(0));
    assert_eq!(found(Method::GET, "/a/c"), Some(1));
    assert_eq!(found(Method::GET, "/a/c/d"), Some(2));
    assert_eq!(found(Method::POST, "/c"), Some(4));
    assert_eq!(found(Method::PUT, "/c"), Some(5));
    assert_eq!(found(Method::GET, "/d/e"), Some(6));
    assert_eq!(found(Method::POST, "/d/e"), Some(7));
}

#[test]
fn protected_routes_without_a_providers_key_are_reported_without_a_position() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: o }
",
    );
    let [error] = &errors[..] else {
        panic!("expected exactly one error: {errors:#?}");
    };
    assert_eq!(error.path, "providers");
    assert_eq!(error.position, None, "there is no line to point at");
    assert_eq!(
        error.to_string(),
        "case.yaml: providers: routes require a bearer token but no provider is configured"
    );
}

// ---------------------------------------------------------------------------
// ${VAR}
// ---------------------------------------------------------------------------

#[test]
fn a_set_variable_is_substituted_and_one_in_a_comment_is_left_alone() {
    let yaml = "\
# ${NEVER_SET} in a comment line is not looked up
listen: 127.0.0.1:${PORT}   # nor ${THIS} in a trailing comment
realm: ${REALM}-api
";
    let looked_up = std::cell::RefCell::new(Vec::new());
    let env = |name: &str| {
        looked_up.borrow_mut().push(name.to_owned());
        match name {
            "PORT" => Some("8081".to_owned()),
            "REALM" => Some("orders".to_owned()),
            _ => None,
        }
    };
    let config =
        config::from_str(yaml, FILE, env).unwrap_or_else(|errors| panic!("refused:\n{errors}"));
    assert_eq!(config.listen.unwrap().to_string(), "127.0.0.1:8081");
    assert_eq!(&*config.realm, "orders-api");
    assert_eq!(*looked_up.borrow(), ["PORT", "REALM"]);
}

#[test]
fn a_substituted_value_stays_one_string_whatever_it_holds() {
    let yaml = "\
listen: 127.0.0.1:0
realm: ${REALM}
upstreams:
  o: { url: \"${URL}\" }
routes:
  - { path: /x, upstream: o, auth: none }
";
    let env = |name: &str| match name {
        // A `#` would start a comment and `", timeout: 1ms, "` would add a
        // key, were the value pasted into the text.
        "REALM" => Some("orders #1".to_owned()),
        "URL" => Some("http://h\", timeout: 1ms, connect_timeout: \"1ms".to_owned()),
        _ => None,
    };
    let errors = config::from_str(yaml, FILE, env).expect_err("the URL is not a URL");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "upstreams.o.url");
    let config = config::from_str(&yaml.replace("${URL}", "http://127.0.0.1:1"), FILE, env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&*config.realm, "orders #1");
}

#[test]
fn every_unset_variable_is_reported_with_its_line() {
    let yaml = "\
listen: 127.0.0.1:${PORT}
realm: ${REALM}
";
    let errors = config::from_str(yaml, FILE, |_| None).expect_err("unset variables");
    let reported: Vec<(Option<(usize, usize)>, &str)> = errors
        .0
        .iter()
        .map(|e| (e.position, e.message.as_str()))
        .collect();
    assert_eq!(
        reported,
        [
            (Some((1, 1)), "environment variable PORT is not set"),
            (Some((2, 1)), "environment variable REALM is not set"),
        ]
    );
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["listen", "realm"]);
}

// ---------------------------------------------------------------------------
// Several errors, and how they print
// ---------------------------------------------------------------------------

#[test]
fn several_independent_mistakes_are_all_reported_at_once_in_file_order() {
    // Written in another order than the checks run (listen, realm, routes),
    // so that the report follows the file, as the user reads it.
    let yaml = "\
routes:
  - { path: /x, upstream: p, auth: none }
upstreams:
  o: { url: http://127.0.0.1:3000 }
realm: 'a\"b'
listen: nowhere
";
    let errors = config::from_str(yaml, "multi.yaml", |_| None).expect_err("three mistakes");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["routes[0].upstream", "realm", "listen"]);

    let printed = errors.to_string();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        [
            "multi.yaml:2:17: routes[0].upstream: unknown upstream `p`; defined: o",
            "multi.yaml:5:1: realm: must be non-empty, without quotes, backslashes or control characters",
            "multi.yaml:6:1: listen: `nowhere` is not an address:port (invalid socket address syntax)",
        ]
    );
    assert!(!printed.ends_with('\n'), "no trailing newline: {printed:?}");
}

#[test]
fn a_parse_error_prints_file_line_and_column_without_a_duplicate_position() {
    let errors = config::from_str("listen: 127.0.0.1:0\nbogus: 1\n", "x.yaml", |_| None)
        .expect_err("unknown key");
    let printed = errors.to_string();
    assert!(
        printed.starts_with("x.yaml:2:1: bogus: unknown field `bogus`"),
        "{printed}"
    );
    assert!(!printed.contains(" at line "), "{printed}");
}

// ---------------------------------------------------------------------------
// `portcullis check`
// ---------------------------------------------------------------------------

/// A config file under the temp dir, removed on drop.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(contents: &str) -> TempConfig {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-config-errors-{}-{}.yaml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempConfig { path }
    }

    fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn portcullis_check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .env_remove("PORTCULLIS_WORKERS")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run portcullis check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_prints_the_compiled_routes_of_the_shipped_file_and_exits_0() {
    let file = TempConfig::new(&shipped_gateway_yaml());
    let out = portcullis_check(&file.path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));

    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in [
        "listen 0.0.0.0:8080",
        "route[0] GET,HEAD /health -> orders (public)",
        "route[1] GET,HEAD /profile -> orders (bearer scopes=[profile])",
        "route[2] * /admin/** -> orders (bearer scopes=[admin])",
        "route[3] * /orders/** -> orders (bearer)",
        "route[4] GET,HEAD /tenants/{tenant}/reports -> orders (bearer realm_access.roles=reports-reader)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.lines().last(),
        Some(format!("{}: ok", file.display()).as_str())
    );
    assert!(!stderr.contains("error"), "stderr:\n{stderr}");
}

#[test]
fn check_prints_every_error_with_file_and_line_on_stderr_and_exits_1() {
    let file = TempConfig::new(
        "\
listen: nowhere
upstreams:
  o: { url: http://127.0.0.1:3000 }
routes:
  - { path: /x, upstream: p, auth: none }
",
    );
    let out = portcullis_check(&file.path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let name = file.display();

    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{name}:1:1: listen: `nowhere` is not an address:port (invalid socket address syntax)"
            ),
            format!("{name}:5:17: routes[0].upstream: unknown upstream `p`; defined: o"),
            format!("2 error(s) in {name}"),
        ],
        "stderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("route[") && !stdout.contains(": ok"),
        "nothing is described for a refused file:\n{stdout}"
    );
}

#[test]
fn check_of_a_missing_file_says_it_cannot_read_it_and_exits_1() {
    let missing = TempConfig::new("");
    let path = missing.path.clone();
    drop(missing);
    let out = portcullis_check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.starts_with(&format!("{}: cannot read:", path.display())),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn an_invalid_auth_service_is_reported_once_not_again_on_its_providers() {
    let errors = errors_of(
        "\
listen: 127.0.0.1:0
auth_service:
  listen: 127.0.0.1:0
  clients:
    - { client_id: a, client_secret_hash: plaintext, audiences: [x] }
providers:
  - { name: builtin, auth_service: true, audiences: [x], algorithms: [ES256] }
",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["auth_service.clients[0].client_secret_hash"],
        "{errors:#?}"
    );
}
