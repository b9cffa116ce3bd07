//! What a verified client certificate tells the gateway: its SHA-256
//! thumbprint (RFC 8705 `x5t#S256`) and the `X-Forwarded-Client-Cert`
//! value an upstream may be given. Computed once per connection.

use http::HeaderValue;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The client certificate of a connection, verified by the handshake.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// SHA-256 of the DER certificate.
    pub sha256: [u8; 32],
    /// Envoy's XFCC format: `Hash=…;Subject="…";URI=…;DNS=…`.
    pub forwarded: Option<HeaderValue>,
}

impl PeerCert {
    pub fn from_der(der: &[u8]) -> Self {
        let sha256 = crate::digest::sha256(&[der]);
        let forwarded = HeaderValue::try_from(forwarded_value(&sha256, der))
            .map_err(|_| {
                tracing::warn!("client certificate names hold bytes no header may carry: X-Forwarded-Client-Cert not sent for this connection");
            })
            .ok();
        Self { sha256, forwarded }
    }
}

/// `Hash=<hex>;Subject="<DN>";URI=<san>;DNS=<san>`, as Envoy and Istio send
/// it. Values with `;`, `,`, `=` or `"` are quoted, quotes escaped.
fn forwarded_value(sha256: &[u8; 32], der: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::from("Hash=");
    for byte in sha256 {
        let _ = write!(out, "{byte:02x}");
    }
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return out;
    };
    let subject = cert.subject().to_string();
    out.push_str(";Subject=");
    push_quoted(&mut out, &subject);
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let (key, value) = match name {
                GeneralName::URI(uri) => ("URI", *uri),
                GeneralName::DNSName(dns) => ("DNS", *dns),
                _ => continue,
            };
            out.push(';');
            out.push_str(key);
            out.push('=');
            if value.contains([';', ',', '=', '"']) {
                push_quoted(&mut out, value);
            } else {
                out.push_str(value);
            }
        }
    }
    out
}

fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}
