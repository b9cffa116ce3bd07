//! `portcullis explain`: the effective policy of a config, for a security
//! review (text, markdown, JSON with findings), for onboarding API
//! consumers (the seed's sequence diagram, adapted to this deployment, in
//! Mermaid) and for the API's own documentation (OpenAPI security schemes).
//!
//! Everything is read from the compiled `Config`, so it says what the
//! gateway will do with the file, defaults included; only the check for
//! secrets written inline looks at the text as written.

mod findings;
mod mermaid;
mod openapi;
mod text;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::authn::provider::{AudienceCheck, KeySource, ProviderConfig};
use crate::config::Config;
use crate::routes::{Access, Route};
use crate::tls::server::ClientCerts;

pub use findings::{Finding, Severity};

/// What `explain --format` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
    Mermaid,
    Openapi,
}

/// The policy of one config, in the order an auditor reads it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The config file, as named on the command line.
    pub file: String,
    pub gateway: GatewayView,
    /// In match order: the first route that matches a request takes it.
    pub routes: Vec<RouteView>,
    pub providers: Vec<ProviderView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_service: Option<AuthServiceView>,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub listen: Option<String>,
    /// `none`, or `server` / `optional client certificates` / `required client certificates`.
    pub tls: &'static str,
    pub admin: Option<String>,
    pub realm: String,
    /// What happens to a request no route matches.
    pub unmatched: String,
    /// Verified-token cache capacity; 0: every signature is checked.
    pub token_cache_entries: u64,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Where it is in the config: `routes[2]`.
    pub at: String,
    /// Empty: every method.
    pub methods: Vec<String>,
    pub path: String,
    pub upstream: String,
    pub targets: Vec<String>,
    /// Credentials it takes: `none`, `bearer`, `api_key`; `mtls` and `dpop`
    /// when those are required on top.
    pub auth: Vec<&'static str>,
    /// Providers whose tokens it accepts (bearer routes).
    pub providers: Vec<String>,
    /// `local` (signatures) or `remote` (introspection on every request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<&'static str>,
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimRule>,
    pub to_upstream: ToUpstream,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClaimRule {
    pub claim: String,
    /// The claim must equal this, or be an array holding it.
    pub equals: String,
}

/// What the upstream receives besides the request itself.
#[derive(Debug, Serialize)]
pub struct ToUpstream {
    pub claim_headers: Vec<ClaimHeader>,
    /// The client's credential (`Authorization`, API key, DPoP proof, token cookie).
    pub credential: bool,
    /// `X-Forwarded-Client-Cert` with the verified client certificate.
    pub client_cert: bool,
}

#[derive(Debug, Serialize)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub at: String,
    pub name: String,
    pub issuer: String,
    /// `jwks_uri`, `discovery`, `auth_service` or `none` (introspection only).
    pub keys: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_url: Option<String>,
    pub algorithms: Vec<String>,
    pub leeway_seconds: u64,
    /// Empty when the audience is not checked.
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience_claim: Option<String>,
    pub scope_claims: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_typ: Option<String>,
    pub jwks_refresh_seconds: u64,
    pub unknown_kid_cooldown_seconds: u64,
    pub max_staleness_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RevocationView {
    /// The URL or file the list is read from.
    pub source: String,
    pub interval_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct IntrospectionView {
    pub endpoint: String,
    pub client_id: String,
    pub timeout_seconds: u64,
    pub cache_active_max_seconds: u64,
    pub cache_inactive_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct ApiKeysView {
    pub header: String,
    pub keys: Vec<ApiKeyView>,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct AuthServiceView {
    pub listen: String,
    pub issuer: String,
    pub token_endpoint: String,
    pub refresh_endpoint: String,
    pub signing_algorithm: &'static str,
    pub clients: Vec<ClientView>,
}

#[derive(Debug, Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub access_token_ttl_seconds: u64,
    /// `None`: no refresh tokens; they are rotated on every use otherwise.
    pub refresh_token_ttl_seconds: Option<u64>,
    pub introspect: bool,
}

impl Report {
    /// Describe `config`; `source` is the file's text as written (for the
    /// inline-secret check), `file` its name.
    pub fn new(config: &Config, source: &str, file: &str) -> Self {
        let routes: Vec<RouteView> = config
            .routes
            .iter()
            .map(|r| route_view(r, config))
            .collect();
        let mut report = Self {
            file: file.to_owned(),
            gateway: gateway_view(config),
            routes,
            providers: config
                .providers
                .iter()
                .enumerate()
                .map(|(i, p)| provider_view(i, p))
                .collect(),
            api_keys: config.api_keys.as_ref().map(|keys| ApiKeysView {
                header: keys.header.as_str().to_owned(),
                keys: keys
                    .keys()
                    .iter()
                    .map(|k| ApiKeyView {
                        name: k.principal.subject.as_deref().unwrap_or("").to_owned(),
                        scopes: k.principal.scopes.iter().map(|s| s.to_string()).collect(),
                    })
                    .collect(),
            }),
            auth_service: config.auth_service.as_ref().map(|a| {
                let issuer = a.issuer.trim_end_matches('/');
                AuthServiceView {
                    listen: a.listen.to_string(),
                    issuer: a.issuer.to_string(),
                    token_endpoint: format!("{issuer}/token"),
                    refresh_endpoint: format!("{issuer}/token/refresh"),
                    signing_algorithm: a.algorithm.as_str(),
                    clients: a
                        .clients
                        .iter()
                        .map(|c| ClientView {
                            client_id: c.id.to_string(),
                            scopes: strings(&c.scopes),
                            audiences: strings(&c.audiences),
                            access_token_ttl_seconds: c.access_ttl.as_secs(),
                            refresh_token_ttl_seconds: c.refresh_ttl.map(|d| d.as_secs()),
                            introspect: c.introspect,
                        })
                        .collect(),
                }
            }),
            findings: Vec::new(),
        };
        report.findings = findings::review(config, &report, source);
        report
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => text::plain(self),
            Format::Markdown => text::markdown(self),
            Format::Json => {
                let mut out = serde_json::to_string_pretty(self).unwrap_or_default();
                out.push('\n');
                out
            }
            Format::Mermaid => mermaid::sequence(self),
            Format::Openapi => openapi::document(self),
        }
    }
}

fn strings(items: &[Box<str>]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn gateway_view(config: &Config) -> GatewayView {
    let tls = match config.tls.as_ref().map(|t| t.settings()) {
        None => "none",
        Some(s) if s.client_ca_file.is_none() => "server",
        Some(s) => match s.client_certs {
            ClientCerts::Optional => "optional client certificates",
            ClientCerts::Required => "required client certificates",
        },
    };
    let unmatched = match findings::public_catch_all(config) {
        Some(route) => format!(
            "forwarded without a credential by routes[{}] ({})",
            route.index,
            route.pattern.as_str()
        ),
        None => "refused with 404, never forwarded".to_owned(),
    };
    GatewayView {
        listen: config.listen.map(|a| a.to_string()),
        tls,
        admin: config.admin.map(|a| a.to_string()),
        realm: config.realm.to_string(),
        unmatched,
        token_cache_entries: config.token_cache_entries,
    }
}

fn route_view(route: &Route, config: &Config) -> RouteView {
    let mut auth = Vec::new();
    let mut providers = Vec::new();
    let mut verify = None;
    let mut scopes = Vec::new();
    let mut claims = Vec::new();
    match &route.access {
        Access::Public => auth.push("none"),
        Access::Protected(p) => {
            if p.bearer {
                auth.push("bearer");
                let accepted = |i: usize| {
                    p.requirement
                        .providers
                        .as_ref()
                        .is_none_or(|l| l.contains(&i))
                };
                providers = config
                    .providers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| accepted(*i))
                    .map(|(_, p)| p.name.to_string())
                    .collect();
                verify = Some(if p.requirement.remote {
                    "remote"
                } else {
                    "local"
                });
            }
            if p.api_key {
                auth.push("api_key");
            }
            if p.dpop_required {
                auth.push("dpop");
            }
            scopes = strings(&p.requirement.scopes);
            claims = p
                .requirement
                .claims
                .iter()
                .map(|(claim, value)| ClaimRule {
                    claim: claim.as_str().to_owned(),
                    equals: value.to_string(),
                })
                .collect();
        }
    }
    if route.client_cert_required {
        auth.push("mtls");
    }
    let protected = matches!(route.access, Access::Protected(_));
    RouteView {
        at: format!("routes[{}]", route.index),
        methods: route
            .methods
            .iter()
            .flatten()
            .map(|m| m.as_str().to_owned())
            .collect(),
        path: route.pattern.as_str().to_owned(),
        upstream: route.upstream.name.to_string(),
        targets: route.upstream.target_urls().collect(),
        auth,
        providers,
        verify,
        scopes,
        claims,
        to_upstream: ToUpstream {
            claim_headers: route
                .forward_claims
                .iter()
                .map(|(claim, header)| ClaimHeader {
                    claim: claim.as_str().to_owned(),
                    header: header.as_str().to_owned(),
                })
                .collect(),
            credential: protected && !route.strip_authorization,
            client_cert: route.forward_client_cert,
        },
        rate_limit: route.rate_limit.as_ref().map(|l| {
            let (requests, per) = l.rate();
            format!("{requests} per {} per caller", human(per))
        }),
    }
}

fn provider_view(index: usize, p: &ProviderConfig) -> ProviderView {
    let (keys, keys_url) = match &p.keys {
        KeySource::JwksUri(uri) => ("jwks_uri", Some(uri.to_string())),
        KeySource::Discovery(uri) => ("discovery", Some(uri.to_string())),
        KeySource::AuthService => ("auth_service", None),
        KeySource::None => ("none", None),
    };
    let (audiences, audience_claim) = match &p.audience {
        AudienceCheck::OneOf { claim, allowed } => {
            (strings(allowed), Some(claim.as_str().to_owned()))
        }
        AudienceCheck::Skip => (Vec::new(), None),
    };
    ProviderView {
        at: format!("providers[{index}]"),
        name: p.name.to_string(),
        issuer: p.issuer.to_string(),
        keys,
        keys_url,
        algorithms: p.algorithms.iter().map(|a| format!("{a:?}")).collect(),
        leeway_seconds: p.leeway,
        audiences,
        audience_claim,
        scope_claims: p
            .scope_claims
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        require_typ: p.require_typ.as_ref().map(|t| t.to_string()),
        jwks_refresh_seconds: p.jwks.refresh_interval.as_secs(),
        unknown_kid_cooldown_seconds: p.jwks.unknown_kid_cooldown.as_secs(),
        max_staleness_seconds: p.jwks.max_staleness.as_secs(),
        revocation: p.revocation.as_ref().map(|r| RevocationView {
            source: match (&r.url, &r.file) {
                (Some(url), _) => url.to_string(),
                (None, Some(file)) => file.display().to_string(),
                (None, None) => String::new(),
            },
            interval_seconds: r.interval.as_secs(),
        }),
        introspection: p.introspection.as_ref().map(|i| IntrospectionView {
            endpoint: i.endpoint.to_string(),
            client_id: i.client_id.to_string(),
            timeout_seconds: i.timeout.as_secs(),
            cache_active_max_seconds: i.cache_active_max.as_secs(),
            cache_inactive_seconds: i.cache_inactive.as_secs(),
        }),
        cookie: p.cookie.as_ref().map(|c| c.to_string()),
    }
}

/// `90s`, `5m`, `24h`, `7d`: the largest unit that divides the duration.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `human` for a count of seconds.
fn human_secs(secs: u64) -> String {
    human(Duration::from_secs(secs))
}

/// Is the address only reachable from this machine?
fn is_loopback_addr(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false)
}

/// Is the host of `scheme://host[:port]` this machine?
fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
