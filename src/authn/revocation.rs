//! Revocation of JWTs at the gateway: a list of revoked `jti`s, and of
//! subjects whose tokens issued before a time are revoked, fed from a URL it
//! polls and/or a file it re-reads, each `interval`.
//!
//! A failed fetch or an unreadable file keeps the last good list: revocation
//! is the seed's "slower but enables instant logout" path, and a blip of its
//! source must not turn into an outage.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::Uri;
use serde::Deserialize;

use super::Principal;
use crate::fetch::Fetcher;

/// Where a provider's revocations come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSource {
    pub url: Option<Uri>,
    pub file: Option<PathBuf>,
    pub interval: Duration,
}

/// The document at the URL and in the file (JSON, or YAML in a file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationDocument {
    #[serde(default)]
    pub jtis: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<SubjectRevocation>,
}

/// Every token of `sub` issued before `before` (unix seconds) is revoked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRevocation {
    pub sub: String,
    pub before: i64,
}

/// One snapshot: what the URL and the file said last.
#[derive(Debug, Default)]
struct Revoked {
    jtis: HashSet<Box<str>>,
    subjects: HashMap<Box<str>, i64>,
}

/// A provider's revocations.
pub struct RevocationList {
    provider: Box<str>,
    source: RevocationSource,
    fetcher: Fetcher,
    from_url: ArcSwap<Revoked>,
    from_file: ArcSwap<Revoked>,
    file_modified: std::sync::Mutex<Option<SystemTime>>,
    /// `start` ran (a list kept across a reload is not started twice).
    started: std::sync::atomic::AtomicBool,
}

impl RevocationList {
    pub fn new(provider: &str, source: RevocationSource, fetcher: Fetcher) -> Self {
        Self {
            provider: provider.into(),
            source,
            fetcher,
            from_url: ArcSwap::from_pointee(Revoked::default()),
            from_file: ArcSwap::from_pointee(Revoked::default()),
            file_modified: std::sync::Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Is this principal's token revoked? Two hash lookups, lock-free.
    pub fn revokes(&self, principal: &Principal) -> bool {
        [self.from_url.load(), self.from_file.load()]
            .iter()
            .any(|list| {
                principal
                    .jti
                    .as_deref()
                    .is_some_and(|jti| list.jtis.contains(jti))
                    || principal
                        .subject
                        .as_deref()
                        .and_then(|sub| list.subjects.get(sub))
                        .is_some_and(|before| principal.issued_at.is_none_or(|iat| iat < *before))
            })
    }

    /// Load both sources once, then poll them every `interval` for as long as
    /// the list is in use.
    pub async fn start(self: &Arc<Self>) {
        if self
            .started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        self.refresh().await;
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.source.interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(list) = weak.upgrade() else { return };
                list.refresh().await;
            }
        });
    }

    async fn refresh(&self) {
        if let Some(uri) = &self.source.url {
            match self.fetch(uri).await {
                Ok(document) => self.from_url.store(Arc::new(document.into())),
                Err(error) => {
                    tracing::warn!(provider = %self.provider, %error, "revocation list fetch failed; keeping the last one")
                }
            }
        }
        if let Some(path) = self.source.file.clone() {
            // Re-read only when the file changed; remember the change only
            // once it was read, so a half-written file is read again.
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let last = self.file_modified.lock().map(|last| *last).unwrap_or(None);
            match modified {
                None => {
                    tracing::warn!(provider = %self.provider, path = %path.display(), "revocation file missing; keeping the last list")
                }
                Some(m) if Some(m) == last => {}
                Some(m) => match tokio::task::spawn_blocking(move || read_file(&path)).await {
                    Ok(Ok(document)) => {
                        self.from_file.store(Arc::new(document.into()));
                        if let Ok(mut last) = self.file_modified.lock() {
                            *last = Some(m);
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(provider = %self.provider, %error, "revocation file unreadable; keeping the last list")
                    }
                    Err(_) => {}
                },
            }
        }
    }

    async fn fetch(&self, uri: &Uri) -> Result<RevocationDocument, String> {
        let document = self
            .fetcher
            .get(uri, self.source.interval.min(Duration::from_secs(10)))
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        serde_json::from_slice(&document.body).map_err(|e| format!("{uri}: {e}"))
    }
}

fn read_file(path: &std::path::Path) -> Result<RevocationDocument, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl From<RevocationDocument> for Revoked {
    fn from(document: RevocationDocument) -> Self {
        Self {
            jtis: document.jtis.into_iter().map(Into::into).collect(),
            subjects: document
                .subjects
                .into_iter()
                .map(|s| (s.sub.into(), s.before))
                .collect(),
        }
    }
}
