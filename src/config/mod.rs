//! gateway.yaml: parse → check → compile into the typed structures the
//! request path uses. Every error names the file, line, key path and what is
//! wrong; all errors found are reported at once.

mod auth_service;
mod compile;
pub mod duration;
mod env;
mod file;
mod locate;
mod size;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::HeaderName;

use crate::auth_service::AuthServiceConfig;
use crate::authn::api_key::ApiKeys;
use crate::authn::provider::ProviderConfig;
use crate::dpop::DpopSettings;
use crate::routes::RouteTable;
use crate::server::ServerSettings;
use crate::tls::server::ServerTls;

/// A loaded, valid configuration, ready to run.
#[derive(Debug)]
pub struct Config {
    /// The gateway's address; `None` when only the auth service runs.
    pub listen: Option<SocketAddr>,
    /// RFC 6750 `realm` of the challenges.
    pub realm: Box<str>,
    pub providers: Vec<ProviderConfig>,
    pub routes: RouteTable,
    /// Every header the gateway sets from claims, on any route: stripped
    /// from every incoming request.
    pub identity_headers: Box<[HeaderName]>,
    /// Verified-token cache capacity; 0 turns the cache off.
    pub token_cache_entries: u64,
    /// The built-in auth service, when configured.
    pub auth_service: Option<AuthServiceConfig>,
    /// API keys, when configured.
    pub api_keys: Option<ApiKeys>,
    /// TLS on the listener, files loaded.
    pub tls: Option<Arc<ServerTls>>,
    /// How DPoP proofs are judged.
    pub dpop: DpopSettings,
    /// `http` or `https`: how clients address the gateway (DPoP `htu`).
    pub public_scheme: &'static str,
    /// The gateway listener's limits.
    pub server: ServerSettings,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, if anywhere.
    pub admin: Option<SocketAddr>,
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// Key path such as `routes[2].upstream`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(file: &str, message: String) -> Self {
        Self(vec![ConfigError {
            file: file.to_owned(),
            position: None,
            path: String::new(),
            message,
        }])
    }
}

/// Load and compile a config file; `${VAR}` comes from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(&name, format!("cannot read: {e}")))?;
    from_str(&text, &name, |var| std::env::var(var).ok())
}

/// Compile config text. `file` names it in errors; `env` resolves `${VAR}`.
pub fn from_str(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let at = |position, path: &str, message: String| ConfigError {
        file: file.to_owned(),
        position,
        path: path.to_owned(),
        message,
    };
    let mut document: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let position = e.location().map(|l| (l.line(), l.column()));
        ConfigErrors(vec![at(position, "", without_position(&e.to_string()))])
    })?;
    let located = |errors: Vec<(String, String)>| {
        let mut errors: Vec<ConfigError> = errors
            .into_iter()
            .map(|(path, message)| {
                let position = locate::locate(text, &locate::parse_path(&path));
                at(position, &path, message)
            })
            .collect();
        // In file order, as the user reads the file.
        errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, 0)));
        ConfigErrors(errors)
    };
    let unset = env::substitute(&mut document, &env);
    if !unset.is_empty() {
        return Err(located(unset));
    }
    let parsed: file::File = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        located(vec![(path, without_position(&e.into_inner().to_string()))])
    })?;
    compile::compile(parsed).map_err(located)
}

/// serde_yaml's message minus its own ` at line N column M`, which we
/// print in front instead.
fn without_position(message: &str) -> String {
    let Some(start) = message.find(" at line ") else {
        return message.to_owned();
    };
    let rest = &message[start..];
    let end = rest
        .find(" column ")
        .map(|c| {
            let digits = rest[c + 8..].bytes().take_while(u8::is_ascii_digit).count();
            c + 8 + digits
        })
        .unwrap_or(rest.len());
    format!("{}{}", &message[..start], &rest[end..])
}

#[cfg(test)]
mod tests;
