//! Proves the test PKI, the HTTPS client and the TLS upstream do what they claim.

mod support;

use std::time::Duration;

use serde_json::json;
use support::pki::{CA_NAME, cert_sha256_b64url, common_name};
use support::*;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn client(pki: &Pki) -> TlsClient {
    TlsClient::new(&pki.ca_pem()).with_timeout(Duration::from_secs(10))
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

#[test]
fn pki_issues_the_promised_certificates() {
    let pki = Pki::new();
    assert!(pki.dir().is_dir());
    assert_eq!(pem_der(pki.ca_pem_path()), pki.ca_der().to_vec());
    assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(common_name(&pki.ca_der()).as_deref(), Some(CA_NAME));
    assert_eq!(
        pem_der(pki.server_cert_path()),
        pki.server_cert_der().to_vec()
    );

    let server_der = pki.server_cert_der();
    let (_, server) = parse_x509_certificate(&server_der).expect("server cert parses");
    assert_eq!(
        server.issuer().iter_common_name().next().unwrap().as_str(),
        Ok(CA_NAME)
    );
    let sans = &server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans.contains(&GeneralName::DNSName("localhost")));
    assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));

    let alice = pki.client("alice");
    assert_eq!(alice.name, "alice");
    assert_eq!(
        std::fs::read_to_string(&alice.cert_path).unwrap(),
        alice.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(&alice.key_path).unwrap(),
        alice.key_pem
    );
    assert_eq!(pem_der(&alice.cert_path), alice.cert_der.to_vec());
    let (_, cert) = parse_x509_certificate(&alice.cert_der).expect("client cert parses");
    assert_eq!(common_name(&alice.cert_der).as_deref(), Some("alice"));
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans.contains(&GeneralName::URI("spiffe://test/alice")));
    assert!(sans.contains(&GeneralName::DNSName("alice.clients.test")));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        cert.issuer().iter_common_name().next().unwrap().as_str(),
        Ok(CA_NAME)
    );

    // x5t#S256: 32 bytes -> 43 base64url characters, no padding.
    let thumb = alice.sha256_b64url();
    assert_eq!(thumb.len(), 43);
    assert!(!thumb.contains(['=', '+', '/']));
    assert_eq!(thumb, cert_sha256_b64url(&alice.cert_der));
    assert_eq!(
        cert_sha256_b64url(b"abc"),
        "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
    );
    assert_ne!(
        thumb,
        pki.client("alice").sha256_b64url(),
        "each issue has a new key"
    );

    let mallory = pki.foreign_client("mallory");
    let (_, foreign) = parse_x509_certificate(&mallory.cert_der).unwrap();
    assert_ne!(
        foreign.issuer().iter_common_name().next().unwrap().as_str(),
        Ok(CA_NAME)
    );

    let dir = pki.dir().to_path_buf();
    drop(pki);
    assert!(!dir.exists(), "the temp directory is removed on drop");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_serves_h1_and_h2_and_records() {
    let pki = Pki::new();
    let up = Upstream::start_tls(&pki, false).await;
    assert_eq!(up.url(), format!("https://localhost:{}", up.addr().port()));

    for (alpn, version, proto) in [
        (Alpn::Http1, http::Version::HTTP_11, Some("http/1.1")),
        (Alpn::H2, http::Version::HTTP_2, Some("h2")),
        (Alpn::Both, http::Version::HTTP_2, Some("h2")),
        (Alpn::Off, http::Version::HTTP_11, None),
    ] {
        let c = client(&pki).with_alpn(alpn);
        let info = c
            .handshake(up.addr(), "localhost")
            .await
            .expect("handshake");
        assert_eq!(info.alpn.as_deref(), proto, "{alpn:?}");
        assert_eq!(info.server_cert_der, pki.server_cert_der());
        assert_eq!(info.tls_version, rustls::ProtocolVersion::TLSv1_3);

        let url = format!("{}/api/x?q=1", up.url());
        let r = c
            .request("POST", &url, &[("x-test", "1")], full("hi"))
            .await;
        assert_eq!((r.status, r.version), (200, version), "{alpn:?}");
        assert_eq!(r.header("x-upstream"), Some("yes"));
        assert_eq!(r.json(), json!({"path": "/api/x", "method": "POST"}));
        let rec = up.last();
        assert_eq!(rec.path_and_query, "/api/x?q=1");
        assert_eq!(rec.body_len, 2);
        assert_eq!(rec.header("x-test"), Some("1"));
        assert_eq!(rec.client_cert_cn, None);
    }
    assert_eq!(up.count(), 4);

    // IP server name, and big streamed bodies over h2.
    let c = client(&pki).with_alpn(Alpn::H2);
    let port = up.addr().port();
    let r = c
        .get(&format!("https://127.0.0.1:{port}/download/300000"), &[])
        .await;
    assert_eq!(r.body_sha256(), download_sha256(300_000));
    assert!(c.handshake(up.addr(), "127.0.0.1").await.is_ok());

    // A client trusting another root refuses the server.
    let wrong = TlsClient::new(&pki.foreign_ca_pem());
    let err = wrong.handshake(up.addr(), "localhost").await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(wrong.try_send(request(&up.url())).await.is_err());
    let err = c.handshake(up.addr(), "other.test").await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    assert_eq!(up.count(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_records_client_cert_cn() {
    let pki = Pki::new();
    for require in [false, true] {
        let up = Upstream::start_tls(&pki, require).await;
        for alpn in [Alpn::Http1, Alpn::H2] {
            let c = client(&pki)
                .with_alpn(alpn)
                .with_identity(&pki.client("alice"));
            assert_eq!(c.send(request(&up.url())).await.status, 200);
            assert_eq!(up.last().client_cert_cn.as_deref(), Some("alice"));
        }
    }
    // Optional client auth: no certificate is fine, a foreign one is not.
    let up = Upstream::start_tls(&pki, false).await;
    client(&pki).send(request(&up.url())).await;
    assert_eq!(up.last().client_cert_cn, None);
    let foreign = client(&pki).with_identity(&pki.foreign_client("mallory"));
    assert!(foreign.try_send(request(&up.url())).await.is_err());
    assert_eq!(up.count(), 1);

    // Plain http records no CN.
    let plain = Upstream::start().await;
    Client::new().get(&plain.url(), &[]).await;
    assert_eq!(plain.last().client_cert_cn, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_client_cert_refuses_missing_and_foreign_certs() {
    let pki = Pki::new();
    let up = Upstream::start_tls(&pki, true).await;
    let cases = [
        (
            "should refuse a client without a certificate",
            None,
            "CertificateRequired",
        ),
        (
            "should refuse a certificate from another CA",
            Some(pki.foreign_client("mallory")),
            "UnknownCA",
        ),
    ];
    for (case, identity, alert) in cases {
        for alpn in [Alpn::Http1, Alpn::H2] {
            let mut c = client(&pki).with_alpn(alpn);
            if let Some(id) = &identity {
                c = c.with_identity(id);
            }
            let err = c.handshake(up.addr(), "localhost").await.unwrap_err();
            assert!(err.contains(alert), "{case} ({alpn:?}): {err}");
            // The request fails too, but its error may be a broken pipe
            // rather than the alert (see `TlsClient::try_send`).
            let r = c.try_send(request(&up.url())).await;
            assert!(r.is_err(), "{case} ({alpn:?}): {r:?}");
        }
    }
    assert_eq!(up.count(), 0);

    // The server survives refused handshakes.
    let ok = client(&pki).with_identity(&pki.client("bob"));
    assert!(ok.handshake(up.addr(), "localhost").await.is_ok());
    assert_eq!(ok.send(request(&up.url())).await.status, 200);
    assert_eq!(up.last().client_cert_cn.as_deref(), Some("bob"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reissue_server_takes_effect_only_for_new_configs() {
    let pki = Pki::new();
    let old = pki.server_cert_der();
    let before = Upstream::start_tls(&pki, false).await;
    let c = client(&pki);

    let new = pki.reissue_server();
    assert_ne!(new, old);
    assert_eq!(pki.server_cert_der(), new);
    assert_eq!(pem_der(pki.server_cert_path()), new.to_vec());
    let serial = |der: &[u8]| parse_x509_certificate(der).unwrap().1.serial.clone();
    assert_ne!(serial(&old), serial(&new));

    // The running upstream loaded its config at start: still the old cert.
    let info = c.handshake(before.addr(), "localhost").await.unwrap();
    assert_eq!(info.server_cert_der, old);
    // A new config reads the new pair from the same paths, and it verifies.
    let after = Upstream::start_tls(&pki, false).await;
    let info = c.handshake(after.addr(), "127.0.0.1").await.unwrap();
    assert_eq!(info.server_cert_der, new);
    assert_eq!(c.send(request(&after.url())).await.status, 200);
    let leftovers: Vec<_> = std::fs::read_dir(pki.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn request(url: &str) -> http::Request<Body> {
    build_request("GET", url, &[], empty())
}
