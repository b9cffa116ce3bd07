//! Command line: `portcullis [run]`, `check`, `explain`, `demo`, `hash-secret`, `keys`.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::routes::Access;
use crate::telemetry::LogFormat;
use crate::tls::server::ClientCerts;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A reverse-proxy API gateway that enforces bearer tokens"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "gateway.yaml",
        env = "PORTCULLIS_CONFIG"
    )]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Worker threads (default: one per core). 1 runs everything on one thread, the fastest setting for a small sidecar.
    #[arg(long, global = true, env = "PORTCULLIS_WORKERS")]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gateway and/or the auth service of the config (the default).
    Run,
    /// Validate the config and print what it compiles to; exit 1 on errors.
    Check,
    /// Run the whole token sequence on this machine: auth service, gateway,
    /// an echo upstream, and a client playing each step.
    Demo {
        /// Stop after the sequence instead of serving on.
        #[arg(long)]
        once: bool,
    },
    /// Print the policy the config enforces, for a security review, API
    /// consumers or the API's docs: routes, providers, the auth service and
    /// findings; or the token sequence as a Mermaid diagram; or OpenAPI
    /// security schemes and operations. `${VAR}`s that are not set are shown as written.
    Explain {
        /// text and markdown for people, json for tools, mermaid for the
        /// sequence diagram, openapi for security schemes and operations.
        #[arg(long, value_enum, default_value_t = crate::explain::Format::Text)]
        format: crate::explain::Format,
    },
    /// Read a client secret on standard input; print its argon2 hash for
    /// `client_secret_hash`.
    HashSecret,
    /// The auth service's signing keys (its `key_file`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Add a new signing key; the current one keeps being published until
    /// the tokens it signed have expired. A running service picks it up.
    Rotate,
    /// List the keys in the key file.
    List,
}

/// The compiled routes and providers, as `check` prints them.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    if let Some(listen) = config.listen {
        let _ = writeln!(out, "listen {listen}");
    }
    if let Some(tls) = &config.tls {
        let settings = tls.settings();
        let clients = match (&settings.client_ca_file, settings.client_certs) {
            (None, _) => "none",
            (Some(_), ClientCerts::Optional) => "optional",
            (Some(_), ClientCerts::Required) => "required",
        };
        let _ = writeln!(
            out,
            "tls cert={} client_certs={clients} reload_interval={}s",
            settings.cert_file.display(),
            settings.reload_interval.as_secs()
        );
    }
    if let Some(auth) = &config.auth_service {
        let _ = writeln!(
            out,
            "auth_service listen={} issuer={} signing={} clients={}",
            auth.listen,
            auth.issuer,
            auth.algorithm.as_str(),
            auth.clients.len()
        );
    }
    for p in &config.providers {
        let algs: Vec<String> = p.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let _ = writeln!(
            out,
            "provider {} issuer={} algorithms=[{}] leeway={}s",
            p.name,
            p.issuer,
            algs.join(","),
            p.leeway
        );
    }
    for route in config.routes.iter() {
        let methods = route.methods.as_ref().map_or_else(
            || "*".to_owned(),
            |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
        );
        let mut access = match &route.access {
            Access::Public => "public".to_owned(),
            Access::Protected(p) => {
                let r = &p.requirement;
                let kinds: Vec<&str> = [("bearer", p.bearer), ("api_key", p.api_key)]
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(kind, _)| *kind)
                    .collect();
                let mut s = kinds.join("|");
                if !r.scope_challenge.is_empty() {
                    let _ = write!(s, " scopes=[{}]", r.scope_challenge.replace(' ', ","));
                }
                for (claim, value) in r.claims.iter() {
                    let _ = write!(s, " {}={value}", claim.as_str());
                }
                if p.dpop_required {
                    s.push_str(" dpop=required");
                }
                if let Some(ids) = &r.providers {
                    let names: Vec<&str> = ids
                        .iter()
                        .filter_map(|i| config.providers.get(*i).map(|p| &*p.name))
                        .collect();
                    let _ = write!(s, " providers=[{}]", names.join(","));
                }
                s
            }
        };
        if route.client_cert_required {
            access.push_str(" client_cert=required");
        }
        let _ = writeln!(
            out,
            "route[{}] {methods} {} -> {} ({access})",
            route.index,
            route.pattern.as_str(),
            route.upstream.name
        );
    }
    out
}
