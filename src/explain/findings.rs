//! What a security review of the config should look at, each with the
//! config key it comes from. (What the gateway refuses outright, such as
//! HS* or `none` algorithms, never gets here: the config does not load.)

use std::time::Duration;

use serde::Serialize;

use super::{
    Check, Credential, KeysFrom, Report, human, human_secs, is_loopback_addr, is_loopback_url,
    methods_label,
};
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

/// One thing to look at.
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

/// Every finding of `config` (described by `report`; `source` is its text),
/// most severe first.
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

    // Public routes that take some of a later protected route's requests.
    for (protected, view) in routes.iter().zip(&report.routes) {
        if !matches!(protected.access, Access::Protected(_)) {
            continue;
        }
        for earlier in &view.preceded_by {
            let Some(public) = routes.get(earlier.route) else {
                continue;
            };
            if matches!(public.access, Access::Public) {
                add(
                    Severity::Medium,
                    "public-overlaps-protected",
                    format!("routes[{}]", public.index),
                    format!(
                        "public {} {} comes before the protected {} {} (routes[{}]) and takes {} it matches: those are forwarded without a token or key{}; make sure that is meant",
                        methods_label(&earlier.methods),
                        public.pattern.as_str(),
                        view.methods_label(),
                        protected.pattern.as_str(),
                        protected.index,
                        if earlier.whole {
                            "every request"
                        } else {
                            "the requests"
                        },
                        if public.client_cert_required {
                            " (only a client certificate is asked for)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
    }

    let unmatched = &report.gateway.unmatched;
    for catch_all in unmatched.catch_all.iter().filter(|c| c.public) {
        let pattern = report
            .routes
            .iter()
            .find(|r| r.at == catch_all.route)
            .map_or("/**", |r| r.path.as_str());
        add(
            Severity::Medium,
            "unmatched-traffic",
            catch_all.route.clone(),
            format!(
                "{pattern} is public for {}: every such request no earlier route takes is forwarded without a token (default deny is off)",
                if catch_all.methods.is_empty() {
                    "every method".to_owned()
                } else {
                    catch_all.methods.join(",")
                }
            ),
        );
    }
    if config.listen.is_some() && unmatched.catch_all.is_empty() {
        add(
            Severity::Info,
            "unmatched-traffic",
            "routes".into(),
            "requests no route matches are refused with 404 and never forwarded (default deny)"
                .into(),
        );
    }

    // Protected routes whose requests an earlier protected route judges by
    // other rules.
    for later in &report.routes {
        for earlier in &later.preceded_by {
            let Some(first) = report.routes.get(earlier.route) else {
                continue;
            };
            if first.takes(Credential::None) || later.takes(Credential::None) {
                continue;
            }
            let same = first.scopes == later.scopes
                && first.auth == later.auth
                && first
                    .claims
                    .iter()
                    .map(|c| (&c.claim, &c.equals))
                    .eq(later.claims.iter().map(|c| (&c.claim, &c.equals)))
                && first
                    .providers
                    .iter()
                    .map(|a| &a.provider)
                    .eq(later.providers.iter().map(|a| &a.provider));
            if !same {
                add(
                    Severity::Low,
                    "protected-overlaps-protected",
                    first.at.clone(),
                    format!(
                        "{} {} comes before {} {} ({}) and judges {} of its requests by its own rules (credentials, scopes, claims): make sure that is meant",
                        first.methods_label(),
                        first.path,
                        later.methods_label(),
                        later.path,
                        later.at,
                        if earlier.whole { "all" } else { "some" }
                    ),
                );
            }
        }
    }

    for (provider, view) in config.providers.iter().zip(&report.providers) {
        let at = &view.at;
        if view.audiences.is_empty() {
            add(
                Severity::Medium,
                "audience-not-checked",
                format!("{at}.skip_audience_check"),
                format!(
                    "tokens from {} are accepted whatever API they were issued for (`aud`): a token for another service works here",
                    view.name
                ),
            );
        }
        if view.leeway_seconds > LEEWAY_NOTICED {
            add(
                Severity::Low,
                "long-leeway",
                format!("{at}.leeway"),
                format!(
                    "{} of clock skew accepted: expired tokens work that much longer; 30s-60s is usual",
                    human_secs(view.leeway_seconds)
                ),
            );
        }
        if provider.allow_http {
            add(
                Severity::Medium,
                "keys-over-http",
                format!("{at}.allow_http"),
                format!(
                    "keys or lists of {} may come over plain HTTP beyond this machine: whoever sits on the path can substitute them",
                    view.name
                ),
            );
        }
        // Tokens checked by their signature alone stay good until they
        // expire, unless a revocation list says otherwise.
        let local_routes: Vec<&str> = report
            .routes
            .iter()
            .filter(|r| {
                r.providers.iter().any(|a| {
                    a.provider == view.name
                        && matches!(a.check, Check::Signature | Check::SignatureOrIntrospection)
                })
            })
            .map(|r| r.path.as_str())
            .collect();
        if view.revocation.is_none() && view.keys != KeysFrom::None && !local_routes.is_empty() {
            let issued_here = config.auth_service.as_ref().filter(|auth| {
                matches!(provider.keys, KeySource::AuthService) || *provider.issuer == *auth.issuer
            });
            match issued_here.map(|auth| auth.longest_access_ttl()) {
                Some(ttl) if ttl > LONG_LIVED => add(
                    Severity::Medium,
                    "long-lived-without-revocation",
                    format!("{at}.revocation"),
                    format!(
                        "the built-in auth service issues access tokens living up to {} and {} has no revocation list: on {} a revoked token keeps working until it expires",
                        human(ttl),
                        view.name,
                        local_routes.join(", ")
                    ),
                ),
                Some(_) => {}
                None => add(
                    Severity::Info,
                    "no-revocation",
                    format!("{at}.revocation"),
                    format!(
                        "tokens from {} checked by signature ({}) cannot be revoked before they expire: keep their lifetime short at the issuer, or add a revocation list",
                        view.name,
                        local_routes.join(", ")
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
        let Some(target) = route
            .targets
            .iter()
            .find(|t| t.starts_with("http://") && !is_loopback_url(t))
        else {
            continue;
        };
        let what = if route.takes(Credential::None) {
            "forwards any token, key or token cookie a client sends (browsers send cookies on their own)"
        } else {
            "forwards the client's credential"
        };
        add(
            Severity::Medium,
            "credential-to-plain-upstream",
            format!("{}.strip_authorization", route.at),
            format!(
                "{} {what} to {target} over plain HTTP: anyone on that path can replay it; use https or `strip_authorization: true`",
                route.path
            ),
        );
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
