//! File types → runtime types, with every cross-field check. Errors are
//! collected as (key path, message) so the user sees all of them at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;

use super::Config;
use super::duration::Seconds;
use super::file::{self, Auth};
use crate::authn::api_key::{ApiKey, ApiKeys, parse_digest};
use crate::authn::introspect::IntrospectionConfig;
use crate::authn::jwks::is_trusted_transport;
use crate::authn::provider::{AudienceCheck, JwksTiming, KeySource, ProviderConfig};
use crate::authn::revocation::RevocationSource;
use crate::authz::Requirement;
use crate::claims::ClaimPath;
use crate::cors::Cors;
use crate::dpop::DpopSettings;
use crate::forward::{Upstream, UpstreamSettings};
use crate::rate_limit::RateLimiter;
use crate::routes::{Access, PathPattern, Protected, Route, RouteTable};
use crate::server::ServerSettings;
use crate::tls::server::{ClientCerts, ServerTls, TlsSettings};
use crate::tls::upstream::UpstreamTls;

type Errors = Vec<(String, String)>;

/// Leeway beyond this is a misconfiguration, not clock skew.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Headers a claim may not be forwarded under: the gateway's own, and any
/// that clients legitimately send (identity headers are removed from every
/// incoming request, so naming `Cookie` would strip cookies everywhere).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "set-cookie",
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "expect",
    "range",
    "origin",
    "referer",
    "user-agent",
    "cache-control",
    "pragma",
    "via",
    "date",
    "dpop",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];
const RESERVED_PREFIXES: &[&str] = &[
    "content-",
    "accept",
    "if-",
    "proxy-",
    "x-forwarded-",
    "sec-",
];

fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

pub fn compile(file: file::File) -> Result<Config, Errors> {
    let mut errors = Errors::new();
    let listen = file.listen.as_deref().and_then(|text| {
        text.parse::<SocketAddr>()
            .map_err(|e| {
                errors.push((
                    "listen".into(),
                    format!("`{text}` is not an address:port ({e})"),
                ))
            })
            .ok()
    });
    let auth_service = file
        .auth_service
        .as_ref()
        .and_then(|a| super::auth_service::compile(a, &mut errors));
    if file.listen.is_none() && !file.routes.is_empty() {
        errors.push((
            "routes".into(),
            "routes need the gateway's `listen` address".into(),
        ));
    }
    if file.listen.is_none() && file.auth_service.is_none() {
        errors.push((
            String::new(),
            "nothing to serve: give `listen` (the gateway) and/or `auth_service`".into(),
        ));
    }
    let realm = file.realm.unwrap_or_else(|| "portcullis".into());
    if realm.is_empty()
        || realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        errors.push((
            "realm".into(),
            "must be non-empty, without quotes, backslashes or control characters".into(),
        ));
    }
    // A provider for the built-in service needs its issuer; when the
    // service's own section has errors, those are reported there instead.
    let auth_issuer = match (&file.auth_service, &auth_service) {
        (None, _) => AuthIssuer::Absent,
        (Some(_), None) => AuthIssuer::Invalid,
        (Some(_), Some(a)) => AuthIssuer::Known(&a.issuer),
    };
    let tls = file.tls.as_ref().and_then(|t| compile_tls(t, &mut errors));
    if file.tls.is_some() && file.listen.is_none() {
        errors.push((
            "tls".into(),
            "TLS is for the gateway's listener: give `listen`".into(),
        ));
    }
    // As written: a TLS section in error is reported on its own keys, not
    // again on every route that uses client certificates.
    let client_ca = file
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some());
    let dpop = compile_dpop(file.dpop.as_ref(), &mut errors);

    let public_scheme = if file.tls.is_some() { "https" } else { "http" };
    let server = compile_server(&file.server, &mut errors);
    let admin = file.admin.as_ref().and_then(|a| {
        a.listen
            .parse::<SocketAddr>()
            .map_err(|e| {
                errors.push((
                    "admin.listen".into(),
                    format!("`{}` is not an address:port ({e})", a.listen),
                ))
            })
            .ok()
    });
    if file.admin.is_some() && file.listen.is_none() {
        errors.push((
            "admin".into(),
            "the admin endpoints report on the gateway: give `listen`".into(),
        ));
    }
    let providers = compile_providers(&file.providers, auth_issuer, &mut errors);
    let upstreams = compile_upstreams(&file.upstreams, &mut errors);
    let upstream_names: BTreeSet<&str> = file.upstreams.keys().map(String::as_str).collect();
    let provider_names: HashMap<&str, usize> = file
        .providers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let introspecting: BTreeSet<usize> = file
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.introspection.is_some())
        .map(|(i, _)| i)
        .collect();
    let mut routes = Vec::new();
    for (index, route) in file.routes.iter().enumerate() {
        let at = format!("routes[{index}]");
        let names = Names {
            upstreams: &upstreams,
            upstream_names: &upstream_names,
            providers: &provider_names,
            introspecting: &introspecting,
            api_keys: file.api_keys.is_some(),
            client_ca,
        };
        if let Some(compiled) = compile_route(index, route, &at, &names, &mut errors) {
            routes.push(compiled);
        }
    }
    for (later_index, later) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..later_index].iter().find(|r| r.shadows(later)) {
            errors.push((
                format!("routes[{}]", later.index),
                format!(
                    "can never match: routes[{}] (`{}`) comes first and takes every request this route matches; reorder them or narrow the earlier one",
                    earlier.index,
                    earlier.pattern.as_str()
                ),
            ));
        }
    }
    let bearer = routes
        .iter()
        .any(|r| matches!(&r.access, Access::Protected(p) if p.bearer));
    if bearer && file.providers.is_empty() {
        errors.push((
            "providers".into(),
            "routes require a bearer token but no provider is configured".into(),
        ));
    }
    let api_keys = file
        .api_keys
        .as_ref()
        .and_then(|k| compile_api_keys(k, &mut errors));
    let mut identity_headers: Vec<HeaderName> = routes
        .iter()
        .flat_map(|r| r.forward_claims.iter().map(|(_, h)| h.clone()))
        .collect();
    identity_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        listen,
        realm: realm.into(),
        providers,
        routes: RouteTable::new(routes),
        identity_headers: identity_headers.into(),
        token_cache_entries: file.token_cache.max_entries,
        // The auth service judges token requests' proofs by the same rules.
        auth_service: auth_service.map(|mut a| {
            a.dpop = dpop.clone();
            a
        }),
        api_keys,
        tls: tls.map(Arc::new),
        dpop,
        public_scheme,
        server,
        admin,
    })
}

/// `server:` → the listener's limits, defaults for what is not given.
fn compile_server(section: &file::Server, errors: &mut Errors) -> ServerSettings {
    let mut settings = ServerSettings::default();
    let mut positive = |key: &str, value: Option<Seconds>, slot: &mut Duration| {
        if let Some(value) = value {
            if value.0.is_zero() {
                errors.push((format!("server.{key}"), "must be more than 0".into()));
            }
            *slot = value.0;
        }
    };
    positive(
        "header_read_timeout",
        section.header_read_timeout,
        &mut settings.header_read_timeout,
    );
    positive(
        "idle_timeout",
        section.idle_timeout,
        &mut settings.idle_timeout,
    );
    positive(
        "drain_timeout",
        section.drain_timeout,
        &mut settings.drain_timeout,
    );
    if let Some(size) = section.max_header_bytes {
        // hyper's smallest read buffer; HTTP/2 header lists are u32.
        if !(8 << 10..=1 << 20).contains(&size.0) {
            errors.push((
                "server.max_header_bytes".into(),
                "must be between 8KiB and 1MiB".into(),
            ));
        }
        settings.max_header_bytes = usize::try_from(size.0).unwrap_or(usize::MAX);
    }
    if let Some(n) = section.max_headers {
        if n == 0 {
            errors.push(("server.max_headers".into(), "must be more than 0".into()));
        }
        settings.max_headers = n;
    }
    if let Some(n) = section.max_connections {
        if n == 0 {
            errors.push((
                "server.max_connections".into(),
                "must be more than 0".into(),
            ));
        }
        settings.max_connections = n;
    }
    settings
}

/// `tls:` → the listener's TLS, with its files read and checked now.
fn compile_tls(section: &file::Tls, errors: &mut Errors) -> Option<ServerTls> {
    let client_certs = match (section.client_certs, &section.client_ca_file) {
        (Some(file::ClientCerts::Required), Some(_)) => ClientCerts::Required,
        (Some(_), None) => {
            errors.push((
                "tls.client_certs".into(),
                "needs `client_ca_file`, the CA bundle client certificates must chain to".into(),
            ));
            return None;
        }
        _ => ClientCerts::Optional,
    };
    let reload_interval = section
        .reload_interval
        .map_or(Duration::from_secs(10), |d| d.0);
    if reload_interval < Duration::from_secs(1) {
        errors.push(("tls.reload_interval".into(), "must be at least 1s".into()));
        return None;
    }
    let files = [
        ("tls.cert_file", Some(&section.cert_file)),
        ("tls.key_file", Some(&section.key_file)),
        ("tls.client_ca_file", section.client_ca_file.as_ref()),
        ("tls.client_crl_file", section.client_crl_file.as_ref()),
    ];
    if section.client_crl_file.is_some() && section.client_ca_file.is_none() {
        errors.push((
            "tls.client_crl_file".into(),
            "revocation lists need `client_ca_file`".into(),
        ));
        return None;
    }
    if !readable(&files, errors) {
        return None;
    }
    let settings = TlsSettings {
        cert_file: section.cert_file.clone().into(),
        key_file: section.key_file.clone().into(),
        client_ca_file: section.client_ca_file.clone().map(Into::into),
        client_crl_file: section.client_crl_file.clone().map(Into::into),
        client_certs,
        reload_interval,
    };
    ServerTls::load(settings)
        .map_err(|e| errors.push(("tls".into(), e)))
        .ok()
}

/// Report every named file that cannot be read under its own key; true when
/// all can.
fn readable(files: &[(&str, Option<&String>)], errors: &mut Errors) -> bool {
    let mut ok = true;
    for (key, path) in files {
        if let Some(path) = path
            && let Err(e) = std::fs::File::open(path)
        {
            errors.push(((*key).into(), format!("cannot read `{path}`: {e}")));
            ok = false;
        }
    }
    ok
}

/// `dpop:` → proof rules; defaults when the section is absent.
fn compile_dpop(section: Option<&file::Dpop>, errors: &mut Errors) -> DpopSettings {
    let mut settings = DpopSettings::default();
    let Some(section) = section else {
        return settings;
    };
    if let Some(algorithms) = &section.algorithms {
        settings.algorithms = compile_algorithms(algorithms, "dpop.algorithms", errors);
    }
    // Proof times are whole seconds (`iat`).
    let whole = |d: Duration| d.subsec_nanos() == 0;
    if let Some(max_age) = section.max_age {
        if max_age.0 < Duration::from_secs(1)
            || max_age.0 > Duration::from_secs(600)
            || !whole(max_age.0)
        {
            errors.push((
                "dpop.max_age".into(),
                "must be whole seconds between 1s and 10m: a proof is made for one request".into(),
            ));
        }
        settings.max_age = max_age.0;
    }
    if let Some(leeway) = section.leeway {
        if leeway.0 > MAX_LEEWAY || !whole(leeway.0) {
            errors.push((
                "dpop.leeway".into(),
                format!("whole seconds, at most {}s", MAX_LEEWAY.as_secs()),
            ));
        }
        settings.leeway = leeway.0;
    }
    settings.origins = section
        .origins
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            crate::dpop::Origin::parse(text)
                .map_err(|e| errors.push((format!("dpop.origins[{i}]"), e)))
                .ok()
        })
        .collect();
    if let Some(entries) = section.replay_cache_entries {
        if entries == 0 {
            errors.push((
                "dpop.replay_cache_entries".into(),
                "must be more than 0: without it a proof could be replayed".into(),
            ));
        }
        settings.replay_cache_entries = entries;
    }
    settings
}

/// The built-in auth service's issuer, as providers see it.
#[derive(Clone, Copy)]
enum AuthIssuer<'a> {
    Absent,
    /// Declared but in error (reported on its own keys).
    Invalid,
    Known(&'a str),
}

fn compile_providers(
    providers: &[file::Provider],
    auth_issuer: AuthIssuer<'_>,
    errors: &mut Errors,
) -> Vec<ProviderConfig> {
    let mut names = HashMap::new();
    let mut issuers = HashMap::new();
    let mut cookies = HashMap::new();
    let mut out = Vec::new();
    for (index, p) in providers.iter().enumerate() {
        let at = format!("providers[{index}]");
        if let Some(first) = names.insert(p.name.as_str(), index) {
            errors.push((
                format!("{at}.name"),
                format!("`{}` is already the name of providers[{first}]", p.name),
            ));
        }
        let Some(issuer) = provider_issuer(p, auth_issuer, &at, errors) else {
            continue;
        };
        if let Some(first) = issuers.insert(issuer.to_owned(), index) {
            errors.push((
                format!("{at}.issuer"),
                format!("providers[{first}] has the same issuer; the token's `iss` must pick exactly one provider"),
            ));
        }
        if let Some(cookie) = &p.cookie
            && let Some(first) = cookies.insert(cookie.as_str(), index)
        {
            errors.push((
                format!("{at}.cookie"),
                format!("providers[{first}] reads the same cookie"),
            ));
        }
        if let Some(provider) = compile_provider(p, issuer, &at, errors) {
            out.push(provider);
        }
    }
    out
}

/// The provider's issuer: its own, or the built-in auth service's.
fn provider_issuer<'a>(
    p: &'a file::Provider,
    auth_issuer: AuthIssuer<'a>,
    at: &str,
    errors: &mut Errors,
) -> Option<&'a str> {
    if !p.auth_service {
        if p.issuer.is_none() {
            errors.push((
                at.into(),
                "needs `issuer` (or `auth_service: true` for the built-in auth service)".into(),
            ));
        }
        return p.issuer.as_deref();
    }
    let auth_issuer = match auth_issuer {
        AuthIssuer::Known(issuer) => issuer,
        AuthIssuer::Invalid => return None,
        AuthIssuer::Absent => {
            errors.push((
                format!("{at}.auth_service"),
                "there is no `auth_service` section".into(),
            ));
            return None;
        }
    };
    if p.issuer.as_deref().is_some_and(|i| i != auth_issuer) {
        errors.push((
            format!("{at}.issuer"),
            format!("differs from the auth service's issuer `{auth_issuer}`; omit it"),
        ));
    }
    if p.jwks_uri.is_some() || p.discovery || p.allow_http {
        errors.push((
            format!("{at}.auth_service"),
            "the built-in service's keys are used directly: drop `jwks_uri`, `discovery` and `allow_http`".into(),
        ));
    }
    Some(auth_issuer)
}

fn compile_provider(
    p: &file::Provider,
    issuer: &str,
    at: &str,
    errors: &mut Errors,
) -> Option<ProviderConfig> {
    let before = errors.len();
    for (key, value) in [("name", p.name.as_str()), ("issuer", issuer)] {
        if value.is_empty() {
            errors.push((format!("{at}.{key}"), "must not be empty".into()));
        }
    }
    let keys = if p.auth_service {
        Some(KeySource::AuthService)
    } else {
        key_source(p, issuer, at, errors)
    };
    // Algorithms matter only to providers whose tokens are checked locally.
    let local_keys = p.auth_service || p.jwks_uri.is_some() || p.discovery;
    let algorithms = if local_keys || !p.algorithms.is_empty() {
        compile_algorithms(&p.algorithms, &format!("{at}.algorithms"), errors)
    } else {
        Box::default()
    };
    let introspection = p.introspection.as_ref().and_then(|i| {
        compile_introspection(i, p.allow_http, &format!("{at}.introspection"), errors)
    });
    let audience = compile_audience(p, at, errors);
    let leeway = p.leeway.map_or(Duration::from_secs(30), |l| l.0);
    if leeway > MAX_LEEWAY {
        errors.push((
            format!("{at}.leeway"),
            format!("{leeway:?} is more than the {MAX_LEEWAY:?} allowed for clock skew"),
        ));
    }
    let jwks = if p.auth_service {
        // In-process keys: looking again costs nothing, so look often.
        JwksTiming {
            refresh_interval: Duration::from_secs(1),
            unknown_kid_cooldown: Duration::from_secs(1),
            ..JwksTiming::default()
        }
    } else {
        compile_jwks_timing(&p.jwks, at, errors)
    };
    let scope_claims = p
        .scopes_claims
        .as_deref()
        .unwrap_or(&["scope".to_owned(), "scp".to_owned()])
        .iter()
        .map(|c| ClaimPath::new(c))
        .collect();
    if p.require_typ
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        errors.push((
            format!("{at}.require_typ"),
            "must not be empty; omit it to accept any `typ`".into(),
        ));
    }
    let cookie_name_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    if p.cookie.as_deref().is_some_and(|c| !cookie_name_ok(c)) {
        errors.push((
            format!("{at}.cookie"),
            "is not a cookie name (RFC 6265 token)".into(),
        ));
    }
    let require_typ = p.require_typ.as_deref().map(|t| {
        let lower = t.to_ascii_lowercase();
        lower.strip_prefix("application/").unwrap_or(&lower).into()
    });
    let revocation = p
        .revocation
        .as_ref()
        .and_then(|r| compile_revocation(r, p.allow_http, &format!("{at}.revocation"), errors));
    if errors.len() != before {
        return None;
    }
    Some(ProviderConfig {
        name: p.name.as_str().into(),
        issuer: issuer.into(),
        audience,
        algorithms,
        leeway: leeway.as_secs(),
        scope_claims,
        require_typ,
        keys: keys?,
        jwks,
        allow_http: p.allow_http,
        cookie: p.cookie.as_deref().map(Into::into),
        revocation,
        introspection,
    })
}

fn key_source(
    p: &file::Provider,
    issuer: &str,
    at: &str,
    errors: &mut Errors,
) -> Option<KeySource> {
    match (&p.jwks_uri, p.discovery) {
        (Some(uri), false) => {
            key_uri(uri, p.allow_http, &format!("{at}.jwks_uri"), errors).map(KeySource::JwksUri)
        }
        (None, true) => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            key_uri(&url, p.allow_http, &format!("{at}.issuer"), errors).map(KeySource::Discovery)
        }
        (Some(_), true) => {
            errors.push((
                format!("{at}.discovery"),
                "give either `jwks_uri` or `discovery: true`, not both".into(),
            ));
            None
        }
        // Without keys every token is introspected.
        (None, false) if p.introspection.is_some() => Some(KeySource::None),
        (None, false) => {
            errors.push((
                at.into(),
                "needs `jwks_uri`, or `discovery: true` to find it from the issuer, or `introspection`".into(),
            ));
            None
        }
    }
}

fn compile_audience(p: &file::Provider, at: &str, errors: &mut Errors) -> AudienceCheck {
    if p.skip_audience_check {
        if !p.audiences.is_empty() || p.audience_claim.is_some() {
            errors.push((
                format!("{at}.skip_audience_check"),
                "contradicts `audiences`/`audience_claim`; remove one".into(),
            ));
        }
        tracing::warn!(provider = %p.name, "audience check is off by configuration: tokens minted for any API of this issuer are accepted");
        return AudienceCheck::Skip;
    }
    if p.audiences.is_empty() {
        errors.push((
            format!("{at}.audiences"),
            "list the audiences this API accepts, or set `skip_audience_check: true` to accept any (not recommended)".into(),
        ));
    }
    AudienceCheck::OneOf {
        claim: ClaimPath::new(p.audience_claim.as_deref().unwrap_or("aud")),
        allowed: p.audiences.iter().map(|a| a.as_str().into()).collect(),
    }
}

fn compile_jwks_timing(settings: &file::JwksSettings, at: &str, errors: &mut Errors) -> JwksTiming {
    let defaults = JwksTiming::default();
    let pick = |value: Option<Seconds>, default: Duration| value.map_or(default, |d| d.0);
    let jwks = JwksTiming {
        refresh_interval: pick(settings.refresh_interval, defaults.refresh_interval),
        unknown_kid_cooldown: pick(settings.unknown_kid_cooldown, defaults.unknown_kid_cooldown),
        max_staleness: pick(settings.max_staleness, defaults.max_staleness),
        fetch_timeout: pick(settings.fetch_timeout, defaults.fetch_timeout),
    };
    let second = Duration::from_secs(1);
    let checks = [
        (
            "refresh_interval",
            jwks.refresh_interval >= second,
            "must be at least 1s",
        ),
        (
            "unknown_kid_cooldown",
            jwks.unknown_kid_cooldown >= second,
            "must be at least 1s: it is what stops made-up kids from each costing a fetch",
        ),
        (
            "max_staleness",
            jwks.max_staleness >= jwks.refresh_interval.saturating_mul(2),
            "must be at least twice `refresh_interval`, or one failed fetch would refuse every token",
        ),
        (
            "fetch_timeout",
            !jwks.fetch_timeout.is_zero(),
            "must be more than 0",
        ),
    ];
    for (key, ok, message) in checks {
        if !ok {
            errors.push((format!("{at}.jwks.{key}"), message.into()));
        }
    }
    jwks
}

fn compile_algorithms(names: &[String], at: &str, errors: &mut Errors) -> Box<[Algorithm]> {
    if names.is_empty() {
        errors.push((
            at.into(),
            "list at least one algorithm, e.g. [RS256]".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => errors.push((
                format!("{at}[{i}]"),
                format!("`{name}` is refused: symmetric algorithms cannot be verified with a published key set (RFC 8725 §3.1)"),
            )),
            Ok(alg) => out.push(alg),
            Err(_) => errors.push((
                format!("{at}[{i}]"),
                format!("`{name}` is not a supported algorithm; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
            )),
        }
    }
    out.into()
}

/// A key-set or discovery URL: http(s), no credentials, and plain http only
/// to loopback unless the provider says `allow_http: true`.
fn key_uri(text: &str, allow_http: bool, at: &str, errors: &mut Errors) -> Option<http::Uri> {
    let shown = redact(text);
    let problem = match text.parse::<http::Uri>() {
        Err(_) => "is not an http(s) URL",
        Ok(uri) if uri.authority().is_none() => "is not an http(s) URL",
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            "has credentials in it, which are not supported"
        }
        Ok(uri) if is_trusted_transport(&uri, allow_http) => return Some(uri),
        Ok(uri) if uri.scheme_str() == Some("http") => {
            "is plain http to a non-loopback host: anyone on the path could replace the keys; use https, or set `allow_http: true` on the provider"
        }
        Ok(_) => "is not an http(s) URL",
    };
    errors.push((at.into(), format!("`{shown}` {problem}")));
    None
}

/// A URL as it may appear in an error message: any `user:password@` hidden.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn compile_upstreams(
    upstreams: &std::collections::BTreeMap<String, file::Upstream>,
    errors: &mut Errors,
) -> HashMap<String, Arc<Upstream>> {
    let mut out = HashMap::new();
    for (name, u) in upstreams {
        let at = format!("upstreams.{name}");
        let connect = u.connect_timeout.map_or(Duration::from_secs(2), |d| d.0);
        let timeout = u.timeout.map_or(Duration::from_secs(30), |d| d.0);
        if connect.is_zero() || timeout.is_zero() {
            errors.push((at.clone(), "timeouts must be more than 0".into()));
        }
        if connect > Duration::from_secs(86_400) || timeout > Duration::from_secs(86_400) {
            errors.push((at.clone(), "timeouts must be at most 1d".into()));
        }
        let client_cert = match (&u.cert_file, &u.key_file) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                errors.push((at.clone(), "`cert_file` and `key_file` go together".into()));
                None
            }
        };
        let tls = UpstreamTls {
            ca_file: u.ca_file.as_ref().map(Into::into),
            client_cert,
        };
        let files = [
            ("ca_file", u.ca_file.as_ref()),
            ("cert_file", u.cert_file.as_ref()),
            ("key_file", u.key_file.as_ref()),
        ]
        .map(|(key, path)| (format!("{at}.{key}"), path));
        let files: Vec<(&str, Option<&String>)> =
            files.iter().map(|(k, p)| (k.as_str(), *p)).collect();
        if !readable(&files, errors) {
            continue;
        }
        let tls = match tls.client_config() {
            Ok(config) => config,
            Err(message) => {
                errors.push((at.clone(), message));
                continue;
            }
        };
        let (key, urls) = match (&u.url, &u.targets) {
            (Some(url), None) => ("url", std::slice::from_ref(url)),
            (None, Some(targets)) => ("targets", targets.as_slice()),
            _ => {
                errors.push((
                    at.clone(),
                    "give either `url` (one target) or `targets` (several)".into(),
                ));
                continue;
            }
        };
        let eject_for = u.eject_for.map_or(Duration::from_secs(10), |d| d.0);
        if eject_for > Duration::from_secs(3600) {
            errors.push((format!("{at}.eject_for"), "at most 1h".into()));
        }
        let retries = u.retries.unwrap_or(1);
        if retries > 10 {
            errors.push((format!("{at}.retries"), "at most 10".into()));
        }
        let settings = UpstreamSettings {
            connect_timeout: connect,
            timeout,
            http2: u.http2,
            eject_for,
            retries,
            tls,
        };
        match Upstream::new(name, urls, settings) {
            Ok(upstream) => {
                out.insert(name.clone(), Arc::new(upstream));
            }
            Err(message) => errors.push((format!("{at}.{key}"), message)),
        }
    }
    out
}

/// What a route may refer to.
struct Names<'a> {
    upstreams: &'a HashMap<String, Arc<Upstream>>,
    /// Every upstream in the file, compiled or not.
    upstream_names: &'a BTreeSet<&'a str>,
    providers: &'a HashMap<&'a str, usize>,
    /// Providers with an introspection endpoint.
    introspecting: &'a BTreeSet<usize>,
    /// An `api_keys` section exists.
    api_keys: bool,
    /// The listener asks clients for certificates (`tls.client_ca_file`).
    client_ca: bool,
}

fn compile_route(
    index: usize,
    route: &file::Route,
    at: &str,
    names: &Names<'_>,
    errors: &mut Errors,
) -> Option<Route> {
    let (upstreams, upstream_names, providers) =
        (names.upstreams, names.upstream_names, names.providers);
    let before = errors.len();
    let pattern = PathPattern::parse(&route.path)
        .map_err(|e| errors.push((format!("{at}.path"), format!("`{}`: {e}", route.path))))
        .ok();
    let upstream = upstreams.get(&route.upstream).cloned();
    // An upstream that failed to compile was reported already.
    if upstream.is_none() && !upstream_names.contains(route.upstream.as_str()) {
        let known: Vec<&str> = upstream_names.iter().copied().collect();
        errors.push((
            format!("{at}.upstream"),
            format!(
                "unknown upstream `{}`; defined: {}",
                route.upstream,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let methods = route.methods.as_ref().map(|methods| {
        if methods.is_empty() {
            errors.push((
                format!("{at}.methods"),
                "an empty list matches nothing; omit `methods` to match all".into(),
            ));
        }
        methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let upper = m.to_ascii_uppercase();
                Method::from_bytes(upper.as_bytes())
                    .map_err(|_| {
                        errors.push((
                            format!("{at}.methods[{i}]"),
                            format!("`{m}` is not an HTTP method"),
                        ))
                    })
                    .ok()
            })
            .collect::<Vec<Method>>()
    });
    // HEAD is GET without a body: every framework answers it with the GET
    // handler, so a GET route must also judge HEAD requests.
    let methods = methods.map(|mut methods| {
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            methods.push(Method::HEAD);
        }
        methods.dedup();
        methods.into_boxed_slice()
    });
    let forward_claims = route
        .forward_claims
        .iter()
        .filter_map(|(claim, header)| {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| {
                    errors.push((
                        format!("{at}.forward_claims.{claim}"),
                        format!("`{header}` is not a header name"),
                    ))
                })
                .ok()?;
            if is_reserved_header(name.as_str()) || name.as_str().contains('_') {
                errors.push((
                    format!("{at}.forward_claims.{claim}"),
                    format!("`{header}` is a header clients or the gateway use, and incoming identity headers are removed from every request; pick another, e.g. X-Auth-Subject"),
                ));
                return None;
            }
            if claim.is_empty() {
                errors.push((format!("{at}.forward_claims"), "a claim name must not be empty".into()));
                return None;
            }
            Some((ClaimPath::new(claim), name))
        })
        .collect();
    let kinds = &route.auth.0;
    let access = if kinds.contains(&Auth::None) {
        if kinds.len() > 1 {
            errors.push((
                format!("{at}.auth"),
                "`none` cannot be combined with other kinds".into(),
            ));
        }
        let protected_keys = !route.scopes.is_empty()
            || !route.claims.is_empty()
            || !route.forward_claims.is_empty()
            || route.providers.is_some()
            || route.verify == file::Verify::Remote
            || route.dpop == file::Need::Required;
        if protected_keys {
            errors.push((
                format!("{at}.auth"),
                "`auth: none` cannot have scopes, claims, providers, forward_claims, verify or dpop: there is no token to check".into(),
            ));
        }
        Access::Public
    } else {
        if kinds.is_empty() {
            errors.push((
                format!("{at}.auth"),
                "an empty list accepts nothing; say `none` for a public route".into(),
            ));
        }
        let api_key = kinds.contains(&Auth::ApiKey);
        if api_key && !names.api_keys {
            errors.push((
                format!("{at}.auth"),
                "`api_key` needs an `api_keys` section".into(),
            ));
        }
        let requirement = compile_requirement(route, at, providers, errors);
        let accepted: Vec<usize> = match &requirement.providers {
            Some(ids) => ids.to_vec(),
            None => (0..providers.len()).collect(),
        };
        let introspecting = accepted
            .iter()
            .filter(|i| names.introspecting.contains(i))
            .count();
        if kinds.contains(&Auth::Bearer) && introspecting > 1 {
            errors.push((
                format!("{at}.providers"),
                "accepts several providers with `introspection`: an opaque token would be sent to one it may not belong to; name one with `providers:`".into(),
            ));
        }
        if requirement.remote && !kinds.contains(&Auth::Bearer) {
            errors.push((
                format!("{at}.verify"),
                "`remote` applies to bearer tokens, which this route does not take".into(),
            ));
        }
        let all_introspect =
            !accepted.is_empty() && accepted.iter().all(|i| names.introspecting.contains(i));
        if requirement.remote && !all_introspect {
            errors.push((
                format!("{at}.verify"),
                "`remote` needs `introspection` on every provider the route accepts".into(),
            ));
        }
        let dpop_required = route.dpop == file::Need::Required;
        if dpop_required && (api_key || !kinds.contains(&Auth::Bearer)) {
            errors.push((
                format!("{at}.dpop"),
                "`required` is for routes that take only bearer tokens: an API key cannot be DPoP-bound".into(),
            ));
        }
        Access::Protected(Protected {
            bearer: kinds.contains(&Auth::Bearer),
            api_key,
            requirement,
            dpop_required,
        })
    };
    let client_cert_required = route.client_cert == file::Need::Required;
    if (client_cert_required || route.forward_client_cert) && !names.client_ca {
        errors.push((
            format!(
                "{at}.{}",
                if client_cert_required {
                    "client_cert"
                } else {
                    "forward_client_cert"
                }
            ),
            "client certificates need `tls.client_ca_file` on the listener".into(),
        ));
    }
    let http2 = upstream.as_ref().is_some_and(|u| u.is_http2());
    let serving = compile_serving(route, at, methods.as_deref(), http2, errors);
    if errors.len() != before {
        return None;
    }
    let serving = serving?;
    Some(Route {
        index,
        pattern: pattern?,
        methods,
        upstream: upstream?,
        access,
        forward_claims,
        strip_authorization: route.strip_authorization,
        allow_encoded_slash: route.allow_encoded_slash,
        allow_semicolon: route.allow_semicolon,
        client_cert_required,
        forward_client_cert: route.forward_client_cert,
        timeout: serving.timeout,
        max_body: serving.max_body,
        upgrades: serving.upgrades,
        rate_limit: serving.rate_limit,
        cors: serving.cors,
    })
}

/// A route's serving settings: timeout, body limit, upgrades, rate limit, CORS.
struct Serving {
    timeout: Option<Duration>,
    max_body: u64,
    upgrades: Box<[Box<str>]>,
    rate_limit: Option<Arc<RateLimiter>>,
    cors: Option<Cors>,
}

/// Largest request body by default.
const DEFAULT_MAX_BODY: u64 = 10 << 20;

fn compile_serving(
    route: &file::Route,
    at: &str,
    methods: Option<&[Method]>,
    http2_upstream: bool,
    errors: &mut Errors,
) -> Option<Serving> {
    let before = errors.len();
    if route
        .timeout
        .is_some_and(|t| t.0.is_zero() || t.0 > Duration::from_secs(86_400))
    {
        errors.push((
            format!("{at}.timeout"),
            "must be more than 0 and at most 1d".into(),
        ));
    }
    let max_body = route.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
    let upgrades: Box<[Box<str>]> = match &route.upgrades {
        // HTTP/2 has no `Upgrade`: nothing to forward to such an upstream.
        None if http2_upstream => Box::new([]),
        None => Box::new(["websocket".into()]),
        Some(names) if http2_upstream && !names.is_empty() => {
            errors.push((
                format!("{at}.upgrades"),
                "the upstream speaks HTTP/2, which has no upgrades".into(),
            ));
            Box::new([])
        }
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let lower = name.to_ascii_lowercase();
                let token = !lower.is_empty()
                    && lower
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b));
                if lower == "h2c" {
                    errors.push((format!("{at}.upgrades[{i}]"), "`h2c` is never forwarded: an upgraded tunnel would carry requests the gateway never sees".into()));
                    None
                } else if !token {
                    errors.push((format!("{at}.upgrades[{i}]"), format!("`{name}` is not a protocol name")));
                    None
                } else {
                    Some(lower.into())
                }
            })
            .collect(),
    };
    let rate_limit = route.rate_limit.as_ref().and_then(|r| {
        let burst = r.burst.unwrap_or(r.requests);
        const MOST: u64 = 1_000_000_000;
        if r.requests == 0 || r.per.0.is_zero() || burst == 0 {
            errors.push((
                format!("{at}.rate_limit"),
                "`requests`, `per` and `burst` must be more than 0".into(),
            ));
            return None;
        }
        if r.requests > MOST || burst > MOST || r.per.0 > Duration::from_secs(86_400) {
            errors.push((
                format!("{at}.rate_limit"),
                "`requests` and `burst` at most 1000000000, `per` at most 1d".into(),
            ));
            return None;
        }
        Some(Arc::new(RateLimiter::new(r.requests, r.per.0, burst)))
    });
    let cors = route.cors.as_ref().and_then(|c| {
        if c.allowed_origins.is_empty() {
            errors.push((
                format!("{at}.cors.allowed_origins"),
                "list the origins allowed, or `*`".into(),
            ));
            return None;
        }
        let methods: Vec<Method> = match &c.allowed_methods {
            Some(names) => names
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| {
                            errors.push((
                                format!("{at}.cors.allowed_methods[{i}]"),
                                format!("`{m}` is not an HTTP method"),
                            ))
                        })
                        .ok()
                })
                .collect(),
            None => methods.map_or_else(
                || {
                    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect()
                },
                <[Method]>::to_vec,
            ),
        };
        let max_age = c.max_age.map_or(600, |d| d.0.as_secs());
        Cors::new(
            &c.allowed_origins,
            methods,
            &c.allowed_headers,
            &c.exposed_headers,
            max_age,
            c.allow_credentials,
        )
        .map_err(|e| errors.push((format!("{at}.cors"), e)))
        .ok()
    });
    (errors.len() == before).then(|| Serving {
        timeout: route.timeout.map(|t| t.0),
        max_body,
        upgrades,
        rate_limit,
        cors,
    })
}

fn compile_requirement(
    route: &file::Route,
    at: &str,
    providers: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Requirement {
    let accepted = route.providers.as_ref().map(|names| {
        if names.is_empty() {
            errors.push((
                format!("{at}.providers"),
                "an empty list accepts no token; omit it to accept all providers".into(),
            ));
        }
        names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                providers
                    .get(name.as_str())
                    .copied()
                    .ok_or_else(|| {
                        errors.push((
                            format!("{at}.providers[{i}]"),
                            format!("unknown provider `{name}`"),
                        ))
                    })
                    .ok()
            })
            .collect::<Box<[usize]>>()
    });
    let mut scopes: Vec<Box<str>> = Vec::new();
    for (i, scope) in route.scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
        {
            errors.push((
                format!("{at}.scopes[{i}]"),
                format!("`{scope}` is not a scope token (no spaces or quotes)"),
            ));
        }
        scopes.push(scope.as_str().into());
    }
    let scope_challenge = scopes.join(" ").into();
    scopes.sort_unstable();
    scopes.dedup();
    let claims = route
        .claims
        .iter()
        .filter_map(|(claim, value)| {
            if claim.is_empty() {
                errors.push((
                    format!("{at}.claims"),
                    "a claim name must not be empty".into(),
                ));
                return None;
            }
            let expected = match value {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => {
                    errors.push((
                        format!("{at}.claims.{claim}"),
                        "must be a string, number or boolean".into(),
                    ));
                    return None;
                }
            };
            Some((ClaimPath::new(claim), expected.into()))
        })
        .collect();
    Requirement {
        providers: accepted,
        scopes: scopes.into(),
        claims,
        scope_challenge,
        remote: route.verify == file::Verify::Remote,
    }
}

/// `api_keys:` → the keys, by SHA-256, from the file and the `file` it names.
fn compile_api_keys(section: &file::ApiKeys, errors: &mut Errors) -> Option<ApiKeys> {
    let before = errors.len();
    let header = section.header.as_deref().unwrap_or("x-api-key");
    let header = match HeaderName::from_bytes(header.as_bytes()) {
        Ok(name) if !is_reserved_header(name.as_str()) && !name.as_str().contains('_') => {
            Some(name)
        }
        Ok(_) => {
            errors.push((
                "api_keys.header".into(),
                format!(
                    "`{header}` is a header with another meaning; pick another, e.g. X-API-Key"
                ),
            ));
            None
        }
        Err(_) => {
            errors.push((
                "api_keys.header".into(),
                format!("`{header}` is not a header name"),
            ));
            None
        }
    };
    let from_file: Vec<file::ApiKeyEntry> = match &section.file {
        None => Vec::new(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_yaml::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(entries) => entries,
            Err(e) => {
                errors.push((
                    "api_keys.file".into(),
                    format!("`{path}`: {e} (expected a list of {{name, sha256, scopes}})"),
                ));
                Vec::new()
            }
        },
    };
    let mut names = BTreeSet::new();
    let mut digests = BTreeSet::new();
    let mut keys = Vec::new();
    let entries = section
        .keys
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("api_keys.keys[{i}]"), e))
        .chain(
            from_file
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("api_keys.file[{i}]"), e)),
        );
    for (at, entry) in entries {
        if entry.name.is_empty() || !names.insert(entry.name.clone()) {
            errors.push((
                format!("{at}.name"),
                format!("`{}` is empty or listed twice", entry.name),
            ));
        }
        let Some(digest) = parse_digest(&entry.sha256) else {
            errors.push((
                format!("{at}.sha256"),
                "must be the key's SHA-256 as 64 hex digits (printf %s \"$KEY\" | sha256sum)"
                    .into(),
            ));
            continue;
        };
        if !digests.insert(digest) {
            errors.push((
                format!("{at}.sha256"),
                "the same key is listed twice".into(),
            ));
        }
        keys.push(ApiKey::new(&entry.name, digest, &entry.scopes));
    }
    if keys.is_empty() && errors.len() == before {
        errors.push((
            "api_keys".into(),
            "no keys: list some under `keys` or in `file`".into(),
        ));
    }
    if errors.len() != before {
        return None;
    }
    Some(ApiKeys::new(header?, keys))
}

/// `providers[].revocation` → where to read revoked tokens from.
fn compile_revocation(
    r: &file::Revocation,
    allow_http: bool,
    at: &str,
    errors: &mut Errors,
) -> Option<RevocationSource> {
    let before = errors.len();
    if r.url.is_none() && r.file.is_none() {
        errors.push((
            at.into(),
            "give a `url` to poll, a `file` to read, or both".into(),
        ));
    }
    let url = r
        .url
        .as_deref()
        .and_then(|u| key_uri(u, allow_http, &format!("{at}.url"), errors));
    let interval = r.interval.map_or(Duration::from_secs(30), |d| d.0);
    if interval < Duration::from_secs(1) {
        errors.push((format!("{at}.interval"), "must be at least 1s".into()));
    }
    (errors.len() == before).then(|| RevocationSource {
        url,
        file: r.file.as_ref().map(std::path::PathBuf::from),
        interval,
    })
}

/// `providers[].introspection` → the RFC 7662 client settings.
fn compile_introspection(
    i: &file::Introspection,
    allow_http: bool,
    at: &str,
    errors: &mut Errors,
) -> Option<IntrospectionConfig> {
    let before = errors.len();
    let endpoint = key_uri(&i.endpoint, allow_http, &format!("{at}.endpoint"), errors);
    if i.client_id.is_empty() || i.client_secret.is_empty() {
        errors.push((
            at.into(),
            "`client_id` and `client_secret` must not be empty (use ${VAR} for the secret)".into(),
        ));
    }
    let timeout = i.timeout.map_or(Duration::from_secs(2), |d| d.0);
    if timeout.is_zero() {
        errors.push((format!("{at}.timeout"), "must be more than 0".into()));
    }
    (errors.len() == before).then(|| IntrospectionConfig {
        endpoint: endpoint.unwrap_or_default(),
        client_id: i.client_id.as_str().into(),
        client_secret: i.client_secret.as_str().into(),
        timeout,
        cache_active_max: i.cache_active_max.map_or(Duration::from_secs(300), |d| d.0),
        cache_inactive: i.cache_inactive.map_or(Duration::from_secs(30), |d| d.0),
    })
}
