//! How services are launched once the task runs and waited for: the launch file (the
//! service's variables, then `exec` of its command) written over Docker exec, host names that
//! links cannot carry, the ports probed from the helper, and warnings with the service's logs.

use std::collections::BTreeMap;
use std::time::Duration;

use super::containers::hosts_file_names;
use super::spec::{JobServices, Service};
use crate::config::{Config, NetworkMode};
use crate::docker::exec::ExecCommand;
use crate::docker::{DockerError, DockerHost};
use crate::joblog::log_note;

/// Where the launch file is written in a service container (removed by the file itself).
pub const LAUNCH_FILE: &str = "/tmp/.ecs-executor-launch";

/// The Docker executor waits for at most this many exposed ports per service.
const MAX_WAITED_PORTS: usize = 20;

/// POSIX single quoting: every byte literal.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The launch file: exports of the service's environment, then `exec` of its command.
pub fn launch_script(service: &Service, argv: &[String]) -> String {
    let mut script = format!("rm -f {}\n", shell_quote(LAUNCH_FILE));
    for (k, v) in &service.environment {
        // A name the shell cannot export would abort the script; GitLab's Docker executor
        // passes such names through Docker, which we cannot do without ECS seeing the value.
        if !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            script.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
    }
    let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    script.push_str(&format!("exec {}\n", quoted.join(" ")));
    script
}

/// The command a service runs, as Docker would combine it: an entrypoint override drops the
/// image's CMD (moby's config merge); otherwise the image's entrypoint and CMD apply.
pub fn service_argv(service: &Service, image_entrypoint: &[String], image_cmd: &[String]) -> Vec<String> {
    let (entry, cmd): (Vec<String>, Vec<String>) = match (&service.entrypoint, &service.command) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), vec![]),
        (None, Some(c)) => (image_entrypoint.to_vec(), c.clone()),
        (None, None) => (image_entrypoint.to_vec(), image_cmd.to_vec()),
    };
    entry.into_iter().chain(cmd).collect()
}

/// What became of one service after launching and waiting.
#[derive(Debug, Clone)]
pub struct ServiceReport {
    pub container: String,
    pub image: String,
    /// `None`: it is up (every waited port accepted a connection, or none was waited for).
    pub problem: Option<String>,
}

/// Launch every service, make their host names resolve where links cannot, and wait for their
/// ports. Problems of a service become warnings in the job log (as with GitLab), never a
/// failure; only losing Docker itself is an error.
pub async fn start(
    config: &Config,
    docker: &DockerHost,
    containers: &BTreeMap<String, String>,
    services: &JobServices,
    redact: &dyn Fn(&str) -> String,
) -> Result<Vec<ServiceReport>, DockerError> {
    let mode = config.network_mode;
    let mut ips = BTreeMap::new();
    let mut reports = Vec::new();
    // 1. Launch: inspect the image on the instance, write the launch file.
    for s in &services.services {
        let id = docker.pick(containers, &s.container)?;
        let problem = match launch_one(docker, &id, s).await {
            Ok(ip) => {
                ips.insert(s.container.clone(), ip);
                None
            }
            Err(LaunchError::Docker(e)) => return Err(e),
            Err(LaunchError::Service(why)) => Some(why),
        };
        reports.push(ServiceReport {
            container: s.container.clone(),
            image: s.image.clone(),
            problem,
        });
    }
    // 2. Host names links cannot carry: into /etc/hosts of build and helper.
    let mut lines = String::new();
    for (name, container) in hosts_file_names(mode, services) {
        let ip = if mode == NetworkMode::Bridge {
            match ips.get(&container).filter(|ip| !ip.is_empty()) {
                Some(ip) => ip.clone(),
                None => continue,
            }
        } else {
            "127.0.0.1".to_string()
        };
        lines.push_str(&format!("{ip}\t{name}\n"));
    }
    if !lines.is_empty() {
        for target in ["build", "helper"] {
            let id = docker.pick(containers, target)?;
            let as_root = ExecCommand {
                user: Some("0".into()),
                ..ExecCommand::new(&["sh", "-c", "cat >> /etc/hosts"])
            };
            let (code, out) = docker.exec_capture(&id, as_root, lines.as_bytes()).await?;
            if code != 0 {
                log_note(format!(
                    "warning: could not add service host names to /etc/hosts of the {target} container: {}",
                    out.trim()
                ));
            }
        }
    }
    // 3. Wait for the ports, all services at once, probed from the helper (inside the task's
    // network, where the job will connect from).
    let helper = docker.pick(containers, "helper")?;
    let timeout = Duration::from_secs(config.services.wait_timeout_secs);
    let waits = services.services.iter().zip(reports.iter()).map(|(s, r)| {
        let helper = helper.clone();
        let ip = ips.get(&s.container).cloned();
        let skip = r.problem.is_some();
        async move {
            if skip {
                return Ok(None);
            }
            let id = docker.pick(containers, &s.container)?;
            let ports = match s.healthcheck_port() {
                Some(p) => vec![p],
                None => exposed_tcp_ports(docker, &s.image).await?,
            };
            if ports.is_empty() {
                return Ok(None);
            }
            let host = match (mode, ip) {
                (NetworkMode::Bridge, Some(ip)) if !ip.is_empty() => ip,
                _ => "127.0.0.1".to_string(),
            };
            wait_for_ports(docker, &helper, &id, &host, &ports, timeout).await
        }
    });
    let results = futures_util::future::join_all(waits).await;
    for (report, result) in reports.iter_mut().zip(results) {
        if let Some(problem) = result? {
            report.problem = Some(problem);
        }
    }
    // 4. Warnings with the service's own logs.
    for (s, r) in services.services.iter().zip(&reports) {
        if let Some(problem) = &r.problem {
            let id = docker.pick(containers, &s.container)?;
            let logs = docker.logs_tail(&id, 50).await;
            eprintln!(
                "\n*** WARNING: Service {} (container {}, alias {}) probably didn't start properly.\n\n{}\n\nService container logs:\n{}\n*********\n",
                s.image,
                s.container,
                s.aliases
                    .first()
                    .or(s.hostnames.first())
                    .map(String::as_str)
                    .unwrap_or("-"),
                redact(problem),
                redact(logs.trim_end())
            );
        }
    }
    Ok(reports)
}

enum LaunchError {
    Docker(DockerError),
    /// The service could not be launched; the job goes on without it.
    Service(String),
}

impl From<DockerError> for LaunchError {
    fn from(e: DockerError) -> Self {
        LaunchError::Docker(e)
    }
}

/// Write the launch file into the service's container; returns its bridge IP ("" if none).
async fn launch_one(docker: &DockerHost, id: &str, s: &Service) -> Result<String, LaunchError> {
    let info = docker.container_info(id).await?.unwrap_or_default();
    if !info.running {
        let code = info.exit_code.unwrap_or(-1);
        return Err(LaunchError::Service(format!(
            "The service container exited (code {code}) before it could be launched; its image needs /bin/sh for the executor's launcher."
        )));
    }
    let image = docker.image_config(&s.image).await?;
    let argv = service_argv(s, &image.entrypoint, &image.cmd);
    if argv.is_empty() {
        return Err(LaunchError::Service(
            "The service has no command: its image has neither ENTRYPOINT nor CMD and the job gives none.".into(),
        ));
    }
    let script = launch_script(s, &argv);
    // Written under a temporary name, then renamed: the launcher never reads half a file.
    let write = format!(
        "umask 077; cat > {tmp} && mv -f {tmp} {file}",
        tmp = shell_quote(&format!("{LAUNCH_FILE}.tmp")),
        file = shell_quote(LAUNCH_FILE)
    );
    let (code, out) = docker
        .exec_capture(id, ExecCommand::new(&["sh", "-c", &write]), script.as_bytes())
        .await?;
    if code != 0 {
        return Err(LaunchError::Service(format!(
            "Could not write the launch file into the service container (exit {code}): {}",
            out.trim()
        )));
    }
    Ok(info.ip_address)
}

/// TCP ports the image exposes (at most 20, lowest first).
async fn exposed_tcp_ports(docker: &DockerHost, image: &str) -> Result<Vec<u16>, DockerError> {
    let mut ports: Vec<u16> = docker
        .image_config(image)
        .await?
        .exposed_ports
        .iter()
        .filter_map(|k| {
            let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
            (proto == "tcp").then(|| port.parse().ok()).flatten()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.truncate(MAX_WAITED_PORTS);
    Ok(ports)
}

/// Probe `host:port` for each port from the helper container until all accept a connection
/// or `timeout` passes. `Some(problem)` when they did not.
async fn wait_for_ports(
    docker: &DockerHost,
    helper: &str,
    service_id: &str,
    host: &str,
    ports: &[u16],
    timeout: Duration,
) -> Result<Option<String>, DockerError> {
    let ports_list: Vec<String> = ports.iter().map(u16::to_string).collect();
    // bash's /dev/tcp where there is bash (GitLab's helper images have it), else nc.
    let probe = format!(
        r#"end=$(( $(date +%s) + {secs} ))
probe() {{
  if [ -n "$BASH_VERSION" ]; then (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  else nc -z -w 1 "$1" "$2" 2>/dev/null; fi
}}
for p in {ports}; do
  until probe {host} "$p"; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "port $p/tcp of {host} did not accept a connection within {secs} s"; exit 1; fi
    sleep 0.2
  done
done"#,
        secs = timeout.as_secs(),
        ports = ports_list.join(" "),
        host = host,
    );
    let shell = "if command -v bash >/dev/null 2>&1; then exec bash -c \"$0\"; else exec sh -c \"$0\"; fi";
    // A connect that hangs (a dropped SYN) must not hold prepare past the deadline.
    let cmd = ["sh", "-c", shell, probe.as_str()];
    let probing = docker.exec_capture(helper, ExecCommand::new(&cmd), b"");
    let (code, out) = match tokio::time::timeout(timeout + Duration::from_secs(10), probing).await {
        Ok(result) => result?,
        Err(_) => (
            -1,
            format!(
                "the port check of {host} did not finish within {} s",
                timeout.as_secs() + 10
            ),
        ),
    };
    if code == 0 {
        return Ok(None);
    }
    // Say whether the service is still running at all.
    let exited = match docker.container_info(service_id).await {
        Ok(Some(info)) if !info.running => format!(
            " The service container exited with code {}.",
            info.exit_code.unwrap_or(-1)
        ),
        _ => String::new(),
    };
    Ok(Some(format!("Health check error:\n{}{exited}", out.trim())))
}
