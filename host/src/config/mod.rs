//! The executor's own configuration file (TOML): which cluster, how tasks are shaped, how
//! Docker on the container instances is reached.
//!
//! Read once per process. Unknown keys and bad values are errors that name the key and the
//! file; they are the site's problem, so they are system failures.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::failure::{Blame, Classify};

mod aws;
mod docker;
mod gc;
mod metrics;
mod plugins;
mod pool;
mod secret;
mod services;
mod stage_runner;
mod task;
mod warm_images;

pub use aws::{AwsSettings, AwsVpc, CapacityProvider, LaunchType};
pub use docker::DockerSettings;
pub use gc::GcSettings;
pub use metrics::MetricsSettings;
pub use plugins::{PLUGIN_GRANTS, PluginConfig};
#[cfg(test)]
pub use pool::ScheduleConfig;
pub use pool::{PoolConfig, PoolLimits};
pub use services::ServiceSettings;
pub use stage_runner::{StageRunnerMode, StageRunnerSettings};
pub use task::{LogConfiguration, NetworkMode, Shell, TaskDefinitionMode};
pub use warm_images::WarmImagesSettings;

/// Where the config is read from when neither `--config` nor `$ECS_EXECUTOR_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/ecs-executor/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

impl Classify for ConfigError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// ECS cluster name or ARN.
    pub cluster: String,
    /// AWS region of the cluster.
    pub region: String,
    /// Override of the ECS and EC2 endpoints (a local stand-in); unset for real AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub aws: AwsSettings,
    /// `EC2` (the default) unless a capacity provider strategy is given.
    #[serde(default)]
    pub launch_type: Option<LaunchType>,
    #[serde(default)]
    pub capacity_provider_strategy: Vec<CapacityProvider>,
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Required with `network_mode = "awsvpc"`.
    #[serde(default)]
    pub awsvpc: Option<AwsVpc>,
    /// Image for jobs that name none.
    #[serde(default)]
    pub default_image: Option<String>,
    /// Image of the helper container (git, gitlab-runner-helper). Default: GitLab's official
    /// helper image matching the runner's version.
    #[serde(default)]
    pub helper_image: Option<String>,
    /// Task-level CPU units (1024 = one vCPU).
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    /// Task-level memory in MiB.
    #[serde(default = "default_memory")]
    pub memory: u32,
    #[serde(default)]
    pub task_role_arn: Option<String>,
    #[serde(default)]
    pub execution_role_arn: Option<String>,
    #[serde(default)]
    pub log_configuration: Option<LogConfiguration>,
    pub docker: DockerSettings,
    /// true: reach Docker on the instance's private IP; false: on its public IP.
    #[serde(default = "yes")]
    pub use_private_ip: bool,
    /// The short token (first 8 characters of the token) of the gitlab-runner this config
    /// serves. Optional: without it the token comes from gitlab-runner's
    /// `CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN`, and a job that sets a variable of that name is
    /// refused (it would decide whose tasks `gc` judges).
    #[serde(default)]
    pub runner_short_token: Option<String>,
    /// Prefix of the task definition families this executor registers.
    #[serde(default = "default_family_prefix")]
    pub family_prefix: String,
    #[serde(default)]
    pub task_definition_mode: TaskDefinitionMode,
    /// Per-job state files and locks; must be writable by the runner's user only.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_builds_dir")]
    pub builds_dir: String,
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
    /// Directory on the container instance mounted at `cache_dir` in the helper and build
    /// containers: it outlives the task, like the Docker executor's cache volume. Shared by
    /// every job on the instance (gitlab-runner keeps each project's caches in its own subdir).
    #[serde(default = "default_cache_host_path")]
    pub cache_host_path: String,
    /// The shell gitlab-runner generates scripts for: `bash` or `sh`.
    #[serde(default)]
    pub shell: Shell,
    /// How long prepare waits for the task to reach RUNNING (image pulls included).
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    /// How long prepare waits for capacity: while RunTask finds no room (`RESOURCE:*`) or the
    /// task is PROVISIONING for a capacity provider to add an instance. Unset: the same as
    /// `start_timeout_secs`. Keep it under ECS's own provisioning timeout (10-30 min).
    #[serde(default)]
    pub capacity_wait_secs: Option<u64>,
    /// How often the job log says that the job still waits for capacity.
    #[serde(default = "default_capacity_note")]
    pub capacity_note_secs: u64,
    /// `ecs-executor gc`: what counts as abandoned (see `admin::gc`).
    #[serde(default)]
    pub gc: GcSettings,
    /// `[services]`: limits on a job's CI services and the wait for their ports.
    #[serde(default)]
    pub services: ServiceSettings,
    /// `[metrics]`: Prometheus textfile metrics.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// `[stage_runner]`: run stages through a per-job runner in the containers instead of
    /// one Docker exec per stage.
    #[serde(default)]
    pub stage_runner: StageRunnerSettings,
    /// Site plugins (WebAssembly components), in the order their hooks run.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Where compiled plugins are cached (created 0700). Default: `<state_dir>/plugin-cache`.
    #[serde(default)]
    pub plugin_cache_dir: Option<PathBuf>,
    /// `[[pool]]`: warm pools of idle tasks for common job shapes (`docs/warm-pools.md`).
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// `[warm_images]`: images `gc` keeps pulled on every instance (`docs/warm-pools.md`).
    #[serde(default)]
    pub warm_images: WarmImagesSettings,
    /// `[pool_limits]`: limits over all pools of this host (`max_idle_total`).
    #[serde(default)]
    pub pool_limits: PoolLimits,
}

fn yes() -> bool {
    true
}
fn default_cpu() -> u32 {
    1024
}
fn default_memory() -> u32 {
    2048
}
fn default_family_prefix() -> String {
    "ecs-executor".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ecs-executor")
}
fn default_builds_dir() -> String {
    "/builds".into()
}
fn default_cache_dir() -> String {
    "/cache".into()
}
fn default_cache_host_path() -> String {
    "/var/cache/ecs-executor".into()
}
fn default_start_timeout() -> u64 {
    600
}
fn default_capacity_note() -> u64 {
    30
}

impl Config {
    /// The config path from `--config`, else `$ECS_EXECUTOR_CONFIG`, else [`DEFAULT_PATH`].
    pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os("ECS_EXECUTOR_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_PATH),
        }
    }

    /// How long prepare waits for capacity (`capacity_wait_secs`, else `start_timeout_secs`).
    pub fn capacity_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.capacity_wait_secs.unwrap_or(self.start_timeout_secs))
    }

    /// How often the job log is told that the job still waits for capacity.
    pub fn capacity_note_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.capacity_note_secs)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        if self.cluster.trim().is_empty() {
            return Err(invalid("cluster", "must not be empty".into()));
        }
        if self.region.trim().is_empty() || !self.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid(
                "region",
                format!("{:?} is not an AWS region name", self.region),
            ));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "endpoint_url",
                format!("{url:?} must start with http:// or https://"),
            ));
        }
        if self.aws.access_key_id.is_some() != self.aws.secret_access_key.is_some() {
            return Err(invalid(
                "aws.secret_access_key",
                "and `aws.access_key_id` must be given together".into(),
            ));
        }
        if !(self.aws.rate_share > 0.0 && self.aws.rate_share <= 1.0) {
            return Err(invalid("aws.rate_share", "must be more than 0 and at most 1".into()));
        }
        if self.aws.stage_watch_secs > 3600 {
            return Err(invalid(
                "aws.stage_watch_secs",
                "must be at most 3600 (0 switches the watch off)".into(),
            ));
        }
        if self.aws.max_attempts == 0 || self.aws.max_attempts > 20 {
            return Err(invalid("aws.max_attempts", "must be between 1 and 20".into()));
        }
        if self.launch_type.is_some() && !self.capacity_provider_strategy.is_empty() {
            return Err(invalid(
                "launch_type",
                "cannot be combined with `capacity_provider_strategy`".into(),
            ));
        }
        if self.network_mode == NetworkMode::Awsvpc && self.awsvpc.as_ref().is_none_or(|v| v.subnets.is_empty()) {
            return Err(invalid(
                "awsvpc.subnets",
                "must list at least one subnet when network_mode = \"awsvpc\"".into(),
            ));
        }
        if !(128..=196_608).contains(&self.cpu) {
            return Err(invalid(
                "cpu",
                format!("{} is outside 128..=196608 CPU units", self.cpu),
            ));
        }
        if !(128..=1_048_576).contains(&self.memory) {
            return Err(invalid(
                "memory",
                format!("{} is outside 128..=1048576 MiB", self.memory),
            ));
        }
        let prefix_ok = !self.family_prefix.is_empty()
            && self.family_prefix.len() <= 200
            && self
                .family_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !prefix_ok {
            return Err(invalid(
                "family_prefix",
                format!("{:?} must be 1-200 letters, digits, '-' or '_'", self.family_prefix),
            ));
        }
        if let Some(token) = &self.runner_short_token
            && (token.is_empty()
                || token.len() > 16
                || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(invalid(
                "runner_short_token",
                "must be 1-16 letters, digits, '-' or '_' (the runner's short token)".into(),
            ));
        }
        for (key, dir) in [
            ("builds_dir", &self.builds_dir),
            ("cache_dir", &self.cache_dir),
            ("cache_host_path", &self.cache_host_path),
        ] {
            if !dir.starts_with('/') || dir.contains("..") {
                return Err(invalid(key, format!("{dir:?} must be an absolute path without `..`")));
            }
        }
        if let Some(dir) = &self.metrics.textfile_dir
            && !dir.is_absolute()
        {
            return Err(invalid(
                "metrics.textfile_dir",
                format!("{} must be an absolute path", dir.display()),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("{} must be an absolute path", self.state_dir.display()),
            ));
        }
        if let Some(bad) = self.services.allowed_images.iter().find(|p| p.trim().is_empty()) {
            return Err(invalid(
                "services.allowed_images",
                format!("{bad:?} is not an image pattern"),
            ));
        }
        if self.services.wait_timeout_secs > 3600 {
            return Err(invalid("services.wait_timeout_secs", "must be at most 3600".into()));
        }
        if self.stage_runner.port == 0 || self.stage_runner.port == u16::MAX {
            return Err(invalid(
                "stage_runner.port",
                "must be 1-65534 (the helper uses port + 1)".into(),
            ));
        }
        if !(100..=60_000).contains(&self.stage_runner.connect_timeout_ms) {
            return Err(invalid("stage_runner.connect_timeout_ms", "must be 100-60000".into()));
        }
        for (key, binary) in [
            ("stage_runner.binary", &self.stage_runner.binary),
            ("stage_runner.binary_arm64", &self.stage_runner.binary_arm64),
        ] {
            if let Some(binary) = binary
                && !binary.is_absolute()
            {
                return Err(invalid(key, format!("{} must be an absolute path", binary.display())));
            }
        }
        if self.start_timeout_secs == 0 {
            return Err(invalid("start_timeout_secs", "must be at least 1".into()));
        }
        if self.capacity_wait_secs == Some(0) {
            return Err(invalid(
                "capacity_wait_secs",
                "must be at least 1 (unset: the same as start_timeout_secs)".into(),
            ));
        }
        if !(1..=3600).contains(&self.capacity_note_secs) {
            return Err(invalid("capacity_note_secs", "must be between 1 and 3600".into()));
        }
        if self.docker.tls {
            for (key, file) in [
                ("docker.ca_file", &self.docker.ca_file),
                ("docker.cert_file", &self.docker.cert_file),
                ("docker.key_file", &self.docker.key_file),
            ] {
                if file.as_os_str().is_empty() {
                    return Err(invalid(key, "is required (mutual TLS to the Docker daemons)".into()));
                }
            }
        } else if !self.docker.allow_plain_tcp {
            return Err(invalid(
                "docker.tls",
                "= false (plain TCP to Docker, unauthenticated root on every instance) is refused; \
                 set `docker.allow_plain_tcp = true` to accept that risk"
                    .into(),
            ));
        }
        if let Some((key, problem)) = self.warm_images.problem() {
            return Err(invalid(key, problem));
        }
        self.validate_plugins(path)?;
        self.validate_pools(path)
    }

    fn validate_pools(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |name: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "pool",
            problem: format!("entry `{name}`: {problem}"),
        };
        for (i, p) in self.pool.iter().enumerate() {
            if let Some(problem) = p.problem() {
                return Err(invalid(&p.name, problem));
            }
            if let Some(other) = self.pool[..i].iter().find(|o| o.name == p.name) {
                return Err(invalid(&other.name, "the name is used by two entries".into()));
            }
            if let Some(other) = self.pool[..i].iter().find(|o| o.image == p.image) {
                return Err(invalid(
                    &p.name,
                    format!("entry `{}` already serves image {:?}", other.name, p.image),
                ));
            }
            if self.task_definition_mode != TaskDefinitionMode::Reuse {
                return Err(invalid(
                    &p.name,
                    "warm pools need task_definition_mode = \"reuse\" (a per-job task definition is never shared)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |name: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "plugins",
            problem: format!("entry `{name}`: {problem}"),
        };
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.plugins {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    &p.name,
                    "`name` must be 1-64 letters, digits, '-' or '_'".into(),
                ));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(invalid(&p.name, "the name is used by two entries".into()));
            }
            if !p.path.is_absolute() {
                return Err(invalid(
                    &p.name,
                    format!("`path` {} must be absolute", p.path.display()),
                ));
            }
            if p.deadline_ms.is_some_and(|d| !(1..=60_000).contains(&d)) {
                return Err(invalid(&p.name, "`deadline_ms` must be 1..=60000".into()));
            }
            if p.memory_mib.is_some_and(|m| !(1..=4096).contains(&m)) {
                return Err(invalid(&p.name, "`memory_mib` must be 1..=4096".into()));
            }
            if let Some(grant) = p.grants.iter().find(|g| !PLUGIN_GRANTS.contains(&g.as_str())) {
                return Err(invalid(
                    &p.name,
                    format!(
                        "unknown grant `{grant}` (known grants: {}); plugins never get a filesystem, \
                         network or environment",
                        PLUGIN_GRANTS.join(", ")
                    ),
                ));
            }
        }
        if let Some(dir) = &self.plugin_cache_dir
            && !dir.is_absolute()
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "plugin_cache_dir",
                problem: format!("{} must be an absolute path", dir.display()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
cluster = "ci"
region = "eu-west-1"
[docker]
ca_file = "/etc/ecs-executor/ca.pem"
cert_file = "/etc/ecs-executor/cert.pem"
key_file = "/etc/ecs-executor/key.pem"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ecs-executor/config.toml"))
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.network_mode, NetworkMode::Bridge);
        assert_eq!(c.task_definition_mode, TaskDefinitionMode::Reuse);
        assert!(c.use_private_ip);
        assert_eq!(c.docker.port, 2376);
        assert_eq!(c.builds_dir, "/builds");
        assert_eq!(c.cache_host_path, "/var/cache/ecs-executor");
        assert_eq!(c.services.max_per_job, 10);
        assert_eq!(c.services.wait_timeout_secs, 30);
        assert!(c.services.allowed_images.is_empty());
        assert_eq!(c.aws.stage_watch_secs, 5);
        // The capacity wait follows the start timeout unless set.
        assert_eq!(c.capacity_wait(), std::time::Duration::from_secs(600));
        assert_eq!(c.capacity_note_every(), std::time::Duration::from_secs(30));
        let c = parse(&MINIMAL.replacen("region", "capacity_wait_secs = 1200\nregion", 1)).unwrap();
        assert_eq!(c.capacity_wait(), std::time::Duration::from_secs(1200));
    }

    #[test]
    fn stage_watch_is_checked() {
        let c = parse(&format!("{MINIMAL}\n[aws]\nstage_watch_secs = 0\n")).unwrap();
        assert_eq!(c.aws.stage_watch_secs, 0);
        let err = parse(&format!("{MINIMAL}\n[aws]\nstage_watch_secs = 86400\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("aws.stage_watch_secs"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[aws]\nstage_watch_secs = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage_watch_secs"), "{err}");
    }

    #[test]
    fn service_settings_are_checked() {
        let text = format!("{MINIMAL}\n[services]\nallowed_images = [\"\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("services.allowed_images"), "{err}");
        let text = format!("{MINIMAL}\n[services]\nmax_per_job = 2\nallowed_images = [\"docker.io/library/*\"]\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.services.max_per_job, 2);
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let err = parse(&format!("{MINIMAL}\nbogus_key = 1\n")).unwrap_err().to_string();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(err.contains("/etc/ecs-executor/config.toml"), "{err}");
    }

    #[test]
    fn unknown_key_in_a_table_is_refused() {
        let text = MINIMAL.replace("[docker]", "[docker]\nverify = false");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("verify"), "{err}");
    }

    #[test]
    fn missing_docker_tls_files_are_refused() {
        let err = parse("cluster = \"c\"\nregion = \"us-east-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("docker"), "{err}");
    }

    #[test]
    fn plain_tcp_needs_explicit_consent() {
        let text = MINIMAL.replace("[docker]", "[docker]\ntls = false");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("docker.tls") && err.contains("allow_plain_tcp"), "{err}");
        let text = MINIMAL.replace("[docker]", "[docker]\ntls = false\nallow_plain_tcp = true");
        assert!(!parse(&text).unwrap().docker.tls);
        let text = "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("docker.cert_file"), "{err}");
    }

    #[test]
    fn gc_settings_have_defaults_and_refuse_unknown_keys() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gc.start_grace_secs, 300);
        assert_eq!(c.gc.max_task_age_secs, None);
        let c = parse(&format!("{MINIMAL}\n[gc]\nmax_task_age_secs = 60\n")).unwrap();
        assert_eq!(c.gc.max_task_age_secs, Some(60));
        let err = parse(&format!("{MINIMAL}\n[gc]\nmax_age = 60\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_age"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (line, key) in [
            ("network_mode = \"overlay\"", "network_mode"),
            ("task_definition_mode = \"sometimes\"", "task_definition_mode"),
            ("family_prefix = \"has space\"", "family_prefix"),
            ("cpu = 5", "cpu"),
            ("shell = \"pwsh\"", "shell"),
            ("builds_dir = \"relative\"", "builds_dir"),
            ("network_mode = \"awsvpc\"", "awsvpc.subnets"),
            ("cache_host_path = \"cache\"", "cache_host_path"),
            ("capacity_wait_secs = 0", "capacity_wait_secs"),
            ("capacity_note_secs = 0", "capacity_note_secs"),
            ("capacity_note_secs = -3", "capacity_note_secs"),
        ] {
            let text = MINIMAL.replacen("region", &format!("{line}\nregion"), 1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    const BASE: &str = "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n";

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("/etc/ecs-executor/config.toml"))
    }

    #[test]
    fn a_pool_entry_gets_defaults() {
        let c = parse("[[pool]]\nname='alpine'\nimage='alpine:3'\n").unwrap();
        assert_eq!(c.pool.len(), 1);
        assert_eq!(
            (c.pool[0].min_idle, c.pool[0].max, c.pool[0].idle_timeout_secs),
            (1, 4, 1800)
        );
        assert!(parse("").unwrap().pool.is_empty());
    }

    #[test]
    fn bad_pool_entries_name_the_entry_and_the_problem() {
        for (entry, words) in [
            ("name='a b'\nimage='x'", &["pool", "`a b`", "name"][..]),
            ("name='a'\nimage=' '", &["`a`", "image"]),
            ("name='a'\nimage='x'\nmin_idle=5\nmax=2", &["`a`", "min_idle", "max"]),
            ("name='a'\nimage='x'\nmax=0", &["`a`", "max"]),
            (
                "name='a'\nimage='x'\nidle_timeout_secs=0",
                &["`a`", "idle_timeout_secs"],
            ),
        ] {
            let err = parse(&format!("[[pool]]\n{entry}\n")).unwrap_err().to_string();
            for w in words {
                assert!(err.contains(w), "{entry}: {err}");
            }
            assert!(err.contains("/etc/ecs-executor/config.toml"), "{err}");
        }
        let err = parse("[[pool]]\nname='a'\nimage='x'\nmin=1\n").unwrap_err().to_string();
        assert!(err.contains("min"), "{err}");
        let two = "[[pool]]\nname='a'\nimage='x'\n[[pool]]\nname='a'\nimage='y'\n";
        assert!(parse(two).unwrap_err().to_string().contains("used by two entries"));
        let same_image = "[[pool]]\nname='a'\nimage='x'\n[[pool]]\nname='b'\nimage='x'\n";
        let err = parse(same_image).unwrap_err().to_string();
        assert!(err.contains("`b`") && err.contains("already serves"), "{err}");
        let per_job = format!("task_definition_mode='per-job'\n{BASE}[[pool]]\nname='a'\nimage='x'\n");
        let err = Config::parse(&per_job, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("reuse"), "{err}");
    }
}

#[cfg(test)]
mod pool_policy_tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{}{extra}", pool_tests_base()),
            Path::new("/etc/ecs-executor/config.toml"),
        )
    }

    fn pool_tests_base() -> &'static str {
        "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n"
    }

    #[test]
    fn schedules_eager_mode_and_the_host_cap_parse() {
        let c = parse(
            "[pool_limits]\nmax_idle_total=6\n[[pool]]\nname='a'\nimage='x'\nmin_idle=0\nmax=8\nscale_factor=0.5\n\
             scale_factor_limit=3\n[[pool.schedule]]\nperiods=['* 8-18 * * mon-fri']\ntimezone='Europe/Berlin'\n\
             min_idle=5\nidle_timeout_secs=600\n",
        )
        .unwrap();
        assert_eq!(c.pool_limits.max_idle_total, Some(6));
        let p = &c.pool[0];
        assert_eq!((p.scale_factor, p.scale_factor_limit, p.schedule.len()), (0.5, 3, 1));
        assert_eq!(p.schedule[0].min_idle, Some(5));
        assert_eq!(p.schedule[0].scale_factor, None);
        let plain = parse("[[pool]]\nname='a'\nimage='x'\n").unwrap();
        assert_eq!(plain.pool_limits.max_idle_total, None);
        assert_eq!((plain.pool[0].scale_factor, plain.pool[0].schedule.len()), (0.0, 0));
        assert_eq!(
            parse("[[pool]]\nname='a'\nimage='x'\n[[pool.schedule]]\nperiods=['* * * * *']\n")
                .unwrap()
                .pool[0]
                .schedule[0]
                .timezone,
            "UTC"
        );
    }

    #[test]
    fn bad_schedules_name_the_pool_entry_the_schedule_entry_and_the_key() {
        for (schedule, words) in [
            (
                "periods=['* 8-18 * * mon-fri']\ntimezone='Europe/Berlinn'",
                &["`a`", "schedule entry 2", "timezone", "Europe/Berlinn"][..],
            ),
            (
                "periods=['* 25 * * *']",
                &["`a`", "schedule entry 2", "periods", "* 25 * * *"],
            ),
            ("periods=['every day']", &["schedule entry 2", "periods", "every day"]),
            (
                "periods=['0 * 8-18 * * *']",
                &["schedule entry 2", "periods", "5 fields"],
            ),
            ("periods=[]", &["schedule entry 2", "periods"]),
            (
                "periods=['* * * * *']\nmin_idle=9",
                &["schedule entry 2", "min_idle", "max"],
            ),
            (
                "periods=['* * * * *']\nidle_timeout_secs=0",
                &["schedule entry 2", "idle_timeout_secs"],
            ),
            (
                "periods=['* * * * *']\nscale_factor=-1.0",
                &["schedule entry 2", "scale_factor"],
            ),
            ("periods=['* * * * *']\nidle_count=1", &["idle_count"]),
        ] {
            let text = format!(
                "[[pool]]\nname='a'\nimage='x'\n[[pool.schedule]]\nperiods=['* * * * *']\n[[pool.schedule]]\n{schedule}\n"
            );
            let err = parse(&text).unwrap_err().to_string();
            for w in words {
                assert!(err.contains(w), "{schedule}: {err}");
            }
            assert!(err.contains("/etc/ecs-executor/config.toml"), "{err}");
        }
        let err = parse("[[pool]]\nname='a'\nimage='x'\nscale_factor=200.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`a`") && err.contains("scale_factor"), "{err}");
        let err = parse("[pool_limits]\nmax_idle=3\n").unwrap_err().to_string();
        assert!(err.contains("max_idle"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_config_is_valid() {
        let text = include_str!("../../../examples/config.toml");
        let config = Config::parse(text, Path::new("examples/config.toml")).unwrap();
        assert_eq!(config.cluster, "ci-cluster");
        assert_eq!(config.aws.max_attempts, 5);
    }

    /// The commented-out `plugin_cache_dir` and `[[plugins]]` entry are real keys: uncommented,
    /// the example still parses and gives that plugin.
    #[test]
    fn the_example_configs_plugin_keys_parse_when_uncommented() {
        let text = include_str!("../../../examples/config.toml");
        let mut in_plugins = false;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                in_plugins |= line == "# [[plugins]]";
                match line.strip_prefix("# ") {
                    Some(rest) if (in_plugins && !rest.starts_with("# ")) || rest.starts_with("plugin_cache_dir") => {
                        rest.to_string()
                    }
                    _ => line.to_string(),
                }
            })
            .collect();
        let config = Config::parse(&lines.join("\n"), Path::new("examples/config.toml")).unwrap();
        assert_eq!(
            config.plugin_cache_dir.as_deref(),
            Some(Path::new("/var/lib/ecs-executor/plugin-cache"))
        );
        assert_eq!(config.plugins.len(), 1);
        assert_eq!(config.plugins[0].name, "site-policy");
        assert_eq!(config.plugins[0].deadline_ms, Some(1000));
    }

    /// The commented-out `[[pool]]` block (with its schedule and `[pool_limits]`) is real keys:
    /// uncommented, the example still parses.
    #[test]
    fn the_example_configs_pool_keys_parse_when_uncommented() {
        let text = include_str!("../../../examples/config.toml");
        let mut in_pool = false;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                in_pool = (in_pool && line.starts_with("# ")) || line == "# [[pool]]";
                match line.strip_prefix("# ") {
                    Some(rest) if in_pool => rest.split("  #").next().unwrap_or(rest).to_string(),
                    _ => line.to_string(),
                }
            })
            .collect();
        let config = Config::parse(&lines.join("\n"), Path::new("examples/config.toml")).unwrap();
        assert_eq!(config.pool.len(), 1);
        assert_eq!(config.pool[0].schedule.len(), 1);
        assert_eq!(config.pool[0].schedule[0].timezone, "Europe/Berlin");
        assert_eq!(config.pool_limits.max_idle_total, Some(8));
    }
}
