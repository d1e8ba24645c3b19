//! The `[docker]` table: how the Docker daemon on every container instance is reached.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    /// Port of the Docker daemon's mutual-TLS listener on every container instance.
    #[serde(default = "default_docker_port")]
    pub port: u16,
    /// CA that signed the daemons' server certificates (the only CA trusted).
    /// Required unless `tls = false`.
    #[serde(default)]
    pub ca_file: PathBuf,
    /// Client certificate and key presented to the daemons. Required unless `tls = false`.
    #[serde(default)]
    pub cert_file: PathBuf,
    #[serde(default)]
    pub key_file: PathBuf,
    /// Mutual TLS to the daemons (the default). `false` means plain TCP, which anyone on the
    /// network path can use to run anything as root on the instance: refused unless
    /// `allow_plain_tcp = true`, and then warned about on every connection.
    #[serde(default = "yes")]
    pub tls: bool,
    #[serde(default)]
    pub allow_plain_tcp: bool,
    /// Seconds to wait for a connection to the daemon.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_docker_port() -> u16 {
    2376
}
fn default_connect_timeout() -> u64 {
    10
}
fn yes() -> bool {
    true
}
