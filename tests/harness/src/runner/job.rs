//! The job as GitLab hands it to gitlab-runner, and what gitlab-runner derives from it for a
//! custom executor: the JOB_RESPONSE_FILE (GitLab's job JSON, `common/spec/spec.go`), the job's
//! variables in `Build.GetAllVariables()` order with gitlab-runner's `$VAR` expansion, and the
//! `CUSTOM_ENV_*` environment built from them (`executors/custom/custom.go`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::runner::wire;

/// Default runner version reported as `CI_RUNNER_VERSION` (the version the protocol doc was
/// read from).
pub const DEFAULT_RUNNER_VERSION: &str = "19.4.0";

/// One CI/CD variable as GitLab sends it (`spec.Variable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    /// GitLab's `public` flag: predefined and `.gitlab-ci.yml` variables are public,
    /// project/group settings variables are not.
    pub public: bool,
    /// File-type: the script gets a path to a file holding `value`; `CUSTOM_ENV_<KEY>` gets
    /// `value` itself.
    pub file: bool,
    /// gitlab-runner replaces the value with `[MASKED]` in the job log.
    pub masked: bool,
    /// Not `$VAR`-expanded.
    pub raw: bool,
}

impl Variable {
    /// A public, plain variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            public: true,
            file: false,
            masked: false,
            raw: false,
        }
    }
    /// Masked (and, like a settings variable, not public).
    pub fn masked(mut self) -> Self {
        self.masked = true;
        self.public = false;
        self
    }
    /// File-type.
    pub fn file(mut self) -> Self {
        self.file = true;
        self
    }
    /// Excluded from `$VAR` expansion.
    pub fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
    pub fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    fn wire(&self) -> wire::Variable<'_> {
        wire::Variable {
            key: &self.key,
            value: &self.value,
            public: self.public,
            file: self.file,
            masked: self.masked,
            raw: self.raw,
        }
    }
}

/// A port of an image or service (`spec.Port`; every field is `omitempty`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub protocol: Option<String>,
    pub name: Option<String>,
}

impl Port {
    pub fn new(number: u16) -> Self {
        Self {
            number,
            ..Self::default()
        }
    }
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn wire(&self) -> wire::Port<'_> {
        wire::Port {
            number: self.number,
            protocol: self.protocol.as_deref(),
            name: self.name.as_deref(),
        }
    }
}

/// The job's `image:` or one of its `services:` (GitLab uses one type, `spec.Image`, for both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// As GitLab writes it: one string, several aliases separated by commas and/or spaces.
    pub alias: String,
    pub command: Vec<String>,
    pub entrypoint: Vec<String>,
    pub ports: Vec<Port>,
    pub variables: Vec<Variable>,
    pub pull_policy: Vec<String>,
    /// `docker: platform:` ("" when not given).
    pub docker_platform: String,
    /// `docker: user:` ("" when not given).
    pub docker_user: String,
}

impl Image {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
    /// Sets the alias string exactly as GitLab sends it (`"db,pg"` or `"db pg"`).
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = alias.into();
        self
    }
    pub fn command<S: Into<String>>(mut self, command: impl IntoIterator<Item = S>) -> Self {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }
    pub fn entrypoint<S: Into<String>>(mut self, entrypoint: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = entrypoint.into_iter().map(Into::into).collect();
        self
    }
    pub fn port(mut self, port: Port) -> Self {
        self.ports.push(port);
        self
    }
    pub fn variable(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push(Variable::new(key, value));
        self
    }
    pub fn add_variable(mut self, variable: Variable) -> Self {
        self.variables.push(variable);
        self
    }
    pub fn pull_policy<S: Into<String>>(mut self, policies: impl IntoIterator<Item = S>) -> Self {
        self.pull_policy = policies.into_iter().map(Into::into).collect();
        self
    }
    /// `docker: platform:` (`linux/arm64`, ...).
    pub fn docker_platform(mut self, platform: impl Into<String>) -> Self {
        self.docker_platform = platform.into();
        self
    }
    /// `docker: user:` (`1234`, `nobody`, `1234:5678`).
    pub fn docker_user(mut self, user: impl Into<String>) -> Self {
        self.docker_user = user.into();
        self
    }

    /// The aliases as gitlab-runner splits them (`Image.Aliases()`: commas become spaces,
    /// then split on whitespace).
    pub fn aliases(&self) -> Vec<String> {
        self.alias
            .replace(',', " ")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn wire(&self) -> wire::Image<'_> {
        wire::Image {
            name: &self.name,
            alias: &self.alias,
            command: &self.command,
            entrypoint: &self.entrypoint,
            ports: self.ports.iter().map(Port::wire).collect(),
            variables: self.variables.iter().map(Variable::wire).collect(),
            pull_policy: &self.pull_policy,
            executor_opts: wire::ExecutorOpts {
                docker: wire::DockerOpts {
                    platform: self.docker_platform.clone(),
                    user: self.docker_user.clone(),
                },
                ..wire::ExecutorOpts::default()
            },
        }
    }
}

/// Where the job's sources come from (`spec.GitInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitInfo {
    pub repo_url: String,
    pub sha: String,
    pub git_ref: String,
}

/// One `steps[]` entry: `script` (run as stage `build_script`), `after_script`, or another
/// step such as `release` (run as stage `step_release`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub script: Vec<String>,
    pub when: String,
    pub allow_failure: bool,
}

/// The job a test hands to the harness: GitLab's job response plus the few runner-side facts
/// (`config.toml`) that shape the variables.
#[derive(Clone, Debug)]
pub struct JobSpec {
    id: i64,
    token: String,
    name: String,
    ci_stage: String,
    project_id: i64,
    project_path: String,
    server_url: String,
    runner_short_token: String,
    runner_version: String,
    runner_revision: String,
    runner_environment: Vec<Variable>,
    concurrent_id: u32,
    concurrent_project_id: u32,
    timeout_secs: u32,
    builds_dir: String,
    image: Option<Image>,
    services: Vec<Image>,
    variables: Vec<Variable>,
    git: Option<GitInfo>,
    credentials: Vec<(String, String, String)>,
    steps: Vec<Step>,
    extra_stage_lines: BTreeMap<String, Vec<String>>,
}

/// What gitlab-runner knows about the build at the moment of a call; the variables depend on
/// it. `dirs` stays `None` until the first successful config call (gitlab-runner's
/// `StartBuild` runs after config_exec), so config itself sees empty `CI_BUILDS_DIR` and
/// `CI_PROJECT_DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub dirs: Option<BuildDirs>,
    /// `CI_JOB_STATUS`: `running`, then `success`/`failed`/`canceled`/`timedout` from
    /// after_script on.
    pub job_status: String,
    /// `hostname` from config's output (shown by prepare_script).
    pub hostname: Option<String>,
    /// `shell` from config's output (`bash` or `sh`).
    pub shell: String,
}

impl Default for JobState {
    fn default() -> Self {
        Self {
            dirs: None,
            job_status: "running".into(),
            hostname: None,
            shell: "bash".into(),
        }
    }
}

/// `CI_BUILDS_DIR` and `CI_PROJECT_DIR` as gitlab-runner computes them (`Build.StartBuild`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildDirs {
    pub builds_dir: String,
    pub project_dir: String,
}

impl JobSpec {
    /// A job with GitLab's usual defaults: no image, no services, no steps.
    pub fn new(id: i64, project_path: impl Into<String>) -> Self {
        Self {
            id,
            token: format!("glcbt-harness-job-token-{id}"),
            name: "test".into(),
            ci_stage: "test".into(),
            project_id: 1,
            project_path: project_path.into(),
            server_url: "https://gitlab.example.com".into(),
            runner_short_token: "t3stt0k3n".into(),
            runner_version: DEFAULT_RUNNER_VERSION.into(),
            runner_revision: "harness".into(),
            runner_environment: Vec::new(),
            concurrent_id: 0,
            concurrent_project_id: 0,
            timeout_secs: 3600,
            builds_dir: "/builds".into(),
            image: None,
            services: Vec::new(),
            variables: Vec::new(),
            git: None,
            credentials: Vec::new(),
            steps: Vec::new(),
            extra_stage_lines: BTreeMap::new(),
        }
    }

    pub fn job_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn project_id(mut self, id: i64) -> Self {
        self.project_id = id;
        self
    }
    pub fn runner_short_token(mut self, token: impl Into<String>) -> Self {
        self.runner_short_token = token.into();
        self
    }
    pub fn runner_version(mut self, version: impl Into<String>) -> Self {
        self.runner_version = version.into();
        self
    }
    /// A `[[runners]] environment = [...]` entry (gitlab-runner adds these to every job).
    pub fn runner_environment(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.runner_environment.push(Variable::new(key, value));
        self
    }
    /// `CI_CONCURRENT_ID` and `CI_CONCURRENT_PROJECT_ID`.
    pub fn concurrency_slot(mut self, concurrent_id: u32, concurrent_project_id: u32) -> Self {
        self.concurrent_id = concurrent_id;
        self.concurrent_project_id = concurrent_project_id;
        self
    }
    /// The job timeout GitLab sends (`runner_info.timeout`, `CI_JOB_TIMEOUT`).
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }
    /// config.toml's `builds_dir` (default `/builds`); config_exec's `builds_dir` overrides it.
    pub fn builds_dir(mut self, dir: impl Into<String>) -> Self {
        self.builds_dir = dir.into();
        self
    }
    pub fn image(mut self, image: Image) -> Self {
        self.image = Some(image);
        self
    }
    /// A job without `image:` (GitLab then sends `"image": {"name": ""}` and gitlab-runner sets
    /// no `CI_JOB_IMAGE`).
    pub fn without_image(mut self) -> Self {
        self.image = None;
        self
    }
    pub fn service(mut self, service: Image) -> Self {
        self.services.push(service);
        self
    }
    pub fn variable(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push(Variable::new(key, value));
        self
    }
    pub fn masked_variable(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push(Variable::new(key, value).masked());
        self
    }
    pub fn file_variable(mut self, key: impl Into<String>, content: impl Into<String>) -> Self {
        self.variables.push(Variable::new(key, content).file().public(false));
        self
    }
    pub fn add_variable(mut self, variable: Variable) -> Self {
        self.variables.push(variable);
        self
    }
    /// Enables get_sources (clone strategy unless `GIT_STRATEGY` says otherwise). Without it
    /// get_sources behaves as `GIT_STRATEGY=none`, so tests need no git server.
    pub fn git(mut self, repo_url: impl Into<String>, sha: impl Into<String>, git_ref: impl Into<String>) -> Self {
        self.git = Some(GitInfo {
            repo_url: repo_url.into(),
            sha: sha.into(),
            git_ref: git_ref.into(),
        });
        self
    }
    /// A `credentials[]` entry of type `registry` (GitLab sends the job's registry login).
    pub fn registry_credentials(
        mut self,
        url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials.push((url.into(), username.into(), password.into()));
        self
    }
    /// The job's `script:` (with `before_script:` already merged in, as GitLab sends it).
    pub fn script<S: Into<String>>(self, lines: impl IntoIterator<Item = S>) -> Self {
        self.step("script", lines)
    }
    pub fn after_script<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.steps.retain(|s| s.name != "after_script");
        self.steps.push(Step {
            name: "after_script".into(),
            script: lines.into_iter().map(Into::into).collect(),
            when: "always".into(),
            allow_failure: false,
        });
        self
    }
    /// Another step (GitLab turns `release:` into step `release`, run as stage `step_release`).
    pub fn step<S: Into<String>>(mut self, name: &str, lines: impl IntoIterator<Item = S>) -> Self {
        self.steps.retain(|s| s.name != name);
        self.steps.push(Step {
            name: name.into(),
            script: lines.into_iter().map(Into::into).collect(),
            when: "on_success".into(),
            allow_failure: false,
        });
        self
    }
    /// Makes a stage that is empty for this job (cache and artifact stages, `clear_worktree`)
    /// run with these shell lines, shaped like gitlab-runner's scripts for it (exports, `cd`,
    /// the lines). The real commands need `gitlab-runner` in the build environment; tests of
    /// stage routing need only something that runs.
    pub fn stage_lines<S: Into<String>>(mut self, stage: &str, lines: impl IntoIterator<Item = S>) -> Self {
        self.extra_stage_lines
            .insert(stage.into(), lines.into_iter().map(Into::into).collect());
        self
    }

    // Read access, for tests and the flow.
    pub fn id(&self) -> i64 {
        self.id
    }
    pub fn project_path(&self) -> &str {
        &self.project_path
    }
    pub(crate) fn runner_short_token_value(&self) -> &str {
        &self.runner_short_token
    }
    pub(crate) fn runner_version_value(&self) -> &str {
        &self.runner_version
    }
    pub fn services(&self) -> &[Image] {
        &self.services
    }
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    pub fn git_info(&self) -> Option<&GitInfo> {
        self.git.as_ref()
    }
    pub(crate) fn default_builds_dir(&self) -> &str {
        &self.builds_dir
    }
    pub(crate) fn timeout(&self) -> u32 {
        self.timeout_secs
    }
    pub(crate) fn extra_stage_lines(&self, stage: &str) -> Option<&[String]> {
        self.extra_stage_lines.get(stage).map(Vec::as_slice)
    }

    fn repo_url(&self) -> String {
        match &self.git {
            Some(git) => git.repo_url.clone(),
            None => format!("{}/{}.git", self.server_url, self.project_path),
        }
    }

    /// The variables GitLab itself puts in the job response: its predefined ones, then the
    /// user's. (gitlab-runner adds its own around these; see [`JobSpec::all_variables`].)
    pub fn gitlab_variables(&self) -> Vec<Variable> {
        let (sha, git_ref) = match &self.git {
            Some(git) => (git.sha.clone(), git.git_ref.clone()),
            None => ("0123456789abcdef0123456789abcdef01234567".into(), "main".into()),
        };
        let project_name = self.project_path.rsplit('/').next().unwrap_or("").to_owned();
        let namespace = self
            .project_path
            .rsplit_once('/')
            .map(|(ns, _)| ns.to_owned())
            .unwrap_or_default();
        let mut vars = vec![
            Variable::new("CI", "true"),
            Variable::new("GITLAB_CI", "true"),
            Variable::new("CI_SERVER_URL", &self.server_url),
            Variable::new("CI_JOB_ID", self.id.to_string()),
            Variable::new("CI_JOB_NAME", &self.name),
            Variable::new("CI_JOB_STAGE", &self.ci_stage),
            Variable::new("CI_JOB_TOKEN", &self.token).masked(),
            Variable::new("CI_PROJECT_ID", self.project_id.to_string()),
            Variable::new("CI_PROJECT_PATH", &self.project_path),
            Variable::new("CI_PROJECT_NAME", project_name),
            Variable::new("CI_PROJECT_NAMESPACE", namespace),
            Variable::new("CI_REPOSITORY_URL", self.repo_url()),
            Variable::new("CI_COMMIT_SHA", sha),
            Variable::new("CI_COMMIT_REF_NAME", git_ref),
        ];
        vars.extend(self.variables.iter().cloned());
        vars
    }

    /// `CI_BUILDS_DIR`/`CI_PROJECT_DIR` for a builds dir (`Build.StartBuild`): the project
    /// slug from the repository URL, under `<short token>/<concurrent project id>/` when the
    /// builds dir is shared.
    pub fn build_dirs(&self, builds_dir: &str, shared: bool) -> BuildDirs {
        let slug = project_slug(&self.repo_url()).unwrap_or_else(|| format!("project-{}", self.project_id));
        let unique = if shared {
            format!("{}/{}/{}", self.runner_short_token, self.concurrent_project_id, slug)
        } else {
            slug
        };
        BuildDirs {
            builds_dir: builds_dir.to_owned(),
            project_dir: join_path(builds_dir, &unique),
        }
    }

    /// Every variable gitlab-runner gives the job, in `Build.GetAllVariables()` order and
    /// already `$VAR`-expanded: `CI_JOB_IMAGE` (only with an image), the runner's
    /// (`CI_RUNNER_SHORT_TOKEN`, config.toml `environment`), the defaults (`CI_BUILDS_DIR`,
    /// `CI_PROJECT_DIR`, `CI_CONCURRENT_*`, `CI_SERVER`, `CI_JOB_STATUS`, `CI_JOB_TIMEOUT`),
    /// GitLab's and the user's, `CI_SHARED_ENVIRONMENT`, the runner version ones, and
    /// `RUNNER_TEMP_PROJECT_DIR`. The `FF_*` feature-flag defaults gitlab-runner also adds are
    /// left out. Later duplicates win, as in gitlab-runner.
    pub fn all_variables(&self, state: &JobState) -> Vec<Variable> {
        let internal = |k: &str, v: String| Variable::new(k, v);
        let (builds_dir, project_dir) = match &state.dirs {
            Some(d) => (d.builds_dir.clone(), d.project_dir.clone()),
            None => (String::new(), String::new()),
        };
        let mut vars = Vec::new();
        if let Some(image) = self.image.as_ref().filter(|i| !i.name.is_empty()) {
            vars.push(internal("CI_JOB_IMAGE", image.name.clone()));
        }
        vars.push(internal("CI_RUNNER_SHORT_TOKEN", self.runner_short_token.clone()));
        vars.extend(self.runner_environment.iter().cloned());
        vars.extend([
            internal("CI_BUILDS_DIR", builds_dir),
            internal("CI_PROJECT_DIR", project_dir.clone()),
            internal("CI_CONCURRENT_ID", self.concurrent_id.to_string()),
            internal("CI_CONCURRENT_PROJECT_ID", self.concurrent_project_id.to_string()),
            internal("CI_SERVER", "yes".into()),
            internal("CI_JOB_STATUS", state.job_status.clone()),
            internal("CI_JOB_TIMEOUT", self.timeout_secs.to_string()),
        ]);
        vars.extend(self.gitlab_variables());
        // The custom executor declares itself shared (`features.Shared = true`).
        vars.push(internal("CI_SHARED_ENVIRONMENT", "true".into()));
        vars.extend([
            internal("CI_RUNNER_VERSION", self.runner_version.clone()),
            internal("CI_RUNNER_REVISION", self.runner_revision.clone()),
            internal("CI_RUNNER_EXECUTABLE_ARCH", format!("linux/{}", go_arch())),
        ]);
        vars.push(internal("RUNNER_TEMP_PROJECT_DIR", format!("{project_dir}.tmp")));
        expand_all(&vars)
    }

    /// Values of masked variables, as gitlab-runner hides them in the job log.
    pub fn masked_values(&self) -> Vec<String> {
        self.gitlab_variables()
            .into_iter()
            .filter(|v| v.masked && !v.value.is_empty())
            .map(|v| v.value)
            .collect()
    }

    /// `CI_JOB_SERVICES` as the custom executor builds it: `""` without services, else a JSON
    /// list with only the FIRST alias per service, `null` for a missing entrypoint or command
    /// (nil Go slices) and `variables` omitted when empty.
    pub fn ci_job_services(&self) -> String {
        if self.services.is_empty() {
            return String::new();
        }
        let services: Vec<wire::CiJobService<'_>> = self
            .services
            .iter()
            .map(|s| wire::CiJobService {
                name: &s.name,
                alias: s.aliases().into_iter().next().unwrap_or_default(),
                entrypoint: Some(s.entrypoint.as_slice()).filter(|e| !e.is_empty()),
                command: Some(s.command.as_slice()).filter(|c| !c.is_empty()),
                variables: Some(s.variables.iter().map(|v| (v.key.as_str(), v.value.as_str())).collect())
                    .filter(|vars: &BTreeMap<&str, &str>| !vars.is_empty()),
            })
            .collect();
        go_json(&services)
    }

    /// The `CUSTOM_ENV_*` pairs for a call, in gitlab-runner's order (apply in order; later
    /// duplicates win). File-type variables carry their content, masked ones their clear value.
    pub fn custom_env(&self, state: &JobState) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .all_variables(state)
            .into_iter()
            .map(|v| (format!("CUSTOM_ENV_{}", v.key), v.value))
            .collect();
        env.push(("CUSTOM_ENV_CI_JOB_SERVICES".into(), self.ci_job_services()));
        env
    }

    /// GitLab's job response (`spec.Job`) as a JSON value, to inspect in tests.
    pub fn job_response(&self) -> Value {
        let variables = self.gitlab_variables();
        serde_json::to_value(self.wire_job(&variables)).expect("the job serializes")
    }

    /// The JOB_RESPONSE_FILE bytes as gitlab-runner writes them (`json.Encoder`: Go field
    /// order, non-`omitempty` fields even when empty, HTML-escaped, one trailing newline).
    pub fn job_response_json(&self) -> String {
        let variables = self.gitlab_variables();
        let mut text = go_json(&self.wire_job(&variables));
        text.push('\n');
        text
    }

    fn wire_job<'a>(&'a self, variables: &'a [Variable]) -> wire::Job<'a> {
        const DEFAULT_SHA: &str = "0123456789abcdef0123456789abcdef01234567";
        let (sha, git_ref) = match &self.git {
            Some(git) => (git.sha.as_str(), git.git_ref.as_str()),
            None => (DEFAULT_SHA, "main"),
        };
        // GitLab sends `"image": {"name": ""}` for a job without an image.
        static NO_IMAGE: Image = Image {
            name: String::new(),
            alias: String::new(),
            command: Vec::new(),
            entrypoint: Vec::new(),
            ports: Vec::new(),
            variables: Vec::new(),
            pull_policy: Vec::new(),
            docker_platform: String::new(),
            docker_user: String::new(),
        };
        wire::Job {
            id: self.id,
            token: &self.token,
            allow_git_fetch: false,
            job_info: wire::JobInfo {
                name: &self.name,
                stage: &self.ci_stage,
                project_id: self.project_id,
                project_name: self.project_path.rsplit('/').next().unwrap_or(""),
                project_full_path: &self.project_path,
                namespace_id: 0,
                root_namespace_id: 0,
                organization_id: 0,
                instance_id: "",
                instance_uuid: "",
                user_id: 0,
                time_in_queue_seconds: 0,
                project_jobs_running_on_instance_runners_count: "0",
                queue_size: 0,
                queue_depth: 0,
            },
            git_info: wire::GitInfo {
                repo_url: self.repo_url(),
                repo_object_format: "sha1",
                git_ref,
                sha,
                before_sha: "0000000000000000000000000000000000000000",
                ref_type: "branch",
                refspecs: vec![format!("+refs/heads/{git_ref}:refs/remotes/origin/{git_ref}")],
                depth: 20,
                protected: Some(false),
            },
            runner_info: wire::RunnerInfo {
                timeout: self.timeout_secs,
            },
            inputs: None,
            variables: variables.iter().map(Variable::wire).collect(),
            steps: self
                .steps
                .iter()
                .map(|s| wire::Step {
                    name: &s.name,
                    script: &s.script,
                    timeout: self.timeout_secs,
                    when: &s.when,
                    allow_failure: s.allow_failure,
                })
                .collect(),
            image: self.image.as_ref().unwrap_or(&NO_IMAGE).wire(),
            services: Some(self.services.iter().map(Image::wire).collect()).filter(|s: &Vec<_>| !s.is_empty()),
            artifacts: None,
            cache: None,
            credentials: Some(
                self.credentials
                    .iter()
                    .map(|(url, username, password)| wire::Credentials {
                        kind: "registry",
                        url,
                        username,
                        password,
                    })
                    .collect(),
            )
            .filter(|c: &Vec<_>| !c.is_empty()),
            dependencies: None,
            features: wire::Features {
                trace_sections: true,
                token_mask_prefixes: None,
                failure_reasons: None,
            },
            policy_options: wire::PolicyOptions {
                execution_policy_job: false,
                policy_name: "",
            },
        }
    }
}

/// Go's `runtime.GOARCH` for this machine.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The path of a repository URL without `.git` (`Build.ProjectSlug`); `None` where
/// gitlab-runner falls back to `project-<id>`.
fn project_slug(repo_url: &str) -> Option<String> {
    let rest = repo_url.split_once("://")?.1;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_suffix(".git").unwrap_or(path).trim_matches('/');
    if path.is_empty() || path.contains("..") {
        return None;
    }
    Some(path.to_owned())
}

fn join_path(base: &str, rest: &str) -> String {
    if base.is_empty() {
        rest.to_owned()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), rest)
    }
}

/// JSON as Go's `encoding/json` writes it: compact, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped (Go's default HTML-safe escaping). Those characters can only occur inside strings,
/// so replacing them in the compact output is exact.
pub fn go_json<T: Serialize + ?Sized>(value: &T) -> String {
    let compact = serde_json::to_string(value).expect("the value serializes");
    let mut out = String::with_capacity(compact.len());
    for c in compact.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// gitlab-runner's `Variables.Expand()`: each non-raw value goes through Go's `os.Expand`
/// once, looking names up in the unexpanded list (last definition wins; a file variable
/// expands to its file path; `$$` stays `$`; unknown names become empty).
fn expand_all(vars: &[Variable]) -> Vec<Variable> {
    let lookup = |name: &str| -> String {
        match name {
            "$" => return "$".into(),
            "*" | "#" | "@" | "!" | "?" | "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" => {
                return String::new();
            }
            _ => {}
        }
        let Some(var) = vars.iter().rev().find(|v| v.key == name) else {
            return String::new();
        };
        if var.file {
            let tmp = vars
                .iter()
                .rev()
                .find(|v| v.key == "RUNNER_TEMP_PROJECT_DIR")
                .map(|v| v.value.as_str());
            join_path(tmp.unwrap_or(""), &var.key)
        } else {
            var.value.clone()
        }
    };
    vars.iter()
        .map(|v| {
            let mut v = v.clone();
            if !v.raw {
                v.value = os_expand(&v.value, &lookup);
            }
            v
        })
        .collect()
}

/// A port of Go's `os.Expand` (byte-exact, including its treatment of bad `${` syntax).
pub fn os_expand(s: &str, mapping: &dyn Fn(&str) -> String) -> String {
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.extend_from_slice(&bytes[i..j]);
            let (name, w) = shell_name(&bytes[j + 1..]);
            if name.is_empty() && w > 0 {
                // Bad syntax: Go eats the characters.
            } else if name.is_empty() {
                out.push(b'$');
            } else {
                out.extend_from_slice(mapping(name).as_bytes());
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.extend_from_slice(&bytes[i.min(bytes.len())..]);
    String::from_utf8_lossy(&out).into_owned()
}

fn shell_name(s: &[u8]) -> (&str, usize) {
    let special = |c: u8| matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9');
    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap_or("")
    }
    if s[0] == b'{' {
        if s.len() > 2 && special(s[1]) && s[2] == b'}' {
            return (text(&s[1..2]), 3);
        }
        for i in 1..s.len() {
            if s[i] == b'}' {
                if i == 1 {
                    return ("", 2);
                }
                return (text(&s[1..i]), i + 1);
            }
        }
        return ("", 1);
    }
    if special(s[0]) {
        return (text(&s[0..1]), 1);
    }
    let n = s
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    (text(&s[..n]), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(s: &str) -> String {
        os_expand(s, &|name| match name {
            "A" => "x".into(),
            "$" => "$".into(),
            _ => String::new(),
        })
    }

    #[test]
    fn os_expand_matches_go() {
        assert_eq!(expand("${A}-$A-$$-$NOPE-end"), "x-x-$--end");
        assert_eq!(expand("cost: 5$"), "cost: 5$");
        assert_eq!(expand("a${}b"), "ab");
        assert_eq!(expand("a${b"), "ab");
        assert_eq!(expand("100% $ sure"), "100% $ sure");
    }

    #[test]
    fn slug_is_the_repository_path() {
        assert_eq!(
            project_slug("https://gitlab.example.com/group/sub/project.git").as_deref(),
            Some("group/sub/project")
        );
        assert_eq!(project_slug("not a url"), None);
    }
}
