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

/// Why a report could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
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

/// The gateway's listener and what it does with unmatched requests.
#[derive(Debug, Serialize)]
pub struct GatewayView {
    /// `None`: the config runs only the auth service.
    pub listen: Option<String>,
    pub tls: ListenerTls,
    pub admin: Option<String>,
    pub realm: String,
    pub unmatched: Unmatched,
    /// Verified-token cache capacity; 0: every signature is checked.
    pub token_cache_entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTls {
    None,
    /// TLS without client certificates.
    Server,
    OptionalClientCerts,
    RequiredClientCerts,
}

/// What happens to a request no route with a narrower pattern takes: the
/// `/**` routes, in order, until one takes every method; what is left is
/// refused with 404 (default deny).
#[derive(Debug, Serialize)]
pub struct Unmatched {
    pub catch_all: Vec<CatchAll>,
    /// Some methods reach no `/**` route: they get 404.
    pub rest_refused: bool,
}

/// A `/**` route and the methods it takes of what no other route does.
#[derive(Debug, Serialize)]
pub struct CatchAll {
    pub route: String,
    /// Empty: every method.
    pub methods: Vec<String>,
    /// Forwarded without a credential.
    pub public: bool,
}

/// One kind of credential a route takes, or requires on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// Public: nothing is asked for.
    None,
    Bearer,
    ApiKey,
    /// Tokens must be DPoP-bound, with a proof.
    Dpop,
    /// A verified client certificate is required.
    Mtls,
}

/// How a route judges one accepted provider's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// JWTs by signature against the provider's keys, locally.
    Signature,
    /// JWTs by signature; opaque tokens by introspection (answers cached).
    SignatureOrIntrospection,
    /// Every token by introspection (answers cached): a provider without keys.
    Introspection,
    /// `verify: remote`: the endpoint is asked on every request, no cache.
    IntrospectionEveryRequest,
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
    /// Credentials it takes (`none`, `bearer`, `api_key`), then what it
    /// requires on top (`dpop`, `mtls`).
    pub auth: Vec<Credential>,
    /// Providers whose tokens it accepts, and how each is checked.
    pub providers: Vec<Accepted>,
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimRule>,
    pub to_upstream: ToUpstream,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// Earlier routes that take some of its requests first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preceded_by: Vec<Preceding>,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub provider: String,
    pub check: Check,
}

/// An earlier route matching some of the same requests.
#[derive(Debug, Serialize)]
pub struct Preceding {
    /// Its index in `routes`.
    pub route: usize,
    /// The methods both take (empty: every method).
    pub methods: Vec<String>,
    /// It takes every path of this route, not only some.
    pub whole: bool,
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
    /// Whatever credential the client sent (`Authorization`, API key, DPoP
    /// proof, token cookie): passed on unless `strip_authorization`.
    pub credential: bool,
    /// `X-Forwarded-Client-Cert` with the verified client certificate.
    pub client_cert: bool,
}

#[derive(Debug, Serialize)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeysFrom {
    JwksUri,
    /// The issuer's discovery document names the key set.
    Discovery,
    /// The built-in auth service in this process.
    AuthService,
    /// No keys: every token is introspected.
    None,
}

#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub at: String,
    pub name: String,
    pub issuer: String,
    pub keys: KeysFrom,
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

// === impl Report ===

impl Report {
    /// Describe `config`; `source` is the file's text as written (for the
    /// inline-secret check), `file` its name.
    pub fn new(config: &Config, source: &str, file: &str) -> Self {
        let listener_certs = listener_tls(config) == ListenerTls::RequiredClientCerts;
        let routes: Vec<&Route> = config.routes.iter().collect();
        let mut report = Self {
            file: file.to_owned(),
            gateway: gateway_view(config),
            routes: routes
                .iter()
                .map(|r| route_view(r, &routes, config, listener_certs))
                .collect(),
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
                        scopes: strings(&k.principal.scopes),
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
    pub fn render(&self, format: Format) -> Result<String, ExplainError> {
        Ok(match format {
            Format::Text => text::plain(self),
            Format::Markdown => text::markdown(self),
            Format::Json => serde_json::to_string_pretty(self)? + "\n",
            Format::Mermaid => mermaid::sequence(self),
            Format::Openapi => openapi::document(self)?,
        })
    }

    /// The provider called `name`.
    fn provider(&self, name: &str) -> Option<&ProviderView> {
        self.providers.iter().find(|p| p.name == name)
    }
}

impl RouteView {
    fn takes(&self, credential: Credential) -> bool {
        self.auth.contains(&credential)
    }

    /// `GET,HEAD`, or `any`.
    fn methods_label(&self) -> String {
        methods_label(&self.methods)
    }
}

fn methods_label(methods: &[String]) -> String {
    if methods.is_empty() {
        "any".to_owned()
    } else {
        methods.join(",")
    }
}

fn strings(items: &[Box<str>]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn listener_tls(config: &Config) -> ListenerTls {
    match config.tls.as_ref().map(|t| t.settings()) {
        None => ListenerTls::None,
        Some(s) if s.client_ca_file.is_none() => ListenerTls::Server,
        Some(s) => match s.client_certs {
            ClientCerts::Optional => ListenerTls::OptionalClientCerts,
            ClientCerts::Required => ListenerTls::RequiredClientCerts,
        },
    }
}

fn gateway_view(config: &Config) -> GatewayView {
    let catch_all = catch_alls(config)
        .map(|route| CatchAll {
            route: format!("routes[{}]", route.index),
            methods: method_names(route),
            public: matches!(route.access, Access::Public),
        })
        .collect::<Vec<_>>();
    let unmatched = Unmatched {
        rest_refused: catch_all.iter().all(|c| !c.methods.is_empty()),
        catch_all,
    };
    GatewayView {
        listen: config.listen.map(|a| a.to_string()),
        tls: listener_tls(config),
        admin: config.admin.map(|a| a.to_string()),
        realm: config.realm.to_string(),
        unmatched,
        token_cache_entries: config.token_cache_entries,
    }
}

/// The `/**` routes that take what narrower routes do not, in order, up
/// to the first that takes every method (later ones can never match).
fn catch_alls(config: &Config) -> impl Iterator<Item = &Route> {
    let mut done = false;
    config
        .routes
        .iter()
        .filter(|r| r.pattern.matches_every_path())
        .take_while(move |r| {
            let take = !done;
            done = done || r.methods.is_none();
            take
        })
}

fn method_names(route: &Route) -> Vec<String> {
    route
        .methods
        .iter()
        .flatten()
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// The methods two routes both take, and whether they share any.
fn common_methods(a: &Route, b: &Route) -> Option<Vec<String>> {
    match (&a.methods, &b.methods) {
        (None, None) => Some(Vec::new()),
        (None, Some(_)) => Some(method_names(b)),
        (Some(_), None) => Some(method_names(a)),
        (Some(x), Some(y)) => {
            let both: Vec<String> = x
                .iter()
                .filter(|m| y.contains(m))
                .map(|m| m.as_str().to_owned())
                .collect();
            (!both.is_empty()).then_some(both)
        }
    }
}

fn route_view(route: &Route, all: &[&Route], config: &Config, listener_certs: bool) -> RouteView {
    let mut auth = Vec::new();
    let mut providers = Vec::new();
    let mut scopes = Vec::new();
    let mut claims = Vec::new();
    match &route.access {
        Access::Public => auth.push(Credential::None),
        Access::Protected(p) => {
            if p.bearer {
                auth.push(Credential::Bearer);
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
                    .map(|(_, provider)| Accepted {
                        provider: provider.name.to_string(),
                        check: check(provider, p.requirement.remote),
                    })
                    .collect();
            }
            if p.api_key {
                auth.push(Credential::ApiKey);
            }
            if p.dpop_required {
                auth.push(Credential::Dpop);
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
    // A listener that requires certificates requires them on every route.
    if route.client_cert_required || listener_certs {
        auth.push(Credential::Mtls);
    }
    let preceded_by = all[..route.index.min(all.len())]
        .iter()
        .filter(|earlier| earlier.pattern.overlaps(&route.pattern))
        .filter_map(|earlier| {
            let methods = common_methods(earlier, route)?;
            Some(Preceding {
                route: earlier.index,
                whole: earlier.pattern.covers(&route.pattern),
                methods,
            })
        })
        .collect();
    RouteView {
        at: format!("routes[{}]", route.index),
        methods: method_names(route),
        path: route.pattern.as_str().to_owned(),
        upstream: route.upstream.name.to_string(),
        targets: route.upstream.target_urls().collect(),
        auth,
        providers,
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
            credential: !route.strip_authorization,
            client_cert: route.forward_client_cert,
        },
        rate_limit: route.rate_limit.as_ref().map(|l| {
            let (requests, per) = l.rate();
            format!("{requests} per {} per caller", human(per))
        }),
        preceded_by,
    }
}

/// How a route with `remote` (or not) judges `provider`'s tokens: the
/// order `Authenticator` follows.
fn check(provider: &ProviderConfig, remote: bool) -> Check {
    match (remote, &provider.keys, provider.introspection.is_some()) {
        (true, _, _) => Check::IntrospectionEveryRequest,
        (false, KeySource::None, _) => Check::Introspection,
        (false, _, true) => Check::SignatureOrIntrospection,
        (false, _, false) => Check::Signature,
    }
}

fn provider_view(index: usize, p: &ProviderConfig) -> ProviderView {
    let (keys, keys_url) = match &p.keys {
        KeySource::JwksUri(uri) => (KeysFrom::JwksUri, Some(uri.to_string())),
        KeySource::Discovery(uri) => (KeysFrom::Discovery, Some(uri.to_string())),
        KeySource::AuthService => (KeysFrom::AuthService, None),
        KeySource::None => (KeysFrom::None, None),
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
            source: r
                .url
                .as_ref()
                .map(|u| u.to_string())
                .or_else(|| r.file.as_ref().map(|f| f.display().to_string()))
                .unwrap_or_default(),
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
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(size) {
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
        .is_ok_and(|a| a.ip().is_loopback())
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

/// The `host[:port]` of a URL, or the text itself.
fn host_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| url.to_owned())
}
