//! `ecs-executor tls`: the mutual-TLS material for the container instances' Docker daemons.
//!
//! - `tls init DIR` makes two CAs and the runner's client certificate:
//!   - `server-ca.pem` / `server-ca-key.pem`: signs the daemons' server certificates. The
//!     runner trusts only it (`[docker] ca_file`).
//!   - `client-ca.pem` / `client-ca-key.pem`: signs the runner's client certificate. Each
//!     daemon trusts only it (`tlscacert`); it signs nothing else, so no other certificate —
//!     a job's stage-runner certificate, a daemon's own — authenticates to dockerd.
//!   - `client.pem` / `client-key.pem`: the runner's client certificate (EKU clientAuth),
//!     `[docker] cert_file` / `key_file`. Whoever holds it is root on every instance.
//! - `tls server DIR --name NAME [--ip IP]... [--ip-range CIDR]...` signs a server certificate
//!   (EKU serverAuth) with the server CA: `server.pem` / `server-key.pem`. One for the fleet,
//!   valid for every address of the instances' subnets (and a DNS name), or one per instance
//!   with its IP (docs/deploy.md has the trade-offs).
//! - `tls put-ssm DIR --prefix P` puts what an instance needs into SSM Parameter Store:
//!   `P/client-ca` and `P/server-cert` (String), `P/server-key` (SecureString). CA keys and the
//!   client key never leave DIR.
//!
//! Every key is ECDSA P-256 (a key and its certificate fit the 4096-character standard tier),
//! written 0600 in a directory made 0700. Nothing is overwritten without `--force`.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use crate::failure::Failure;

/// The CAs' subject names. `tls server` rebuilds the issuer from the name and the key, so it
/// signs only with a CA `tls init` made.
const SERVER_CA_NAME: &str = "ecs-executor dockerd server CA";
const CLIENT_CA_NAME: &str = "ecs-executor dockerd client CA";
const CLIENT_NAME: &str = "ecs-executor runner";
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Backdating of `not_before` for instance clocks a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

pub const SERVER_CA: &str = "server-ca.pem";
pub const SERVER_CA_KEY: &str = "server-ca-key.pem";
pub const CLIENT_CA: &str = "client-ca.pem";
pub const CLIENT_CA_KEY: &str = "client-ca-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

fn rcgen_failure(what: &str) -> impl Fn(rcgen::Error) -> Failure + '_ {
    move |e| Failure::system(format!("{what}: {e}"))
}

fn params(common_name: &str, sans: Vec<SanType>, days: u32) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + DAY * days).into();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params
}

fn ca_params(common_name: &str, days: u32) -> CertificateParams {
    let mut p = params(common_name, Vec::new(), days);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A leaf certificate for `usage`, signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<(String, String), Failure> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_failure("generating a key"))?;
    let mut p = params(common_name, sans, days);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, ca).map_err(rcgen_failure("signing a certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A self-signed CA: (certificate PEM, key PEM).
fn new_ca(common_name: &str, days: u32) -> Result<(String, String), Failure> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_failure("generating a key"))?;
    let cert = ca_params(common_name, days)
        .self_signed(&key)
        .map_err(rcgen_failure("signing the CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA named `common_name` whose key is `key_file`, as an issuer.
fn load_ca(key_file: &Path, common_name: &str) -> Result<Issuer<'static, KeyPair>, Failure> {
    let pem =
        fs::read_to_string(key_file).map_err(|e| Failure::system(format!("reading {}: {e}", key_file.display())))?;
    let key = KeyPair::from_pem(&pem)
        .map_err(|e| Failure::system(format!("{}: not a PEM private key: {e}", key_file.display())))?;
    Ok(Issuer::new(ca_params(common_name, 1), key))
}

/// Writes `files` into `dir` (made 0700): keys 0600, certificates 0644. All or nothing:
/// refuses when any exists, unless `force`.
fn write_files(dir: &Path, files: &[(&str, &str)], force: bool) -> Result<(), Failure> {
    fs::create_dir_all(dir).map_err(|e| Failure::system(format!("creating {}: {e}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Failure::system(format!("chmod 0700 {}: {e}", dir.display())))?;
    if !force {
        let present: Vec<_> = files
            .iter()
            .filter(|(n, _)| dir.join(n).exists())
            .map(|(n, _)| *n)
            .collect();
        if !present.is_empty() {
            return Err(Failure::build(format!(
                "{} already has {}: refusing to overwrite (pass --force to replace)",
                dir.display(),
                present.join(", ")
            )));
        }
    }
    for (name, content) in files {
        let path = dir.join(name);
        let mode = if name.ends_with("-key.pem") { 0o600 } else { 0o644 };
        // Written under a temporary name with the final mode from the start, then renamed.
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Failure::system(format!("creating {}: {e}", tmp.display())))?;
        f.write_all(content.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Failure::system(format!("writing {}: {e}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(|e| Failure::system(format!("renaming to {}: {e}", path.display())))?;
    }
    Ok(())
}

fn check_days(days: u32) -> Result<(), Failure> {
    if days == 0 || days > 3650 {
        return Err(Failure::build(format!("--days {days}: must be 1-3650")));
    }
    Ok(())
}

/// `tls init`: both CAs and the runner's client certificate.
pub fn init(dir: &Path, ca_days: u32, client_days: u32, force: bool) -> Result<(), Failure> {
    check_days(ca_days)?;
    check_days(client_days)?;
    if client_days > ca_days {
        return Err(Failure::build(
            "the client certificate cannot outlive its CA (--client-days > --ca-days)",
        ));
    }
    let (server_ca, server_ca_key) = new_ca(SERVER_CA_NAME, ca_days)?;
    let (client_ca, client_ca_key) = new_ca(CLIENT_CA_NAME, ca_days)?;
    let issuer = Issuer::new(
        ca_params(CLIENT_CA_NAME, ca_days),
        KeyPair::from_pem(&client_ca_key).map_err(rcgen_failure("reloading the client CA key"))?,
    );
    let (client, client_key) = leaf(
        &issuer,
        CLIENT_NAME,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        client_days,
    )?;
    write_files(
        dir,
        &[
            (SERVER_CA, &server_ca),
            (SERVER_CA_KEY, &server_ca_key),
            (CLIENT_CA, &client_ca),
            (CLIENT_CA_KEY, &client_ca_key),
            (CLIENT_CERT, &client),
            (CLIENT_KEY, &client_key),
        ],
        force,
    )?;
    println!(
        "wrote {dir}/{{{SERVER_CA},{SERVER_CA_KEY},{CLIENT_CA},{CLIENT_CA_KEY},{CLIENT_CERT},{CLIENT_KEY}}}\n\
         runner config: [docker] ca_file = \"{dir}/{SERVER_CA}\", cert_file = \"{dir}/{CLIENT_CERT}\", key_file = \"{dir}/{CLIENT_KEY}\"\n\
         keep {SERVER_CA_KEY} and {CLIENT_CA_KEY} offline once the server certificate is made",
        dir = dir.display()
    );
    Ok(())
}

/// The subject alternative names of a server certificate: DNS names and IP addresses.
fn server_sans(names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>, Failure> {
    if names.is_empty() && ips.is_empty() {
        return Err(Failure::build("a server certificate needs at least one --name or --ip"));
    }
    let mut sans = Vec::new();
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(Failure::build(format!("--name {name:?}: not a DNS name")));
        }
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|e| Failure::build(format!("--name {name:?}: {e}")))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(sans)
}

/// Every host address of an IPv4 CIDR (network and broadcast addresses left out), for a fleet
/// certificate valid for whatever address an instance of those subnets gets. At most /22.
pub fn expand_ip_range(cidr: &str) -> Result<Vec<IpAddr>, Failure> {
    let bad = |why: &str| Failure::build(format!("--ip-range {cidr:?}: {why}"));
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected an IPv4 CIDR such as 10.0.1.0/24"))?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
    let len: u32 = len.parse().map_err(|_| bad("not a prefix length"))?;
    if !(22..=30).contains(&len) {
        return Err(bad(
            "prefix length must be 22-30 (a certificate with more addresses gets too big)",
        ));
    }
    let mask = u32::MAX << (32 - len);
    let base = u32::from(addr);
    if base & !mask != 0 {
        return Err(bad("host bits set; give the network address"));
    }
    let size = 1u32 << (32 - len);
    Ok((1..size - 1).map(|i| IpAddr::V4((base + i).into())).collect())
}

/// `tls server`: a daemon certificate signed by the server CA in `dir`.
pub fn server(dir: &Path, names: &[String], ips: &[IpAddr], days: u32, force: bool) -> Result<(), Failure> {
    check_days(days)?;
    let sans = server_sans(names, ips)?;
    let ca = load_ca(&dir.join(SERVER_CA_KEY), SERVER_CA_NAME)?;
    let cn = names.first().cloned().unwrap_or_else(|| ips[0].to_string());
    let (cert, key) = leaf(&ca, &cn, sans, ExtendedKeyUsagePurpose::ServerAuth, days)?;
    write_files(dir, &[(SERVER_CERT, &cert), (SERVER_KEY, &key)], force)?;
    println!("wrote {}/{{{SERVER_CERT},{SERVER_KEY}}} for {cn}", dir.display());
    Ok(())
}

/// Where `put-ssm` sends the parameters.
pub struct SsmTarget {
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub kms_key_id: Option<String>,
}

/// The parameters an instance needs: (name, value, secure).
pub fn ssm_parameters(dir: &Path, prefix: &str) -> Result<Vec<(String, String, bool)>, Failure> {
    let valid = prefix.starts_with('/')
        && !prefix.ends_with('/')
        && prefix.len() <= 1000
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c));
    if !valid {
        return Err(Failure::build(format!(
            "--prefix {prefix:?}: must start with '/', not end with '/', and use only letters, digits and / _ . -"
        )));
    }
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).map_err(|e| {
            Failure::system(format!(
                "reading {}: {e} (run `tls init` and `tls server` first)",
                dir.join(name).display()
            ))
        })
    };
    Ok(vec![
        (format!("{prefix}/client-ca"), read(CLIENT_CA)?, false),
        (format!("{prefix}/server-cert"), read(SERVER_CERT)?, false),
        (format!("{prefix}/server-key"), read(SERVER_KEY)?, true),
    ])
}

/// `tls put-ssm`: the instance side into Parameter Store (overwriting earlier versions).
pub async fn put_ssm(dir: &Path, target: &SsmTarget) -> Result<(), Failure> {
    let parameters = ssm_parameters(dir, &target.prefix)?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &target.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &target.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let ssm = aws_sdk_ssm::Client::new(&loader.load().await);
    for (name, value, secure) in parameters {
        let mut req = ssm
            .put_parameter()
            .name(&name)
            .value(value)
            .overwrite(true)
            // Standard (free) while it fits 4 KB; a certificate with a whole subnet's
            // addresses may need the advanced tier.
            .tier(aws_sdk_ssm::types::ParameterTier::IntelligentTiering)
            .r#type(if secure {
                aws_sdk_ssm::types::ParameterType::SecureString
            } else {
                aws_sdk_ssm::types::ParameterType::String
            });
        if secure && let Some(key) = &target.kms_key_id {
            req = req.key_id(key);
        }
        let put = req.send().await.map_err(|e| {
            Failure::system(format!(
                "ssm PutParameter {name}: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&e)
            ))
        })?;
        println!(
            "put {name} ({}, version {})",
            if secure { "SecureString" } else { "String" },
            put.version()
        );
    }
    Ok(())
}

/// Default directory for `tls` commands.
pub fn default_dir() -> PathBuf {
    PathBuf::from("/etc/ecs-executor/docker")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecs-executor-tls-{tag}-{}", crate::state::random_hex()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        let pem = fs::read_to_string(path).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        CertificateDer::from(base64_decode(&body))
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            acc = (acc << 6) | T.iter().position(|t| *t == c).unwrap() as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    fn roots(ca: &Path) -> Arc<rustls::RootCertStore> {
        let mut r = rustls::RootCertStore::empty();
        r.add(der(ca)).unwrap();
        Arc::new(r)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_ok(dir: &Path, ca: &str, name: &str) -> Result<(), rustls::Error> {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&dir.join(ca)), provider())
            .build()
            .unwrap();
        v.verify_server_cert(
            &der(&dir.join(SERVER_CERT)),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }

    fn client_ok(dir: &Path, ca: &str, cert: &str) -> Result<(), rustls::Error> {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&dir.join(ca)), provider())
            .build()
            .unwrap();
        v.verify_client_cert(&der(&dir.join(cert)), &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn init_and_server_make_separate_cas_with_ekus_and_private_keys() {
        let dir = tempdir("init");
        init(&dir, 3650, 365, false).unwrap();
        server(
            &dir,
            &["docker.ecs-executor.internal".into()],
            &["10.0.1.4".parse().unwrap()],
            365,
            false,
        )
        .unwrap();

        // The daemon's certificate chains to the server CA, for its name and its IP.
        server_ok(&dir, SERVER_CA, "docker.ecs-executor.internal").unwrap();
        server_ok(&dir, SERVER_CA, "10.0.1.4").unwrap();
        assert!(
            server_ok(&dir, SERVER_CA, "10.0.1.5").is_err(),
            "another IP must not verify"
        );
        // ... and not to the client CA: the two CAs are distinct.
        assert!(server_ok(&dir, CLIENT_CA, "docker.ecs-executor.internal").is_err());
        // The runner's client certificate is accepted by a daemon trusting the client CA.
        client_ok(&dir, CLIENT_CA, CLIENT_CERT).unwrap();
        // A server certificate (serverAuth only) is no client certificate, even under the
        // right CA, and nothing the server CA signed passes as a client.
        assert!(client_ok(&dir, SERVER_CA, SERVER_CERT).is_err());
        assert!(client_ok(&dir, SERVER_CA, CLIENT_CERT).is_err());

        let mode = |n: &str| fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        for key in [SERVER_CA_KEY, CLIENT_CA_KEY, CLIENT_KEY, SERVER_KEY] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        assert_eq!(mode(CLIENT_CERT), 0o644);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // P-256: key and certificate fit a standard-tier parameter (4096 characters).
        let params = ssm_parameters(&dir, "/ecs-executor/docker").unwrap();
        assert_eq!(params.len(), 3);
        assert!(params.iter().all(|(_, v, _)| v.len() < 4096));
        assert_eq!(
            params
                .iter()
                .filter(|(_, _, secure)| *secure)
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["/ecs-executor/docker/server-key"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_ip_range_certificate_is_valid_for_every_host_address_of_the_subnet() {
        let dir = tempdir("range");
        init(&dir, 30, 30, false).unwrap();
        let ips = expand_ip_range("10.0.1.0/24").unwrap();
        assert_eq!(ips.len(), 254);
        server(&dir, &["docker.ecs-executor.internal".into()], &ips, 30, false).unwrap();
        server_ok(&dir, SERVER_CA, "10.0.1.1").unwrap();
        server_ok(&dir, SERVER_CA, "10.0.1.254").unwrap();
        assert!(server_ok(&dir, SERVER_CA, "10.0.2.1").is_err());
        let pem = fs::read_to_string(dir.join(SERVER_CERT)).unwrap();
        assert!(
            pem.len() < 4096,
            "a /24 certificate fits the standard tier: {} chars",
            pem.len()
        );
        for bad in ["10.0.1.0", "10.0.1.5/24", "10.0.0.0/16", "fd00::/120", "10.0.1.0/x"] {
            assert!(
                expand_ip_range(bad).unwrap_err().message.contains("--ip-range"),
                "{bad}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_is_overwritten_without_force() {
        let dir = tempdir("force");
        init(&dir, 30, 30, false).unwrap();
        let before = fs::read_to_string(dir.join(CLIENT_CA)).unwrap();
        let err = init(&dir, 30, 30, false).unwrap_err();
        assert!(
            err.message.contains("refusing to overwrite") && err.message.contains(CLIENT_CA),
            "{err}"
        );
        assert_eq!(fs::read_to_string(dir.join(CLIENT_CA)).unwrap(), before);
        init(&dir, 30, 30, true).unwrap();
        assert_ne!(fs::read_to_string(dir.join(CLIENT_CA)).unwrap(), before);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let dir = tempdir("bad");
        let e = server(&dir, &[], &[], 30, false).unwrap_err();
        assert!(e.message.contains("--name or --ip"), "{e}");
        let e = server(&dir, &["bad name".into()], &[], 30, false).unwrap_err();
        assert!(e.message.contains("not a DNS name"), "{e}");
        let e = server(&dir, &["ok.example".into()], &[], 30, false).unwrap_err();
        assert!(e.message.contains(SERVER_CA_KEY), "no CA yet: {e}");
        let e = init(&dir, 0, 1, false).unwrap_err();
        assert!(e.message.contains("1-3650"), "{e}");
        let e = init(&dir, 10, 20, false).unwrap_err();
        assert!(e.message.contains("outlive"), "{e}");
        let e = ssm_parameters(&dir, "no-slash").unwrap_err();
        assert!(e.message.contains("--prefix"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
