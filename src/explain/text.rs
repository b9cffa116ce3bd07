//! The report as an auditor reads it: plain text for a terminal, markdown
//! for a review document. Same content, same order.

use std::fmt::Write as _;

use super::{
    Check, Credential, KeysFrom, ListenerTls, ProviderView, Report, RouteView, Unmatched,
    human_secs,
};

/// One line per fact, indented under its heading.
pub fn plain(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Policy of {}", report.file);
    let _ = writeln!(out, "\nGateway");
    for (label, value) in gateway_facts(report) {
        let _ = writeln!(out, "  {label}: {value}");
    }
    if report.gateway.listen.is_some() {
        let _ = writeln!(out, "\nRoutes (first match wins)");
        if report.routes.is_empty() {
            let _ = writeln!(out, "  none");
        }
    }
    for route in &report.routes {
        let _ = writeln!(
            out,
            "  {} {} {} -> {} ({})",
            route.at,
            route.methods_label(),
            route.path,
            route.upstream,
            route.targets.join(", ")
        );
        let _ = writeln!(out, "    auth: {}", auth(route));
        if let Some(requires) = requires(route) {
            let _ = writeln!(out, "    requires: {requires}");
        }
        let _ = writeln!(out, "    upstream gets: {}", upstream_gets(route));
        if let Some(taken) = taken_first(route) {
            let _ = writeln!(out, "    taken first: {taken}");
        }
        if let Some(limit) = &route.rate_limit {
            let _ = writeln!(out, "    rate limit: {limit}");
        }
    }

    if !report.providers.is_empty() {
        let _ = writeln!(out, "\nProviders");
    }
    for p in &report.providers {
        let _ = writeln!(out, "  {} ({})", p.name, p.at);
        for (label, value) in provider_facts(p) {
            let _ = writeln!(out, "    {label}: {value}");
        }
    }

    if let Some(keys) = &report.api_keys {
        let _ = writeln!(out, "\nAPI keys (header {})", keys.header);
        for key in &keys.keys {
            let _ = writeln!(out, "  {}: scopes {}", key.name, list(&key.scopes));
        }
    }

    if let Some(auth) = &report.auth_service {
        let _ = writeln!(out, "\nBuilt-in auth service");
        let _ = writeln!(out, "  listen: {}", auth.listen);
        let _ = writeln!(out, "  issuer: {}", auth.issuer);
        let _ = writeln!(out, "  token endpoint: POST {}", auth.token_endpoint);
        let _ = writeln!(out, "  refresh endpoint: POST {}", auth.refresh_endpoint);
        let _ = writeln!(out, "  signing: {}", auth.signing_algorithm);
        for c in &auth.clients {
            let _ = writeln!(out, "  client {}", c.client_id);
            let _ = writeln!(out, "    scopes: {}", list(&c.scopes));
            let _ = writeln!(out, "    audiences: {}", list(&c.audiences));
            let _ = writeln!(
                out,
                "    access token: {}",
                human_secs(c.access_token_ttl_seconds)
            );
            let _ = writeln!(
                out,
                "    refresh token: {}",
                refresh(c.refresh_token_ttl_seconds)
            );
            let _ = writeln!(out, "    introspection: {}", yes_no(c.introspect));
        }
    }

    let _ = writeln!(out, "\nFindings");
    if report.findings.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &report.findings {
        let _ = writeln!(out, "  [{}] {}: {}", f.severity.as_str(), f.at, f.message);
    }
    out
}

/// Headings, tables and lists.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Policy of `{}`\n", report.file);
    let _ = writeln!(out, "## Gateway\n");
    for (label, value) in gateway_facts(report) {
        let _ = writeln!(out, "- {label}: {value}");
    }

    if report.gateway.listen.is_some() {
        let _ = writeln!(out, "\n## Routes\n\nFirst match wins.\n");
        if report.routes.is_empty() {
            let _ = writeln!(out, "None.");
        } else {
            let _ = writeln!(
                out,
                "| # | methods | path | auth | requires | upstream | upstream gets |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for route in &report.routes {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | `{}` | {} | {} | `{}` | {} |",
                    route.at,
                    cell(&route.methods_label()),
                    cell(&route.path),
                    cell(&auth(route)),
                    cell(&requires_and_taken(route)),
                    cell(&route.upstream),
                    cell(&upstream_gets(route))
                );
            }
        }
    }

    if !report.providers.is_empty() {
        let _ = writeln!(out, "\n## Providers");
    }
    for p in &report.providers {
        let _ = writeln!(out, "\n### `{}` (`{}`)\n", p.name, p.at);
        for (label, value) in provider_facts(p) {
            let _ = writeln!(out, "- {label}: {value}");
        }
    }

    if let Some(keys) = &report.api_keys {
        let _ = writeln!(out, "\n## API keys\n\nHeader `{}`.\n", keys.header);
        for key in &keys.keys {
            let _ = writeln!(out, "- `{}`: scopes {}", key.name, list(&key.scopes));
        }
    }

    if let Some(auth) = &report.auth_service {
        let _ = writeln!(out, "\n## Built-in auth service\n");
        let _ = writeln!(out, "- listen: `{}`", auth.listen);
        let _ = writeln!(out, "- issuer: `{}`", auth.issuer);
        let _ = writeln!(out, "- token endpoint: `POST {}`", auth.token_endpoint);
        let _ = writeln!(out, "- refresh endpoint: `POST {}`", auth.refresh_endpoint);
        let _ = writeln!(out, "- signing: {}\n", auth.signing_algorithm);
        let _ = writeln!(
            out,
            "| client | scopes | audiences | access token | refresh token | introspection |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for c in &auth.clients {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                cell(&c.client_id),
                cell(&list(&c.scopes)),
                cell(&list(&c.audiences)),
                human_secs(c.access_token_ttl_seconds),
                refresh(c.refresh_token_ttl_seconds),
                yes_no(c.introspect)
            );
        }
    }

    let _ = writeln!(out, "\n## Findings\n");
    if report.findings.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(out, "| severity | where | finding |");
        let _ = writeln!(out, "|---|---|---|");
        for f in &report.findings {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} |",
                f.severity.as_str(),
                f.at,
                cell(&f.message)
            );
        }
    }
    out
}

/// A table cell: a `|` would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn gateway_facts(report: &Report) -> Vec<(&'static str, String)> {
    let g = &report.gateway;
    let Some(listen) = &g.listen else {
        return vec![(
            "listen",
            "none: this config runs only the built-in auth service".to_owned(),
        )];
    };
    let tls = match g.tls {
        ListenerTls::None => "none",
        ListenerTls::Server => "yes",
        ListenerTls::OptionalClientCerts => "yes, client certificates optional",
        ListenerTls::RequiredClientCerts => "yes, client certificates required",
    };
    let mut facts = vec![("listen", format!("{listen} (TLS: {tls})"))];
    if let Some(admin) = &g.admin {
        facts.push(("admin", format!("{admin} (/healthz, /readyz, /metrics)")));
    }
    facts.push(("realm", g.realm.clone()));
    facts.push(("unmatched requests", unmatched(&g.unmatched, report)));
    facts.push((
        "verified-token cache",
        if g.token_cache_entries == 0 {
            "off: every signature is checked".to_owned()
        } else {
            format!("{} entries", g.token_cache_entries)
        },
    ));
    facts
}

/// What happens to a request no narrower route takes, in words.
pub fn unmatched(policy: &Unmatched, report: &Report) -> String {
    let mut parts: Vec<String> = policy
        .catch_all
        .iter()
        .map(|c| {
            let pattern = report
                .routes
                .iter()
                .find(|r| r.at == c.route)
                .map_or("/**", |r| r.path.as_str());
            let methods = if c.methods.is_empty() {
                "any method".to_owned()
            } else {
                c.methods.join(",")
            };
            let how = if c.public {
                "forwarded without a token"
            } else {
                "judged by its credentials"
            };
            format!("{methods}: {how} by {} ({pattern})", c.route)
        })
        .collect();
    if policy.rest_refused {
        parts.push(if parts.is_empty() {
            "refused with 404, never forwarded".to_owned()
        } else {
            "other methods: refused with 404".to_owned()
        });
    }
    parts.join("; ")
}

fn auth(route: &RouteView) -> String {
    route
        .auth
        .iter()
        .map(|kind| match kind {
            Credential::None => "none (public)".to_owned(),
            Credential::Bearer => {
                let providers: Vec<String> = route
                    .providers
                    .iter()
                    .map(|a| format!("{} ({})", a.provider, check(a.check)))
                    .collect();
                format!("bearer token from {}", providers.join(", "))
            }
            Credential::ApiKey => "API key".to_owned(),
            Credential::Dpop => "DPoP-bound token required".to_owned(),
            Credential::Mtls => "client certificate required".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn check(check: Check) -> &'static str {
    match check {
        Check::Signature => "JWT signature checked locally",
        Check::SignatureOrIntrospection => {
            "JWT signature checked locally, opaque tokens introspected"
        }
        Check::Introspection => "introspected, answers cached",
        Check::IntrospectionEveryRequest => "introspected on every request",
    }
}

/// Which earlier routes take some of this route's requests first.
pub fn taken_first(route: &RouteView) -> Option<String> {
    let parts: Vec<String> = route
        .preceded_by
        .iter()
        .map(|p| {
            let methods = if p.methods.is_empty() {
                String::new()
            } else {
                format!("{} ", p.methods.join(","))
            };
            format!(
                "{} {methods}requests by routes[{}]",
                if p.whole { "all" } else { "some" },
                p.route
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn requires(route: &RouteView) -> Option<String> {
    let mut parts = Vec::new();
    if !route.scopes.is_empty() {
        parts.push(format!("scopes {}", route.scopes.join(" ")));
    }
    for rule in &route.claims {
        parts.push(format!("{} = {}", rule.claim, rule.equals));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn requires_and_taken(route: &RouteView) -> String {
    let mut parts: Vec<String> = requires(route).into_iter().collect();
    if let Some(taken) = taken_first(route) {
        parts.push(format!("taken first: {taken}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn upstream_gets(route: &RouteView) -> String {
    let mut parts = Vec::new();
    if route.to_upstream.credential {
        parts.push(if route.takes(Credential::None) {
            "the client's credential, if it sends one".to_owned()
        } else {
            "the client's credential".to_owned()
        });
    }
    for h in &route.to_upstream.claim_headers {
        parts.push(format!("{} from claim {}", h.header, h.claim));
    }
    if route.to_upstream.client_cert {
        parts.push("x-forwarded-client-cert".to_owned());
    }
    parts.push("x-forwarded-for/-host/-proto, x-request-id".to_owned());
    parts.join("; ")
}

fn provider_facts(p: &ProviderView) -> Vec<(&'static str, String)> {
    let mut facts = vec![("issuer", p.issuer.clone())];
    let keys = match (p.keys, &p.keys_url) {
        (KeysFrom::AuthService, _) => "the built-in auth service's key set, read in process".into(),
        (KeysFrom::None, _) => "none: every token is introspected".into(),
        (KeysFrom::Discovery, Some(url)) => format!("JWKS named by {url}"),
        (_, Some(url)) => format!("JWKS {url}"),
        (_, None) => "none".into(),
    };
    facts.push(("keys", keys));
    if p.keys_url.is_some() {
        facts.push((
            "key cache",
            format!(
                "refreshed every {}, an unknown kid refetches at most every {}, tokens refused after {} without a successful fetch",
                human_secs(p.jwks_refresh_seconds),
                human_secs(p.unknown_kid_cooldown_seconds),
                human_secs(p.max_staleness_seconds)
            ),
        ));
    }
    if p.keys != KeysFrom::None {
        facts.push(("algorithms", p.algorithms.join(", ")));
    }
    facts.push((
        "audience",
        match &p.audience_claim {
            Some(claim) => format!("{claim} must hold one of {}", list(&p.audiences)),
            None => "not checked".to_owned(),
        },
    ));
    facts.push(("leeway", human_secs(p.leeway_seconds)));
    facts.push(("scopes from", list(&p.scope_claims)));
    if let Some(typ) = &p.require_typ {
        facts.push(("typ", typ.clone()));
    }
    facts.push((
        "revocation",
        match &p.revocation {
            Some(r) => format!("{} every {}", r.source, human_secs(r.interval_seconds)),
            None => "none".to_owned(),
        },
    ));
    facts.push((
        "introspection",
        match &p.introspection {
            Some(i) => format!(
                "{} as client {}, timeout {}, active answers cached up to {}, inactive {} (not on verify: remote routes)",
                i.endpoint,
                i.client_id,
                human_secs(i.timeout_seconds),
                human_secs(i.cache_active_max_seconds),
                human_secs(i.cache_inactive_seconds)
            ),
            None => "none".to_owned(),
        },
    ));
    if let Some(cookie) = &p.cookie {
        facts.push(("token cookie", cookie.clone()));
    }
    facts
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn refresh(ttl: Option<u64>) -> String {
    match ttl {
        Some(secs) => format!("{}, rotated on every use", human_secs(secs)),
        None => "none".into(),
    }
}

fn yes_no(on: bool) -> &'static str {
    if on { "yes" } else { "no" }
}
