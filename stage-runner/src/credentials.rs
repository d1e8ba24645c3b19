//! Per-job certificates (host side only, feature `credentials`).
//!
//! Each job gets a fresh ECDSA P-256 CA whose key is thrown away once the two leaf
//! certificates are signed: nothing can mint another certificate this job's runner would
//! trust, and a leaked certificate is worthless to any other job.
//!
//! Each leaf allows one extended key usage (serverAuth, clientAuth) and the verifiers in
//! [`crate::tls`] insist on it, so the server certificate — which the job can read in its own
//! container — does not authenticate a client.

use crate::tls::SERVER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::fmt;
use std::time::{Duration, SystemTime};

/// How long the certificates are valid: longer than any job, short enough to be worthless later.
pub const VALIDITY: Duration = Duration::from_secs(4 * 24 * 3600);
/// Backdating of `not_before`, for clocks of host and container instance that disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The PEM files of one job: the server half goes into the job's containers, the client half
/// stays on the host (in a 0600 state file). The CA key is not kept.
#[derive(Clone)]
pub struct JobCredentials {
    /// The job's CA certificate; both sides trust only this.
    pub ca_pem: String,
    /// The runner's certificate (SAN: DNS [`SERVER_NAME`], EKU serverAuth), signed by the CA.
    pub server_cert_pem: String,
    /// The runner's PKCS#8 private key.
    pub server_key_pem: String,
    /// The host's certificate (EKU clientAuth), signed by the CA.
    pub client_cert_pem: String,
    /// The host's PKCS#8 private key.
    pub client_key_pem: String,
}

// Keys are secrets: never in logs or panic messages.
impl fmt::Debug for JobCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobCredentials")
            .field("ca_pem", &self.ca_pem)
            .field("server_cert_pem", &self.server_cert_pem)
            .field("server_key_pem", &"[MASKED]")
            .field("client_cert_pem", &self.client_cert_pem)
            .field("client_key_pem", &"[MASKED]")
            .finish()
    }
}

/// Certificate generation failed (a key could not be generated or a certificate not signed).
#[derive(Debug)]
pub struct CredentialsError(rcgen::Error);

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generating the job's stage-runner certificates: {}", self.0)
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<rcgen::Error> for CredentialsError {
    fn from(e: rcgen::Error) -> Self {
        Self(e)
    }
}

impl JobCredentials {
    /// A fresh CA and a server and a client certificate signed by it, valid for [`VALIDITY`].
    pub fn generate() -> Result<Self, CredentialsError> {
        let now = SystemTime::now();
        let validity = |params: &mut CertificateParams, common_name: &str| {
            params.not_before = (now - CLOCK_SKEW).into();
            params.not_after = (now + VALIDITY).into();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, common_name);
            params.distinguished_name = name;
        };

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        validity(&mut ca_params, "ecs-executor job CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        let leaf = |common_name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(sans)?;
            validity(&mut params, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            SERVER_NAME,
            vec![SERVER_NAME.to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) =
            leaf("ecs-executor host", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_gets_its_own_ca_and_keys_stay_out_of_debug() {
        let a = JobCredentials::generate().unwrap();
        let b = JobCredentials::generate().unwrap();
        assert_ne!(a.ca_pem, b.ca_pem);
        assert!(a.server_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let shown = format!("{a:?}");
        assert!(!shown.contains("PRIVATE KEY") && shown.contains("[MASKED]"), "{shown}");
    }
}
