//! Site plugins in the executor: loading the configured `[[plugins]]` (once per `prepare`
//! process; `run` and `cleanup` never load them), and the conversions between the executor's
//! own types and the plugin interface's records. Everything wasmtime lives in the
//! `ecs-executor-plugin-host` crate; what a plugin failure means for the job is decided here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ecs_executor_plugin_host::types::{
    self as wit, ContainerDefinition, KeyValue, LogConfiguration as WitLog, MountPoint as WitMount,
    NetworkMode as WitNetworkMode,
};
use ecs_executor_plugin_host::{
    CompiledCache, JobLog, Level, Limits, PluginError, PluginSet, PluginSpec, SettingsCheck,
};

use crate::config::{Config, LogConfiguration, NetworkMode};
use crate::docker::DockerEndpoint;
use crate::failure::{Blame, Classify, Failure};
use crate::instance::ContainerInstance;
use crate::job::JobContext;
use crate::protocol::JobResponse;
use crate::task::{ContainerSpec, MountPoint, PlacementConstraint, TaskSpec, VolumeSpec};

impl Classify for PluginError {
    fn blame(&self) -> Blame {
        if self.is_rejection() {
            Blame::Build
        } else {
            Blame::System
        }
    }
}

/// The compiled-plugin cache of this config.
pub fn cache(config: &Config) -> CompiledCache {
    CompiledCache::new(
        config
            .plugin_cache_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.join("plugin-cache")),
    )
}

/// The `[[plugins]]` entries as the plugin host takes them.
pub fn specs(config: &Config) -> Result<Vec<PluginSpec>, PluginError> {
    config
        .plugins
        .iter()
        .map(|p| {
            let settings_json = serde_json::to_string(&p.settings).map_err(|e| PluginError::Config {
                plugin: p.name.clone(),
                message: format!("settings cannot be expressed as JSON: {e}"),
            })?;
            let defaults = Limits::default();
            Ok(PluginSpec {
                name: p.name.clone(),
                path: PathBuf::from(&p.path),
                settings_json,
                limits: Limits {
                    deadline: p.deadline_ms.map_or(defaults.deadline, Duration::from_millis),
                    memory_bytes: p.memory_mib.map_or(defaults.memory_bytes, |m| (m as usize) << 20),
                },
            })
        })
        .collect()
}

/// Load every configured plugin (none configured: nothing is loaded, no engine is made).
pub fn load(config: &Config) -> Result<PluginSet, Failure> {
    if config.plugins.is_empty() {
        return Ok(PluginSet::default());
    }
    // A job asks `validate-settings` only for settings not accepted before (`check` and
    // `plugin compile` always ask).
    let mut set = PluginSet::load(&cache(config), &specs(config)?, SettingsCheck::Remembered)?;
    grant(config, &mut set);
    Ok(set)
}

/// Narrow each plugin to its config entry's grants (the plugin host's default is all).
pub fn grant(config: &Config, set: &mut PluginSet) {
    for p in &config.plugins {
        // Names were checked when the config was read.
        let grants = ecs_executor_plugin_host::validate::Grants::from_names(&p.grants)
            .unwrap_or(ecs_executor_plugin_host::validate::Grants::NONE);
        set.set_grants(&p.name, grants);
    }
}

/// Plugin log lines go to the job log (stderr), the job's secrets redacted; debug lines only
/// when the job sets `CI_DEBUG_TRACE`.
pub struct JobLogSink<'a> {
    pub job: &'a JobContext,
}

impl JobLog for JobLogSink<'_> {
    fn redact(&self, text: &str) -> String {
        self.job.redact(text)
    }

    fn write(&self, plugin: &str, level: Level, message: &str) {
        let debug = crate::protocol::custom_env("CI_DEBUG_TRACE").is_some_and(|v| v == "true");
        if level == Level::Debug && !debug {
            return;
        }
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        };
        for line in message.lines() {
            eprintln!("ecs-executor: plugin {plugin} {level}: {line}");
        }
    }
}

/// The task-definition chain: the configured plugins change `spec` (or refuse the job).
/// Without a `customize` plugin, `spec` comes back unchanged.
pub fn customize_task(
    plugins: &PluginSet,
    config: &Config,
    job: &JobContext,
    response: &JobResponse,
    spec: TaskSpec,
) -> Result<TaskSpec, Failure> {
    if !plugins
        .plugins()
        .iter()
        .any(|p| p.has(ecs_executor_plugin_host::Hook::Customize))
    {
        return Ok(spec);
    }
    let ours = crate::task::request::family(
        &spec,
        crate::config::TaskDefinitionMode::Reuse,
        &config.family_prefix,
        0,
    );
    let input = task_to_wit(&spec, &ours);
    let out = plugins.customize(&job_to_wit(job, response), input, &JobLogSink { job })?;
    task_from_wit(&out, &spec, &ours).map_err(|e| Failure::system(format!("the plugins' task definition: {e}")))
}

/// The address to reach the instance's Docker daemon: the first address plugin that does
/// not decline, else the built-in `use_private_ip` rule.
pub fn docker_endpoint(
    plugins: &PluginSet,
    config: &Config,
    job: &JobContext,
    response: &JobResponse,
    instance: &ContainerInstance,
) -> Result<(DockerEndpoint, Option<String>), Failure> {
    if plugins
        .plugins()
        .iter()
        .any(|p| p.has(ecs_executor_plugin_host::Hook::PickAddress))
        && let Some(picked) = plugins.pick_address(
            &job_to_wit(job, response),
            &instance_to_wit(instance),
            &JobLogSink { job },
        )?
    {
        let endpoint = DockerEndpoint {
            host: picked.address.host,
            port: picked.address.port.unwrap_or(config.docker.port),
            tls_server_name: picked.address.tls_server_name,
        };
        return Ok((endpoint, Some(picked.plugin)));
    }
    let endpoint = DockerEndpoint {
        host: instance.docker_host(config.use_private_ip)?,
        port: config.docker.port,
        tls_server_name: None,
    };
    Ok((endpoint, None))
}

/// The Docker endpoint of `instance` for a command without a job (`check`, `gc`'s warm images)
/// as prepare picks it: the first address plugin that does not decline (asked with a job of no
/// project: id 0, no variables), else the built-in `use_private_ip` rule.
pub fn docker_endpoint_without_job(
    config: &Config,
    plugins: Option<&ecs_executor_plugin_host::PluginSet>,
    instance: &ContainerInstance,
) -> Result<(DockerEndpoint, Option<String>), Failure> {
    let Some(plugins) = plugins else {
        let endpoint = DockerEndpoint {
            host: instance.docker_host(config.use_private_ip)?,
            port: config.docker.port,
            tls_server_name: None,
        };
        return Ok((endpoint, None));
    };
    let job = JobContext {
        key: crate::protocol::JobKey::new(0, config.runner_short_token.as_deref()),
        project_id: 0,
        project_path: String::new(),
        ref_protected: false,
        runner_version: String::new(),
        image: config.default_image.clone().unwrap_or_default(),
        image_entrypoint: None,
        image_user: None,
        platform: None,
        secrets: Vec::new(),
    };
    docker_endpoint(plugins, config, &job, &JobResponse::default(), instance)
}

/// The services hook, for the services code: one entry per job service, `Some(containers)`
/// where a plugin mapped it, `None` where the built-in mapping applies.
pub fn map_services(
    plugins: &PluginSet,
    job: &JobContext,
    response: &JobResponse,
) -> Result<Vec<Option<Vec<ContainerDefinition>>>, Failure> {
    let context = job_to_wit(job, response);
    if context.services.is_empty() {
        return Ok(vec![]);
    }
    Ok(plugins.map_services(&context, &context.services, &JobLogSink { job })?)
}

/// Predefined variables passed as `trusted`: their first occurrence in the job response
/// (GitLab lists predefined variables before project and job variables).
pub const TRUSTED: &[&str] = &[
    "CI_PROJECT_NAMESPACE",
    "CI_PROJECT_PATH",
    "CI_PROJECT_ID",
    "CI_PIPELINE_ID",
    "CI_PIPELINE_SOURCE",
    "CI_JOB_URL",
    "CI_COMMIT_REF_NAME",
    "CI_COMMIT_REF_PROTECTED",
    "CI_COMMIT_SHA",
    "GITLAB_USER_LOGIN",
    "CI_SERVER_HOST",
];

/// What plugins see of the job: never a secret (masked, file-type and non-public variables
/// are left out, and so is any value that contains a secret).
pub fn job_to_wit(job: &JobContext, response: &JobResponse) -> wit::JobContext {
    let safe = |v: &crate::protocol::JobVariable| v.public && !v.masked && !v.file && job.redact(&v.value) == v.value;
    // Trusted values: the first occurrence only (a job's override comes later), and only
    // when it is safe to show.
    let first = |key: &str| {
        response
            .predefined(key)
            .filter(|v| job.redact(v) == *v)
            .map(String::from)
    };
    let kv = |vars: &[crate::protocol::JobVariable]| -> Vec<KeyValue> {
        vars.iter()
            .filter(|v| safe(v))
            .map(|v| KeyValue {
                key: v.key.clone(),
                value: v.value.clone(),
            })
            .collect()
    };
    let runner_tags = first("CI_RUNNER_TAGS")
        .map(|t| {
            serde_json::from_str::<Vec<String>>(&t).unwrap_or_else(|_| {
                t.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
        })
        .unwrap_or_default();
    wit::JobContext {
        job_id: response.id,
        pipeline_id: first("CI_PIPELINE_ID").and_then(|v| v.parse().ok()).unwrap_or(0),
        project_id: response.job_info.project_id,
        project_path: job.project_path.clone(),
        ref_name: response.git_info.git_ref.clone(),
        ref_protected: job.ref_protected,
        commit_sha: response.git_info.sha.clone(),
        image: job.image.clone(),
        image_entrypoint: job.image_entrypoint.clone(),
        services: response
            .services
            .iter()
            .filter(|s| !s.name.trim().is_empty())
            .map(|s| wit::CiService {
                name: s.name.clone(),
                aliases: s
                    .alias
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect(),
                entrypoint: s.entrypoint.clone(),
                command: s.command.clone(),
                variables: kv(&s.variables),
            })
            .collect(),
        runner_tags,
        variables: kv(&response.variables),
        trusted: TRUSTED
            .iter()
            .filter_map(|k| {
                first(k).map(|value| KeyValue {
                    key: k.to_string(),
                    value,
                })
            })
            .collect(),
    }
}

pub fn instance_to_wit(i: &ContainerInstance) -> wit::Instance {
    wit::Instance {
        container_instance_arn: i.container_instance_arn.clone(),
        ec2_instance_id: i.ec2_instance_id.clone(),
        private_ipv4: i.private_ip.clone(),
        public_ipv4: i.public_ip.clone(),
        ipv6: i.ipv6.clone(),
        subnet_id: i.subnet_id.clone(),
        vpc_id: i.vpc_id.clone(),
        availability_zone: i.availability_zone.clone(),
        instance_type: i.instance_type.clone(),
        tags: i
            .tags
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        attributes: i
            .attributes
            .iter()
            .map(|(name, value)| wit::EcsAttribute {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

fn kv_list(map: &BTreeMap<String, String>) -> Vec<KeyValue> {
    map.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn kv_map(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

fn extra_text(extra: &Option<serde_json::Map<String, serde_json::Value>>) -> Option<String> {
    extra
        .as_ref()
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::Value::Object(m.clone()).to_string())
}

fn extra_map(text: &Option<String>) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(None),
            Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
            _ => Err("`extra` is not a JSON object".into()),
        },
    }
}

/// The executor's task spec as the plugin interface's record; `family` is the executor's own.
pub fn task_to_wit(spec: &TaskSpec, family: &str) -> wit::TaskDefinition {
    wit::TaskDefinition {
        family: spec.family.clone().unwrap_or_else(|| family.to_string()),
        task_role_arn: spec.task_role_arn.clone(),
        execution_role_arn: spec.execution_role_arn.clone(),
        network_mode: match spec.network_mode {
            NetworkMode::Bridge => WitNetworkMode::Bridge,
            NetworkMode::Awsvpc => WitNetworkMode::Awsvpc,
            NetworkMode::Host => WitNetworkMode::Host,
        },
        cpu: Some(spec.cpu),
        memory: Some(spec.memory),
        containers: spec.containers.iter().map(container_to_wit).collect(),
        volumes: spec
            .volumes
            .iter()
            .map(|v| wit::Volume {
                name: v.name.clone(),
                host_path: v.host_path.clone(),
                extra: None,
            })
            .collect(),
        placement_constraints: spec
            .placement_constraints
            .iter()
            .map(|p| wit::PlacementConstraint {
                kind: p.kind.clone(),
                expression: p.expression.clone(),
            })
            .collect(),
        tags: kv_list(&spec.tags),
        extra: extra_text(&spec.extra),
    }
}

pub fn container_to_wit(c: &ContainerSpec) -> ContainerDefinition {
    ContainerDefinition {
        name: c.name.clone(),
        image: c.image.clone(),
        cpu: c.cpu,
        memory: c.memory,
        memory_reservation: c.memory_reservation,
        essential: c.essential,
        entry_point: c.entry_point.clone(),
        command: c.command.clone(),
        environment: kv_list(&c.environment),
        mount_points: c
            .mount_points
            .iter()
            .map(|m| WitMount {
                source_volume: m.source_volume.clone(),
                container_path: m.container_path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        links: c.links.clone(),
        docker_labels: kv_list(&c.docker_labels),
        log_configuration: c.log_configuration.as_ref().map(|l| WitLog {
            log_driver: l.driver.clone(),
            options: kv_list(&l.options),
            extra: None,
        }),
        privileged: c.privileged,
        extra: extra_text(&c.extra),
    }
}

/// A plugin's container as the executor's (`extra_hosts` are kept from `before`'s container
/// of the same name: the interface does not model them).
pub fn container_from_wit(c: &ContainerDefinition, before: Option<&ContainerSpec>) -> Result<ContainerSpec, String> {
    Ok(ContainerSpec {
        name: c.name.clone(),
        image: c.image.clone(),
        essential: c.essential,
        cpu: c.cpu,
        memory: c.memory,
        memory_reservation: c.memory_reservation,
        entry_point: c.entry_point.clone(),
        command: c.command.clone(),
        environment: kv_map(&c.environment),
        mount_points: c
            .mount_points
            .iter()
            .map(|m| MountPoint {
                source_volume: m.source_volume.clone(),
                container_path: m.container_path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        links: c.links.clone(),
        extra_hosts: before.map(|b| b.extra_hosts.clone()).unwrap_or_default(),
        docker_labels: kv_map(&c.docker_labels),
        log_configuration: c.log_configuration.as_ref().map(|l| LogConfiguration {
            driver: l.log_driver.clone(),
            options: kv_map(&l.options),
        }),
        privileged: c.privileged,
        port_mappings: vec![],
        extra: extra_map(&c.extra).map_err(|e| format!("container `{}`: {e}", c.name))?,
        // Attached after the plugin chain (`registry_auth::attach`).
        repository_credentials: None,
    })
}

/// The chain's answer as the executor's task spec. `ours` is the family the executor gave
/// the chain: left unchanged, the executor names the family by the final content's hash.
pub fn task_from_wit(t: &wit::TaskDefinition, before: &TaskSpec, ours: &str) -> Result<TaskSpec, String> {
    let network_mode = match t.network_mode {
        WitNetworkMode::Bridge => NetworkMode::Bridge,
        WitNetworkMode::Awsvpc => NetworkMode::Awsvpc,
        WitNetworkMode::Host => NetworkMode::Host,
        WitNetworkMode::None => return Err("network mode `none` is not supported by this executor".into()),
    };
    if network_mode != before.network_mode {
        return Err(format!(
            "network mode changed from {} to {}: it must match the executor config (awsvpc needs subnets there)",
            before.network_mode.as_str(),
            network_mode.as_str()
        ));
    }
    Ok(TaskSpec {
        network_mode,
        cpu: t.cpu.ok_or("task-level cpu was removed")?,
        memory: t.memory.ok_or("task-level memory was removed")?,
        task_role_arn: t.task_role_arn.clone(),
        execution_role_arn: t.execution_role_arn.clone(),
        containers: t
            .containers
            .iter()
            .map(|c| container_from_wit(c, before.containers.iter().find(|b| b.name == c.name)))
            .collect::<Result<_, _>>()?,
        volumes: t
            .volumes
            .iter()
            .map(|v| VolumeSpec {
                name: v.name.clone(),
                host_path: v.host_path.clone(),
            })
            .collect(),
        placement_constraints: t
            .placement_constraints
            .iter()
            .map(|p| PlacementConstraint {
                kind: p.kind.clone(),
                expression: p.expression.clone(),
            })
            .collect(),
        tags: kv_map(&t.tags),
        family: Some(t.family.clone()).filter(|f| !f.is_empty() && f != ours),
        extra: extra_map(&t.extra)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobKey, JobVariable};

    #[test]
    fn address_plugins_see_the_instances_ecs_attributes() {
        let instance = ContainerInstance {
            container_instance_arn: "arn:aws:ecs:eu-west-1:1:container-instance/c/1".into(),
            ec2_instance_id: "i-1".into(),
            private_ip: Some("10.0.0.5".into()),
            public_ip: None,
            ipv6: vec![],
            subnet_id: Some("subnet-1".into()),
            vpc_id: None,
            availability_zone: None,
            instance_type: Some("c6i.large".into()),
            tags: vec![("team".into(), "ci".into())],
            attributes: vec![
                ("ecs.capability.privileged-container".into(), None),
                ("ecs.instance-type".into(), Some("c6i.large".into())),
            ],
            metadata_options: None,
        };
        let wit = instance_to_wit(&instance);
        let attributes: Vec<(String, Option<String>)> = wit.attributes.into_iter().map(|a| (a.name, a.value)).collect();
        assert_eq!(attributes, instance.attributes);
        assert_eq!(wit.tags[0].key, "team");
    }

    fn config() -> Config {
        Config::parse(
            "cluster='c'\nregion='us-east-1'\nhelper_image='h:1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn job() -> JobContext {
        JobContext {
            key: JobKey::new(9, None),
            project_id: 1,
            ref_protected: false,
            project_path: "g/p".into(),
            runner_version: String::new(),
            image: "alpine:3".into(),
            image_entrypoint: None,
            image_user: None,
            platform: None,
            secrets: vec!["s3cr3t-value".into()],
        }
    }

    #[test]
    fn a_task_spec_survives_the_round_trip_and_keeps_its_hash() {
        let config = config();
        let spec = TaskSpec::for_job(&config, &job());
        let ours = crate::task::request::family(
            &spec,
            crate::config::TaskDefinitionMode::Reuse,
            &config.family_prefix,
            0,
        );
        let back = task_from_wit(&task_to_wit(&spec, &ours), &spec, &ours).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.content_hash(), spec.content_hash());
        // A plugin's family is kept; the executor's own means "name it by content".
        let mut wit = task_to_wit(&spec, &ours);
        wit.family = "site-family".into();
        assert_eq!(
            task_from_wit(&wit, &spec, &ours).unwrap().family.as_deref(),
            Some("site-family")
        );
        wit.network_mode = WitNetworkMode::None;
        assert!(task_from_wit(&wit, &spec, &ours).unwrap_err().contains("none"));
    }

    #[test]
    fn plugins_never_see_secret_variables() {
        let var = |key: &str, value: &str, public: bool, masked: bool, file: bool| JobVariable {
            key: key.into(),
            value: value.into(),
            public,
            masked,
            file,
        };
        let response = JobResponse {
            id: 9,
            variables: vec![
                var("CI_PROJECT_PATH", "g/p", true, false, false),
                var("CI_PIPELINE_ID", "77", true, false, false),
                var("TOKEN", "s3cr3t-value", false, true, false),
                var("KEY_FILE", "file-content", true, false, true),
                var("HIDDEN", "not-public", false, false, false),
                var("QUOTES_SECRET", "x s3cr3t-value y", true, false, false),
                var("PLAIN", "visible", true, false, false),
                var("CI_PIPELINE_ID", "1", true, false, false),
            ],
            ..Default::default()
        };
        let wit = job_to_wit(&job(), &response);
        let keys: Vec<&str> = wit.variables.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["CI_PROJECT_PATH", "CI_PIPELINE_ID", "PLAIN", "CI_PIPELINE_ID"]);
        // Trusted values: the first (predefined) occurrence, not a later override.
        assert_eq!(wit.pipeline_id, 77);
        assert!(wit.trusted.iter().any(|t| t.key == "CI_PIPELINE_ID" && t.value == "77"));
    }
}
