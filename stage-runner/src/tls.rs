//! Mutual TLS between host and runner: TLS 1.3 only, ring provider, one private CA per job.
//!
//! Both ends trust only the job's CA. The client verifies the server certificate against the
//! fixed name [`SERVER_NAME`], never against the address it dials: task IPs change, the job's
//! CA does not. The server requires a client certificate chaining to the same CA.
//!
//! Extended key usage keeps the two leaves apart: the server refuses a client certificate that
//! does not allow clientAuth (e.g. the job's own server certificate, which the job can read in
//! its container, presented as a client certificate), and the client refuses a server
//! certificate that does not allow serverAuth. webpki, under both verifiers, enforces the
//! usage when the certificate has an EKU extension; a certificate without one would pass, but
//! none chains to a job's CA: the host's `credentials` module puts an EKU on both leaves and throws
//! the CA key away.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::sync::Arc;

/// The DNS name in the server certificate's SAN, and the name every client verifies.
pub const SERVER_NAME: &str = "ecs-executor-stage-runner";

/// A PEM input that could not be used, or a rustls configuration that could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// The named PEM input (e.g. "CA certificate") is not valid PEM of the expected type.
    Pem {
        /// Which input: "CA certificate", "certificate" or "private key".
        what: &'static str,
        /// What the PEM parser said.
        reason: String,
    },
    /// The named PEM input holds no item of the expected type (e.g. a key file given as CA).
    Empty(&'static str),
    /// rustls refused the certificates or key (e.g. a key that does not match the certificate).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { what, reason } => write!(f, "{what}: not usable PEM: {reason}"),
            Self::Empty(what) => write!(f, "{what}: no PEM item of the expected type found"),
            Self::Config(reason) => write!(f, "TLS configuration: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The name clients verify the server certificate against: [`SERVER_NAME`].
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: presents `cert_pem`/`key_pem` and accepts only clients whose certificate
/// chains to `ca_pem`. `cert_pem` may hold a chain (leaf first).
pub fn server_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// The client side: trusts only `ca_pem` and authenticates with `cert_pem`/`key_pem`.
/// Connect with [`server_name`] as the name to verify.
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    const WHAT: &str = "CA certificate";
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, WHAT)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: WHAT,
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(pem, "certificate")
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(what));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty(WHAT),
        e => TlsError::Pem {
            what: WHAT,
            reason: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_PEM: &[u8] = b"hello";
    const BROKEN_PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";

    #[test]
    fn missing_or_broken_pem_names_the_input() {
        let err = server_config(NOT_PEM, NOT_PEM, NOT_PEM).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA certificate: no PEM item of the expected type found"
        );
        let err = client_config(BROKEN_PEM, NOT_PEM, NOT_PEM).unwrap_err();
        assert!(err.to_string().starts_with("CA certificate: not usable PEM"), "{err}");
    }

    #[test]
    fn server_name_is_the_constant() {
        assert_eq!(format!("{:?}", server_name()), format!("DnsName({SERVER_NAME:?})"));
    }

    #[cfg(feature = "credentials")]
    #[test]
    fn generated_credentials_make_both_configs() {
        let c = crate::credentials::JobCredentials::generate().unwrap();
        server_config(
            c.ca_pem.as_bytes(),
            c.server_cert_pem.as_bytes(),
            c.server_key_pem.as_bytes(),
        )
        .unwrap();
        client_config(
            c.ca_pem.as_bytes(),
            c.client_cert_pem.as_bytes(),
            c.client_key_pem.as_bytes(),
        )
        .unwrap();
        // A key that is not the certificate's is refused up front, not at the first handshake.
        let err = client_config(
            c.ca_pem.as_bytes(),
            c.client_cert_pem.as_bytes(),
            c.server_key_pem.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        let err = server_config(
            c.ca_pem.as_bytes(),
            c.server_key_pem.as_bytes(),
            c.server_key_pem.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "certificate: no PEM item of the expected type found");
    }
}
