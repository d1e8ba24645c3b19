//! Registry credentials for the job's images, found as gitlab-runner's Docker executor finds
//! them (`helpers/docker/auth`), and carried to ECS as the agent expects them: one Secrets
//! Manager secret per registry, named in the container's `repositoryCredentials`.
//!
//! **Where credentials come from**, in gitlab-runner's order (`auth.Resolver.AllConfigs`; the
//! first source to name a registry path wins):
//! 1. the job's `DOCKER_AUTH_CONFIG` variable (a Docker `config.json`),
//! 2. the Docker config of the user running the executor (`~/.docker/config.json`, else
//!    `~/.dockercfg`): the runner host's own configuration,
//! 3. the job payload's `credentials` of type `registry` (GitLab's registry with the job's
//!    `CI_JOB_TOKEN`).
//!
//! An image takes the entry with the longest registry path it falls under
//! (`auth.Resolver.ConfigForImage`: `host/group/image`, then `host/group`, then `host`).
//! `credHelpers` and `credsStore` are never run: a job's `DOCKER_AUTH_CONFIG` must not make
//! the runner host execute programs (gitlab-runner does run them), and the executor has no
//! Docker CLI to run them with; they are reported in the job log and skipped.
//!
//! **How they reach ECS.** The task definition names a secret, never a credential:
//! `<family_prefix>/registry/<runner>/project-<id>/slot-<n>/<registry>/auth`, where the slot is
//! gitlab-runner's `CI_CONCURRENT_PROJECT_ID` (unique among the project's running jobs on that
//! runner). Two jobs of one project in the same slot name the same secret, so they still share
//! a task definition revision; two jobs running at once never share a secret. prepare writes
//! the value (`{"username","password"}`, the shape ECS reads) before RunTask, cleanup deletes
//! it, and `gc` deletes those no job state on this host names any more.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::job::JobContext;
use crate::protocol::{JobCredentials, JobResponse, custom_env};
use crate::task::TaskSpec;

/// Where a credential came from, as gitlab-runner names its sources in the job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    DockerAuthConfig,
    RunnerDockerConfig(PathBuf),
    JobPayload,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::DockerAuthConfig => f.write_str("$DOCKER_AUTH_CONFIG"),
            Source::RunnerDockerConfig(path) => write!(f, "{}", path.display()),
            Source::JobPayload => f.write_str("job payload (GitLab Registry)"),
        }
    }
}

/// One registry's login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// The registry path it is for (`host[:port][/namespace]`, host lower-cased).
    pub path: String,
    pub source: Source,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Every login the job can use, in precedence order, and what was skipped (for the job log).
#[derive(Debug, Default)]
pub struct Logins {
    pub logins: Vec<RegistryLogin>,
    pub notes: Vec<String>,
}

impl Logins {
    /// The job's logins: its `DOCKER_AUTH_CONFIG`, this host's Docker config (`home`), then
    /// the job payload's registry credentials.
    pub fn resolve(docker_auth_config: Option<&str>, home: Option<&Path>, payload: &[JobCredentials]) -> Logins {
        let mut out = Logins::default();
        if let Some(text) = docker_auth_config.filter(|t| !t.trim().is_empty()) {
            out.add_config(text, Source::DockerAuthConfig);
        }
        if let Some(home) = home {
            for file in [home.join(".docker/config.json"), home.join(".dockercfg")] {
                match std::fs::read_to_string(&file) {
                    Ok(text) => {
                        out.add_config(&text, Source::RunnerDockerConfig(file));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        out.notes
                            .push(format!("registry credentials: {} not read: {e}", file.display()));
                        break;
                    }
                }
            }
        }
        for c in payload.iter().filter(|c| c.kind == "registry") {
            out.add(RegistryLogin {
                path: registry_path(&c.url),
                source: Source::JobPayload,
                username: c.username.clone(),
                password: c.password.clone(),
            });
        }
        out
    }

    /// gitlab-runner's `RegistryInfos.Add`: the first source to name a path keeps it.
    fn add(&mut self, login: RegistryLogin) {
        if login.path.is_empty() || self.logins.iter().any(|l| l.path == login.path) {
            return;
        }
        self.logins.push(login);
    }

    fn add_config(&mut self, text: &str, source: Source) {
        match parse_docker_config(text) {
            Ok(parsed) => {
                for (server, username, password) in parsed.auths {
                    self.add(RegistryLogin {
                        path: registry_path(&server),
                        source: source.clone(),
                        username,
                        password,
                    });
                }
                if parsed.uses_helpers {
                    self.notes.push(format!(
                        "registry credentials from {source}: credHelpers/credsStore are not run by this executor; \
                         only `auths` entries are used"
                    ));
                }
            }
            Err(e) => self
                .notes
                .push(format!("registry credentials from {source} are not used: {e}")),
        }
    }

    /// The login for `image`: the longest registry path the image falls under.
    pub fn for_image(&self, image: &str) -> Option<&RegistryLogin> {
        let mut path = normalize_image_ref(image);
        loop {
            if let Some(l) = self.logins.iter().find(|l| l.path == path) {
                return Some(l);
            }
            match path.rfind('/') {
                Some(i) => path.truncate(i),
                None => return None,
            }
        }
    }

    /// Every password, for redaction.
    pub fn passwords(&self) -> impl Iterator<Item = &str> {
        self.logins.iter().map(|l| l.password.as_str())
    }
}

struct ParsedConfig {
    auths: Vec<(String, String, String)>,
    uses_helpers: bool,
}

/// A Docker `config.json` (`{"auths": {"<server>": {"auth": "<base64 user:password>"} |
/// {"username", "password"}}}`) or a legacy `.dockercfg` (the `auths` map at top level).
fn parse_docker_config(text: &str) -> Result<ParsedConfig, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    let uses_helpers = obj
        .get("credHelpers")
        .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        || obj
            .get("credsStore")
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
    let auths = match obj.get("auths") {
        Some(a) => a.as_object().ok_or("`auths` is not an object")?,
        // Legacy .dockercfg: registries at top level (each an object with `auth`).
        None if !obj.contains_key("credHelpers") && !obj.contains_key("credsStore") => obj,
        None => {
            return Ok(ParsedConfig {
                auths: vec![],
                uses_helpers,
            });
        }
    };
    let mut out = Vec::new();
    for (server, entry) in auths {
        let Some(entry) = entry.as_object() else { continue };
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (mut username, mut password) = (field("username"), field("password"));
        let auth = field("auth");
        if !auth.is_empty() {
            let decoded = base64_decode(&auth).ok_or_else(|| format!("the `auth` of {server} is not base64"))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| format!("the `auth` of {server} is not user:password"))?;
            username = u.to_string();
            password = p.to_string();
        }
        if username.is_empty() && password.is_empty() {
            continue;
        }
        out.push((server.clone(), username, password));
    }
    out.sort();
    Ok(ParsedConfig {
        auths: out,
        uses_helpers,
    })
}

fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for b in text.trim().bytes().filter(|&b| b != b'=') {
        let b = match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        };
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == b)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

fn lower_host(path: &str) -> String {
    match path.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.to_ascii_lowercase()),
        None => path.to_ascii_lowercase(),
    }
}

/// gitlab-runner's `convertToRegistryPath`: a server address as a registry path. With a
/// scheme only the host counts (`https://index.docker.io/v1/` → `docker.io`); without, a
/// trailing `/` and a tag are cut.
pub fn registry_path(address: &str) -> String {
    let lower = address.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) {
        let host = rest.split('/').next().unwrap_or(rest);
        return if host == "index.docker.io" {
            "docker.io".into()
        } else {
            host.into()
        };
    }
    let mut path = address.trim_end_matches('/').to_string();
    if let (Some(tag), Some(slash)) = (path.rfind(':'), path.rfind('/'))
        && tag > slash
    {
        path.truncate(tag);
    }
    lower_host(&path)
}

/// gitlab-runner's `normalizeImageRef`: the image without tag (or digest), Docker Hub images
/// as `docker.io/...` (`index.docker.io` too), the host lower-cased.
pub fn normalize_image_ref(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    let (dir, last) = match image.rfind('/') {
        Some(i) => (&image[..=i], &image[i + 1..]),
        None => ("", image),
    };
    let last = last.split(':').next().unwrap_or(last);
    let normalized = format!("{dir}{last}");
    let first = normalized.split('/').next().unwrap_or("");
    let docker_io = !normalized.contains('/')
        || (!first.contains('.') && !first.contains(':') && !first.eq_ignore_ascii_case("localhost"));
    let normalized = if docker_io {
        format!("docker.io/{normalized}")
    } else if first.eq_ignore_ascii_case("index.docker.io") {
        normalized["index.".len()..].to_string()
    } else {
        normalized
    };
    lower_host(&normalized)
}

/// The registry host of an image (what ECS and Docker talk to).
pub fn registry_host(image: &str) -> String {
    normalize_image_ref(image).split('/').next().unwrap_or("").to_string()
}

/// An ECR registry: ECS pulls its images with the execution role, not `repositoryCredentials`.
fn is_ecr(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 6 && labels[1] == "dkr" && labels[2] == "ecr" && host.contains(".amazonaws.com")
}

/// A container that pulls with the job's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialedPull {
    pub container: String,
    pub image: String,
    /// The registry path the login is for.
    pub registry: String,
    pub source: String,
    pub username: String,
    pub secret: String,
}

/// A secret prepare writes: its name and value (`{"username","password"}`). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrySecret {
    pub name: String,
    pub registry: String,
    pub value: String,
}

impl std::fmt::Debug for RegistrySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegistrySecret {{ name: {:?}, registry: {:?}, value: *** }}",
            self.name, self.registry
        )
    }
}

/// What the job's task pulls with credentials, and the secrets to write for that.
#[derive(Debug, Default, Clone)]
pub struct JobRegistryAuth {
    pub pulls: Vec<CredentialedPull>,
    pub secrets: Vec<RegistrySecret>,
}

impl JobRegistryAuth {
    /// The credentialed pull of a container, if it has one.
    pub fn of_container(&self, name: &str) -> Option<&CredentialedPull> {
        self.pulls.iter().find(|p| p.container == name)
    }
}

/// The job's logins from where gitlab-runner would find them.
pub fn job_logins(response: &JobResponse) -> Logins {
    // gitlab-runner uses the job's variables, config.toml `environment` included: its
    // CUSTOM_ENV_ export is that value. Without it (`plan`), the job response's last one.
    let from_env = custom_env("DOCKER_AUTH_CONFIG");
    let docker_auth_config = from_env.or_else(|| {
        response
            .variables
            .iter()
            .rev()
            .find(|v| v.key == "DOCKER_AUTH_CONFIG")
            .map(|v| v.value.clone())
    });
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    Logins::resolve(docker_auth_config.as_deref(), home.as_deref(), &response.credentials)
}

/// The slot part of the secret names: `project-<id>/slot-<CI_CONCURRENT_PROJECT_ID>`; a job
/// that sets that variable itself (or a response without a project) gets a scope of its own.
pub fn secret_scope(job: &JobContext, response: &JobResponse) -> String {
    let slot = custom_env("CI_CONCURRENT_PROJECT_ID")
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) && s.len() <= 6)
        .filter(|_| !response.sets("CI_CONCURRENT_PROJECT_ID"));
    match (job.project_id, slot) {
        (0, _) => format!("no-project/job-{}", job.key.job_id),
        (p, Some(s)) => format!("project-{p}/slot-{s}"),
        (p, None) => format!("project-{p}/job-{}", job.key.job_id),
    }
}

/// The prefix of every registry secret of one runner (for `gc`).
pub fn secret_prefix(config: &Config, runner_token: &str) -> String {
    format!("{}/registry/{runner_token}/", config.family_prefix)
}

fn secret_name(config: &Config, job: &JobContext, scope: &str, registry: &str) -> String {
    let registry: String = registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/_+=.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Ends in "/auth": a name ending in "-" and six characters would be taken for the random
    // suffix of a secret ARN.
    let name = format!(
        "{}{scope}/{registry}/auth",
        secret_prefix(config, &job.key.runner_token)
    );
    name.chars().take(512).collect()
}

/// Gives every container of `spec` (but the helper, which is the admin's image) whose image
/// the job has a login for a `repositoryCredentials` secret, and returns what prepare must
/// write. Without an execution role ECS cannot read the secret: such images are pulled
/// without the job's credentials, with a note. ECR images are left to the execution role.
pub fn attach(
    config: &Config,
    job: &JobContext,
    scope: &str,
    logins: &Logins,
    spec: &mut TaskSpec,
) -> (JobRegistryAuth, Vec<String>) {
    let mut auth = JobRegistryAuth::default();
    let mut notes = logins.notes.clone();
    for c in spec.containers.iter_mut() {
        if c.name == "helper" {
            continue;
        }
        let Some(login) = logins.for_image(&c.image) else {
            continue;
        };
        let host = registry_host(&c.image);
        if is_ecr(&host) {
            notes.push(format!(
                "image {}: ECR pulls with the task's execution role; the credentials from {} are not used",
                c.image, login.source
            ));
            continue;
        }
        if spec.execution_role_arn.as_deref().is_none_or(str::is_empty) {
            notes.push(format!(
                "image {}: the job has credentials for {} (from {}), but no execution role is configured \
                 (execution_role_arn), so ECS cannot read them: it pulls without credentials",
                c.image, login.path, login.source
            ));
            continue;
        }
        let name = secret_name(config, job, scope, &login.path);
        c.repository_credentials = Some(name.clone());
        if !auth.secrets.iter().any(|s| s.name == name) {
            auth.secrets.push(RegistrySecret {
                name: name.clone(),
                registry: login.path.clone(),
                value: serde_json::json!({"username": login.username, "password": login.password}).to_string(),
            });
        }
        auth.pulls.push(CredentialedPull {
            container: c.name.clone(),
            image: c.image.clone(),
            registry: login.path.clone(),
            source: login.source.to_string(),
            username: login.username.clone(),
            secret: name,
        });
    }
    (auth, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(url: &str, user: &str, password: &str) -> JobCredentials {
        JobCredentials {
            kind: "registry".into(),
            url: url.into(),
            username: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn image_refs_normalise_as_gitlab_runner_does() {
        assert_eq!(normalize_image_ref("nginx"), "docker.io/nginx");
        assert_eq!(normalize_image_ref("nginx:1"), "docker.io/nginx");
        assert_eq!(
            normalize_image_ref("index.docker.io/library/nginx:1"),
            "docker.io/library/nginx"
        );
        assert_eq!(
            normalize_image_ref("Registry.Example.com:5050/Group/App:1"),
            "registry.example.com:5050/Group/App"
        );
        assert_eq!(normalize_image_ref("localhost:5000/x@sha256:abc"), "localhost:5000/x");
        assert_eq!(registry_path("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_path("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(
            registry_path("registry.example.com/group/"),
            "registry.example.com/group"
        );
        assert_eq!(registry_path("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn docker_auth_config_wins_over_the_job_payload_and_the_longest_path_wins() {
        // "ci:from-variable" and "team:team-pass" in base64.
        let dac = r#"{"auths": {"registry.example.com": {"auth": "Y2k6ZnJvbS12YXJpYWJsZQ=="},
                                "registry.example.com/team": {"username": "team", "password": "team-pass"}}}"#;
        let logins = Logins::resolve(
            Some(dac),
            None,
            &[
                payload("registry.example.com", "gitlab-ci-token", "job-token"),
                payload("other.example.com:5050", "gitlab-ci-token", "job-token"),
            ],
        );
        let l = logins.for_image("registry.example.com/app/x:1").unwrap();
        assert_eq!((l.username.as_str(), l.password.as_str()), ("ci", "from-variable"));
        assert_eq!(l.source, Source::DockerAuthConfig);
        assert_eq!(
            logins.for_image("registry.example.com/team/x:1").unwrap().username,
            "team"
        );
        let l = logins.for_image("other.example.com:5050/g/p:latest").unwrap();
        assert_eq!(
            (l.source.clone(), l.password.as_str()),
            (Source::JobPayload, "job-token")
        );
        assert!(logins.for_image("busybox").is_none());
        assert!(
            logins.for_image("other.example.com/g/p").is_none(),
            "the port is part of the host"
        );
        assert!(
            !format!("{logins:?}").contains("from-variable"),
            "Debug shows no password"
        );
    }

    #[test]
    fn the_runner_hosts_docker_config_comes_between_the_variable_and_the_payload() {
        let home = std::env::temp_dir().join(format!("ecs-executor-regauth-{}", std::process::id()));
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        std::fs::write(
            home.join(".docker/config.json"),
            r#"{"auths": {"https://registry.example.com": {"username": "host", "password": "host-pass"}},
                "credHelpers": {"ecr.example.com": "ecr-login"}}"#,
        )
        .unwrap();
        let logins = Logins::resolve(
            None,
            Some(&home),
            &[payload("registry.example.com", "gitlab-ci-token", "job-token")],
        );
        let l = logins.for_image("registry.example.com/g/p").unwrap();
        assert_eq!(l.username, "host");
        assert!(matches!(l.source, Source::RunnerDockerConfig(_)));
        assert!(
            logins.notes.iter().any(|n| n.contains("credHelpers")),
            "{:?}",
            logins.notes
        );
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn a_broken_docker_auth_config_is_noted_and_the_payload_still_used() {
        let logins = Logins::resolve(
            Some("{not json"),
            None,
            &[payload("registry.example.com", "gitlab-ci-token", "job-token")],
        );
        assert!(logins.notes[0].contains("$DOCKER_AUTH_CONFIG"), "{:?}", logins.notes);
        assert_eq!(
            logins.for_image("registry.example.com/g/p").unwrap().source,
            Source::JobPayload
        );
        let bad = Logins::resolve(
            Some(r#"{"auths": {"r.example.com": {"auth": "bm9jb2xvbg=="}}}"#),
            None,
            &[],
        );
        assert!(bad.notes[0].contains("user:password"), "{:?}", bad.notes);
    }

    fn config() -> Config {
        Config::parse(
            "cluster='c'\nregion='us-east-1'\nexecution_role_arn='arn:aws:iam::1:role/exec'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn attached_secrets_are_named_by_runner_project_slot_and_registry_and_hold_no_credential_in_the_spec() {
        let config = config();
        let job = JobContext::for_tests("127.0.0.1:5000/private/build:1");
        let mut spec = TaskSpec::for_job(&config, &job);
        let logins = Logins::resolve(
            None,
            None,
            &[payload("127.0.0.1:5000", "gitlab-ci-token", "s3cr3t-token")],
        );
        let (auth, notes) = attach(&config, &job, "project-1/slot-0", &logins, &mut spec);
        assert!(notes.is_empty(), "{notes:?}");
        let name = "ecs-executor/registry/abc/project-1/slot-0/127.0.0.1-5000/auth";
        assert_eq!(spec.containers[0].repository_credentials.as_deref(), Some(name));
        assert_eq!(
            spec.containers[1].repository_credentials, None,
            "the helper image is the admin's"
        );
        assert_eq!(auth.secrets.len(), 1);
        assert_eq!(
            auth.secrets[0].value,
            r#"{"username":"gitlab-ci-token","password":"s3cr3t-token"}"#
        );
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("s3cr3t-token") && json.contains(name));
        // The same project and slot: the same secret name, so the same task definition.
        let mut again = TaskSpec::for_job(&config, &job);
        attach(&config, &job, "project-1/slot-0", &logins, &mut again);
        assert_eq!(spec.content_hash(), again.content_hash());
    }

    #[test]
    fn without_an_execution_role_or_for_ecr_no_secret_is_attached() {
        let mut config = config();
        config.execution_role_arn = None;
        let job = JobContext::for_tests("127.0.0.1:5000/private/build:1");
        let mut spec = TaskSpec::for_job(&config, &job);
        let logins = Logins::resolve(None, None, &[payload("127.0.0.1:5000", "u", "p")]);
        let (auth, notes) = attach(&config, &job, "s", &logins, &mut spec);
        assert!(
            auth.secrets.is_empty() && notes[0].contains("execution_role_arn"),
            "{notes:?}"
        );
        let config = self::config();
        let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1";
        let job = JobContext::for_tests(ecr);
        let mut spec = TaskSpec::for_job(&config, &job);
        let logins = Logins::resolve(
            None,
            None,
            &[payload("123456789012.dkr.ecr.us-east-1.amazonaws.com", "AWS", "p")],
        );
        let (auth, notes) = attach(&config, &job, "s", &logins, &mut spec);
        assert!(auth.secrets.is_empty() && notes[0].contains("ECR"), "{notes:?}");
    }
}
