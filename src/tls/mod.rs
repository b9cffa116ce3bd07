//! TLS with rustls: the listener's certificates and client certificates
//! (`server`), what a verified client certificate tells the upstream
//! (`peer`), and the upstream side (`upstream`).
//!
//! Every config is built with the aws-lc-rs provider explicitly, so nothing
//! depends on a process-wide default.

pub mod peer;
pub mod server;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certs_from_pem(&read(path)?, path)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    key_from_pem(&read(path)?, path)
}

/// A CA bundle as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    roots_from_pem(&read(path)?, path)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// `path` only names the source in errors.
fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error(path, e))
}

fn roots_from_pem(pem: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs_from_pem(pem, path)?);
    if added == 0 {
        return Err(format!(
            "`{}` holds no usable CA certificate",
            path.display()
        ));
    }
    Ok(roots)
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => format!("cannot read `{}`: {e}", path.display()),
        Error::NoItemsFound => format!("`{}` holds no private key", path.display()),
        other => format!("`{}` is not valid PEM: {other:?}", path.display()),
    }
}
