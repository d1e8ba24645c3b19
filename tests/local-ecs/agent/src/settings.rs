//! What the stand-in needs to know: where ECS (moto) and Docker are, which cluster and which
//! container instance it is. `tests/local-ecs/up` writes it all to `$STATE/standin.json`;
//! command-line flags override single values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The fields of standin.json the agent reads (the file has more, for the tests).
#[derive(Debug, Clone, Deserialize)]
pub struct StandinFile {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub docker_host: Option<String>,
    /// The instances' Docker TLS port (2376).
    #[serde(default)]
    pub docker_port: Option<u16>,
    /// `$STATE`: the Docker TLS certificates are in `$STATE/certs`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl StandinFile {
    pub fn read(path: &Path) -> anyhow::Result<StandinFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub region: String,
    pub cluster: String,
    pub container_instance_arn: String,
    /// A Unix socket path (from `unix:///...`).
    pub docker_socket: PathBuf,
    pub cleanup_after: Duration,
    pub poll: Duration,
    /// standin.json, re-read when ECS keeps refusing us (moto restarted and was seeded anew).
    pub source: Option<PathBuf>,
}

/// The flags that may replace values from standin.json.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub docker_host: Option<String>,
}

impl Settings {
    pub fn resolve(
        file: Option<(PathBuf, StandinFile)>,
        flags: Overrides,
        cleanup_after: Duration,
        poll: Duration,
    ) -> anyhow::Result<Settings> {
        let (source, from_file) = match file {
            Some((path, f)) => (Some(path), Some(f)),
            None => (None, None),
        };
        let pick = |flag: Option<String>, file: Option<String>, what: &str| -> anyhow::Result<String> {
            flag.or(file)
                .with_context(|| format!("no {what}: give --{what} or a standin.json that has it"))
        };
        let f = from_file.unwrap_or(StandinFile {
            endpoint: None,
            region: None,
            cluster: None,
            container_instance_arn: None,
            docker_host: None,
            docker_port: None,
            state_dir: None,
        });
        let docker_host = flags
            .docker_host
            .or(f.docker_host)
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let Some(socket) = docker_host.strip_prefix("unix://") else {
            bail!("docker host {docker_host}: only unix:// sockets are supported");
        };
        Ok(Settings {
            endpoint: pick(flags.endpoint, f.endpoint, "endpoint")?,
            region: flags.region.or(f.region).unwrap_or_else(|| "us-east-1".into()),
            cluster: pick(flags.cluster, f.cluster, "cluster")?,
            container_instance_arn: pick(
                flags.container_instance_arn,
                f.container_instance_arn,
                "container-instance",
            )?,
            docker_socket: PathBuf::from(socket),
            cleanup_after,
            poll,
            source,
        })
    }
}

/// `$ECS_LOCAL_STATE/standin.json`, the state directory defaulting to
/// `/var/tmp/ecs-executor/local-ecs`.
pub fn default_standin_path() -> PathBuf {
    let state = std::env::var_os("ECS_LOCAL_STATE")
        .map_or_else(|| PathBuf::from("/var/tmp/ecs-executor/local-ecs"), PathBuf::from);
    state.join("standin.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_docker_defaults_to_the_socket() {
        let file: StandinFile = serde_json::from_str(
            r#"{"endpoint":"http://127.0.0.1:4580","region":"us-east-1","cluster":"local",
                "container_instance_arn":"arn:ci","instance_id":"i-1","certs":{"ca":"x"}}"#,
        )
        .unwrap();
        let flags = Overrides {
            cluster: Some("other".into()),
            ..Default::default()
        };
        let s = Settings::resolve(
            Some(("/s.json".into(), file)),
            flags,
            Duration::from_secs(5),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(s.cluster, "other");
        assert_eq!(s.endpoint, "http://127.0.0.1:4580");
        assert_eq!(s.container_instance_arn, "arn:ci");
        assert_eq!(s.docker_socket, PathBuf::from("/var/run/docker.sock"));
    }

    #[test]
    fn the_docker_listeners_settings_come_from_the_file() {
        let file: StandinFile = serde_json::from_str(
            r#"{"endpoint":"e","cluster":"c","docker_port":2376,"state_dir":"/var/tmp/s","private_ip":"127.0.0.1"}"#,
        )
        .unwrap();
        assert_eq!(file.docker_port, Some(2376));
        assert_eq!(file.state_dir, Some(PathBuf::from("/var/tmp/s")));
        let older: StandinFile = serde_json::from_str(r#"{"endpoint":"e","cluster":"c"}"#).unwrap();
        assert_eq!((older.docker_port, older.state_dir), (None, None));
    }

    #[test]
    fn missing_values_and_tcp_docker_are_refused() {
        let none = Overrides::default();
        let err = Settings::resolve(None, none, Duration::ZERO, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("--endpoint"), "{err}");
        let tcp = Overrides {
            endpoint: Some("e".into()),
            cluster: Some("c".into()),
            container_instance_arn: Some("a".into()),
            docker_host: Some("tcp://127.0.0.1:2376".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(None, tcp, Duration::ZERO, Duration::ZERO).is_err());
    }
}
