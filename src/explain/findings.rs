//! What a security review of the config should look at, each with the
//! config path it comes from. (What the gateway refuses outright, such as
//! HS* or `none` algorithms, never gets here: the config does not load.)

use std::time::Duration;

use serde::Serialize;

use super::{Report, human, human_secs, is_loopback_addr, is_loopback_url};
use crate::authn::provider::KeySource;
use crate::config::Config;
use crate::routes::{Access, Route};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
            Self::Info => "info",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable name of the check.
    pub check: &'static str,
    /// The config key it is about: `routes[2]`, `providers[0].leeway`.
    pub at: String,
    pub message: String,
}

/// More leeway than this on exp/nbf/iat is worth a look (the most allowed is 5m).
const LEEWAY_NOTICED: u64 = 120;
/// Access tokens living longer than this should be revocable.
const LONG_LIVED: Duration = Duration::from_secs(3600);

pub fn review(config: &Config, report: &Report, source: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |severity, check, at: String, message: String| {
        out.push(Finding {
            severity,
            check,
            at,
            message,
        })
    };
    let routes: Vec<&Route> = config.routes.iter().collect();

    // Public routes that take part of a protected route's paths.
    for (i, public) in routes.iter().enumerate() {
        if !matches!(public.access, Access::Public) {
            continue;
        }
        for protected in &routes[i + 1..] {
            if matches!(protected.access, Access::Protected(_))
                && methods_meet(public, protected)
                && public.pattern.overlaps(&protected.pattern)
            {
                add(
                    Severity::Medium,
                    "public-overlaps-protected",
                    format!("routes[{}]", public.index),
                    format!(
                        "public {} comes before the protected {} (routes[{}]) and takes the paths both match: those are forwarded without a credential; make sure that is meant",
                        describe(public),
                        describe(protected),
                        protected.index
                    ),
                );
            }
        }
    }

    match public_catch_all(config) {
        Some(route) => add(
            Severity::Medium,
            "unmatched-traffic",
            format!("routes[{}]", route.index),
            format!(
                "{} is public: every request no earlier route takes is forwarded without a credential (default deny is off)",
                route.pattern.as_str()
            ),
        ),
        None if config.listen.is_some() => add(
            Severity::Info,
            "unmatched-traffic",
            "routes".into(),
            "requests no route matches are refused with 404 and never forwarded (default deny)"
                .into(),
        ),
        None => {}
    }

    for (i, provider) in report.providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        if provider.audiences.is_empty() && provider.keys != "none" {
            add(
                Severity::Medium,
                "audience-not-checked",
                format!("{at}.skip_audience_check"),
                format!(
                    "tokens from {} are accepted whatever API they were issued for (`aud`): a token for another service works here",
                    provider.name
                ),
            );
        }
        if provider.leeway_seconds > LEEWAY_NOTICED {
            add(
                Severity::Low,
                "long-leeway",
                format!("{at}.leeway"),
                format!(
                    "{} of clock skew accepted: expired tokens work that much longer; 30s-60s is usual",
                    human_secs(provider.leeway_seconds)
                ),
            );
        }
        if config.providers[i].allow_http {
            add(
                Severity::Medium,
                "keys-over-http",
                format!("{at}.allow_http"),
                format!(
                    "keys or lists of {} may come over plain HTTP beyond this machine: whoever sits on the path can substitute them",
                    provider.name
                ),
            );
        }
        if provider.revocation.is_none() && provider.introspection.is_none() {
            let lifetime = issued_here(config, i).map(|ttl| ttl.max_lifetime);
            match lifetime {
                Some(ttl) if ttl > LONG_LIVED => add(
                    Severity::Medium,
                    "long-lived-without-revocation",
                    format!("{at}.revocation"),
                    format!(
                        "the built-in auth service issues access tokens living up to {} and {} does not check a revocation list: a revoked token keeps working until it expires",
                        human(ttl),
                        provider.name
                    ),
                ),
                Some(_) => {}
                None => add(
                    Severity::Info,
                    "no-revocation",
                    format!("{at}.revocation"),
                    format!(
                        "tokens from {} cannot be revoked before they expire (no revocation list or introspection): keep their lifetime short at the issuer",
                        provider.name
                    ),
                ),
            }
        }
    }

    if let Some(listen) = config.listen
        && config.tls.is_none()
        && !listen.ip().is_loopback()
    {
        add(
            Severity::Medium,
            "plain-http-listener",
            "listen".into(),
            format!(
                "{listen} accepts plain HTTP from the network: tokens cross it in clear unless a load balancer or mesh in front terminates TLS"
            ),
        );
    }
    if let Some(auth) = &report.auth_service
        && !is_loopback_addr(&auth.listen)
    {
        add(
            Severity::Medium,
            "plain-http-listener",
            "auth_service.listen".into(),
            format!(
                "the auth service on {} speaks plain HTTP to the network: client secrets and tokens cross it in clear unless TLS is terminated in front",
                auth.listen
            ),
        );
    }
    if let Some(admin) = &report.gateway.admin
        && !is_loopback_addr(admin)
    {
        add(
            Severity::Low,
            "admin-exposed",
            "admin.listen".into(),
            format!(
                "/healthz, /readyz and /metrics are served on {admin}: keep that port off the public network (probes and scrapers only)"
            ),
        );
    }

    for route in &report.routes {
        if !route.to_upstream.credential {
            continue;
        }
        if let Some(target) = route
            .targets
            .iter()
            .find(|t| t.starts_with("http://") && !is_loopback_url(t))
        {
            add(
                Severity::Medium,
                "credential-to-plain-upstream",
                format!("{}.strip_authorization", route.at),
                format!(
                    "{} forwards the client's token to {target} over plain HTTP: anyone on that path can replay it; use https or `strip_authorization: true`",
                    route.path
                ),
            );
        }
    }

    for (i, provider) in config.providers.iter().enumerate() {
        if provider.introspection.is_some() && !written_as_variable(source, i) {
            add(
                Severity::High,
                "inline-secret",
                format!("providers[{i}].introspection.client_secret"),
                "the introspection client secret is written in the file: whoever reads the config (repository, ConfigMap) has it; write `${VAR}` and set it from a Secret".into(),
            );
        }
    }

    out.sort_by_key(|f| f.severity);
    out
}

/// The public route matching every path and method, if one exists: it takes
/// whatever no earlier route does.
pub fn public_catch_all(config: &Config) -> Option<&Route> {
    config.routes.iter().find(|r| {
        matches!(r.access, Access::Public)
            && r.methods.is_none()
            && r.pattern.as_str().trim_end_matches("**") == "/"
    })
}

fn methods_meet(a: &Route, b: &Route) -> bool {
    match (&a.methods, &b.methods) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn describe(route: &Route) -> String {
    match &route.methods {
        Some(methods) => {
            let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            format!("{} {}", names.join(","), route.pattern.as_str())
        }
        None => route.pattern.as_str().to_owned(),
    }
}

struct Issued {
    max_lifetime: Duration,
}

/// The longest access-token lifetime of the built-in auth service, when
/// provider `index` is the one that accepts its tokens.
fn issued_here(config: &Config, index: usize) -> Option<Issued> {
    let auth = config.auth_service.as_ref()?;
    let provider = config.providers.get(index)?;
    let same = matches!(provider.keys, KeySource::AuthService) || *provider.issuer == *auth.issuer;
    if !same {
        return None;
    }
    let max_lifetime = auth.clients.iter().map(|c| c.access_ttl).max()?;
    Some(Issued { max_lifetime })
}

/// Is `providers[index].introspection.client_secret` a `${VAR}` in the text?
fn written_as_variable(source: &str, index: usize) -> bool {
    let Ok(document) = serde_yaml::from_str::<serde_yaml::Value>(source) else {
        return false;
    };
    document
        .get("providers")
        .and_then(|p| p.get(index))
        .and_then(|p| p.get("introspection"))
        .and_then(|i| i.get("client_secret"))
        .and_then(|s| s.as_str())
        .is_some_and(|s| s.trim().starts_with("${") && s.trim().ends_with('}'))
}
