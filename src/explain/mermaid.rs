//! The seed's sequence diagram (token, call, verify, refresh), drawn for
//! this deployment: its real participants, endpoints, lifetimes and
//! scopes; the refresh step only where refresh tokens exist; key-set and
//! revocation polling, introspection, API keys and client certificates
//! where configured.

use std::fmt::Write as _;

use super::{
    Check, Credential, KeysFrom, ListenerTls, ProviderView, Report, RouteView, host_of, human_secs,
    text::{taken_first, unmatched},
};

/// The whole diagram.
pub fn sequence(report: &Report) -> String {
    let d = &mut Diagram::default();
    d.line("sequenceDiagram");
    let gateway = report.gateway.listen.is_some();
    let bearer: Vec<&RouteView> = report
        .routes
        .iter()
        .filter(|r| r.takes(Credential::Bearer))
        .collect();
    let keyed: Vec<&RouteView> = report
        .routes
        .iter()
        .filter(|r| r.takes(Credential::ApiKey))
        .collect();
    // The providers some route accepts tokens from, by their index.
    let issuers: Vec<(usize, &ProviderView)> = report
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            bearer
                .iter()
                .any(|r| r.providers.iter().any(|a| a.provider == p.name))
        })
        .collect();

    participants(d, report, &issuers, !keyed.is_empty());
    if gateway {
        client_certificates(d, report);
    }
    if report.auth_service.is_some() {
        d.blank();
        builtin_issuance(d, report, &bearer);
    }
    for (i, p) in &issuers {
        d.blank();
        if p.keys != KeysFrom::AuthService {
            external_issuance(d, *i, p, &bearer);
        }
        key_upkeep(d, report, *i, p);
    }
    if gateway {
        if let Some(route) = bearer.first() {
            d.blank();
            bearer_call(d, report, route, &bearer);
        }
        if let Some(route) = keyed.first() {
            d.blank();
            key_call(d, report, route, &keyed);
        }
        let public: Vec<String> = report
            .routes
            .iter()
            .filter(|r| r.takes(Credential::None))
            .map(|r| format!("{} {}", r.methods_label(), r.path))
            .collect();
        d.blank();
        if !public.is_empty() {
            d.line(&format!(
                "    Note over C,G: public, no token: {}",
                text(&public.join(", "))
            ));
        }
        d.line(&format!(
            "    Note over C,G: anything else: {}",
            text(&unmatched(&report.gateway.unmatched, report))
        ));
    }
    if report.auth_service.is_some() {
        d.blank();
        builtin_refresh(d, report);
    }
    for (i, p) in &issuers {
        if p.keys != KeysFrom::AuthService {
            d.blank();
            d.line(&format!(
                "    Note over C,{}: the access token expires (401 invalid_token)",
                id(*i, p)
            ));
            d.line(&format!(
                "    C->>{}: POST token endpoint again (client credentials have no refresh token)",
                id(*i, p)
            ));
            d.line(&format!("    {}-->>C: new access token", id(*i, p)));
        }
    }
    std::mem::take(&mut d.out)
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

/// Text as Mermaid shows it: `;` would end the statement, `#` starts an
/// entity, and `<`/`>` would be read as HTML.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ';' => out.push_str("#59;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A provider's participant: the built-in service is `S`, others `A<i>`.
fn id(index: usize, p: &ProviderView) -> String {
    match p.keys {
        KeysFrom::AuthService => "S".to_owned(),
        _ => format!("A{index}"),
    }
}

fn participants(d: &mut Diagram, report: &Report, issuers: &[(usize, &ProviderView)], keys: bool) {
    let gateway = report.gateway.listen.is_some();
    let clients = match &report.auth_service {
        Some(auth) if !auth.clients.is_empty() => {
            let ids: Vec<&str> = auth.clients.iter().map(|c| c.client_id.as_str()).collect();
            format!("Client ({})", ids.join(", "))
        }
        _ => "Client".to_owned(),
    };
    d.line(&format!("    actor C as {}", text(&clients)));
    if let Some(api_keys) = report.api_keys.as_ref().filter(|_| gateway && keys) {
        let names: Vec<&str> = api_keys.keys.iter().map(|k| k.name.as_str()).collect();
        let label = if names.is_empty() {
            "API key holder".to_owned()
        } else {
            format!("API key holder ({})", names.join(", "))
        };
        d.line(&format!("    actor K as {}", text(&label)));
    }
    if let Some(listen) = &report.gateway.listen {
        d.line(&format!("    participant G as Portcullis {}", text(listen)));
        for (i, (name, targets)) in upstreams(report).iter().enumerate() {
            d.line(&format!(
                "    participant U{i} as {}",
                text(&format!("{name} {}", targets.join(" ")))
            ));
        }
    }
    if let Some(auth) = &report.auth_service {
        d.line(&format!(
            "    participant S as Portcullis auth service {}",
            text(&auth.listen)
        ));
    }
    for (i, p) in issuers {
        if p.keys != KeysFrom::AuthService {
            d.line(&format!(
                "    participant A{i} as {}",
                text(&format!("{} auth service {}", p.name, host_of(&p.issuer)))
            ));
        }
        if let Some(host) = revocation_host(report, p) {
            d.line(&format!(
                "    participant R{i} as {}",
                text(&format!("revocation list {host}"))
            ));
        }
    }
}

/// Each upstream once, in route order.
fn upstreams(report: &Report) -> Vec<(&str, &[String])> {
    let mut out: Vec<(&str, &[String])> = Vec::new();
    for route in &report.routes {
        if !out.iter().any(|(name, _)| *name == route.upstream) {
            out.push((&route.upstream, &route.targets));
        }
    }
    out
}

/// The host of a provider's revocation list when it is not the provider's
/// own participant (another host, or not the built-in service).
fn revocation_host(report: &Report, p: &ProviderView) -> Option<String> {
    let source = &p.revocation.as_ref()?.source;
    if !source.contains("://") {
        return None;
    }
    let host = host_of(source);
    let own = match (p.keys, &report.auth_service) {
        (KeysFrom::AuthService, Some(auth)) => host_of(&auth.issuer) == host,
        _ => host_of(&p.issuer) == host,
    };
    (!own).then_some(host)
}

fn client_certificates(d: &mut Diagram, report: &Report) {
    let handshake = "C->>G: TLS handshake with a client certificate, chained to the client CA";
    match report.gateway.tls {
        ListenerTls::RequiredClientCerts => {
            d.blank();
            d.line(&format!("    {handshake} (required for every connection)"));
        }
        ListenerTls::OptionalClientCerts
            if report.routes.iter().any(|r| r.takes(Credential::Mtls)) =>
        {
            d.blank();
            d.line("    opt for the routes that require a client certificate");
            d.line(&format!("        {handshake}"));
            d.line("    end");
        }
        _ => {}
    }
}

/// The built-in service's token request, as the seed draws it.
fn builtin_issuance(d: &mut Diagram, report: &Report, bearer: &[&RouteView]) {
    let Some(auth) = &report.auth_service else {
        return;
    };
    let dpop = bearer.iter().any(|r| {
        r.takes(Credential::Dpop)
            && r.providers.iter().any(|a| {
                report
                    .provider(&a.provider)
                    .is_some_and(|p| p.keys == KeysFrom::AuthService)
            })
    });
    let proof = if dpop { ", DPoP: proof" } else { "" };
    d.line(&format!(
        "    C->>S: POST {} (client_id and secret, scope{proof})",
        text(&auth.token_endpoint)
    ));
    d.line("    S->>S: check the secret (argon2), grant the client's scopes");
    for c in &auth.clients {
        let refresh = match c.refresh_token_ttl_seconds {
            Some(ttl) => format!(" + refresh token, {}", human_secs(ttl)),
            None => String::new(),
        };
        d.line(&format!(
            "    S-->>C: {}: {} JWT ({}, scopes {}), expires in {}{refresh}",
            text(&c.client_id),
            if dpop { "DPoP-bound" } else { "Bearer" },
            auth.signing_algorithm,
            text(&c.scopes.join(" ")),
            human_secs(c.access_token_ttl_seconds)
        ));
    }
}

/// Another provider's token request: its endpoint and lifetimes are its own.
fn external_issuance(d: &mut Diagram, i: usize, p: &ProviderView, bearer: &[&RouteView]) {
    let dpop = bearer
        .iter()
        .any(|r| r.takes(Credential::Dpop) && r.providers.iter().any(|a| a.provider == p.name));
    let proof = if dpop { ", DPoP: proof" } else { "" };
    d.line(&format!(
        "    C->>A{i}: POST token endpoint of {} (client credentials{proof})",
        text(&p.issuer)
    ));
    d.line(&format!("    A{i}->>A{i}: check the client's credentials"));
    let token = if p.keys == KeysFrom::None {
        "opaque access token".to_owned()
    } else {
        format!("access token (JWT, {})", p.algorithms.join(" or "))
    };
    d.line(&format!(
        "    A{i}-->>C: {token}, lifetime set by {}",
        text(&p.name)
    ));
}

/// How the gateway keeps the provider's keys and revocation list current.
fn key_upkeep(d: &mut Diagram, report: &Report, i: usize, p: &ProviderView) {
    let who = id(i, p);
    match (p.keys, &p.keys_url) {
        (KeysFrom::AuthService, _) => {
            d.line("    Note over G,S: the gateway reads the signing keys in process, no HTTP")
        }
        (KeysFrom::Discovery | KeysFrom::JwksUri, Some(url)) => {
            d.line(&format!(
                "    loop every {}, and on an unknown kid at most every {}",
                human_secs(p.jwks_refresh_seconds),
                human_secs(p.unknown_kid_cooldown_seconds)
            ));
            let what = if p.keys == KeysFrom::Discovery {
                "discovery, then its jwks_uri"
            } else {
                "JWKS"
            };
            d.line(&format!("        G->>{who}: GET {} ({what})", text(url)));
            d.line(&format!("        {who}-->>G: public keys"));
            d.line("    end");
        }
        _ => {}
    }
    if let Some(r) = &p.revocation {
        d.line(&format!(
            "    loop every {}",
            human_secs(r.interval_seconds)
        ));
        if r.source.contains("://") {
            let list = match revocation_host(report, p) {
                Some(_) => format!("R{i}"),
                None => who.clone(),
            };
            d.line(&format!(
                "        G->>{list}: GET {} (revocation list)",
                text(&r.source)
            ));
            d.line(&format!(
                "        {list}-->>G: revoked token ids and subjects"
            ));
        } else {
            d.line(&format!(
                "        G->>G: read the revocation list {}",
                text(&r.source)
            ));
        }
        d.line("    end");
    }
}

/// The seed's call: a token sent, checked, and the request forwarded or refused.
fn bearer_call(d: &mut Diagram, report: &Report, route: &RouteView, bearer: &[&RouteView]) {
    let dpop = route.takes(Credential::Dpop);
    let scheme = if dpop {
        "DPoP access token, DPoP: proof"
    } else {
        "Bearer access token"
    };
    d.line(&format!(
        "    C->>G: {} {} (Authorization: {scheme})",
        example_method(route),
        text(&route.path)
    ));
    let mut shown = Vec::new();
    if let Some(accepted) = route.providers.first()
        && let Some((i, p)) = report
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == accepted.provider)
    {
        verification(d, i, p, accepted.check, "    ");
        shown.push((accepted.provider.as_str(), accepted.check));
    }
    let notes: Vec<String> = bearer.iter().map(|r| requirement(r)).collect();
    d.line(&format!("    Note over G: {}", notes.join("<br/>")));
    let challenge = format!(
        "{} realm=\"{}\"",
        if dpop { "DPoP" } else { "Bearer" },
        text(&report.gateway.realm)
    );
    answers(
        d,
        report,
        route,
        &Answers {
            caller: "C",
            allowed: "valid token with the route's scopes and claims",
            missing: "no token",
            invalid: "invalid, expired or revoked token",
            error: "invalid_token",
            forbidden: "a scope or claim is missing",
            challenge,
        },
    );
    // The other ways tokens are checked, once each.
    for r in bearer {
        for accepted in &r.providers {
            let key = (accepted.provider.as_str(), accepted.check);
            if shown.contains(&key) || accepted.check == Check::Signature {
                continue;
            }
            let Some((i, p)) = report
                .providers
                .iter()
                .enumerate()
                .find(|(_, p)| p.name == accepted.provider)
            else {
                continue;
            };
            shown.push(key);
            d.line(&format!(
                "    opt {} {} with a token from {}",
                r.methods_label(),
                text(&r.path),
                text(&p.name)
            ));
            verification(d, i, p, accepted.check, "        ");
            d.line("    end");
        }
    }
}

/// How the gateway checks one provider's token.
fn verification(d: &mut Diagram, i: usize, p: &ProviderView, check: Check, indent: &str) {
    let who = id(i, p);
    let endpoint = p
        .introspection
        .as_ref()
        .map_or("introspection endpoint", |x| x.endpoint.as_str());
    let cached = p
        .introspection
        .as_ref()
        .map_or(String::new(), |x| human_secs(x.cache_active_max_seconds));
    match check {
        Check::Signature | Check::SignatureOrIntrospection => {
            let audience = match &p.audience_claim {
                Some(claim) => format!("{claim} holds {}", p.audiences.join(" or ")),
                None => "no audience check".to_owned(),
            };
            d.line(&format!(
                "{indent}G->>G: verify the signature locally ({}), iss, {}, exp and nbf within {}",
                p.algorithms.join(", "),
                text(&audience),
                human_secs(p.leeway_seconds)
            ));
            if p.revocation.is_some() {
                d.line(&format!(
                    "{indent}G->>G: the token's jti and sub are not on the revocation list"
                ));
            }
            if check == Check::SignatureOrIntrospection {
                d.line(&format!(
                    "{indent}Note over G,{who}: an opaque token is introspected at {} (answers cached up to {cached})",
                    text(endpoint)
                ));
            }
        }
        Check::Introspection => {
            d.line(&format!(
                "{indent}G->>{who}: POST {} (token)",
                text(endpoint)
            ));
            d.line(&format!(
                "{indent}{who}-->>G: active, scope, exp (answer cached up to {cached})"
            ));
        }
        Check::IntrospectionEveryRequest => {
            d.line(&format!(
                "{indent}G->>{who}: POST {} (token), on every request",
                text(endpoint)
            ));
            d.line(&format!(
                "{indent}{who}-->>G: active, scope, exp (not cached)"
            ));
        }
    }
}

fn key_call(d: &mut Diagram, report: &Report, route: &RouteView, keyed: &[&RouteView]) {
    let header = report.api_keys.as_ref().map_or("", |k| k.header.as_str());
    d.line(&format!(
        "    K->>G: {} {} ({header}: API key)",
        example_method(route),
        text(&route.path)
    ));
    d.line("    G->>G: SHA-256 of the key equals a configured one (constant time)");
    let notes: Vec<String> = keyed.iter().map(|r| requirement(r)).collect();
    d.line(&format!("    Note over G: {}", notes.join("<br/>")));
    let challenge = format!(
        "ApiKey realm=\"{}\", header=\"{}\"",
        text(&report.gateway.realm),
        text(header)
    );
    answers(
        d,
        report,
        route,
        &Answers {
            caller: "K",
            allowed: "known key with the route's scopes",
            missing: "no key",
            invalid: "unknown key",
            error: "invalid_api_key",
            forbidden: "a scope is missing",
            challenge,
        },
    );
}

/// How the gateway answers one kind of credential.
struct Answers {
    caller: &'static str,
    allowed: &'static str,
    missing: &'static str,
    invalid: &'static str,
    /// RFC 6750 `error` of a credential that was sent but is no good.
    error: &'static str,
    forbidden: &'static str,
    /// The `WWW-Authenticate` challenge, without an `error`.
    challenge: String,
}

/// The seed's outcome of a call: forwarded when allowed, else the
/// gateway's own 401 (without, then with an error) or 403.
fn answers(d: &mut Diagram, report: &Report, route: &RouteView, a: &Answers) {
    let (caller, challenge) = (a.caller, &a.challenge);
    d.line(&format!("    alt {}", a.allowed));
    forward(d, report, caller, route);
    d.line(&format!("    else {}", a.missing));
    d.line(&format!(
        "        G-->>{caller}: 401 WWW-Authenticate: {challenge}"
    ));
    d.line(&format!("    else {}", a.invalid));
    d.line(&format!(
        "        G-->>{caller}: 401 WWW-Authenticate: {challenge}, error=\"{}\"",
        a.error
    ));
    d.line(&format!("    else {}", a.forbidden));
    d.line(&format!(
        "        G-->>{caller}: 403 error=\"insufficient_scope\""
    ));
    d.line("    end");
}

fn forward(d: &mut Diagram, report: &Report, caller: &str, route: &RouteView) {
    let u = upstreams(report)
        .iter()
        .position(|(name, _)| *name == route.upstream)
        .unwrap_or(0);
    let mut extra: Vec<String> = route
        .to_upstream
        .claim_headers
        .iter()
        .map(|h| format!("{} from {}", h.header, h.claim))
        .collect();
    if !route.to_upstream.credential {
        extra.push("credential stripped".to_owned());
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

/// What a protected route asks for, for the note over the gateway.
fn requirement(r: &RouteView) -> String {
    let mut needs = Vec::new();
    if !r.scopes.is_empty() {
        needs.push(format!("scope {}", r.scopes.join(" ")));
    }
    for c in &r.claims {
        needs.push(format!("{} = {}", c.claim, c.equals));
    }
    if r.takes(Credential::Dpop) {
        needs.push("a DPoP proof".to_owned());
    }
    if r.takes(Credential::Mtls) {
        needs.push("a client certificate".to_owned());
    }
    let needs = if needs.is_empty() {
        "a valid credential".to_owned()
    } else {
        needs.join(" and ")
    };
    let taken = taken_first(r).map_or(String::new(), |t| format!(" (taken first: {t})"));
    text(&format!(
        "{} {} needs {needs}{taken}",
        r.methods_label(),
        r.path
    ))
}

/// The seed's last step for the built-in service: refresh where clients
/// have refresh tokens, a new token request where they do not.
fn builtin_refresh(d: &mut Diagram, report: &Report) {
    let Some(auth) = &report.auth_service else {
        return;
    };
    let (refreshing, not): (Vec<_>, Vec<_>) = auth
        .clients
        .iter()
        .partition(|c| c.refresh_token_ttl_seconds.is_some());
    // Does the gateway learn of revocations, and how soon?
    let gateway_learns = report
        .providers
        .iter()
        .filter(|p| p.keys == KeysFrom::AuthService)
        .find_map(|p| p.revocation.as_ref())
        .map(|r| {
            format!(
                ", and at the gateway within {}",
                human_secs(r.interval_seconds)
            )
        })
        .unwrap_or_default();
    if let Some(shortest) = refreshing.iter().map(|c| c.access_token_ttl_seconds).min() {
        let ids: Vec<&str> = refreshing.iter().map(|c| c.client_id.as_str()).collect();
        d.line(&format!(
            "    Note over C,S: {}: the access token expires ({} at the shortest)",
            text(&ids.join(", ")),
            human_secs(shortest)
        ));
        d.line(&format!(
            "    C->>S: POST {} (refresh token, client_id and secret)",
            text(&auth.refresh_endpoint)
        ));
        d.line(&format!(
            "    S-->>C: new access token + new refresh token (the old one is spent: reusing it revokes its family at the auth service{gateway_learns})"
        ));
    }
    if !not.is_empty() {
        let ids: Vec<&str> = not.iter().map(|c| c.client_id.as_str()).collect();
        d.line(&format!(
            "    Note over C,S: {}: no refresh tokens, so when the access token expires",
            text(&ids.join(", "))
        ));
        d.line(&format!(
            "    C->>S: POST {} again (client_id and secret)",
            text(&auth.token_endpoint)
        ));
        d.line("    S-->>C: new access token");
    }
}

fn example_method(route: &RouteView) -> &str {
    route.methods.first().map_or("GET", String::as_str)
}
