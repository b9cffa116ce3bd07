//! The seed's sequence diagram (token, call, verify, refresh), drawn for
//! this deployment: its real participants, endpoints, lifetimes and
//! scopes; the refresh step only where refresh tokens exist; revocation,
//! introspection, API keys and client certificates where configured.

use std::fmt::Write as _;

use super::{ProviderView, Report, RouteView, human_secs};

pub fn sequence(report: &Report) -> String {
    let mut d = Diagram::default();
    d.line("sequenceDiagram");
    let bearer_routes: Vec<&RouteView> = report
        .routes
        .iter()
        .filter(|r| r.auth.contains(&"bearer"))
        .collect();
    let key_routes: Vec<&RouteView> = report
        .routes
        .iter()
        .filter(|r| r.auth.contains(&"api_key"))
        .collect();
    let mtls = report.gateway.tls.contains("client certificates");

    // Participants, left to right as in the seed: client, API, auth service.
    let clients = match &report.auth_service {
        Some(auth) if !auth.clients.is_empty() => {
            let ids: Vec<&str> = auth.clients.iter().map(|c| c.client_id.as_str()).collect();
            format!("Client ({})", ids.join(", "))
        }
        _ => "Client".to_owned(),
    };
    d.line(&format!("    actor C as {}", text(&clients)));
    if let Some(keys) = report.api_keys.as_ref().filter(|_| !key_routes.is_empty()) {
        let names: Vec<&str> = keys.keys.iter().map(|k| k.name.as_str()).collect();
        let label = if names.is_empty() {
            "API key holder".to_owned()
        } else {
            format!("API key holder ({})", names.join(", "))
        };
        d.line(&format!("    actor K as {}", text(&label)));
    }
    let gateway = match &report.gateway.listen {
        Some(listen) => format!("Portcullis {listen}"),
        None => "Portcullis".to_owned(),
    };
    d.line(&format!("    participant G as {}", text(&gateway)));
    let mut upstreams: Vec<(&str, &[String])> = Vec::new();
    for route in &report.routes {
        if !upstreams.iter().any(|(name, _)| *name == route.upstream) {
            upstreams.push((&route.upstream, &route.targets));
        }
    }
    for (i, (name, targets)) in upstreams.iter().enumerate() {
        d.line(&format!(
            "    participant U{i} as {}",
            text(&format!("{name} {}", targets.join(" ")))
        ));
    }
    let issuers: Vec<(usize, &ProviderView)> = report
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| bearer_routes.iter().any(|r| r.providers.contains(&p.name)))
        .collect();
    for (i, p) in &issuers {
        d.line(&format!(
            "    participant A{i} as {}",
            text(&issuer_label(report, p))
        ));
    }

    if mtls {
        d.blank();
        d.line("    C->>G: TLS handshake with a client certificate");
        d.line(&format!(
            "    G->>G: chain to the client CA ({})",
            text(report.gateway.tls)
        ));
    }

    for (i, p) in &issuers {
        d.blank();
        token_request(&mut d, report, *i, p, &bearer_routes);
        key_upkeep(&mut d, *i, p);
    }

    // One call, as the seed shows it, with the checks this config makes.
    let first_call = bearer_routes.first().and_then(|route| {
        let (i, provider) = issuers
            .iter()
            .find(|(_, p)| route.providers.contains(&p.name))?;
        Some((route, *i, *provider))
    });
    if let Some((route, i, provider)) = first_call {
        d.blank();
        let scheme = if route.auth.contains(&"dpop") {
            "DPoP access token, DPoP: proof"
        } else {
            "Bearer access token"
        };
        d.line(&format!(
            "    C->>G: {} {} (Authorization: {scheme})",
            example_method(route),
            text(&route.path)
        ));
        if route.verify == Some("remote") || provider.keys == "none" {
            let endpoint = provider
                .introspection
                .as_ref()
                .map_or("introspection endpoint", |x| x.endpoint.as_str());
            d.line(&format!("    G->>A{i}: POST {} (token)", text(endpoint)));
            d.line(&format!(
                "    A{i}-->>G: active, scope, exp (answer cached up to {})",
                provider.introspection.as_ref().map_or_else(
                    || "its exp".to_owned(),
                    |x| human_secs(x.cache_active_max_seconds)
                )
            ));
        } else {
            d.line(&format!(
                "    G->>G: verify the signature locally ({}), iss, {}, exp and nbf within {}",
                provider.algorithms.join(", "),
                match &provider.audience_claim {
                    Some(claim) => format!("{claim} holds {}", provider.audiences.join(" or ")),
                    None => "no audience check".to_owned(),
                },
                human_secs(provider.leeway_seconds)
            ));
            if provider.revocation.is_some() {
                d.line("    G->>G: the token's jti and sub are not on the revocation list");
            }
        }
        let notes = requirement_notes(report);
        if !notes.is_empty() {
            d.line(&format!("    Note over G: {}", notes.join("<br/>")));
        }
        d.line("    alt valid token with the route's scopes and claims");
        forward(&mut d, "C", route, &upstreams);
        d.line("    else missing, invalid, expired or revoked token");
        d.line(&format!(
            "        G-->>C: 401 WWW-Authenticate: Bearer realm=\"{}\", error=\"invalid_token\"",
            text(&report.gateway.realm)
        ));
        d.line("    else a scope or claim is missing");
        d.line("        G-->>C: 403 error=\"insufficient_scope\"");
        d.line("    end");
    }

    if let Some(route) = key_routes.first() {
        let header = report.api_keys.as_ref().map_or("", |k| k.header.as_str());
        d.blank();
        d.line(&format!(
            "    K->>G: {} {} ({header}: API key)",
            example_method(route),
            text(&route.path)
        ));
        d.line("    G->>G: SHA-256 of the key equals a configured one (constant time)");
        d.line("    alt known key with the route's scopes");
        forward(&mut d, "K", route, &upstreams);
        d.line("    else unknown key, or a scope is missing");
        d.line("        G-->>K: 401 or 403");
        d.line("    end");
    }

    let public: Vec<String> = report
        .routes
        .iter()
        .filter(|r| r.auth.contains(&"none"))
        .map(|r| format!("{} {}", methods(r), r.path))
        .collect();
    if !public.is_empty() {
        d.blank();
        d.line(&format!(
            "    Note over C,G: public, no token: {}",
            text(&public.join(", "))
        ));
    }
    d.blank();
    d.line(&format!(
        "    Note over C,G: anything else: {}",
        text(&report.gateway.unmatched)
    ));

    for (i, p) in &issuers {
        refresh(&mut d, report, *i, p);
    }
    d.out
}

#[derive(Default)]
struct Diagram {
    out: String,
}

impl Diagram {
    fn line(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
    }

    fn blank(&mut self) {
        self.out.push('\n');
    }
}

/// Mermaid ends a statement at `;` and reads `#` as an entity code.
fn text(s: &str) -> String {
    s.replace(';', ",")
        .replace('#', "no. ")
        .replace(['\n', '\r'], " ")
}

fn issuer_label(report: &Report, p: &ProviderView) -> String {
    if p.keys == "auth_service" {
        return match &report.auth_service {
            Some(auth) => format!("Portcullis auth service {}", auth.listen),
            None => "Portcullis auth service".to_owned(),
        };
    }
    let host = p
        .issuer
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| p.issuer.clone());
    format!("{} auth service {host}", p.name)
}

/// The token request, as the seed draws it.
fn token_request(
    d: &mut Diagram,
    report: &Report,
    i: usize,
    p: &ProviderView,
    bearer_routes: &[&RouteView],
) {
    let dpop = bearer_routes
        .iter()
        .any(|r| r.auth.contains(&"dpop") && r.providers.contains(&p.name));
    let proof = if dpop { ", DPoP: proof" } else { "" };
    match report
        .auth_service
        .as_ref()
        .filter(|_| p.keys == "auth_service")
    {
        Some(auth) => {
            d.line(&format!(
                "    C->>A{i}: POST {} (client_id and secret, scope{proof})",
                text(&auth.token_endpoint)
            ));
            d.line(&format!(
                "    A{i}->>A{i}: check the secret (argon2), grant the client's scopes"
            ));
            for c in &auth.clients {
                let refresh = match c.refresh_token_ttl_seconds {
                    Some(ttl) => format!(" + refresh token, {}", human_secs(ttl)),
                    None => String::new(),
                };
                d.line(&format!(
                    "    A{i}-->>C: {}: {} JWT ({}, scopes {}), expires in {}{refresh}",
                    text(&c.client_id),
                    if dpop { "DPoP-bound" } else { "Bearer" },
                    auth.signing_algorithm,
                    text(&c.scopes.join(" ")),
                    human_secs(c.access_token_ttl_seconds)
                ));
            }
        }
        None => {
            d.line(&format!(
                "    C->>A{i}: POST token endpoint of {} (client credentials{proof})",
                text(&p.issuer)
            ));
            d.line(&format!("    A{i}->>A{i}: check the client's credentials"));
            d.line(&format!(
                "    A{i}-->>C: access token (JWT, {}), lifetime set by {}",
                p.algorithms.join(" or "),
                text(&p.name)
            ));
        }
    }
}

/// How the gateway keeps the provider's keys and revocation list current.
fn key_upkeep(d: &mut Diagram, i: usize, p: &ProviderView) {
    match (p.keys, &p.keys_url) {
        ("auth_service", _) => {
            d.line(&format!(
                "    Note over G,A{i}: the gateway reads the signing keys in process, no HTTP"
            ));
        }
        ("none", _) => {}
        (kind, Some(url)) => {
            d.line(&format!(
                "    loop every {}, and on an unknown kid at most every {}",
                human_secs(p.jwks_refresh_seconds),
                human_secs(p.unknown_kid_cooldown_seconds)
            ));
            let what = if kind == "discovery" {
                "discovery, then its jwks_uri"
            } else {
                "JWKS"
            };
            d.line(&format!("        G->>A{i}: GET {} ({what})", text(url)));
            d.line(&format!("        A{i}-->>G: public keys"));
            d.line("    end");
        }
        _ => {}
    }
    if let Some(r) = &p.revocation {
        d.line(&format!(
            "    loop every {}",
            human_secs(r.interval_seconds)
        ));
        d.line(&format!(
            "        G->>A{i}: GET {} (revocation list)",
            text(&r.source)
        ));
        d.line(&format!(
            "        A{i}-->>G: revoked token ids and subjects"
        ));
        d.line("    end");
    }
}

fn forward(d: &mut Diagram, caller: &str, route: &RouteView, upstreams: &[(&str, &[String])]) {
    let u = upstreams
        .iter()
        .position(|(name, _)| *name == route.upstream)
        .unwrap_or(0);
    let mut extra: Vec<String> = route
        .to_upstream
        .claim_headers
        .iter()
        .map(|h| format!("{} from {}", h.header, h.claim))
        .collect();
    if !route.to_upstream.credential && !route.auth.contains(&"none") {
        extra.push("token stripped".to_owned());
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    };
    d.line(&format!(
        "        G->>U{u}: {} {}{}",
        example_method(route),
        text(&route.path),
        text(&extra)
    ));
    d.line(&format!("        U{u}-->>G: response"));
    d.line(&format!("        G-->>{caller}: response, streamed"));
}

/// What each protected route asks of a token, for the note over the gateway.
fn requirement_notes(report: &Report) -> Vec<String> {
    report
        .routes
        .iter()
        .filter(|r| !r.auth.contains(&"none"))
        .map(|r| {
            let mut needs = Vec::new();
            if !r.scopes.is_empty() {
                needs.push(format!("scope {}", r.scopes.join(" ")));
            }
            for c in &r.claims {
                needs.push(format!("{} = {}", c.claim, c.equals));
            }
            if r.auth.contains(&"dpop") {
                needs.push("a DPoP proof".to_owned());
            }
            if r.auth.contains(&"mtls") {
                needs.push("a client certificate".to_owned());
            }
            let needs = if needs.is_empty() {
                "a valid token".to_owned()
            } else {
                needs.join(" and ")
            };
            text(&format!("{} {} needs {needs}", methods(r), r.path))
        })
        .collect()
}

/// The seed's last step: a new token when the old one expires.
fn refresh(d: &mut Diagram, report: &Report, i: usize, p: &ProviderView) {
    d.blank();
    match report
        .auth_service
        .as_ref()
        .filter(|_| p.keys == "auth_service")
    {
        Some(auth) => {
            let refreshing: Vec<_> = auth
                .clients
                .iter()
                .filter(|c| c.refresh_token_ttl_seconds.is_some())
                .collect();
            let shortest = auth
                .clients
                .iter()
                .map(|c| c.access_token_ttl_seconds)
                .min()
                .unwrap_or(0);
            d.line(&format!(
                "    Note over C,A{i}: the access token expires ({} at the shortest)",
                human_secs(shortest)
            ));
            if refreshing.is_empty() {
                d.line(&format!(
                    "    C->>A{i}: POST {} again (no refresh tokens)",
                    text(&auth.token_endpoint)
                ));
                d.line(&format!("    A{i}-->>C: new access token"));
            } else {
                d.line(&format!(
                    "    C->>A{i}: POST {} (refresh token)",
                    text(&auth.refresh_endpoint)
                ));
                d.line(&format!(
                    "    A{i}-->>C: new access token + new refresh token (the old one is spent: reusing it revokes them all)"
                ));
            }
        }
        None => {
            d.line(&format!(
                "    Note over C,A{i}: the access token expires (401 invalid_token)"
            ));
            d.line(&format!(
                "    C->>A{i}: POST token endpoint again (client credentials have no refresh token)"
            ));
            d.line(&format!("    A{i}-->>C: new access token"));
        }
    }
}

fn methods(route: &RouteView) -> String {
    if route.methods.is_empty() {
        "any".to_owned()
    } else {
        route.methods.join(",")
    }
}

fn example_method(route: &RouteView) -> &str {
    route.methods.first().map_or("GET", String::as_str)
}
