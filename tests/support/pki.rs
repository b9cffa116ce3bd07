//! A throwaway test PKI made with rcgen: a CA, a server certificate for
//! `localhost`/`127.0.0.1`, client certificates, and an unrelated "foreign" CA.
//!
//! Usage:
//!
//! ```ignore
//! let pki = Pki::new();
//! let alice = pki.client("alice");          // signed by the test CA
//! let mallory = pki.foreign_client("mallory"); // signed by another CA
//! let up = Upstream::start_tls(&pki, true).await;
//! let client = TlsClient::new(&pki.ca_pem()).with_identity(&alice);
//! let new_der = pki.reissue_server();       // same paths, new cert and key
//! let expired = pki.reissue_server_valid_between((2000, 1, 1), (2001, 1, 1));
//! let crl_path = pki.crl(&[&alice]);        // a CRL from the test CA revoking alice
//! ```
//!
//! Files live in a fresh directory under [`std::env::temp_dir`], removed when
//! the [`Pki`] drops. Keys are ECDSA P-256 (rcgen's default), certificates are
//! valid 1975..4096 (rcgen's default), so nothing here expires unless made to
//! with [`Pki::reissue_server_valid_between`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Common name of the test CA.
pub const CA_NAME: &str = "Portcullis Test CA";
/// Common name of the unrelated CA behind [`Pki::foreign_client`].
pub const FOREIGN_CA_NAME: &str = "Foreign Test CA";

/// Makes every file and directory name unique within the process.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The test PKI. See the module docs.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    foreign_ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem_path: PathBuf,
    server_cert_path: PathBuf,
    server_key_path: PathBuf,
    /// The certificate currently in `server_cert_path`.
    server_der: Mutex<CertificateDer<'static>>,
}

/// A client certificate and its key, in memory and on disk.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The `name` it was issued for (its CN).
    pub name: String,
    /// PEM of the leaf certificate alone (no chain).
    pub cert_pem: String,
    /// PEM (PKCS#8) of the private key.
    pub key_pem: String,
    /// DER of the leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// File holding `cert_pem`.
    pub cert_path: PathBuf,
    /// File holding `key_pem`.
    pub key_path: PathBuf,
}

// === impl Pki ===

impl Pki {
    /// A fresh PKI in a new temp directory: the test CA ([`CA_NAME`]), a
    /// server certificate for DNS `localhost` and IP `127.0.0.1`, and a
    /// foreign CA. Panics if generation or file writes fail.
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-pki-{}-{}-{}",
            std::process::id(),
            next_seq(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ca = new_ca(CA_NAME);
        let foreign_ca = new_ca(FOREIGN_CA_NAME);
        let ca_pem_path = dir.join("ca.pem");
        write_atomic(&ca_pem_path, ca.pem().as_bytes());
        write_atomic(&dir.join("foreign-ca.pem"), foreign_ca.pem().as_bytes());
        let server_cert_path = dir.join("server.pem");
        let server_key_path = dir.join("server.key");
        let pki = Pki {
            dir,
            ca,
            foreign_ca,
            ca_pem_path,
            server_cert_path,
            server_key_path,
            server_der: Mutex::new(CertificateDer::from(Vec::new())),
        };
        pki.reissue_server();
        pki
    }

    /// The temp directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PEM file of the test CA certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// PEM of the test CA certificate.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// DER of the test CA certificate.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// PEM of the foreign CA certificate (e.g. to make a client trust the
    /// wrong root). Its file is `dir()/foreign-ca.pem`.
    pub fn foreign_ca_pem(&self) -> String {
        self.foreign_ca.pem()
    }

    /// PEM file of the current server certificate (leaf only).
    pub fn server_cert_path(&self) -> &Path {
        &self.server_cert_path
    }

    /// PEM (PKCS#8) file of the current server key.
    pub fn server_key_path(&self) -> &Path {
        &self.server_key_path
    }

    /// DER of the server certificate currently on disk.
    pub fn server_cert_der(&self) -> CertificateDer<'static> {
        self.server_der.lock().expect("pki server der").clone()
    }

    /// Issue a new server certificate (new key, hence new serial; same SANs)
    /// and replace the files at [`Pki::server_cert_path`] and
    /// [`Pki::server_key_path`]. Each file is written to a temp file and
    /// renamed, so a reader never sees half a file; the key is replaced
    /// first, so whoever sees the new certificate also finds its key (a
    /// reader racing between the two renames may pair the old certificate
    /// with the new key, and must retry). Returns the new certificate's DER.
    pub fn reissue_server(&self) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("server SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test Server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.ca).expect("sign server cert");
        let mut current = self.server_der.lock().expect("pki server der");
        write_atomic(&self.server_key_path, key.serialize_pem().as_bytes());
        write_atomic(&self.server_cert_path, cert.pem().as_bytes());
        *current = cert.der().clone();
        current.clone()
    }

    /// A client certificate for `name` signed by the test CA: CN = `name`,
    /// SANs URI `spiffe://test/{name}` and DNS `{name}.clients.test`, EKU
    /// clientAuth. `name` must be a valid DNS label. Each call issues a new
    /// key and new files.
    pub fn client(&self, name: &str) -> ClientIdentity {
        self.issue_client(name, &self.ca, "client")
    }

    /// Like [`Pki::client`] but signed by the unrelated foreign CA, so
    /// anything trusting only the test CA must refuse it.
    pub fn foreign_client(&self, name: &str) -> ClientIdentity {
        self.issue_client(name, &self.foreign_ca, "foreign")
    }

    /// A rustls server config presenting the server certificate and key as
    /// they are on disk now (so a config built after [`Pki::reissue_server`]
    /// presents the new one), offering ALPN `h2` and `http/1.1`.
    ///
    /// Client certificates are always requested and verified against the
    /// test CA: with `require_client_cert` a client without one is refused;
    /// without it, a client may present none, but a presented certificate
    /// must still chain to the test CA.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("test CA is a valid root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        }
        .build()
        .expect("client verifier");
        let certs = CertificateDer::pem_file_iter(&self.server_cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("read {}: {e}", self.server_cert_path.display()));
        let key = PrivateKeyDer::from_pem_file(&self.server_key_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.server_key_path.display()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("server cert and key form a pair");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn issue_client(
        &self,
        name: &str,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        prefix: &str,
    ) -> ClientIdentity {
        let bad = |e| panic!("client name {name:?} does not fit a SAN: {e}");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::URI(
                format!("spiffe://test/{name}")
                    .try_into()
                    .unwrap_or_else(bad),
            ),
            SanType::DnsName(
                format!("{name}.clients.test")
                    .try_into()
                    .unwrap_or_else(bad),
            ),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, issuer).expect("sign client cert");
        let stem = format!("{prefix}-{name}-{}", next_seq());
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}.key"));
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write_atomic(&cert_path, cert_pem.as_bytes());
        write_atomic(&key_path, key_pem.as_bytes());
        ClientIdentity {
            name: name.to_string(),
            cert_pem,
            key_pem,
            cert_der: cert.der().clone(),
            cert_path,
            key_path,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// === impl ClientIdentity ===

impl ClientIdentity {
    /// base64url (no padding) of the SHA-256 of the DER certificate: the
    /// RFC 8705 `x5t#S256` confirmation value.
    pub fn sha256_b64url(&self) -> String {
        cert_sha256_b64url(&self.cert_der)
    }

    /// The private key as rustls wants it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("client key PEM")
    }
}

/// base64url (no padding) SHA-256 of `der` (RFC 8705 `x5t#S256`).
pub fn cert_sha256_b64url(der: &[u8]) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The subject common name of a DER certificate, if it parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn new_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-signed CA")
}

/// Write `data` to a sibling temp file, then rename it over `path`.
fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!("tmp-{}", next_seq()));
    fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}

// === CRLs and validity periods ===

impl Pki {
    /// A CRL from the test CA revoking `revoked` (by serial number),
    /// issued 2020-01-01 with its next update in 4000, written to a new PEM
    /// file in [`Pki::dir`]. Returns the file's path.
    pub fn crl(&self, revoked: &[&ClientIdentity]) -> PathBuf {
        let revoked_certs = revoked
            .iter()
            .map(|id| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_number(&id.cert_der)),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(next_seq() + 1),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).expect("sign CRL");
        let path = self.dir.join(format!("crl-{}.pem", next_seq()));
        write_atomic(&path, crl.pem().expect("CRL PEM").as_bytes());
        path
    }

    /// Like [`Pki::reissue_server`] (same SANs, new key, files replaced the
    /// same way), but valid only from `not_before` to `not_after`, each a
    /// UTC `(year, month, day)`: e.g. expired, or not valid yet. Returns the
    /// new certificate's DER.
    pub fn reissue_server_valid_between(
        &self,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("server SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test Server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.ca).expect("sign server cert");
        let mut current = self.server_der.lock().expect("pki server der");
        write_atomic(&self.server_key_path, key.serialize_pem().as_bytes());
        write_atomic(&self.server_cert_path, cert.pem().as_bytes());
        *current = cert.der().clone();
        current.clone()
    }
}

/// The serial number of a DER certificate, big-endian, without a sign byte.
pub fn serial_number(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    cert.tbs_certificate.serial.to_bytes_be()
}
