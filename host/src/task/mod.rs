//! The task definition model: the ECS task definition we build for a job: a build container from the job's image and a
//! helper container (git, gitlab-runner-helper), sharing a task-scoped builds volume and a
//! cache directory on the container instance; CI services are added by `services`.
//!
//! No job variable or secret ever goes in here: task definitions are readable by anyone who
//! may describe them. The same content gives the same hash, so task definitions are reused.

pub mod build;
pub mod request;

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, LogConfiguration, NetworkMode};
use crate::job::JobContext;

/// Keeps a container alive until ECS stops it, and exits at once on SIGTERM (a plain
/// `sleep` as PID 1 would ignore SIGTERM and cost the whole stop timeout).
pub const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// Name of the task-scoped volume holding the checkout and build outputs.
pub const BUILDS_VOLUME: &str = "builds";

/// Name of the host-path volume holding caches (it outlives the task).
pub const CACHE_VOLUME: &str = "cache";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskSpec {
    pub network_mode: NetworkMode,
    pub cpu: u32,
    pub memory: u32,
    pub task_role_arn: Option<String>,
    pub execution_role_arn: Option<String>,
    pub containers: Vec<ContainerSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub placement_constraints: Vec<PlacementConstraint>,
    /// Tags of the task definition (beside the executor's own content-hash and managed-by).
    pub tags: BTreeMap<String, String>,
    /// A family a site plugin chose; `None`: the executor's (`request::family`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Task-level API fields from plugins' `extra` (keys in the plugin host's
    /// `validate::TASK_EXTRA_KEYS`), applied to RegisterTaskDefinition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub essential: bool,
    /// CPU units reserved for this container; `None`: none (shares the task's).
    pub cpu: Option<u32>,
    /// Hard memory limit in MiB.
    pub memory: Option<u32>,
    /// Soft memory limit in MiB.
    pub memory_reservation: Option<u32>,
    pub entry_point: Option<Vec<String>>,
    pub command: Vec<String>,
    /// Never job variables or secrets (they are readable through the ECS API); only values
    /// from the executor config or site plugins.
    pub environment: BTreeMap<String, String>,
    pub mount_points: Vec<MountPoint>,
    pub links: Vec<String>,
    /// `/etc/hosts` entries: (host name, IP address).
    pub extra_hosts: Vec<(String, String)>,
    pub docker_labels: BTreeMap<String, String>,
    pub log_configuration: Option<LogConfiguration>,
    pub privileged: bool,
    /// Ports published on the container instance (the stage runner's; added after the
    /// plugin chain, so plugins neither see nor remove them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// Container API fields from plugins' `extra` (keys in `validate::CONTAINER_EXTRA_KEYS`),
    /// and `user` from the job's `docker: user:` (`user_extra`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// The Secrets Manager secret (its name) holding the registry login ECS pulls the image
    /// with (`repositoryCredentials`); never the login itself. Set after the plugin chain
    /// (`registry_auth::attach`), so plugins neither see nor remove it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    pub read_only: bool,
}

/// A TCP port of a container published on the container instance.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PortMapping {
    pub container_port: u16,
    /// 0: a dynamic host port (bridge mode), found afterwards with `docker inspect`.
    pub host_port: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VolumeSpec {
    pub name: String,
    /// A path on the container instance; `None` gives a task-scoped Docker volume.
    pub host_path: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlacementConstraint {
    /// `memberOf` or `distinctInstance`.
    pub kind: String,
    /// Cluster query language expression (for `memberOf`).
    pub expression: Option<String>,
}

impl TaskSpec {
    /// The executor's built-in task for a job (before any site plugin changes it).
    pub fn for_job(config: &Config, job: &JobContext) -> TaskSpec {
        let builds_mount = MountPoint {
            source_volume: BUILDS_VOLUME.into(),
            container_path: config.builds_dir.clone(),
            read_only: false,
        };
        let cache_mount = MountPoint {
            source_volume: CACHE_VOLUME.into(),
            container_path: config.cache_dir.clone(),
            read_only: false,
        };
        let keep_alive = vec!["sh".to_string(), "-c".to_string(), KEEP_ALIVE.to_string()];
        let container = |name: &str, image: String, entry_point: Option<Vec<String>>| ContainerSpec {
            name: name.into(),
            image,
            essential: true,
            cpu: None,
            memory: None,
            memory_reservation: None,
            entry_point,
            command: keep_alive.clone(),
            environment: BTreeMap::new(),
            mount_points: vec![builds_mount.clone(), cache_mount.clone()],
            links: vec![],
            extra_hosts: vec![],
            docker_labels: BTreeMap::from([("ecs-executor.role".to_string(), name.to_string())]),
            log_configuration: config.log_configuration.clone(),
            privileged: false,
            port_mappings: vec![],
            extra: None,
            repository_credentials: None,
        };
        let mut build = container("build", job.image.clone(), job.image_entrypoint.clone());
        build.extra = user_extra(job.image_user.as_deref());
        TaskSpec {
            network_mode: config.network_mode,
            cpu: config.cpu,
            memory: config.memory,
            task_role_arn: config.task_role_arn.clone(),
            execution_role_arn: config.execution_role_arn.clone(),
            containers: vec![
                build,
                container(
                    "helper",
                    helper_image(config, &job.runner_version, job.platform.as_ref().map(|p| p.arch)),
                    None,
                ),
            ],
            volumes: vec![
                VolumeSpec {
                    name: BUILDS_VOLUME.into(),
                    host_path: None,
                },
                VolumeSpec {
                    name: CACHE_VOLUME.into(),
                    host_path: Some(cache_host_path(config, job)),
                },
            ],
            // `docker: platform:`: only instances of that architecture.
            placement_constraints: job
                .platform
                .iter()
                .map(|p| PlacementConstraint {
                    kind: "memberOf".into(),
                    expression: Some(p.placement_expression()),
                })
                .collect(),
            tags: BTreeMap::new(),
            family: None,
            extra: None,
        }
    }

    /// SHA-256 of the canonical JSON of the content (field order is fixed by the structs,
    /// maps are sorted), hex-encoded.
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a TaskSpec always serializes");
        hex::encode(Sha256::digest(&json))
    }
}

/// A container's `extra` carrying `docker: user:` (ECS `user`): the container, and every Docker
/// exec in it that names no user (the stage runner, Docker exec stages), runs as that user.
/// In `extra` so that site plugins see it and may change it, as for a `user` they set.
pub fn user_extra(user: Option<&str>) -> Option<serde_json::Map<String, serde_json::Value>> {
    user.map(|u| serde_json::Map::from_iter([("user".to_string(), serde_json::Value::String(u.to_string()))]))
}

/// The job's cache directory on the container instance: one per project and protection level
/// (from GitLab's `job_info.project_id` and the predefined `CI_COMMIT_REF_PROTECTED`, which a
/// job cannot set), as the Docker executor gives each project its own cache volume and GitLab
/// keeps protected refs' caches apart. Jobs of one project and protection level share it.
///
/// A job response without a project id (0: GitLab always sends one, so this is a hand-made
/// or broken response) has no trusted project to share a cache with: it gets a cache of its
/// own, `no-project/job-<id>`, rather than one `project-0` every such job would share. (Its
/// task definition then differs per job, so it is not reused; such directories are not
/// removed by the executor.)
pub fn cache_host_path(config: &Config, job: &JobContext) -> String {
    let root = config.cache_host_path.trim_end_matches('/');
    if job.project_id == 0 {
        return format!("{root}/no-project/job-{}", job.key.job_id);
    }
    format!(
        "{root}/project-{}/{}",
        job.project_id,
        if job.ref_protected { "protected" } else { "unprotected" }
    )
}

/// GitLab's official helper image for the runner's version, unless the config names one: for
/// the architecture the job's `docker: platform:` places the task on (ECS's name, `x86_64` or
/// `arm64`), else the runner host's.
pub fn helper_image(config: &Config, runner_version: &str, platform_arch: Option<&str>) -> String {
    if let Some(image) = &config.helper_image {
        return image.clone();
    }
    let version: String = runner_version
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let arch = match platform_arch.unwrap_or(std::env::consts::ARCH) {
        "aarch64" | "arm64" => "arm64",
        _ => "x86_64",
    };
    let tag = if version.is_empty() {
        format!("alpine-{arch}-latest")
    } else {
        format!("alpine-{arch}-v{version}")
    };
    format!("registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobKey;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn job(image: &str) -> JobContext {
        JobContext {
            key: JobKey::new(1, Some("abc")),
            project_id: 1,
            ref_protected: false,
            project_path: "g/p".into(),
            runner_version: "19.4.0".into(),
            image: image.into(),
            image_entrypoint: None,
            image_user: None,
            platform: None,
            secrets: vec!["s3cr3t-value".into()],
        }
    }

    #[test]
    fn same_content_same_hash_and_family() {
        let c = config();
        let a = TaskSpec::for_job(&c, &job("alpine:3"));
        let b = TaskSpec::for_job(
            &c,
            &JobContext {
                key: JobKey::new(99, Some("zzz")),
                project_id: 1,
                ref_protected: false,
                ..job("alpine:3")
            },
        );
        assert_eq!(a.content_hash(), b.content_hash());
        let mode = crate::config::TaskDefinitionMode::Reuse;
        assert_eq!(
            request::family(&a, mode, "ecs-executor", 1),
            request::family(&b, mode, "ecs-executor", 99)
        );
        let d = TaskSpec::for_job(&c, &job("alpine:4"));
        assert_ne!(a.content_hash(), d.content_hash());
    }

    #[test]
    fn caches_are_per_project_and_protection_level() {
        let c = config();
        let spec = |project_id, ref_protected| {
            let job = JobContext {
                project_id,
                ref_protected,
                ..job("alpine:3")
            };
            TaskSpec::for_job(&c, &job).volumes[1].host_path.clone().unwrap()
        };
        assert_eq!(spec(7, false), "/var/cache/ecs-executor/project-7/unprotected");
        assert_eq!(spec(7, true), "/var/cache/ecs-executor/project-7/protected");
        assert_ne!(spec(7, false), spec(8, false));
    }

    #[test]
    fn a_job_without_a_project_id_gets_a_cache_of_its_own() {
        let c = config();
        let spec = |job_id, ref_protected| {
            let job = JobContext {
                key: JobKey::new(job_id, Some("abc")),
                project_id: 0,
                ref_protected,
                ..job("alpine:3")
            };
            TaskSpec::for_job(&c, &job).volumes[1].host_path.clone().unwrap()
        };
        assert_eq!(spec(41, false), "/var/cache/ecs-executor/no-project/job-41");
        assert_eq!(spec(41, true), "/var/cache/ecs-executor/no-project/job-41");
        assert_ne!(spec(41, false), spec(42, false), "two such jobs never share one");
    }

    #[test]
    fn no_secret_or_job_identity_in_the_task_definition() {
        let spec = TaskSpec::for_job(&config(), &job("alpine:3"));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("s3cr3t-value"));
        assert!(!json.contains("g/p"));
    }

    #[test]
    fn docker_user_and_platform_shape_the_definition_and_its_hash() {
        let c = config();
        let plain = TaskSpec::for_job(&c, &job("alpine:3"));
        assert!(plain.containers.iter().all(|c| c.extra.is_none()));
        assert!(plain.placement_constraints.is_empty());
        let as_user = TaskSpec::for_job(
            &c,
            &JobContext {
                image_user: Some("1234".into()),
                ..job("alpine:3")
            },
        );
        assert_eq!(as_user.containers[0].extra.as_ref().unwrap()["user"], "1234");
        assert!(
            as_user.containers[1].extra.is_none(),
            "the helper keeps its image's user"
        );
        let arm = TaskSpec::for_job(
            &c,
            &JobContext {
                platform: Some(crate::platform::Platform {
                    written: "linux/arm64".into(),
                    origin: "image: docker: platform:".into(),
                    arch: "arm64",
                }),
                ..job("alpine:3")
            },
        );
        assert_eq!(
            arm.placement_constraints[0].expression.as_deref(),
            Some("attribute:ecs.cpu-architecture == arm64")
        );
        let hashes = [&plain, &as_user, &arm].map(|s| s.content_hash());
        assert!(hashes[0] != hashes[1] && hashes[0] != hashes[2] && hashes[1] != hashes[2]);
        // The same options again: the same content (reuse keeps working).
        let again = TaskSpec::for_job(
            &c,
            &JobContext {
                key: JobKey::new(77, Some("abc")),
                image_user: Some("1234".into()),
                ..job("alpine:3")
            },
        );
        assert_eq!(again.content_hash(), hashes[1]);
    }

    #[test]
    fn default_helper_image_follows_the_runner_version() {
        let image = helper_image(&config(), "19.4.0", None);
        assert!(image.starts_with("registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:alpine-"));
        assert!(image.ends_with("-v19.4.0"), "{image}");
    }

    #[test]
    fn the_default_helper_image_follows_the_jobs_platform() {
        let helper = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper";
        assert_eq!(
            helper_image(&config(), "19.4.0", Some("arm64")),
            format!("{helper}:alpine-arm64-v19.4.0")
        );
        assert_eq!(
            helper_image(&config(), "19.4.0", Some("x86_64")),
            format!("{helper}:alpine-x86_64-v19.4.0")
        );
        // A configured helper image is the admin's choice, whatever the platform.
        let mut configured = config();
        configured.helper_image = Some("site/helper:1".into());
        assert_eq!(helper_image(&configured, "19.4.0", Some("arm64")), "site/helper:1");
    }
}
