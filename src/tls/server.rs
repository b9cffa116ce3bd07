//! The listener's TLS: certificate and key files, ALPN h2 and http/1.1,
//! optional or required client certificates, and reloading when the files
//! change (a renewed certificate needs no restart).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Asked for and verified when sent; routes decide whether they need one.
    Optional,
    /// The handshake fails without a certificate the CA vouches for.
    Required,
}

/// `tls:` as configured.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that client certificates must chain to; none: not asked for.
    pub client_ca_file: Option<PathBuf>,
    /// Revoked client certificates (PEM CRLs of the client CA).
    pub client_crl_file: Option<PathBuf>,
    pub client_certs: ClientCerts,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

/// The current server config, swapped whole when the files change.
pub struct ServerTls {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    /// Digest of the files' bytes the current config was built from.
    loaded: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Read the files and build the first config: a bad file stops the start.
    pub fn load(settings: TlsSettings) -> Result<Self, String> {
        let files = Files::read(&settings)?;
        let config = build(&settings, &files)?;
        Ok(Self {
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(files.digest()),
            settings,
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// An acceptor for one connection, with the config current right now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-read the files; swap in a new config when they changed and make a
    /// valid one. A broken or half-written set keeps the old config.
    /// Returns whether a new config was swapped in.
    pub fn reload(&self) -> bool {
        let files = match Files::read(&self.settings) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(%error, "TLS files unreadable; keeping the current certificate");
                return false;
            }
        };
        let digest = files.digest();
        // A panic elsewhere while holding the lock leaves a valid digest.
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *loaded == digest {
            return false;
        }
        match build(&self.settings, &files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                *loaded = digest;
                tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Remember nothing: the next check retries, e.g. once the
                // key file has caught up with the certificate.
                tracing::error!(%error, "new TLS files refused; keeping the current certificate");
                false
            }
        }
    }

    /// Check the files every `reload_interval` until the listener is gone.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let tls: Weak<Self> = Arc::downgrade(self);
        let interval = self.settings.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(tls) = tls.upgrade() else { return };
                // File reads off the async threads.
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
        });
    }
}

/// The raw bytes of the configured files.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    client_crl: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, String> {
        Ok(Self {
            cert: super::read(&settings.cert_file)?,
            key: super::read(&settings.key_file)?,
            client_ca: settings
                .client_ca_file
                .as_deref()
                .map(super::read)
                .transpose()?,
            client_crl: settings
                .client_crl_file
                .as_deref()
                .map(super::read)
                .transpose()?,
        })
    }

    /// Each file's length first, so that bytes moving between files count
    /// as a change.
    fn digest(&self) -> [u8; 32] {
        let files: Vec<&Vec<u8>> = [&self.cert, &self.key]
            .into_iter()
            .chain(self.client_ca.as_ref())
            .chain(self.client_crl.as_ref())
            .collect();
        let lengths: Vec<[u8; 8]> = files
            .iter()
            .map(|f| (f.len() as u64).to_be_bytes())
            .collect();
        let parts: Vec<&[u8]> = lengths
            .iter()
            .zip(&files)
            .flat_map(|(len, file)| [len.as_slice(), file.as_slice()])
            .collect();
        crate::digest::sha256(&parts)
    }
}

fn build(settings: &TlsSettings, files: &Files) -> Result<ServerConfig, String> {
    let certs = super::certs_from_pem(&files.cert, &settings.cert_file)?;
    check_validity(&certs, &settings.cert_file)?;
    let key = super::key_from_pem(&files.key, &settings.key_file)?;
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&settings.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let roots = Arc::new(super::roots_from_pem(pem, path)?);
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(roots, super::provider());
            if let (Some(path), Some(pem)) = (&settings.client_crl_file, &files.client_crl) {
                let crls = CertificateRevocationListDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("`{}` is not a PEM CRL file: {e:?}", path.display()))?;
                // An empty or garbled file must not silently turn revocation off.
                if crls.is_empty() {
                    return Err(format!("`{}` holds no CRL", path.display()));
                }
                verifier = verifier.with_crls(crls);
            }
            let verifier = match settings.client_certs {
                ClientCerts::Optional => verifier.allow_unauthenticated(),
                ClientCerts::Required => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client CA `{}`: {e}", path.display()))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "`{}` and `{}` do not make a certificate and its key: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A leaf outside its validity period would break every handshake: refuse
/// it (at start, and at reload, where the old certificate keeps serving).
fn check_validity(
    certs: &[rustls::pki_types::CertificateDer<'_>],
    path: &std::path::Path,
) -> Result<(), String> {
    let Some(leaf) = certs.first() else {
        return Err(format!("`{}` holds no certificate", path.display()));
    };
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| format!("`{}`: unreadable certificate: {e}", path.display()))?;
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "`{}`: the certificate is valid from {} to {}, not now",
            path.display(),
            validity.not_before,
            validity.not_after
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if validity.not_after.timestamp() - now < 7 * 86_400 {
        tracing::warn!(cert = %path.display(), not_after = %validity.not_after, "TLS certificate expires within 7 days");
    }
    Ok(())
}
