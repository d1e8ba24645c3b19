//! CI services, the way GitLab's Docker executor runs them: which services a job has, whether
//! the site allows them, the host names they answer to, the containers they become in the task
//! and, once the task runs, launching them with their variables and waiting for their ports.
//!
//! Job variables never reach ECS: a service container is registered with only a launcher as
//! its entry point (wait for a launch file, then run it). After the task is RUNNING, prepare
//! writes the launch file (the variables, then `exec` of the service's real command) into the
//! container over Docker exec. So a service image needs `/bin/sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{InspectContainerOptions, LogsOptions};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::config::{Config, NetworkMode};
use crate::docker::{DockerError, DockerHost};
use crate::failure::{Blame, Classify};
use crate::protocol::{JobResponse, JobService, custom_env};
use crate::task_spec::{ContainerSpec, TaskSpec};

/// Where the launch file is written in a service container (removed by the file itself).
pub const LAUNCH_FILE: &str = "/tmp/.ecs-executor-launch";

/// A service container's command in the task definition: wait for the launch file, run it.
/// Exits at once on SIGTERM while it waits.
pub const LAUNCHER: &str = "trap 'exit 0' TERM INT; f=/tmp/.ecs-executor-launch; \
     while [ ! -s \"$f\" ]; do sleep 0.1; done; exec sh \"$f\"";

/// The Docker executor waits for at most this many exposed ports per service.
const MAX_WAITED_PORTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("CUSTOM_ENV_CI_JOB_SERVICES is not valid JSON: {0}")]
    BadServicesVariable(String),
    #[error("service {index} has no image name")]
    NoImage { index: usize },
    #[error("service {image:?}: {problem}")]
    BadImage { image: String, problem: String },
    #[error(
        "service {image:?}: alias {alias:?} is not a valid host name (letters, digits, '-', '_' and '.'; at most 63 characters between dots)"
    )]
    BadAlias { image: String, alias: String },
    #[error("the job has {count} services; this runner allows at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("service image {image:?} is not allowed on this runner (allowed: {allowed})")]
    NotAllowed { image: String, allowed: String },
}

impl Classify for ServiceError {
    fn blame(&self) -> Blame {
        match self {
            // gitlab-runner wrote it; we cannot read what it meant.
            ServiceError::BadServicesVariable(_) => Blame::System,
            // Everything else is what the job asked for.
            _ => Blame::Build,
        }
    }
}

/// One service of the job, validated.
#[derive(Debug, Clone)]
pub struct Service {
    /// Position in the job's `services:` (0-based).
    pub index: usize,
    /// The task's container for it: `svc-<index>`.
    pub container: String,
    pub image: String,
    /// Every alias the job gave it, in order.
    pub aliases: Vec<String>,
    /// The names it answers to: its aliases, then the two derived from the image; a name an
    /// earlier service already has is not repeated.
    pub hostnames: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// Its environment: the job's public and runner-internal variables, then its own,
    /// `$VAR`-expanded. SECRET: only ever written into the container over Docker exec.
    pub environment: Vec<(String, String)>,
}

impl Service {
    /// `HEALTHCHECK_TCP_PORT` from its environment, if set and a port number.
    pub fn healthcheck_port(&self) -> Option<u16> {
        self.environment
            .iter()
            .rev()
            .find(|(k, _)| k == "HEALTHCHECK_TCP_PORT")
            .and_then(|(_, v)| v.trim().parse().ok())
            .filter(|p| *p > 0)
    }
}

/// The job's services, in order.
#[derive(Debug, Clone, Default)]
pub struct JobServices {
    pub services: Vec<Service>,
    /// Notes for the job log (duplicate host names skipped, ...).
    pub notes: Vec<String>,
}

/// One entry of `CUSTOM_ENV_CI_JOB_SERVICES` (names and first alias, `$VAR`-expanded).
#[derive(Debug, Deserialize)]
struct ExpandedService {
    #[serde(default)]
    name: String,
    #[serde(default)]
    alias: String,
}

impl JobServices {
    /// The job's services from the job response file, with the names gitlab-runner expanded
    /// from `CUSTOM_ENV_CI_JOB_SERVICES`, validated against the config's limits.
    pub fn load(config: &Config, response: &JobResponse) -> Result<JobServices, ServiceError> {
        let expanded = match custom_env("CI_JOB_SERVICES").filter(|s| !s.trim().is_empty()) {
            Some(text) => serde_json::from_str::<Option<Vec<ExpandedService>>>(&text)
                .map_err(|e| ServiceError::BadServicesVariable(e.to_string()))?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let internal = internal_variables(response);
        Self::from_parts(config, response, &expanded, &internal)
    }

    fn from_parts(
        config: &Config,
        response: &JobResponse,
        expanded: &[ExpandedService],
        internal: &[(String, String)],
    ) -> Result<JobServices, ServiceError> {
        let listed = &response.services;
        let max = config.services.max_per_job;
        if listed.len() > max {
            return Err(ServiceError::TooMany {
                count: listed.len(),
                max,
            });
        }
        // What every service gets: the job's public variables and the runner's own (GitLab:
        // `PublicOrInternal()`); project/group settings variables (masked ones among them)
        // are not passed to services.
        let mut job_vars: Vec<(String, String)> = internal.to_vec();
        job_vars.extend(
            response
                .variables
                .iter()
                .filter(|v| v.public && !v.file)
                .map(|v| (v.key.clone(), v.value.clone())),
        );
        let mut out = JobServices::default();
        let mut taken = BTreeSet::new();
        for (index, s) in listed.iter().enumerate() {
            // gitlab-runner expands `$VARS` in names and aliases for CI_JOB_SERVICES only.
            let env_entry = expanded.get(index).filter(|_| expanded.len() == listed.len());
            let image = match env_entry {
                Some(e) if s.name.contains('$') && !e.name.is_empty() => e.name.clone(),
                _ => s.name.clone(),
            };
            if image.trim().is_empty() {
                return Err(ServiceError::NoImage { index });
            }
            crate::job::validate_image(&image).map_err(|e| ServiceError::BadImage {
                image: image.clone(),
                problem: e.to_string(),
            })?;
            if !image_allowed(&image, &config.services.allowed_images) {
                return Err(ServiceError::NotAllowed {
                    image,
                    allowed: config.services.allowed_images.join(", "),
                });
            }
            let mut aliases = split_aliases(&s.alias);
            if let (Some(e), Some(first)) = (env_entry, aliases.first_mut())
                && first.contains('$')
                && !e.alias.is_empty()
            {
                *first = e.alias.clone();
            }
            if let Some(bad) = aliases.iter().find(|a| !valid_hostname(a)) {
                return Err(ServiceError::BadAlias {
                    image,
                    alias: bad.clone(),
                });
            }
            let mut hostnames = Vec::new();
            for name in aliases.iter().cloned().chain(derived_names(&image)) {
                if taken.insert(name.clone()) {
                    hostnames.push(name);
                } else if !hostnames.contains(&name) {
                    out.notes.push(format!(
                        "service {image} (#{index}): host name {name:?} already belongs to an earlier service; skipped"
                    ));
                }
            }
            let mut environment = job_vars.clone();
            environment.extend(service_variables(s));
            out.services.push(Service {
                index,
                container: format!("svc-{index}"),
                image,
                aliases,
                hostnames,
                entrypoint: s.entrypoint.clone().filter(|e| !e.is_empty()),
                command: s.command.clone().filter(|c| !c.is_empty()),
                environment: expand(&environment),
            });
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

fn service_variables(s: &JobService) -> impl Iterator<Item = (String, String)> + '_ {
    s.variables.iter().map(|v| (v.key.clone(), v.value.clone()))
}

/// The runner's own variables (`CI_BUILDS_DIR`, `CI_RUNNER_VERSION`, ...): the `CUSTOM_ENV_*`
/// that are not job variables from GitLab.
fn internal_variables(response: &JobResponse) -> Vec<(String, String)> {
    let from_gitlab: BTreeSet<&str> = response.variables.iter().map(|v| v.key.as_str()).collect();
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| Some((k.strip_prefix("CUSTOM_ENV_")?.to_string(), v)))
        .filter(|(k, _)| !from_gitlab.contains(k.as_str()) && k != "CI_JOB_SERVICES")
        .collect();
    vars.sort();
    vars
}

/// `$VAR` / `${VAR}` expansion over the list, as gitlab-runner's `Variables.Expand()` does:
/// names are looked up in the list itself (last definition wins), unknown ones become empty,
/// `$$` is a literal `$`.
fn expand(vars: &[(String, String)]) -> Vec<(String, String)> {
    let lookup: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                expand_value(v, &|name| lookup.get(name).copied().unwrap_or("").to_string()),
            )
        })
        .collect()
}

fn expand_value(s: &str, lookup: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            out.push_str(&lookup(&inner[..end]));
            rest = &inner[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&after[..len]));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// gitlab-runner's `Image.Aliases()`: commas count as spaces.
fn split_aliases(alias: &str) -> Vec<String> {
    alias.replace(',', " ").split_whitespace().map(String::from).collect()
}

/// A name `/etc/hosts` and Docker links accept: labels of letters, digits, '-' and '_'.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A name ECS accepts in a container link (no dots).
fn link_name(name: &str) -> bool {
    name.len() <= 255 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The two names GitLab derives from a service image: `registry:5000/a/b:tag@sha256:..` gives
/// `registry__a__b` and `registry-a-b` (tag, digest and registry port dropped).
pub fn derived_names(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let (path, last) = match no_digest.rsplit_once('/') {
        Some((path, last)) => (Some(path), last),
        None => (None, no_digest),
    };
    let last = last.split(':').next().unwrap_or(last);
    let mut segments: Vec<&str> = path.map(|p| p.split('/').collect()).unwrap_or_default();
    if let Some(first) = segments.first_mut() {
        // A registry port ("host:5000").
        *first = first.split(':').next().unwrap_or(first);
    }
    segments.push(last);
    let a = segments.join("__");
    let b = segments.join("-");
    let mut names = vec![a];
    if !names.contains(&b) {
        names.push(b);
    }
    names.retain(|n| valid_hostname(n));
    names
}

/// `*` matches within one path segment, `**` across segments; anything else literally.
fn image_allowed(image: &str, patterns: &[String]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p.as_bytes(), image.as_bytes()))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// The built-in mapping of one service to task containers (what a plugin's `map-services`
/// falls back to): one non-essential container whose only command is the launcher.
pub fn builtin_containers(config: &Config, service: &Service) -> Vec<ContainerSpec> {
    vec![ContainerSpec {
        name: service.container.clone(),
        image: service.image.clone(),
        // A service that exits does not fail the job (GitLab warns and goes on).
        essential: false,
        cpu: None,
        memory: None,
        memory_reservation: None,
        entry_point: Some(vec!["sh".into(), "-c".into(), LAUNCHER.into()]),
        command: vec![],
        environment: BTreeMap::new(),
        mount_points: vec![],
        links: vec![],
        extra_hosts: vec![],
        docker_labels: BTreeMap::from([
            ("ecs-executor.role".to_string(), "service".to_string()),
            ("ecs-executor.service".to_string(), service.index.to_string()),
        ]),
        log_configuration: config.log_configuration.clone(),
        privileged: false,
        port_mappings: vec![],
        extra: None,
    }]
}

/// Add a service's containers to the task: in `bridge` mode the build and helper containers
/// link to its first container under each of its host names that ECS accepts in a link (the
/// others, and every name in `awsvpc` mode, go into `/etc/hosts` once the task runs).
pub fn add_to_spec(spec: &mut TaskSpec, service: &Service, containers: Vec<ContainerSpec>) {
    let Some(first) = containers.first().map(|c| c.name.clone()) else {
        return;
    };
    if spec.network_mode == NetworkMode::Bridge {
        for c in spec
            .containers
            .iter_mut()
            .filter(|c| c.name == "build" || c.name == "helper")
        {
            for name in service.hostnames.iter().filter(|n| link_name(n)) {
                c.links.push(format!("{first}:{name}"));
            }
        }
    }
    spec.containers.extend(containers);
}

/// Host names that links cannot carry: `(name, container)` pairs for `/etc/hosts`.
pub fn hosts_file_names(mode: NetworkMode, services: &JobServices) -> Vec<(String, String)> {
    services
        .services
        .iter()
        .flat_map(|s| {
            s.hostnames
                .iter()
                .filter(move |n| mode != NetworkMode::Bridge || !link_name(n))
                .map(move |n| (n.clone(), s.container.clone()))
        })
        .collect()
}

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
            let (code, out) = exec_with_input(
                docker,
                &id,
                Some("0"),
                &["sh", "-c", "cat >> /etc/hosts"],
                lines.as_bytes(),
            )
            .await?;
            if code != 0 {
                crate::steps::log_note(format!(
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
            let logs = container_logs(docker, &id, 50).await;
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
    let info = docker
        .api
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|e| docker.error(&e))?;
    let running = info.state.as_ref().and_then(|st| st.running).unwrap_or(false);
    if !running {
        let code = info.state.as_ref().and_then(|st| st.exit_code).unwrap_or(-1);
        return Err(LaunchError::Service(format!(
            "The service container exited (code {code}) before it could be launched; its image needs /bin/sh for the executor's launcher."
        )));
    }
    let ip = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| {
            n.values()
                .find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
        })
        .unwrap_or_default();
    let image = docker.api.inspect_image(&s.image).await.map_err(|e| docker.error(&e))?;
    let config = image.config.unwrap_or_default();
    let argv = service_argv(
        s,
        &config.entrypoint.unwrap_or_default(),
        &config.cmd.unwrap_or_default(),
    );
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
    let (code, out) = exec_with_input(docker, id, None, &["sh", "-c", &write], script.as_bytes()).await?;
    if code != 0 {
        return Err(LaunchError::Service(format!(
            "Could not write the launch file into the service container (exit {code}): {}",
            out.trim()
        )));
    }
    Ok(ip)
}

/// TCP ports the image exposes (at most 20, lowest first).
async fn exposed_tcp_ports(docker: &DockerHost, image: &str) -> Result<Vec<u16>, DockerError> {
    let info = docker.api.inspect_image(image).await.map_err(|e| docker.error(&e))?;
    let mut ports: Vec<u16> = info
        .config
        .and_then(|c| c.exposed_ports)
        .map(|p| {
            p.iter()
                .filter_map(|k| {
                    let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                    (proto == "tcp").then(|| port.parse().ok()).flatten()
                })
                .collect()
        })
        .unwrap_or_default();
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
    let probing = exec_with_input(docker, helper, None, &cmd, b"");
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
    let state = docker
        .api
        .inspect_container(service_id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state);
    let exited = state
        .filter(|s| s.running == Some(false))
        .map(|s| format!(" The service container exited with code {}.", s.exit_code.unwrap_or(-1)))
        .unwrap_or_default();
    Ok(Some(format!("Health check error:\n{}{exited}", out.trim())))
}

/// The last `lines` of a container's output (stdout and stderr), best effort.
async fn container_logs(docker: &DockerHost, id: &str, lines: usize) -> String {
    let mut stream = docker.api.logs(
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
                text.push_str(&format!("(logs unavailable: {})", docker.error(&e)));
                break;
            }
        }
    }
    text
}

/// Run `cmd` in a container with `input` on stdin; (exit code, output).
async fn exec_with_input(
    docker: &DockerHost,
    id: &str,
    user: Option<&str>,
    cmd: &[&str],
    input: &[u8],
) -> Result<(i64, String), DockerError> {
    let api = &docker.api;
    let exec = api
        .create_exec(
            id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: user.map(String::from),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| docker.error(&e))?;
    let mut text = String::new();
    if let StartExecResults::Attached {
        mut output,
        input: mut stdin,
    } = api.start_exec(&exec.id, None).await.map_err(|e| docker.error(&e))?
    {
        let data = input.to_vec();
        let feed = async move {
            let _ = stdin.write_all(&data).await;
            let _ = stdin.shutdown().await;
        };
        let read = async {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(c) => text.push_str(&String::from_utf8_lossy(&c.into_bytes())),
                    Err(e) => return Err(docker.error(&e)),
                }
            }
            Ok(())
        };
        tokio::join!(feed, read).1?;
    }
    let code = api
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| docker.error(&e))?
        .exit_code
        .unwrap_or(-1);
    Ok((code, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobVariable;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!(
                "cluster='c'\nregion='us-east-1'\n{extra}\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n"
            ),
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn var(key: &str, value: &str, public: bool) -> JobVariable {
        JobVariable {
            key: key.into(),
            value: value.into(),
            public,
            masked: !public,
            file: false,
        }
    }

    fn service(name: &str, alias: &str) -> JobService {
        JobService {
            name: name.into(),
            alias: alias.into(),
            ..Default::default()
        }
    }

    fn response(services: Vec<JobService>) -> JobResponse {
        JobResponse {
            id: 1,
            variables: vec![var("PUBLIC_ONE", "p1", true), var("SECRET_ONE", "s3cr3t-value", false)],
            services,
            ..Default::default()
        }
    }

    fn load(config: &Config, r: &JobResponse) -> Result<JobServices, ServiceError> {
        JobServices::from_parts(config, r, &[], &[("CI_BUILDS_DIR".into(), "/builds".into())])
    }

    #[test]
    fn every_alias_and_both_derived_names_are_host_names() {
        let r = response(vec![service(
            "registry.example.com:4999/valkey/valkey:8",
            "db, pg cache",
        )]);
        let s = &load(&config(""), &r).unwrap().services[0];
        assert_eq!(s.aliases, ["db", "pg", "cache"]);
        assert_eq!(
            s.hostnames,
            [
                "db",
                "pg",
                "cache",
                "registry.example.com__valkey__valkey",
                "registry.example.com-valkey-valkey"
            ]
        );
        assert_eq!(s.container, "svc-0");
        assert_eq!(derived_names("postgres:16@sha256:abc"), ["postgres"]);
        assert_eq!(derived_names("bitnami/redis"), ["bitnami__redis", "bitnami-redis"]);
    }

    #[test]
    fn a_name_two_services_share_goes_to_the_first_with_a_note() {
        let r = response(vec![service("redis:7", "cache"), service("redis:7", "cache2")]);
        let got = load(&config(""), &r).unwrap();
        assert_eq!(got.services[0].hostnames, ["cache", "redis"]);
        assert_eq!(got.services[1].hostnames, ["cache2"]);
        assert_eq!(got.services[1].container, "svc-1");
        assert!(got.notes.iter().any(|n| n.contains("\"redis\"")), "{:?}", got.notes);
    }

    #[test]
    fn bad_aliases_too_many_services_and_unlisted_images_are_the_jobs_failure() {
        let r = response(vec![service("redis:7", "ok bad/alias")]);
        let err = load(&config(""), &r).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(err.to_string().contains("\"bad/alias\""), "{err}");

        let r = response(vec![service("a:1", ""), service("b:1", ""), service("c:1", "")]);
        let err = load(&config("[services]\nmax_per_job = 2"), &r).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(
            err.to_string().contains("3 services") && err.to_string().contains("at most 2"),
            "{err}"
        );

        let c = config("[services]\nallowed_images = ['redis:*', 'registry.example.com/ci/**']");
        assert!(load(&c, &response(vec![service("redis:7", "")])).is_ok());
        assert!(load(&c, &response(vec![service("registry.example.com/ci/db/pg:1", "")])).is_ok());
        let err = load(&c, &response(vec![service("evil/redis:7", "")])).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(err.to_string().contains("\"evil/redis:7\" is not allowed"), "{err}");
        assert!(!image_allowed("redis:7/x", &["redis:*".into()]));
    }

    #[test]
    fn services_get_public_and_runner_variables_then_their_own_expanded() {
        let mut s = service("pg:16", "db");
        s.variables = vec![
            var("POSTGRES_PASSWORD", "pw-$PUBLIC_ONE", true),
            var("PUBLIC_ONE", "overridden", true),
        ];
        let got = load(&config(""), &response(vec![s])).unwrap();
        let env: BTreeMap<_, _> = got.services[0].environment.iter().cloned().collect();
        assert_eq!(env["CI_BUILDS_DIR"], "/builds");
        // The service's own definition wins, and expansion sees the final value.
        assert_eq!(env["PUBLIC_ONE"], "overridden");
        assert_eq!(env["POSTGRES_PASSWORD"], "pw-overridden");
        // Settings (non-public) variables are not passed to services, as in GitLab.
        assert!(!env.contains_key("SECRET_ONE"));
    }

    #[test]
    fn expansion_follows_gitlab_runner() {
        let vars = vec![
            ("A".to_string(), "x".to_string()),
            ("B".to_string(), "$A-${A}-$$-$NOPE-$".to_string()),
        ];
        assert_eq!(expand(&vars)[1].1, "x-x-$--$");
    }

    #[test]
    fn names_expanded_by_gitlab_runner_replace_unexpanded_ones() {
        let r = response(vec![service("$REG/redis:7", "$ALIAS other")]);
        let expanded = vec![ExpandedService {
            name: "reg.local/redis:7".into(),
            alias: "cache".into(),
        }];
        let got = JobServices::from_parts(&config(""), &r, &expanded, &[]).unwrap();
        assert_eq!(got.services[0].image, "reg.local/redis:7");
        assert_eq!(got.services[0].aliases, ["cache", "other"]);
    }

    #[test]
    fn the_task_definition_gets_a_launcher_links_and_no_variable() {
        let c = config("helper_image='helper:1'");
        let mut s = service("ecs-executor-test/svc-echo:1", "echo db.local");
        s.variables = vec![var("SERVICE_SECRET", "svc-s3cr3t", true)];
        let got = load(&c, &response(vec![s])).unwrap();
        let job = crate::job::JobContext {
            key: crate::protocol::JobKey::new(1, None),
            project_path: String::new(),
            runner_version: String::new(),
            image: "build:1".into(),
            image_entrypoint: None,
            secrets: vec![],
        };
        let mut spec = TaskSpec::for_job(&c, &job);
        let svc = &got.services[0];
        add_to_spec(&mut spec, svc, builtin_containers(&c, svc));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            !json.contains("svc-s3cr3t") && !json.contains("p1") && !json.contains("SERVICE_SECRET"),
            "{json}"
        );
        let build = spec.containers.iter().find(|c| c.name == "build").unwrap();
        assert_eq!(
            build.links,
            [
                "svc-0:echo",
                "svc-0:ecs-executor-test__svc-echo",
                "svc-0:ecs-executor-test-svc-echo"
            ]
        );
        let svc_c = spec.containers.iter().find(|c| c.name == "svc-0").unwrap();
        assert!(!svc_c.essential);
        assert_eq!(svc_c.entry_point.as_ref().unwrap()[2], LAUNCHER);
        // The dotted alias cannot be an ECS link: it goes to /etc/hosts after start.
        assert_eq!(
            hosts_file_names(NetworkMode::Bridge, &got),
            [("db.local".to_string(), "svc-0".to_string())]
        );
        assert_eq!(hosts_file_names(NetworkMode::Awsvpc, &got).len(), 4);
    }

    #[test]
    fn the_launch_file_quotes_everything_and_runs_the_docker_command() {
        let mut s = service("x:1", "");
        s.entrypoint = None;
        s.command = Some(vec!["--port".into(), "it's 1".into()]);
        let got = load(&config(""), &response(vec![s])).unwrap();
        let mut svc = got.services[0].clone();
        svc.environment = vec![("V".into(), "a'b $HOME `x`".into()), ("bad-name".into(), "x".into())];
        let argv = service_argv(&svc, &["/entry".into()], &["default".into()]);
        assert_eq!(argv, ["/entry", "--port", "it's 1"]);
        let script = launch_script(&svc, &argv);
        assert!(script.contains("export V='a'\\''b $HOME `x`'\n"), "{script}");
        assert!(!script.contains("bad-name"), "{script}");
        assert!(script.ends_with("exec '/entry' '--port' 'it'\\''s 1'\n"), "{script}");
        // An entrypoint override drops the image's CMD, as Docker does.
        svc.entrypoint = Some(vec!["/other".into()]);
        svc.command = None;
        assert_eq!(service_argv(&svc, &["/entry".into()], &["default".into()]), ["/other"]);
    }
}
