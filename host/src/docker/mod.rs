//! The Docker daemon on a container instance: a mutual-TLS connection that trusts only the
//! configured CA, and the task's containers found by the ECS agent's labels.
//!
//! bollard's own TLS setup also trusts the system's public CAs and opens a new connection per
//! request; we give it our own transport instead (one CA, client cert required, keep-alive).
//!
//! This module is the only one that talks to bollard: containers and images are inspected,
//! archives uploaded, events watched and commands exec'd (`exec`) through `DockerHost`.

pub mod exec;
pub mod images;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, LogsOptions, UploadToContainerOptions,
};
use bollard::{BollardRequest, ClientVersion, Docker};
use futures_util::{Stream, StreamExt};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};

use crate::config::DockerSettings;
use crate::failure::{Blame, Classify};

/// The label the ECS agent puts on every container of a task.
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";

/// Docker API 1.41 (Docker 20.10) is served by every daemon an ECS-optimized AMI has run
/// since 2021; asking for it avoids a version negotiation round trip on every stage.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot read Docker TLS file {path}: {message}")]
    TlsFile { path: String, message: String },
    #[error("Docker at {address}: {message}")]
    Api { address: String, message: String },
    #[error("Docker at {address}: the task has no container named {name:?} (found: {found})")]
    MissingContainer {
        address: String,
        name: String,
        found: String,
    },
}

impl Classify for DockerError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

/// Where a container instance's Docker daemon listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub host: String,
    pub port: u16,
    /// The name the daemon's certificate must carry when it is not `host` (an address
    /// plugin's `tls-server-name`); `None`: `host` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

impl DockerEndpoint {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A connected daemon, with the address kept for error messages.
#[derive(Clone)]
pub struct DockerHost {
    pub api: Docker,
    pub address: String,
    /// The TLS files in use (for hints in error messages); `None` on plain TCP.
    tls_files: Option<TlsFiles>,
}

#[derive(Clone)]
struct TlsFiles {
    ca: String,
    cert: String,
}

impl DockerHost {
    /// A client for `endpoint`: mutual TLS, or plain TCP when the config explicitly allows it
    /// (with a warning on every use). Nothing is sent until the first request.
    pub fn connect(settings: &DockerSettings, endpoint: &DockerEndpoint) -> Result<DockerHost, DockerError> {
        Self::connect_as(settings, endpoint, ClientCert::Present)
    }

    /// As [`DockerHost::connect`] over TLS, trusting the same CA but offering NO client
    /// certificate: what `check` tries, to see that the daemon refuses such a client.
    pub fn connect_without_client_cert(
        settings: &DockerSettings,
        endpoint: &DockerEndpoint,
    ) -> Result<DockerHost, DockerError> {
        Self::connect_as(settings, endpoint, ClientCert::Absent)
    }

    fn connect_as(
        settings: &DockerSettings,
        endpoint: &DockerEndpoint,
        client_cert: ClientCert,
    ) -> Result<DockerHost, DockerError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(settings.connect_timeout_secs)));
        http.set_nodelay(true);
        // A stage can stream for hours with nothing to say: TCP keepalive notices a peer that
        // vanished (instance gone, network partition) within about half a minute instead of never.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(5)));
        http.set_keepalive_retries(Some(3));
        let address = endpoint.address();
        // bollard's per-request timeout: long, because exec output streams for hours.
        const REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;
        let api = if settings.tls {
            let tls = tls_config(settings, client_cert)?;
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only();
            // A plugin may name the certificate's server name when the address is not it.
            let builder = match &endpoint.tls_server_name {
                Some(name) => {
                    let server_name =
                        rustls_pki_types::ServerName::try_from(name.clone()).map_err(|e| DockerError::Api {
                            address: endpoint.address(),
                            message: format!("TLS server name {name:?} is not valid: {e}"),
                        })?;
                    builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(server_name))
                }
                None => builder,
            };
            let https = builder.enable_http1().wrap_connector(http);
            let client = Arc::new(Client::builder(TokioExecutor::new()).build(https));
            Docker::connect_with_custom_transport(
                move |req: BollardRequest| {
                    let client = Arc::clone(&client);
                    async move { client.request(req).await.map_err(bollard::errors::Error::from) }
                },
                Some(format!("https://{address}")),
                REQUEST_TIMEOUT_SECS,
                &API_VERSION,
            )
        } else {
            // Config validation only lets this through with `allow_plain_tcp = true`.
            eprintln!(
                "ecs-executor: WARNING: Docker at {address} over PLAIN TCP (docker.tls = false): no encryption, \
                 no authentication; anyone who can reach this port controls the instance as root"
            );
            let client = Arc::new(Client::builder(TokioExecutor::new()).build(http));
            Docker::connect_with_custom_transport(
                move |req: BollardRequest| {
                    let client = Arc::clone(&client);
                    async move { client.request(req).await.map_err(bollard::errors::Error::from) }
                },
                Some(format!("http://{address}")),
                REQUEST_TIMEOUT_SECS,
                &API_VERSION,
            )
        }
        .map_err(|e| DockerError::Api {
            address: endpoint.address(),
            message: error_chain(&e),
        })?;
        Ok(DockerHost {
            api,
            address: endpoint.address(),
            tls_files: settings.tls.then(|| TlsFiles {
                ca: settings.ca_file.display().to_string(),
                cert: settings.cert_file.display().to_string(),
            }),
        })
    }

    pub fn error(&self, err: &bollard::errors::Error) -> DockerError {
        let chain = error_chain(err);
        let message = match self.hint(&chain) {
            Some(hint) => format!("{hint} ({chain})"),
            None => chain,
        };
        DockerError::Api {
            address: self.address.clone(),
            message,
        }
    }

    /// What an error from the transport means for the admin, in words: the TLS problems hide
    /// several causes down and read like riddles.
    fn hint(&self, chain: &str) -> Option<String> {
        let c = chain.to_ascii_lowercase();
        let files = self.tls_files.as_ref();
        let (ca, cert) = files.map_or(("-", "-"), |f| (f.ca.as_str(), f.cert.as_str()));
        if c.contains("connection refused") {
            return Some("cannot connect: nothing listens there (is dockerd's TCP listener on this port?)".into());
        }
        if c.contains("timed out") || (c.contains("timeout") && c.contains("connect")) {
            return Some("cannot connect: timed out (a firewall or security group in the way?)".into());
        }
        if c.contains("unknownissuer") || c.contains("unknown issuer") {
            return Some(format!(
                "TLS: the daemon's server certificate is not signed by the CA in docker.ca_file {ca} (wrong CA?)"
            ));
        }
        if c.contains("notvalidforname") || c.contains("not valid for name") {
            return Some("TLS: the daemon's server certificate does not name this address".into());
        }
        if c.contains("invalid peer certificate") && c.contains("expired") {
            return Some("TLS: the daemon's server certificate has expired".into());
        }
        if c.contains("received fatal alert") || c.contains("certificaterequired") {
            return Some(format!(
                "TLS: the daemon refused our client certificate docker.cert_file {cert} \
                 (expired, not yet valid, or not signed by a CA the daemon trusts)"
            ));
        }
        if c.contains("invalid peer certificate") || c.contains("tls handshake") {
            return Some("TLS handshake failed".into());
        }
        if c.contains("connection reset") || c.contains("broken pipe") || c.contains("connection closed") {
            return Some("the connection to the daemon was lost".into());
        }
        None
    }

    /// Is the daemon there, and do we trust each other? (One request.)
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.api.ping().await.map(|_| ()).map_err(|e| self.error(&e))
    }

    /// The daemon's version and API version.
    pub async fn version(&self) -> Result<(String, String), DockerError> {
        let v = self.api.version().await.map_err(|e| self.error(&e))?;
        Ok((v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }

    /// The task's containers by their ECS container name (`build`, `helper`, services...).
    pub async fn task_containers(&self, task_arn: &str) -> Result<BTreeMap<String, String>, DockerError> {
        let filters =
            std::collections::HashMap::from([("label".to_string(), vec![format!("{LABEL_TASK_ARN}={task_arn}")])]);
        let list = self
            .api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error(&e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c.labels.as_ref()?.get(LABEL_CONTAINER_NAME)?.clone();
                Some((name, c.id?))
            })
            .collect())
    }

    /// How many of the task's containers are running now.
    pub async fn running_task_containers(&self, task_arn: &str) -> Result<usize, DockerError> {
        let filters = std::collections::HashMap::from([
            ("label".to_string(), vec![format!("{LABEL_TASK_ARN}={task_arn}")]),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let list = self
            .api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error(&e))?;
        Ok(list.len())
    }

    /// Require a container of the task by name.
    pub fn pick(&self, containers: &BTreeMap<String, String>, name: &str) -> Result<String, DockerError> {
        containers
            .get(name)
            .cloned()
            .ok_or_else(|| DockerError::MissingContainer {
                address: self.address.clone(),
                name: name.to_string(),
                found: if containers.is_empty() {
                    "none".into()
                } else {
                    containers.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

/// What Docker says of a container's state.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub running: bool,
    /// Docker's status word (`running`, `exited`, ...).
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Its IPv4 address on the first network that gave it one ("" if none).
    pub ip_address: String,
    /// Host ports published for container ports (`"7777/tcp"` -> host port).
    pub published_ports: BTreeMap<String, u16>,
}

/// What an image on the instance is configured to run.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `EXPOSE`d ports, as Docker writes them (`"5432/tcp"`).
    pub exposed_ports: Vec<String>,
}

impl DockerHost {
    /// The container's state; `Ok(None)` when Docker does not know it (removed).
    pub async fn container_info(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        let c = match self.api.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(e) => return Err(self.error(&e)),
        };
        let state = c.state.unwrap_or_default();
        let networks = c.network_settings.as_ref().and_then(|n| n.networks.as_ref());
        let ip_address = networks
            .and_then(|n| {
                n.values()
                    .find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
            })
            .unwrap_or_default();
        let published_ports = c
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(port, bindings)| {
                let host_port = bindings?
                    .into_iter()
                    .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))?;
                Some((port, host_port))
            })
            .collect();
        Ok(Some(ContainerInfo {
            running: state.running == Some(true),
            status: state.status.map(|s| s.to_string()).unwrap_or_else(|| "stopped".into()),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed == Some(true),
            ip_address,
            published_ports,
        }))
    }

    /// The image's entrypoint, command and exposed ports, as pulled on the instance.
    pub async fn image_config(&self, image: &str) -> Result<ImageConfig, DockerError> {
        let info = self.api.inspect_image(image).await.map_err(|e| self.error(&e))?;
        let config = info.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            exposed_ports: config.exposed_ports.unwrap_or_default().into_iter().collect(),
        })
    }

    /// The last `lines` of a container's output (stdout and stderr), best effort.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> String {
        let mut stream = self.api.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(out) => text.push_str(&String::from_utf8_lossy(&out.into_bytes())),
                Err(e) => {
                    text.push_str(&format!("(logs unavailable: {})", self.error(&e)));
                    break;
                }
            }
        }
        text
    }

    /// Unpack a tar archive at `path` in the container.
    pub async fn upload_archive(&self, id: &str, path: &str, archive: Vec<u8>) -> Result<(), DockerError> {
        self.api
            .upload_to_container(
                id,
                Some(UploadToContainerOptions {
                    path: path.to_string(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| self.error(&e))
    }

    /// One item each time a container of the task starts, from Docker's event stream; the
    /// stream ends when the events connection does (it is only a hint: callers poll ECS too).
    pub fn container_starts(&self, task_arn: &str) -> impl Stream<Item = ()> + use<> {
        let filters = std::collections::HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["start".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_TASK_ARN}={task_arn}")]),
        ]);
        self.api
            .events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .take_while(|event| std::future::ready(event.is_ok()))
            .map(|_| ())
    }
}

/// Whether a TLS connection offers the configured client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientCert {
    Present,
    Absent,
}

fn tls_config(settings: &DockerSettings, client_cert: ClientCert) -> Result<rustls::ClientConfig, DockerError> {
    let file_err = |path: &std::path::Path, message: String| DockerError::TlsFile {
        path: path.display().to_string(),
        message,
    };
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| file_err(path, e.to_string()));

    let ca = read(&settings.ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_reader_iter(&mut BufReader::new(&ca[..])) {
        let cert = cert.map_err(|e| file_err(&settings.ca_file, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| file_err(&settings.ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_err(&settings.ca_file, "contains no certificate".into()));
    }
    // ring, not aws-lc: aws-lc seeds its RNG with CPU jitter entropy, ~50 ms of CPU at start,
    // which would double the cost of every `run` stage (the AWS SDK keeps aws-lc).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_err(&settings.ca_file, e.to_string()))?
        .with_root_certificates(roots);
    if client_cert == ClientCert::Absent {
        return Ok(builder.with_no_client_auth());
    }
    let cert_pem = read(&settings.cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_reader_iter(&mut BufReader::new(&cert_pem[..]))
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&settings.cert_file, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(&settings.cert_file, "contains no certificate".into()));
    }
    let key_pem = read(&settings.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_err(&settings.key_file, format!("not a PEM private key: {e}")))?;

    builder.with_client_auth_cert(chain, key).map_err(|e| {
        file_err(
            &settings.key_file,
            format!("does not match the client certificate: {e}"),
        )
    })
}

/// An error and its causes on one line: TLS problems hide two or three levels down.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_get_brackets() {
        let e = DockerEndpoint {
            host: "fd00::1".into(),
            port: 2376,
            tls_server_name: None,
        };
        assert_eq!(e.address(), "[fd00::1]:2376");
        let e = DockerEndpoint {
            host: "10.0.0.1".into(),
            port: 2376,
            tls_server_name: None,
        };
        assert_eq!(e.address(), "10.0.0.1:2376");
    }

    #[test]
    fn missing_tls_files_name_the_file() {
        let settings = DockerSettings {
            port: 2376,
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            connect_timeout_secs: 1,
            tls: true,
            allow_plain_tcp: false,
        };
        let endpoint = DockerEndpoint {
            host: "127.0.0.1".into(),
            port: 2376,
            tls_server_name: None,
        };
        let err = DockerHost::connect(&settings, &endpoint).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    /// The address plugins' `tls-server-name` is what the verifier checks: against the local
    /// stand-in's daemon (certificate for 127.0.0.1, 127.0.0.2 and `localhost`), a name the
    /// certificate does not carry fails the handshake, one it carries passes.
    #[test]
    fn the_tls_server_name_override_is_what_the_certificate_is_checked_against() {
        let state = std::path::Path::new("/var/tmp/ecs-executor/local-ecs");
        let certs = state.join("certs");
        assert!(
            certs.join("server-ca.pem").exists(),
            "the local ECS stand-in is not up: run tests/local-ecs/up (KEEP_LOCAL_ECS=1)"
        );
        let settings = DockerSettings {
            port: 2376,
            ca_file: certs.join("server-ca.pem"),
            cert_file: certs.join("client.pem"),
            key_file: certs.join("client-key.pem"),
            connect_timeout_secs: 5,
            tls: true,
            allow_plain_tcp: false,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ping = |name: Option<&str>| {
            let endpoint = DockerEndpoint {
                host: "127.0.0.1".into(),
                port: 2376,
                tls_server_name: name.map(String::from),
            };
            let docker = DockerHost::connect(&settings, &endpoint).unwrap();
            rt.block_on(docker.api.ping()).map_err(|e| error_chain(&e))
        };
        assert!(ping(None).is_ok(), "{:?}", ping(None));
        assert!(ping(Some("localhost")).is_ok(), "{:?}", ping(Some("localhost")));
        let err = ping(Some("docker.wrong.example")).unwrap_err();
        assert!(err.contains("certificate") || err.contains("NotValidForName"), "{err}");
    }
}
