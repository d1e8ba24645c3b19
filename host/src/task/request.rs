//! The RegisterTaskDefinition request for a [`TaskSpec`], built once: `plan` prints it as the
//! ECS API's JSON (serde) and `ecs::task_definitions` sends it through the SDK (`to_sdk`). Both
//! come from this one type, so `plan` cannot show anything the request does not carry.
//!
//! Rules that keep the two forms equal: every field is either always sent, or sent exactly
//! when it is `Some` / not empty (the SDK builder is then left unset, and serde skips it).

use std::collections::BTreeMap;

use aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionFluentBuilder;
use aws_sdk_ecs::types as sdk;
use serde::Serialize;

use super::{ContainerSpec, TaskSpec};
use crate::config::TaskDefinitionMode;

/// Tag on task definitions: the full content hash, so reuse never trusts a short family name.
pub const TAG_CONTENT_HASH: &str = "ecs-executor:content-sha256";
/// Tag on task definitions and tasks: which executor (family prefix) made them.
pub const TAG_MANAGED_BY: &str = "ecs-executor:managed-by";

/// Our containers' stop timeout: the keep-alive exits on SIGTERM at once; a user image that
/// ignores it gets 10 s.
const DEFAULT_STOP_TIMEOUT: i32 = 10;

/// The family a job's task definition is registered under: a plugin's choice, else
/// `<prefix>-job-<id>` per job, else `<prefix>-<16 hex of the content hash>` for reuse (the
/// full hash is in a tag). The one place that names families.
pub fn family(spec: &TaskSpec, mode: TaskDefinitionMode, prefix: &str, job_id: u64) -> String {
    match (&spec.family, mode) {
        (Some(f), _) => f.clone(),
        (None, TaskDefinitionMode::PerJob) => format!("{prefix}-job-{job_id}"),
        (None, TaskDefinitionMode::Reuse) => format!("{prefix}-{}", &spec.content_hash()[..16]),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub family: String,
    pub network_mode: String,
    pub requires_compatibilities: Vec<String>,
    pub cpu: String,
    pub memory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    pub container_definitions: Vec<ContainerRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement_constraints: Vec<PlacementRequest>,
    pub tags: Vec<TagRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRequest {
    pub name: String,
    pub image: String,
    pub essential: bool,
    /// CPU units reserved for the container; 0 when the spec sets none. Always sent: the SDK's
    /// `ContainerDefinition.cpu` is a plain `i32` that it serializes even when unset (as 0, which
    /// is also what ECS stores), so `plan` shows it as the request carries it.
    pub cpu: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValueRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPointRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostEntryRequest>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub docker_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfigurationRequest>,
    pub privileged: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMappingRequest>,
    pub stop_timeout: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<UlimitRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<RepositoryCredentialsRequest>,
}

/// `repositoryCredentials`: the secret's name (ECS takes a name or an ARN of a secret in the
/// task's region; the name stays the same when the secret is deleted and made again).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryCredentialsRequest {
    pub credentials_parameter: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValueRequest {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPointRequest {
    pub source_volume: String,
    pub container_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEntryRequest {
    pub hostname: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfigurationRequest {
    pub log_driver: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMappingRequest {
    pub container_port: i32,
    pub host_port: i32,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UlimitRequest {
    pub name: String,
    pub soft_limit: i32,
    pub hard_limit: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostVolumeRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVolumeRequest {
    pub source_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacementRequest {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagRequest {
    pub key: String,
    pub value: String,
}

/// A plugin's `extra` value that the request cannot carry as it is.
#[derive(Debug, thiserror::Error)]
#[error("`extra` key {key:?}{place}: {problem}")]
pub struct ExtraError {
    key: String,
    place: String,
    problem: &'static str,
}

type Extra = Option<serde_json::Map<String, serde_json::Value>>;

fn extra_str(extra: &Extra, key: &str, place: &str) -> Result<Option<String>, ExtraError> {
    match extra.as_ref().and_then(|e| e.get(key)) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ExtraError {
            key: key.into(),
            place: place.into(),
            problem: "must be a string",
        }),
    }
}

fn extra_i32(value: &serde_json::Value, key: &str, place: &str) -> Result<i32, ExtraError> {
    value.as_i64().and_then(|v| i32::try_from(v).ok()).ok_or(ExtraError {
        key: key.into(),
        place: place.into(),
        problem: "must be a whole number that fits 32 bits",
    })
}

impl RegisterRequest {
    /// The request for `spec` under `family`, tagged with its content hash and our prefix.
    pub fn new(spec: &TaskSpec, family: &str, prefix: &str) -> Result<RegisterRequest, ExtraError> {
        let mut tags = vec![
            TagRequest {
                key: TAG_CONTENT_HASH.into(),
                value: spec.content_hash(),
            },
            TagRequest {
                key: TAG_MANAGED_BY.into(),
                value: prefix.into(),
            },
        ];
        tags.extend(spec.tags.iter().map(|(k, v)| TagRequest {
            key: k.clone(),
            value: v.clone(),
        }));
        Ok(RegisterRequest {
            family: family.into(),
            network_mode: spec.network_mode.as_str().into(),
            requires_compatibilities: vec!["EC2".into()],
            cpu: spec.cpu.to_string(),
            memory: spec.memory.to_string(),
            task_role_arn: spec.task_role_arn.clone(),
            execution_role_arn: spec.execution_role_arn.clone(),
            pid_mode: extra_str(&spec.extra, "pidMode", "")?,
            ipc_mode: extra_str(&spec.extra, "ipcMode", "")?,
            container_definitions: spec
                .containers
                .iter()
                .map(ContainerRequest::new)
                .collect::<Result<_, _>>()?,
            volumes: spec
                .volumes
                .iter()
                .map(|v| VolumeRequest {
                    name: v.name.clone(),
                    host: v.host_path.clone().map(|source_path| HostVolumeRequest { source_path }),
                })
                .collect(),
            placement_constraints: spec
                .placement_constraints
                .iter()
                .map(|p| PlacementRequest {
                    kind: p.kind.clone(),
                    expression: p.expression.clone(),
                })
                .collect(),
            tags,
        })
    }

    /// The content hash it is tagged with (what reuse compares).
    pub fn content_hash(&self) -> &str {
        self.tags
            .iter()
            .find(|t| t.key == TAG_CONTENT_HASH)
            .map(|t| t.value.as_str())
            .expect("`new` always tags the content hash")
    }

    /// What in this request removes isolation between the job and the instance (or other jobs
    /// on it), for `plan` to mark: privileged containers, `host` namespaces or network mode,
    /// volumes bound to instance paths other than `cache_root` (the executor's own cache).
    pub fn elevations(&self, cache_root: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.container_definitions.iter().filter(|c| c.privileged) {
            out.push(format!("container {} is privileged", c.name));
        }
        for (key, mode) in [("pidMode", &self.pid_mode), ("ipcMode", &self.ipc_mode)] {
            if mode.as_deref() == Some("host") {
                out.push(format!("{key} host"));
            }
        }
        if self.network_mode == "host" {
            out.push("networkMode host: no network isolation at all".into());
        }
        for v in &self.volumes {
            if let Some(h) = v.host.as_ref().filter(|h| !h.source_path.starts_with(cache_root)) {
                out.push(format!("volume {} binds the instance's {}", v.name, h.source_path));
            }
        }
        out
    }

    /// The request as the ECS API's JSON (what `plan` prints).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a RegisterRequest always serializes")
    }

    /// The same request on the SDK's builder.
    pub fn to_sdk(&self, mut req: RegisterTaskDefinitionFluentBuilder) -> RegisterTaskDefinitionFluentBuilder {
        req = req
            .family(&self.family)
            .network_mode(sdk::NetworkMode::from(self.network_mode.as_str()))
            .set_requires_compatibilities(Some(
                self.requires_compatibilities
                    .iter()
                    .map(|c| sdk::Compatibility::from(c.as_str()))
                    .collect(),
            ))
            .cpu(&self.cpu)
            .memory(&self.memory)
            .set_task_role_arn(self.task_role_arn.clone())
            .set_execution_role_arn(self.execution_role_arn.clone())
            .set_pid_mode(self.pid_mode.as_deref().map(sdk::PidMode::from))
            .set_ipc_mode(self.ipc_mode.as_deref().map(sdk::IpcMode::from))
            .set_container_definitions(Some(
                self.container_definitions
                    .iter()
                    .map(ContainerRequest::to_sdk)
                    .collect(),
            ))
            .set_tags(Some(
                self.tags
                    .iter()
                    .map(|t| sdk::Tag::builder().key(&t.key).value(&t.value).build())
                    .collect(),
            ));
        if !self.volumes.is_empty() {
            req = req.set_volumes(Some(
                self.volumes
                    .iter()
                    .map(|v| {
                        sdk::Volume::builder()
                            .name(&v.name)
                            .set_host(
                                v.host
                                    .as_ref()
                                    .map(|h| sdk::HostVolumeProperties::builder().source_path(&h.source_path).build()),
                            )
                            .build()
                    })
                    .collect(),
            ));
        }
        if !self.placement_constraints.is_empty() {
            req = req.set_placement_constraints(Some(
                self.placement_constraints
                    .iter()
                    .map(|p| {
                        sdk::TaskDefinitionPlacementConstraint::builder()
                            .r#type(sdk::TaskDefinitionPlacementConstraintType::from(p.kind.as_str()))
                            .set_expression(p.expression.clone())
                            .build()
                    })
                    .collect(),
            ));
        }
        req
    }
}

fn some_if_any<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

impl ContainerRequest {
    fn new(c: &ContainerSpec) -> Result<ContainerRequest, ExtraError> {
        let place = format!(" of container {:?}", c.name);
        let extra = &c.extra;
        let stop_timeout = match extra.as_ref().and_then(|e| e.get("stopTimeout")) {
            Some(v) => extra_i32(v, "stopTimeout", &place)?,
            None => DEFAULT_STOP_TIMEOUT,
        };
        let mut ulimits = Vec::new();
        if let Some(list) = extra.as_ref().and_then(|e| e.get("ulimits")) {
            let bad = |problem| ExtraError {
                key: "ulimits".into(),
                place: place.clone(),
                problem,
            };
            for u in list.as_array().ok_or_else(|| bad("must be a list"))? {
                let name = u
                    .get("name")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| bad("each entry needs a string `name`"))?;
                let limit = |k: &str| {
                    u.get(k)
                        .ok_or_else(|| bad("each entry needs `softLimit` and `hardLimit`"))
                        .and_then(|v| extra_i32(v, k, &place))
                };
                ulimits.push(UlimitRequest {
                    name: name.into(),
                    soft_limit: limit("softLimit")?,
                    hard_limit: limit("hardLimit")?,
                });
            }
        }
        Ok(ContainerRequest {
            name: c.name.clone(),
            image: c.image.clone(),
            essential: c.essential,
            cpu: c.cpu.map_or(0, |v| v as i32),
            memory: c.memory.map(|v| v as i32),
            memory_reservation: c.memory_reservation.map(|v| v as i32),
            entry_point: c.entry_point.clone(),
            command: c.command.clone(),
            environment: c
                .environment
                .iter()
                .map(|(name, value)| KeyValueRequest {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            mount_points: c
                .mount_points
                .iter()
                .map(|m| MountPointRequest {
                    source_volume: m.source_volume.clone(),
                    container_path: m.container_path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            links: c.links.clone(),
            extra_hosts: c
                .extra_hosts
                .iter()
                .map(|(hostname, ip)| HostEntryRequest {
                    hostname: hostname.clone(),
                    ip_address: ip.clone(),
                })
                .collect(),
            docker_labels: c.docker_labels.clone(),
            log_configuration: c.log_configuration.as_ref().map(|l| LogConfigurationRequest {
                log_driver: l.driver.clone(),
                options: l.options.clone(),
            }),
            privileged: c.privileged,
            port_mappings: c
                .port_mappings
                .iter()
                .map(|p| PortMappingRequest {
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(p.host_port),
                    protocol: "tcp".into(),
                })
                .collect(),
            stop_timeout,
            user: extra_str(extra, "user", &place)?,
            working_directory: extra_str(extra, "workingDirectory", &place)?,
            ulimits,
            repository_credentials: c
                .repository_credentials
                .clone()
                .map(|credentials_parameter| RepositoryCredentialsRequest { credentials_parameter }),
        })
    }

    fn to_sdk(&self) -> sdk::ContainerDefinition {
        sdk::ContainerDefinition::builder()
            .name(&self.name)
            .image(&self.image)
            .essential(self.essential)
            .cpu(self.cpu)
            .set_memory(self.memory)
            .set_memory_reservation(self.memory_reservation)
            .set_entry_point(self.entry_point.clone())
            .set_command(Some(self.command.clone()))
            .set_environment(some_if_any(
                self.environment
                    .iter()
                    .map(|e| sdk::KeyValuePair::builder().name(&e.name).value(&e.value).build())
                    .collect(),
            ))
            .set_mount_points(some_if_any(
                self.mount_points
                    .iter()
                    .map(|m| {
                        sdk::MountPoint::builder()
                            .source_volume(&m.source_volume)
                            .container_path(&m.container_path)
                            .read_only(m.read_only)
                            .build()
                    })
                    .collect(),
            ))
            .set_links(some_if_any(self.links.clone()))
            .set_extra_hosts(some_if_any(
                self.extra_hosts
                    .iter()
                    .map(|h| {
                        sdk::HostEntry::builder()
                            .hostname(&h.hostname)
                            .ip_address(&h.ip_address)
                            .build()
                            .expect("both fields are set")
                    })
                    .collect(),
            ))
            .set_docker_labels(
                (!self.docker_labels.is_empty()).then(|| self.docker_labels.clone().into_iter().collect()),
            )
            .set_log_configuration(self.log_configuration.as_ref().map(|l| {
                sdk::LogConfiguration::builder()
                    .log_driver(sdk::LogDriver::from(l.log_driver.as_str()))
                    .set_options((!l.options.is_empty()).then(|| l.options.clone().into_iter().collect()))
                    .build()
                    .expect("log driver is set")
            }))
            .privileged(self.privileged)
            .set_port_mappings(some_if_any(
                self.port_mappings
                    .iter()
                    .map(|p| {
                        sdk::PortMapping::builder()
                            .container_port(p.container_port)
                            .host_port(p.host_port)
                            .protocol(sdk::TransportProtocol::from(p.protocol.as_str()))
                            .build()
                    })
                    .collect(),
            ))
            .stop_timeout(self.stop_timeout)
            .set_user(self.user.clone())
            .set_working_directory(self.working_directory.clone())
            .set_ulimits(some_if_any(
                self.ulimits
                    .iter()
                    .map(|u| {
                        sdk::Ulimit::builder()
                            .name(sdk::UlimitName::from(u.name.as_str()))
                            .soft_limit(u.soft_limit)
                            .hard_limit(u.hard_limit)
                            .build()
                            .expect("all fields are set")
                    })
                    .collect(),
            ))
            .set_repository_credentials(self.repository_credentials.as_ref().map(|r| {
                sdk::RepositoryCredentials::builder()
                    .credentials_parameter(&r.credentials_parameter)
                    .build()
                    .expect("credentials parameter is set")
            }))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_extra() -> TaskSpec {
        let config = crate::config::Config::parse(
            "cluster='c'\nregion='us-east-1'\nhelper_image='helper:1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let job = crate::job::JobContext::for_tests("alpine:3");
        let mut spec = TaskSpec::for_job(&config, &job);
        spec.extra = Some(
            serde_json::json!({"pidMode": "task", "ipcMode": "none"})
                .as_object()
                .unwrap()
                .clone(),
        );
        spec.containers[0].extra = Some(
            serde_json::json!({"user": "1000", "workingDirectory": "/w", "stopTimeout": 30,
                "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}]})
            .as_object()
            .unwrap()
            .clone(),
        );
        spec
    }

    #[test]
    fn every_extra_key_reaches_the_request_typed() {
        let req = RegisterRequest::new(&spec_with_extra(), "fam", "ecs-executor").unwrap();
        let json = req.to_json();
        assert_eq!(json["pidMode"], "task");
        assert_eq!(json["ipcMode"], "none");
        let build = &json["containerDefinitions"][0];
        assert_eq!(build["user"], "1000");
        assert_eq!(build["workingDirectory"], "/w");
        assert_eq!(build["stopTimeout"], 30);
        assert_eq!(build["ulimits"][0]["hardLimit"], 4096);
        assert_eq!(json["containerDefinitions"][1]["stopTimeout"], DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn a_container_without_cpu_says_cpu_0_in_both_forms() {
        let spec = spec_with_extra();
        assert!(spec.containers.iter().any(|c| c.cpu.is_none()));
        let req = RegisterRequest::new(&spec, "fam", "p").unwrap();
        for (json, c) in req.to_json()["containerDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&spec.containers)
        {
            assert_eq!(json["cpu"], c.cpu.unwrap_or(0), "{json:#}");
        }
        for c in &req.container_definitions {
            assert_eq!(c.to_sdk().cpu(), c.cpu);
        }
    }

    #[test]
    fn an_extra_value_of_the_wrong_type_is_refused_not_dropped() {
        let mut spec = spec_with_extra();
        spec.extra = Some(serde_json::json!({"pidMode": 5}).as_object().unwrap().clone());
        let err = RegisterRequest::new(&spec, "fam", "p").unwrap_err().to_string();
        assert!(err.contains("pidMode") && err.contains("string"), "{err}");
        let mut spec = spec_with_extra();
        spec.containers[0].extra = Some(serde_json::json!({"stopTimeout": "soon"}).as_object().unwrap().clone());
        let err = RegisterRequest::new(&spec, "fam", "p").unwrap_err().to_string();
        assert!(err.contains("stopTimeout") && err.contains("build"), "{err}");
    }

    #[test]
    fn families_are_named_in_one_place() {
        let spec = spec_with_extra();
        let reuse = family(&spec, TaskDefinitionMode::Reuse, "ci", 7);
        assert_eq!(reuse, format!("ci-{}", &spec.content_hash()[..16]));
        assert_eq!(family(&spec, TaskDefinitionMode::PerJob, "ci", 7), "ci-job-7");
        let mut chosen = spec.clone();
        chosen.family = Some("site-fam".into());
        assert_eq!(family(&chosen, TaskDefinitionMode::PerJob, "ci", 7), "site-fam");
    }
}
