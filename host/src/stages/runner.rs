//! The stage runner: a small static server (crate `ecs-executor-stage-runner`) that prepare
//! starts in the build and helper containers, and that `run` reaches over TCP with mutual TLS
//! instead of starting one Docker exec per stage.
//!
//! Why: a Docker exec costs dockerd a `runc exec` (~60-75 ms here) and every byte of output
//! goes through containerd's FIFOs and dockerd's stream copy. The runner is already running
//! in the container; a stage is one TLS connection to it.
//!
//! Security: each job gets its own CA, server and client certificate (made in prepare). The
//! runner only accepts clients with a certificate of the job's CA; `run` only trusts a server
//! certificate of it. The server half travels into the container through Docker's archive
//! API (over Docker's mutual TLS); the client half stays in the job's state file (0600). No
//! job variable goes into the task definition or into anything ECS can show: scripts travel
//! inside the TLS connection, as they do inside Docker's.
//!
//! The runner's ports are published on the instance (dynamic host ports, bridge mode). The
//! binary shipped is the one for the instance's CPU architecture (ECS's `ecs.cpu-architecture`
//! attribute, which prepare already has from DescribeContainerInstances: no extra call). When
//! the runner cannot be started or reached (no binary for that architecture, `awsvpc`, a
//! security group that blocks the port), prepare says so and every stage uses Docker exec.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_executor_stage_runner::{client, credentials::JobCredentials, protocol::RunRequest, tls};
use serde::{Deserialize, Serialize};

use crate::config::{Config, NetworkMode, StageRunnerMode};
use crate::docker::DockerHost;
use crate::docker::exec::ExecCommand;
use crate::task::{PortMapping, TaskSpec};

/// The runner's directory in the builds volume (shared by the build and helper containers).
pub const DIR_NAME: &str = ".ecs-executor-runner";
/// The runner binary's file name, beside the executor's own binary by default.
pub const BINARY_NAME: &str = "ecs-executor-stage-runner";

/// What `run` needs to reach the job's runners. Kept in the job's state file (mode 0600).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRunnerState {
    /// ECS container name (`build`, `helper`) -> the runner's `ip:port`.
    pub addresses: BTreeMap<String, SocketAddr>,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl std::fmt::Debug for StageRunnerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRunnerState")
            .field("addresses", &self.addresses)
            .field("client_key_pem", &"[MASKED]")
            .finish()
    }
}

/// The ECS attribute that names a container instance's CPU architecture.
pub const ARCH_ATTRIBUTE: &str = "ecs.cpu-architecture";

/// A CPU architecture the runner is built for, named as ECS names it in
/// `ecs.cpu-architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    /// aarch64 (Graviton).
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// ECS's name (`x86_64`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The container instance's architecture from its ECS attributes. Without the attribute:
    /// x86_64 (ECS agents have reported it since arm64 instances exist; older ones ran only
    /// on x86_64). `Err`: an architecture no runner is built for, with its name.
    pub fn of_instance(attributes: &[(String, Option<String>)]) -> Result<Arch, String> {
        let value = attributes
            .iter()
            .find(|(name, _)| name == ARCH_ATTRIBUTE)
            .and_then(|(_, value)| value.as_deref());
        match value {
            None | Some("x86_64") => Ok(Arch::X86_64),
            Some("arm64") => Ok(Arch::Arm64),
            Some(other) => Err(other.to_string()),
        }
    }

    /// The config key that names this architecture's binary.
    fn config_key(self) -> &'static str {
        match self {
            Arch::X86_64 => "stage_runner.binary",
            Arch::Arm64 => "stage_runner.binary_arm64",
        }
    }

    /// The binary's default file name, beside the executor's own binary.
    fn default_file_name(self) -> &'static str {
        match self {
            Arch::X86_64 => BINARY_NAME,
            Arch::Arm64 => "ecs-executor-stage-runner-arm64",
        }
    }
}

/// The runner binary this host ships into containers on instances of `arch`: the config's,
/// else the default name beside the executor's own binary.
pub fn binary(config: &Config, arch: Arch) -> PathBuf {
    let configured = match arch {
        Arch::X86_64 => &config.stage_runner.binary,
        Arch::Arm64 => &config.stage_runner.binary_arm64,
    };
    configured.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(arch.default_file_name())))
            .unwrap_or_else(|| PathBuf::from(arch.default_file_name()))
    })
}

/// Why this host does not use the runner for any job; `None`: it does on instances of at
/// least one architecture (its ports are then published in every task definition: the
/// instance is not known yet when the task definition is made).
pub fn disabled_because(config: &Config) -> Option<String> {
    if config.stage_runner.mode == StageRunnerMode::Off {
        return Some("stage_runner.mode is \"off\"".into());
    }
    if config.network_mode != NetworkMode::Bridge {
        return Some("the stage runner is only used in bridge network mode".into());
    }
    if Arch::ALL.iter().all(|&arch| !binary(config, arch).is_file()) {
        return Some(format!(
            "the stage runner binary {} is missing",
            binary(config, Arch::X86_64).display()
        ));
    }
    None
}

/// The runner binary for an instance with these ECS attributes; `Err`: why there is none
/// (the job's stages then use Docker exec at once instead of waiting `connect_timeout_ms`
/// for a runner that cannot start).
pub fn binary_for_instance(config: &Config, attributes: &[(String, Option<String>)]) -> Result<PathBuf, String> {
    let arch = Arch::of_instance(attributes).map_err(|other| {
        format!("the instance's CPU architecture is {other} ({ARCH_ATTRIBUTE}); the stage runner is built for x86_64 and arm64 only")
    })?;
    let path = binary(config, arch);
    if path.is_file() {
        return Ok(path);
    }
    Err(match arch {
        Arch::X86_64 => format!("the stage runner binary {} is missing", path.display()),
        arch => format!(
            "the instance is {name} and the stage runner binary for {name} instances, {path}, is missing \
             (build it with stage-runner/build-static --arch {name}; {key} names it)",
            name = arch.name(),
            path = path.display(),
            key = arch.config_key(),
        ),
    })
}

/// The container port of the runner in container `name` (`build` or `helper`).
fn container_port(config: &Config, name: &str) -> u16 {
    if name == "helper" {
        config.stage_runner.port + 1
    } else {
        config.stage_runner.port
    }
}

/// The containers a runner is started in.
const CONTAINERS: [&str; 2] = ["build", "helper"];

/// Publish the runners' ports (dynamic host ports). Done after the plugin chain: plugins
/// neither see nor remove them; `plan` shows them.
pub fn publish_ports(config: &Config, spec: &mut TaskSpec) {
    if disabled_because(config).is_some() {
        return;
    }
    for c in spec
        .containers
        .iter_mut()
        .filter(|c| CONTAINERS.contains(&c.name.as_str()))
    {
        let port = container_port(config, &c.name);
        if !c.port_mappings.iter().any(|p| p.container_port == port) {
            c.port_mappings.push(PortMapping {
                container_port: port,
                host_port: 0,
            });
        }
    }
}

/// Ship the runner and this job's certificates into each of the build and helper containers
/// (a private copy in the container's own filesystem, owned by root: not in the shared builds
/// volume, where the build container could replace the helper's runner or CA), start a
/// runner in each and check that each answers. `host` is the instance address
/// Docker was reached at; `binary_path` the runner for the instance's architecture
/// ([`binary_for_instance`]). Any failure: the reason (the job then uses Docker exec).
pub async fn start(
    config: &Config,
    docker: &DockerHost,
    containers: &BTreeMap<String, String>,
    host: &str,
    binary_path: &std::path::Path,
) -> Result<StageRunnerState, String> {
    let binary =
        std::fs::read(binary_path).map_err(|e| format!("cannot read the runner {}: {e}", binary_path.display()))?;
    let creds = JobCredentials::generate().map_err(|e| e.to_string())?;
    let archive = archive(&binary, &creds).map_err(|e| format!("cannot pack the runner: {e}"))?;

    let client_config = tls::client_config(
        creds.ca_pem.as_bytes(),
        creds.client_cert_pem.as_bytes(),
        creds.client_key_pem.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let dir = format!("/{DIR_NAME}");
    let started = CONTAINERS.map(|name| {
        let (dir, client_config, archive) = (dir.clone(), client_config.clone(), archive.clone());
        async move {
            let id = containers.get(name).ok_or_else(|| format!("no {name} container"))?;
            docker
                .upload_archive(id, "/", archive)
                .await
                .map_err(|e| format!("cannot copy the runner into the {name} container: {e}"))?;
            let addr = start_one(config, docker, id, name, &dir, host).await?;
            wait_until_up(
                addr,
                client_config,
                Duration::from_millis(config.stage_runner.connect_timeout_ms),
            )
            .await
            .map_err(|e| format!("the runner in the {name} container does not answer at {addr}: {e}"))?;
            Ok::<_, String>((name.to_string(), addr))
        }
    });
    let [build, helper] = started;
    let (build, helper) = tokio::join!(build, helper);
    Ok(StageRunnerState {
        addresses: BTreeMap::from([build?, helper?]),
        ca_pem: creds.ca_pem,
        client_cert_pem: creds.client_cert_pem,
        client_key_pem: creds.client_key_pem,
    })
}

/// Start the runner in one container (a detached exec that lives as long as the container)
/// and find where its port is published.
async fn start_one(
    config: &Config,
    docker: &DockerHost,
    id: &str,
    name: &str,
    dir: &str,
    host: &str,
) -> Result<SocketAddr, String> {
    let port = container_port(config, name);
    let command = ExecCommand::new(&[
        format!("{dir}/{BINARY_NAME}"),
        "serve".into(),
        "--listen".into(),
        format!("0.0.0.0:{port}"),
        "--dir".into(),
        dir.to_string(),
    ]);
    docker
        .exec_detached(id, command)
        .await
        .map_err(|e| format!("cannot start the runner in the {name} container: {e}"))?;
    let info = docker
        .container_info(id)
        .await
        .map_err(|e| format!("cannot inspect the {name} container: {e}"))?
        .ok_or_else(|| format!("the {name} container is gone"))?;
    let host_port = info
        .published_ports
        .get(&format!("{port}/tcp"))
        .copied()
        .ok_or_else(|| format!("port {port} of the {name} container is not published on the instance"))?;
    (host, host_port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// Ping the runner until it answers or `timeout` passes (it needs a moment to start).
async fn wait_until_up(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), client::ClientError> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client::probe(addr, config.clone(), left.max(Duration::from_millis(100))) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + Duration::from_millis(50) >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(client::ClientError::Connect {
            addr,
            reason: format!("the probe thread failed: {e}"),
        })
    })
}

/// A tar of `<DIR_NAME>/`: the runner binary and the server half of the job's certificates,
/// owned by root. Readable by the container's user whoever it is (the job could read them
/// anyway: they are in its own container and worth nothing outside this job), writable by
/// root only.
fn archive(binary: &[u8], creds: &JobCredentials) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(now);
    tar.append_data(&mut dir, format!("{DIR_NAME}/"), std::io::empty())?;
    for (name, mode, data) in [
        (BINARY_NAME, 0o755, binary),
        ("ca.pem", 0o644, creds.ca_pem.as_bytes()),
        ("server.pem", 0o644, creds.server_cert_pem.as_bytes()),
        ("server-key.pem", 0o644, creds.server_key_pem.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(now);
        tar.append_data(&mut header, format!("{DIR_NAME}/{name}"), data)?;
    }
    tar.into_inner()
}

/// How a stage on the runner ended, or why it could not run there.
pub enum RunnerEnd {
    Exited(i32),
    Cancelled,
    /// The stage runner provably started nothing (TCP connect or TLS handshake failed): the
    /// stage may use Docker exec instead.
    NotStarted(String),
    /// The runner refused the stage before starting it.
    Refused(String),
    /// The request was sent and then the connection broke, or no answer came in time: the
    /// stage may have started. Never run it again.
    Lost(String),
    /// Writing the output to our stdout/stderr failed.
    Output(std::io::Error),
}

/// Run one stage on the runner at `addr`: `argv` with the script on stdin. `cancel`
/// completing (SIGTERM from gitlab-runner) makes the runner SIGTERM the stage's process
/// group, and SIGKILL it after `kill_grace`.
pub async fn run_stage(
    state: &StageRunnerState,
    addr: SocketAddr,
    request: RunRequest,
    connect_timeout: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> RunnerEnd {
    let config = match tls::client_config(
        state.ca_pem.as_bytes(),
        state.client_cert_pem.as_bytes(),
        state.client_key_pem.as_bytes(),
    ) {
        Ok(c) => c,
        Err(e) => return RunnerEnd::NotStarted(format!("the job's runner credentials: {e}")),
    };
    // The blocking client polls the read end of a pipe; cancel writes to the other end.
    let (cancel_rx, mut cancel_tx) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return RunnerEnd::NotStarted(format!("cannot make a pipe: {e}")),
    };
    let mut stage = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsFd;
        // Straight to fds 1 and 2: no line buffer between a chunk and gitlab-runner.
        let mut raw = super::RawOut::new();
        client::run(
            addr,
            config,
            connect_timeout,
            &request,
            Some(cancel_rx.as_fd()),
            &mut *raw.out,
            &mut *raw.err,
        )
    });
    tokio::pin!(cancel);
    let joined = tokio::select! {
        joined = &mut stage => joined,
        () = &mut cancel => {
            let _ = std::io::Write::write_all(&mut cancel_tx, b"x");
            stage.await
        }
    };
    match joined {
        Ok(Ok(client::End::Exited(code))) => RunnerEnd::Exited(code),
        Ok(Ok(client::End::Cancelled)) => RunnerEnd::Cancelled,
        Ok(Err(client::ClientError::Connect { reason, .. })) => RunnerEnd::NotStarted(reason),
        Ok(Err(client::ClientError::Rejected { message, .. })) => RunnerEnd::Refused(message),
        Ok(Err(client::ClientError::Lost { reason, started, .. })) => RunnerEnd::Lost(if started {
            format!("{reason}; the stage had started")
        } else {
            format!("{reason}; the stage runner had not confirmed the start, so it may have started")
        }),
        Ok(Err(client::ClientError::Output(e))) => RunnerEnd::Output(e),
        Err(e) => RunnerEnd::Lost(format!("the stage thread failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A directory of this test's own with the named (empty) files.
    fn dir_with(tag: &str, files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stage-runner-arch-{tag}-{}", crate::state::random_hex()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        dir
    }

    fn config(stage_runner: &str) -> Config {
        Config::parse(
            &format!(
                "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n\
                 [stage_runner]\n{stage_runner}"
            ),
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn attrs(arch: Option<&str>) -> Vec<(String, Option<String>)> {
        let mut attrs = vec![("ecs.os-type".to_string(), Some("linux".to_string()))];
        if let Some(arch) = arch {
            attrs.push((ARCH_ATTRIBUTE.to_string(), Some(arch.to_string())));
        }
        attrs
    }

    #[test]
    fn the_architecture_comes_from_the_instance_attribute() {
        assert_eq!(Arch::of_instance(&attrs(Some("x86_64"))), Ok(Arch::X86_64));
        assert_eq!(Arch::of_instance(&attrs(Some("arm64"))), Ok(Arch::Arm64));
        // An agent that does not report it: x86_64, as every runner host before arm64 had.
        assert_eq!(Arch::of_instance(&attrs(None)), Ok(Arch::X86_64));
        let no_value = vec![(ARCH_ATTRIBUTE.to_string(), None)];
        assert_eq!(Arch::of_instance(&no_value), Ok(Arch::X86_64));
        assert_eq!(Arch::of_instance(&attrs(Some("ppc64le"))), Err("ppc64le".to_string()));
    }

    #[test]
    fn each_architecture_gets_its_own_binary_and_defaults_sit_beside_the_executor() {
        let dir = dir_with("defaults", &[]);
        let exe_dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        let defaults = config("");
        assert_eq!(
            binary(&defaults, Arch::X86_64),
            exe_dir.join("ecs-executor-stage-runner")
        );
        assert_eq!(
            binary(&defaults, Arch::Arm64),
            exe_dir.join("ecs-executor-stage-runner-arm64")
        );
        let (x86, arm) = (dir.join("x"), dir.join("a"));
        let both = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            x86.display(),
            arm.display()
        ));
        assert_eq!(binary(&both, Arch::X86_64), x86);
        assert_eq!(binary(&both, Arch::Arm64), arm);
        // The old key alone keeps naming the x86_64 binary; arm64 keeps its default.
        let old = config(&format!("binary = '{}'\n", x86.display()));
        assert_eq!(binary(&old, Arch::X86_64), x86);
        assert_eq!(
            binary(&old, Arch::Arm64),
            exe_dir.join("ecs-executor-stage-runner-arm64")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_instance_gets_the_binary_of_its_architecture_or_the_reason_there_is_none() {
        let dir = dir_with("pick", &["x86", "arm"]);
        let (x86, arm) = (dir.join("x86"), dir.join("arm"));
        let both = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            x86.display(),
            arm.display()
        ));
        assert_eq!(binary_for_instance(&both, &attrs(Some("x86_64"))), Ok(x86.clone()));
        assert_eq!(binary_for_instance(&both, &attrs(Some("arm64"))), Ok(arm.clone()));
        assert_eq!(binary_for_instance(&both, &attrs(None)), Ok(x86.clone()));
        let unknown = binary_for_instance(&both, &attrs(Some("ppc64le"))).unwrap_err();
        assert!(
            unknown.contains("CPU architecture is ppc64le (ecs.cpu-architecture)"),
            "{unknown}"
        );

        let missing_arm = dir.join("no-such-arm64-runner");
        let x86_only = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            x86.display(),
            missing_arm.display()
        ));
        assert_eq!(binary_for_instance(&x86_only, &attrs(Some("x86_64"))), Ok(x86.clone()));
        let why = binary_for_instance(&x86_only, &attrs(Some("arm64"))).unwrap_err();
        assert_eq!(
            why,
            format!(
                "the instance is arm64 and the stage runner binary for arm64 instances, {}, is missing \
                 (build it with stage-runner/build-static --arch arm64; stage_runner.binary_arm64 names it)",
                missing_arm.display()
            )
        );
        // The x86_64 message stays what it was before arm64 runners existed.
        let missing_x86 = dir.join("no-such-x86-runner");
        let arm_only = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            missing_x86.display(),
            arm.display()
        ));
        assert_eq!(
            binary_for_instance(&arm_only, &attrs(Some("x86_64"))),
            Err(format!("the stage runner binary {} is missing", missing_x86.display()))
        );
        assert_eq!(binary_for_instance(&arm_only, &attrs(Some("arm64"))), Ok(arm));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ports_are_published_when_a_binary_of_either_architecture_exists() {
        let dir = dir_with("ports", &["arm"]);
        let (x86, arm) = (dir.join("missing-x86"), dir.join("arm"));
        let arm_only = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            x86.display(),
            arm.display()
        ));
        assert_eq!(disabled_because(&arm_only), None);
        let none = config(&format!(
            "binary = '{}'\nbinary_arm64 = '{}'\n",
            x86.display(),
            dir.join("missing-arm").display()
        ));
        assert_eq!(
            disabled_because(&none),
            Some(format!("the stage runner binary {} is missing", x86.display()))
        );
        let off = config(&format!("mode = 'off'\nbinary_arm64 = '{}'\n", arm.display()));
        assert_eq!(disabled_because(&off), Some("stage_runner.mode is \"off\"".into()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_relative_arm64_binary_path_is_refused() {
        let err = Config::parse(
            "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n\
             [stage_runner]\nbinary_arm64 = 'runner-arm64'\n",
            Path::new("test.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stage_runner.binary_arm64"), "{err}");
        assert!(err.contains("runner-arm64 must be an absolute path"), "{err}");
    }
}
