//! What gitlab-runner's custom executor hands us on every call: `CUSTOM_ENV_*` job variables,
//! the job response file (the trusted source), the stage names and where each one runs.
//!
//! `CUSTOM_ENV_*` values can be set by users through job variables, so anything that must be
//! trusted (job id, image, services, project, protection, runner identity) is read from
//! `JOB_RESPONSE_FILE` instead: its structured fields, or the first occurrence of a predefined
//! variable ([`JobResponse::predefined`]); see `docs/security.md`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::failure::{Blame, Classify};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0} is not set: this command must be called by gitlab-runner's custom executor")]
    MissingEnv(&'static str),
    #[error("cannot read the job response file {path}: {source}")]
    ReadJobResponse { path: PathBuf, source: std::io::Error },
    #[error("the job response file {path} is not valid: {message}")]
    BadJobResponse { path: PathBuf, message: String },
    #[error("stage name {0:?} is not valid (expected letters, digits, '_' or '-')")]
    BadStage(String),
    #[error(
        "the job sets the variable {0}, which gitlab-runner adds itself to name this runner: \
         the executor cannot tell the runner's value from the job's. Remove it from the job's \
         variables (or the runner admin sets `runner_short_token` in the executor config)"
    )]
    ForgedIdentity(&'static str),
}

impl Classify for ProtocolError {
    fn blame(&self) -> Blame {
        match self {
            // The job's own variables asked for it.
            ProtocolError::ForgedIdentity(_) => Blame::Build,
            _ => Blame::System,
        }
    }
}

/// The gitlab-runner short token of the runner serving this job, from a source the job cannot
/// set: the executor config's `runner_short_token`, else `CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN` —
/// unless the job response carries that name too (a job variable would then be what
/// gitlab-runner exported), which is refused.
pub fn trusted_runner_token(configured: Option<&str>, job_sets_it: bool) -> Result<Option<String>, ProtocolError> {
    if let Some(token) = configured {
        return Ok(Some(token.to_string()));
    }
    if job_sets_it {
        return Err(ProtocolError::ForgedIdentity("CI_RUNNER_SHORT_TOKEN"));
    }
    Ok(custom_env("CI_RUNNER_SHORT_TOKEN"))
}

/// Variables gitlab-runner adds itself (they are not in the job response), that GitLab's
/// Docker executor also hands to services (`PublicOrInternal()`). Any other `CUSTOM_ENV_*`
/// that is not in the job response — values of the `secrets:` keyword (Vault, AWS Secrets
/// Manager, ...) among them — goes nowhere but the job's own script, and is redacted.
pub const RUNNER_INTERNAL_VARIABLES: &[&str] = &[
    "CI_BUILDS_DIR",
    "CI_PROJECT_DIR",
    "CI_CONCURRENT_ID",
    "CI_CONCURRENT_PROJECT_ID",
    "CI_SERVER",
    "CI_SHARED_ENVIRONMENT",
    "CI_DISPOSABLE_ENVIRONMENT",
    "CI_RUNNER_SHORT_TOKEN",
    "CI_RUNNER_VERSION",
    "CI_RUNNER_REVISION",
    "CI_RUNNER_EXECUTABLE_ARCH",
    "CI_JOB_STATUS",
    "CI_JOB_IMAGE",
    "CI_JOB_TIMEOUT",
    "RUNNER_TEMP_PROJECT_DIR",
    "GITLAB_CI",
];

/// `CUSTOM_ENV_*` values that are neither in the job response nor runner-internal: what
/// gitlab-runner resolved from the job's `secrets:`. (name, value), sorted by name.
pub fn unlisted_custom_env(response: &JobResponse) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| Some((k.strip_prefix("CUSTOM_ENV_")?.to_string(), v)))
        .filter(|(k, _)| {
            !response.sets(k) && !RUNNER_INTERNAL_VARIABLES.contains(&k.as_str()) && k != "CI_JOB_SERVICES"
        })
        .collect();
    vars.sort();
    vars
}

/// A job variable gitlab-runner exported as `CUSTOM_ENV_<name>`.
pub fn custom_env(name: &str) -> Option<String> {
    std::env::var(format!("CUSTOM_ENV_{name}")).ok()
}

/// The job response JSON (`JOB_RESPONSE_FILE`), reduced to what we use. It also holds the job
/// token and registry credentials: never log it, never copy it anywhere.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobResponse {
    pub id: u64,
    pub job_info: JobInfo,
    pub git_info: GitInfo,
    #[serde(deserialize_with = "null_as_empty")]
    pub variables: Vec<JobVariable>,
    pub image: Option<JobImage>,
    /// gitlab-runner writes Go's nil slice as `null` (a job without services).
    #[serde(deserialize_with = "null_as_empty")]
    pub services: Vec<JobService>,
    /// GitLab's logins for the job (type `registry`: its container registry with the job
    /// token). Secret: never printed, never sent anywhere but into a registry secret.
    #[serde(deserialize_with = "null_as_empty")]
    pub credentials: Vec<JobCredentials>,
}

/// A `credentials[]` entry of the job response. `Debug` never shows the password.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobCredentials {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for JobCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JobCredentials {{ kind: {:?}, url: {:?}, username: {:?}, password: *** }}",
            self.kind, self.url, self.username
        )
    }
}

/// A JSON `null` where a list belongs: Go's `encoding/json` writes nil slices that way.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobInfo {
    pub name: String,
    pub stage: String,
    pub project_id: u64,
    pub project_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GitInfo {
    pub repo_url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobVariable {
    pub key: String,
    pub value: String,
    pub public: bool,
    pub masked: bool,
    pub file: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobImage {
    pub name: String,
    pub alias: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub pull_policy: Option<Vec<String>>,
    /// `image: docker:` (`user`, `platform`) as GitLab sends it (`executor_opts`).
    pub executor_opts: ExecutorOptions,
}

/// An image's `executor_opts` (gitlab-runner's `ImageExecutorOptions`); only `docker:` is ours.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExecutorOptions {
    pub docker: DockerOptions,
}

/// `image: docker:` / `services: docker:` (gitlab-runner's `ImageDockerOptions`): the user the
/// container runs as and the platform its image is for. The job author's choice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DockerOptions {
    /// `linux/arm64`, `linux/amd64/v2`, ...; "" when not given.
    pub platform: String,
    /// A name, `uid`, or `uid:gid`; "" when not given. GitLab's YAML also allows a number.
    #[serde(deserialize_with = "string_or_number")]
    pub user: String,
}

/// gitlab-runner's `StringOrInt64`: `"1000"` or `1000` (or `null`).
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(i64),
    }
    Ok(match Option::<Either>::deserialize(deserializer)? {
        Some(Either::Text(s)) => s,
        Some(Either::Number(n)) => n.to_string(),
        None => String::new(),
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobService {
    pub name: String,
    pub alias: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    #[serde(deserialize_with = "null_as_empty")]
    pub variables: Vec<JobVariable>,
    /// `services: pull_policy:` (`always`, `if-not-present`, `never`).
    pub pull_policy: Option<Vec<String>>,
    /// `services: docker:` (`user`, `platform`).
    pub executor_opts: ExecutorOptions,
}

impl JobResponse {
    /// The job's `pull_policy:` values (image and services) that this executor does not apply,
    /// as `image alpine:3: [if-not-present]` — on ECS the container instance's agent pulls
    /// every image of a task as its `ECS_IMAGE_PULL_BEHAVIOR` says, and no task definition or
    /// RunTask field sets it per container. `always` is what the agent's `default` does (pull,
    /// and only fall back to a cached image when the registry fails), so it is not listed.
    pub fn unapplied_pull_policies(&self) -> Vec<String> {
        let listed = |policy: &Option<Vec<String>>| -> Option<String> {
            let policy: Vec<&str> = policy
                .iter()
                .flatten()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .collect();
            (!policy.is_empty() && policy.iter().any(|p| *p != "always")).then(|| format!("[{}]", policy.join(", ")))
        };
        let image = self
            .image
            .as_ref()
            .filter(|i| !i.name.trim().is_empty())
            .and_then(|i| listed(&i.pull_policy).map(|p| format!("image {}: {p}", i.name)));
        let services = self
            .services
            .iter()
            .filter_map(|s| listed(&s.pull_policy).map(|p| format!("service {}: {p}", s.name)));
        image.into_iter().chain(services).collect()
    }
}

fn job_response_path() -> Result<PathBuf, ProtocolError> {
    std::env::var_os("JOB_RESPONSE_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or(ProtocolError::MissingEnv("JOB_RESPONSE_FILE"))
}

fn read_job_response<T: for<'de> Deserialize<'de>>() -> Result<T, ProtocolError> {
    let path = job_response_path()?;
    let bytes = std::fs::read(&path).map_err(|source| ProtocolError::ReadJobResponse {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ProtocolError::BadJobResponse {
        path,
        message: e.to_string(),
    })
}

impl JobResponse {
    pub fn load() -> Result<JobResponse, ProtocolError> {
        Self::from_file(&job_response_path()?)
    }

    /// A job response from a file (`ecs-executor plan --job-response`).
    pub fn from_file(path: &std::path::Path) -> Result<JobResponse, ProtocolError> {
        let bytes = std::fs::read(path).map_err(|source| ProtocolError::ReadJobResponse {
            path: path.to_path_buf(),
            source,
        })?;
        let response: JobResponse = serde_json::from_slice(&bytes).map_err(|e| ProtocolError::BadJobResponse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if response.id == 0 {
            return Err(ProtocolError::BadJobResponse {
                path: path.to_path_buf(),
                message: "it has no job `id`".into(),
            });
        }
        Ok(response)
    }

    /// A predefined variable as GitLab set it: its FIRST occurrence (GitLab lists predefined
    /// variables before project and job variables, and a job's `variables:` may repeat the
    /// name later; gitlab-runner exports the last one as `CUSTOM_ENV_*`). `None` when the
    /// first occurrence is not public (then it is not GitLab's predefined value).
    pub fn predefined(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|v| v.key == name)
            .filter(|v| v.public && !v.masked && !v.file)
            .map(|v| v.value.as_str())
    }

    /// Does any entry of the job response carry this variable (a job that sets a variable
    /// named like one the runner adds itself makes it appear here)?
    pub fn sets(&self, name: &str) -> bool {
        self.variables.iter().any(|v| v.key == name)
    }

    /// `image: name:` as gitlab-runner hands it to its Docker executor: `$VAR`s expanded with
    /// the job's variables (the last definition wins). A variable whose value must stay secret
    /// (masked, file-type, not public) is refused instead: the name would be shown in the ECS
    /// task definition and the job log. `Err` carries the variable's name.
    pub fn expand_image_name(&self, name: &str) -> Result<String, String> {
        let refused = std::cell::RefCell::new(None);
        let expanded = expand_value(name, &|var| match self.variables.iter().rev().find(|v| v.key == var) {
            Some(v) if v.masked || v.file || !v.public => {
                refused.borrow_mut().get_or_insert_with(|| var.to_string());
                String::new()
            }
            Some(v) => v.value.clone(),
            None => String::new(),
        });
        match refused.into_inner() {
            Some(var) => Err(var),
            None => Ok(expanded),
        }
    }

    /// Values that must never be printed or sent anywhere but into the job's own script.
    pub fn secret_values(&self) -> Vec<&str> {
        self.variables
            .iter()
            .filter(|v| (v.masked || v.file || !v.public) && v.value.len() >= 4)
            .map(|v| v.value.as_str())
            .chain(
                self.credentials
                    .iter()
                    .map(|c| c.password.as_str())
                    .filter(|p| p.len() >= 4),
            )
            .collect()
    }
}

/// Which job this call is for, read cheaply (run stages parse only the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobKey {
    pub job_id: u64,
    /// The gitlab-runner's short token (safe to show), or "runner" when unknown. Not to be
    /// confused with our stage runner (`stages::runner`).
    pub runner_token: String,
}

impl JobKey {
    /// The job's key from the job response (its id and variable names only) and a trusted
    /// runner token (see [`trusted_runner_token`]); `configured`: the config's token.
    pub fn load(configured: Option<&str>) -> Result<JobKey, ProtocolError> {
        #[derive(Deserialize)]
        struct KeyOnly {
            #[serde(default)]
            key: String,
        }
        #[derive(Deserialize)]
        struct IdOnly {
            #[serde(default)]
            id: u64,
            #[serde(default, deserialize_with = "null_as_empty")]
            variables: Vec<KeyOnly>,
        }
        let only: IdOnly = read_job_response()?;
        if only.id == 0 {
            return Err(ProtocolError::BadJobResponse {
                path: job_response_path()?,
                message: "it has no job `id`".into(),
            });
        }
        let sets_token = only.variables.iter().any(|v| v.key == "CI_RUNNER_SHORT_TOKEN");
        let token = trusted_runner_token(configured, sets_token)?;
        Ok(Self::new(only.id, token.as_deref()))
    }

    pub fn new(job_id: u64, runner_short_token: Option<&str>) -> JobKey {
        let runner: String = runner_short_token
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(16)
            .collect();
        JobKey {
            job_id,
            runner_token: if runner.is_empty() { "runner".into() } else { runner },
        }
    }

    /// File-name-safe identity of the job on this runner host.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.runner_token, self.job_id)
    }

    /// ECS `startedBy` (at most 36 of letters, digits, '-', '_', '/').
    pub fn started_by(&self) -> String {
        let mut s = format!("gl/{}/{}", self.runner_token, self.job_id);
        s.truncate(36);
        s
    }
}

/// Where a stage's script runs, as GitLab's Docker executor does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageRoute {
    /// The helper container: git, caches, artifacts (writes with umask 0000).
    Helper,
    /// The job's own image: the user's script and anything unknown.
    Build,
}

impl StageRoute {
    pub fn for_stage(stage: &str) -> StageRoute {
        match stage {
            "prepare_script"
            | "get_sources"
            | "clear_worktree"
            | "restore_cache"
            | "download_artifacts"
            | "cleanup_file_variables" => StageRoute::Helper,
            s if s.starts_with("archive_cache") || s.starts_with("upload_artifacts") => StageRoute::Helper,
            // build_script, step_*, after_script and every stage we do not know yet.
            _ => StageRoute::Build,
        }
    }

    pub fn container_name(self) -> &'static str {
        match self {
            StageRoute::Helper => "helper",
            StageRoute::Build => "build",
        }
    }
}

/// Stage names come from gitlab-runner but end up in file names and log lines.
pub fn validate_stage(stage: &str) -> Result<(), ProtocolError> {
    let ok = !stage.is_empty()
        && stage.len() <= 128
        && stage.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::BadStage(stage.to_string()))
    }
}

/// One `$VAR` / `${VAR}` expansion as gitlab-runner's `os.Expand` does it: `lookup` gives a
/// name's value (unknown names: ""), `$$` is a literal `$`, a `$` not followed by a name stays.
pub fn expand_value(s: &str, lookup: &dyn Fn(&str) -> String) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_route_like_the_docker_executor() {
        for s in [
            "prepare_script",
            "get_sources",
            "clear_worktree",
            "restore_cache",
            "download_artifacts",
            "archive_cache",
            "archive_cache_on_failure",
            "upload_artifacts_on_success",
            "upload_artifacts_on_failure",
            "cleanup_file_variables",
        ] {
            assert_eq!(StageRoute::for_stage(s), StageRoute::Helper, "{s}");
        }
        for s in ["build_script", "step_release", "after_script", "some_future_stage"] {
            assert_eq!(StageRoute::for_stage(s), StageRoute::Build, "{s}");
        }
    }

    #[test]
    fn nil_lists_in_the_job_response_are_empty() {
        let text = r#"{"id":7,"variables":null,"image":{"name":"alpine"},"services":null,"artifacts":null}"#;
        let r: JobResponse = serde_json::from_str(text).unwrap();
        assert_eq!(r.id, 7);
        assert!(r.variables.is_empty() && r.services.is_empty());
        let r: JobResponse = serde_json::from_str(r#"{"id":8,"services":[{"name":"pg","variables":null}]}"#).unwrap();
        assert_eq!(r.services.len(), 1);
    }

    #[test]
    fn pull_policies_other_than_always_are_listed_as_not_applied() {
        let text = r#"{"id":9,
            "image":{"name":"alpine:3","pull_policy":["if-not-present"]},
            "services":[{"name":"pg:16","pull_policy":["always"]},{"name":"redis:7","pull_policy":["never","always"]},
                        {"name":"mysql:8"}]}"#;
        let r: JobResponse = serde_json::from_str(text).unwrap();
        assert_eq!(
            r.unapplied_pull_policies(),
            ["image alpine:3: [if-not-present]", "service redis:7: [never, always]"]
        );
        let r: JobResponse =
            serde_json::from_str(r#"{"id":10,"image":{"name":"alpine:3","pull_policy":["always"]},"services":null}"#)
                .unwrap();
        assert!(r.unapplied_pull_policies().is_empty());
        let r: JobResponse =
            serde_json::from_str(r#"{"id":11,"image":{"name":"alpine:3","pull_policy":null}}"#).unwrap();
        assert!(r.unapplied_pull_policies().is_empty());
    }

    #[test]
    fn stage_names_with_path_separators_are_refused() {
        assert!(validate_stage("build_script").is_ok());
        for bad in ["../x", "a/b", "", "a b", "x\0"] {
            assert!(validate_stage(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn started_by_fits_ecs_limits() {
        let key = JobKey::new(u64::MAX, Some("glrt-abcdefgh/../x"));
        let sb = key.started_by();
        assert!(sb.len() <= 36, "{sb}");
        assert!(
            sb.chars().all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c)),
            "{sb}"
        );
        assert_eq!(JobKey::new(7, None).file_stem(), "runner-7");
    }
}
