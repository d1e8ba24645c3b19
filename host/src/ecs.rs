//! Everything the executor asks of ECS: task definitions (reused by content or per job), the
//! job's task (run, watch, stop, find again) — and nothing about Docker.

use aws_sdk_ecs::types::{
    AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerDefinition, HostEntry, HostVolumeProperties,
    KeyValuePair, LaunchType, LogConfiguration, LogDriver, MountPoint, NetworkConfiguration, NetworkMode, Tag,
    TaskDefinitionField, TaskDefinitionPlacementConstraint, TaskDefinitionPlacementConstraintType, Volume,
};

use crate::aws::describe_sdk_error;
use crate::config::{Config, TaskDefinitionMode};
use crate::failure::{Blame, Classify};
use crate::task_spec::TaskSpec;

/// Tag on task definitions: the full content hash, so reuse never trusts a short family name.
pub const TAG_CONTENT_HASH: &str = "ecs-executor:content-sha256";
/// Tag on task definitions and tasks: which executor (family prefix) made them.
pub const TAG_MANAGED_BY: &str = "ecs-executor:managed-by";
pub const TAG_RUNNER: &str = "ecs-executor:runner";
pub const TAG_JOB: &str = "ecs-executor:job-id";
pub const TAG_PROJECT: &str = "ecs-executor:project";

#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error("ECS {action} failed: {message}")]
    Api { action: &'static str, message: String },
    #[error("ECS could not place the task on cluster {cluster}: {reasons}")]
    Placement { cluster: String, reasons: String },
    #[error("ECS {action} returned no {what}")]
    Incomplete { action: &'static str, what: &'static str },
}

impl Classify for EcsError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

fn api<E, R>(action: &'static str) -> impl FnOnce(aws_sdk_ecs::error::SdkError<E, R>) -> EcsError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| EcsError::Api {
        action,
        message: describe_sdk_error(&e),
    }
}

/// A task definition the job's task will use.
#[derive(Debug, Clone)]
pub struct TaskDefinitionUse {
    pub arn: String,
    pub family: String,
    pub revision: i32,
    /// true: an existing revision with the same content was found; false: registered now.
    pub reused: bool,
}

/// The job's task as RunTask placed it.
#[derive(Debug, Clone)]
pub struct PlacedTask {
    pub arn: String,
    pub container_instance_arn: Option<String>,
}

/// What DescribeTasks says of the job's task.
#[derive(Debug, Clone, Default)]
pub struct TaskStatus {
    pub last_status: String,
    pub desired_status: String,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub container_instance_arn: Option<String>,
    pub containers: Vec<ContainerStatus>,
    /// DescribeTasks reported the task MISSING.
    pub missing: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerStatus {
    pub name: String,
    pub reason: Option<String>,
}

impl TaskStatus {
    /// ECS's own words on why the task stopped: the task's reason and any container reasons.
    pub fn stop_explanation(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.stopped_reason.as_deref().filter(|r| !r.is_empty()) {
            parts.push(r.to_string());
        }
        for c in &self.containers {
            if let Some(r) = c.reason.as_deref().filter(|r| !r.is_empty())
                && !parts.iter().any(|p| p == r)
            {
                parts.push(format!("container {}: {r}", c.name));
            }
        }
        if parts.is_empty() {
            parts.push(format!("stop code {}", self.stop_code.as_deref().unwrap_or("unknown")));
        }
        parts.join("; ")
    }
}

pub struct Ecs {
    client: aws_sdk_ecs::Client,
    cluster: String,
}

impl Ecs {
    pub fn new(client: aws_sdk_ecs::Client, cluster: &str) -> Ecs {
        Ecs {
            client,
            cluster: cluster.to_string(),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Find the task definition with this content, or register it. In `per-job` mode always
    /// register (the job's cleanup deregisters it).
    pub async fn ensure_task_definition(
        &self,
        spec: &TaskSpec,
        config: &Config,
        per_job_family: &str,
    ) -> Result<TaskDefinitionUse, EcsError> {
        let hash = spec.content_hash();
        if config.task_definition_mode == TaskDefinitionMode::PerJob {
            let family = spec.family.as_deref().unwrap_or(per_job_family);
            return self.register(spec, family, &hash, &config.family_prefix).await;
        }
        // A family a plugin chose is still reused by content hash (the tag), like ours.
        let family = spec
            .family
            .clone()
            .unwrap_or_else(|| spec.reuse_family(&config.family_prefix));
        if let Some(found) = self.find_by_content(&family, &hash).await? {
            return Ok(found);
        }
        self.register(spec, &family, &hash, &config.family_prefix).await
    }

    /// The latest ACTIVE revision of `family`, if its content hash tag matches.
    pub async fn find_by_content(&self, family: &str, hash: &str) -> Result<Option<TaskDefinitionUse>, EcsError> {
        let out = self
            .client
            .describe_task_definition()
            .task_definition(family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // ClientException is how ECS says "no such family".
            Err(e) if e.as_service_error().is_some_and(|s| s.is_client_exception()) => return Ok(None),
            Err(e) => return Err(api("DescribeTaskDefinition")(e)),
        };
        let Some(td) = out.task_definition() else {
            return Ok(None);
        };
        let active = td.status().is_some_and(|s| s.as_str() == "ACTIVE");
        let same = out
            .tags()
            .iter()
            .any(|t| t.key() == Some(TAG_CONTENT_HASH) && t.value() == Some(hash));
        if !(active && same) {
            return Ok(None);
        }
        Ok(Some(TaskDefinitionUse {
            arn: td.task_definition_arn().unwrap_or_default().to_string(),
            family: family.to_string(),
            revision: td.revision(),
            reused: true,
        }))
    }

    async fn register(
        &self,
        spec: &TaskSpec,
        family: &str,
        hash: &str,
        prefix: &str,
    ) -> Result<TaskDefinitionUse, EcsError> {
        let mut req = self
            .client
            .register_task_definition()
            .family(family)
            .network_mode(NetworkMode::from(spec.network_mode.as_str()))
            .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Ec2)
            .cpu(spec.cpu.to_string())
            .memory(spec.memory.to_string())
            .set_task_role_arn(spec.task_role_arn.clone())
            .set_execution_role_arn(spec.execution_role_arn.clone())
            .tags(tag(TAG_CONTENT_HASH, hash))
            .tags(tag(TAG_MANAGED_BY, prefix));
        for (k, v) in &spec.tags {
            req = req.tags(tag(k, v));
        }
        // Plugins' `extra` (only keys the plugin host validated: pidMode, ipcMode).
        let extra_str = |key: &str| spec.extra.as_ref().and_then(|e| e.get(key)).and_then(|v| v.as_str());
        if let Some(mode) = extra_str("pidMode") {
            req = req.pid_mode(aws_sdk_ecs::types::PidMode::from(mode));
        }
        if let Some(mode) = extra_str("ipcMode") {
            req = req.ipc_mode(aws_sdk_ecs::types::IpcMode::from(mode));
        }
        for p in &spec.placement_constraints {
            req = req.placement_constraints(
                TaskDefinitionPlacementConstraint::builder()
                    .r#type(TaskDefinitionPlacementConstraintType::from(p.kind.as_str()))
                    .set_expression(p.expression.clone())
                    .build(),
            );
        }
        for c in &spec.containers {
            req = req.container_definitions(container_definition(c));
        }
        for v in &spec.volumes {
            let mut vol = Volume::builder().name(&v.name);
            if let Some(path) = &v.host_path {
                vol = vol.host(HostVolumeProperties::builder().source_path(path).build());
            }
            req = req.volumes(vol.build());
        }
        let out = req.send().await.map_err(api("RegisterTaskDefinition"))?;
        let td = out.task_definition().ok_or(EcsError::Incomplete {
            action: "RegisterTaskDefinition",
            what: "task definition",
        })?;
        Ok(TaskDefinitionUse {
            arn: td.task_definition_arn().unwrap_or_default().to_string(),
            family: family.to_string(),
            revision: td.revision(),
            reused: false,
        })
    }

    pub async fn deregister(&self, arn: &str) -> Result<(), EcsError> {
        match self
            .client
            .deregister_task_definition()
            .task_definition(arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_client_exception()) => Ok(()),
            Err(e) => Err(api("DeregisterTaskDefinition")(e)),
        }
    }

    /// Run one task of `task_definition_arn`, identified by `started_by` and `tags`.
    /// Job variables never go into overrides: DescribeTasks shows overrides to anyone.
    pub async fn run_task(
        &self,
        config: &Config,
        task_definition_arn: &str,
        started_by: &str,
        tags: &[(&str, String)],
    ) -> Result<PlacedTask, EcsError> {
        let mut req = self
            .client
            .run_task()
            .cluster(&self.cluster)
            .task_definition(task_definition_arn)
            .count(1)
            .started_by(started_by)
            .enable_ecs_managed_tags(true);
        for (k, v) in tags {
            req = req.tags(tag(k, v));
        }
        if config.capacity_provider_strategy.is_empty() {
            req = req.launch_type(LaunchType::Ec2);
        } else {
            for cp in &config.capacity_provider_strategy {
                req = req.capacity_provider_strategy(
                    CapacityProviderStrategyItem::builder()
                        .capacity_provider(&cp.capacity_provider)
                        .weight(cp.weight)
                        .base(cp.base)
                        .build()
                        .expect("capacity_provider is set"),
                );
            }
        }
        if let Some(vpc) = &config.awsvpc {
            let awsvpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(vpc.subnets.clone()))
                // Unset (not empty) lets ECS use the VPC's default security group.
                .set_security_groups(Some(vpc.security_groups.clone()).filter(|g| !g.is_empty()))
                .assign_public_ip(if vpc.assign_public_ip {
                    aws_sdk_ecs::types::AssignPublicIp::Enabled
                } else {
                    aws_sdk_ecs::types::AssignPublicIp::Disabled
                })
                .build()
                .expect("subnets are set");
            req = req.network_configuration(NetworkConfiguration::builder().awsvpc_configuration(awsvpc).build());
        }
        let out = req.send().await.map_err(api("RunTask"))?;
        if let Some(task) = out.tasks().first() {
            return Ok(PlacedTask {
                arn: task.task_arn().unwrap_or_default().to_string(),
                container_instance_arn: task.container_instance_arn().map(String::from),
            });
        }
        let reasons: Vec<String> = out
            .failures()
            .iter()
            .map(|f| match (f.reason(), f.detail()) {
                (Some(r), Some(d)) => format!("{r} ({d})"),
                (Some(r), None) => r.to_string(),
                _ => "unknown reason".to_string(),
            })
            .collect();
        Err(EcsError::Placement {
            cluster: self.cluster.clone(),
            reasons: if reasons.is_empty() {
                "no task and no failure returned".into()
            } else {
                reasons.join(", ")
            },
        })
    }

    pub async fn describe_task(&self, task_arn: &str) -> Result<TaskStatus, EcsError> {
        let out = self
            .client
            .describe_tasks()
            .cluster(&self.cluster)
            .tasks(task_arn)
            .send()
            .await
            .map_err(api("DescribeTasks"))?;
        let Some(task) = out.tasks().first() else {
            let missing = out.failures().iter().any(|f| f.reason() == Some("MISSING"));
            if missing {
                return Ok(TaskStatus {
                    missing: true,
                    ..Default::default()
                });
            }
            return Err(EcsError::Incomplete {
                action: "DescribeTasks",
                what: "task",
            });
        };
        Ok(TaskStatus {
            last_status: task.last_status().unwrap_or_default().to_string(),
            desired_status: task.desired_status().unwrap_or_default().to_string(),
            stop_code: task.stop_code().map(|c| c.as_str().to_string()),
            stopped_reason: task.stopped_reason().map(String::from),
            container_instance_arn: task.container_instance_arn().map(String::from),
            containers: task
                .containers()
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name().unwrap_or_default().to_string(),
                    reason: c.reason().map(String::from),
                })
                .collect(),
            missing: false,
        })
    }

    /// Stop a task; a task that is gone or already stopped is not an error.
    pub async fn stop_task(&self, task_arn: &str, reason: &str) -> Result<(), EcsError> {
        let out = self
            .client
            .stop_task()
            .cluster(&self.cluster)
            .task(task_arn)
            .reason(reason)
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_exception() || s.is_client_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(api("StopTask")(e)),
        }
    }

    /// Tasks of this cluster that are meant to run and were started with `started_by`.
    pub async fn running_tasks_started_by(&self, started_by: &str) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        let mut pages = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .started_by(started_by)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTasks"))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        Ok(arns)
    }

    /// The EC2 instance id behind a container instance.
    /// The EC2 instance id behind a container instance, and the container instance's ECS
    /// attributes (name, value) — what address plugins see.
    #[allow(clippy::type_complexity)]
    pub async fn ec2_instance_of(
        &self,
        container_instance_arn: &str,
    ) -> Result<(String, Vec<(String, Option<String>)>), EcsError> {
        let out = self
            .client
            .describe_container_instances()
            .cluster(&self.cluster)
            .container_instances(container_instance_arn)
            .send()
            .await
            .map_err(api("DescribeContainerInstances"))?;
        let ci = out.container_instances().first();
        let id = ci
            .and_then(|ci| ci.ec2_instance_id())
            .map(String::from)
            .ok_or(EcsError::Incomplete {
                action: "DescribeContainerInstances",
                what: "EC2 instance id",
            })?;
        let attributes = ci
            .map(|ci| {
                ci.attributes()
                    .iter()
                    .map(|a| (a.name().to_string(), a.value().map(String::from)))
                    .collect()
            })
            .unwrap_or_default();
        Ok((id, attributes))
    }
}

/// The RegisterTaskDefinition request `register` sends for `spec`, as the ECS API's JSON
/// (`ecs-executor plan`). Keep in step with `register` and `container_definition`.
pub fn register_request_json(spec: &TaskSpec, family: &str, hash: &str, prefix: &str) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut tags = vec![
        json!({"key": TAG_CONTENT_HASH, "value": hash}),
        json!({"key": TAG_MANAGED_BY, "value": prefix}),
    ];
    tags.extend(spec.tags.iter().map(|(k, v)| json!({"key": k, "value": v})));
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let mut def = json!({
                "name": c.name, "image": c.image, "essential": c.essential,
                "command": c.command, "privileged": c.privileged, "stopTimeout": 10,
                "dockerLabels": c.docker_labels,
                "environment": c.environment.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
                "extraHosts": c.extra_hosts.iter().map(|(h, ip)| json!({"hostname": h, "ipAddress": ip})).collect::<Vec<_>>(),
                "mountPoints": c.mount_points.iter().map(|m| json!({
                    "sourceVolume": m.source_volume, "containerPath": m.container_path, "readOnly": m.read_only,
                })).collect::<Vec<_>>(),
            });
            if !c.port_mappings.is_empty() {
                def["portMappings"] = c.port_mappings.iter().map(|p| json!({
                    "containerPort": p.container_port, "hostPort": p.host_port, "protocol": "tcp",
                })).collect::<Vec<_>>().into();
            }
            let obj = def.as_object_mut().expect("object");
            let mut put = |k: &str, v: Value| {
                obj.insert(k.to_string(), v);
            };
            if let Some(v) = c.cpu {
                put("cpu", json!(v));
            }
            if let Some(v) = c.memory {
                put("memory", json!(v));
            }
            if let Some(v) = c.memory_reservation {
                put("memoryReservation", json!(v));
            }
            if let Some(v) = &c.entry_point {
                put("entryPoint", json!(v));
            }
            if !c.links.is_empty() {
                put("links", json!(c.links));
            }
            if let Some(l) = &c.log_configuration {
                put("logConfiguration", json!({"logDriver": l.driver, "options": l.options}));
            }
            for (k, v) in c.extra.iter().flatten() {
                put(k, v.clone());
            }
            def
        })
        .collect();
    let mut req = json!({
        "family": family,
        "networkMode": spec.network_mode.as_str(),
        "requiresCompatibilities": ["EC2"],
        "cpu": spec.cpu.to_string(),
        "memory": spec.memory.to_string(),
        "containerDefinitions": containers,
        "volumes": spec.volumes.iter().map(|v| match &v.host_path {
            Some(p) => json!({"name": v.name, "host": {"sourcePath": p}}),
            None => json!({"name": v.name}),
        }).collect::<Vec<_>>(),
        "placementConstraints": spec.placement_constraints.iter().map(|p| match &p.expression {
            Some(e) => json!({"type": p.kind, "expression": e}),
            None => json!({"type": p.kind}),
        }).collect::<Vec<_>>(),
        "tags": tags,
    });
    let obj = req.as_object_mut().expect("object");
    if let Some(r) = &spec.task_role_arn {
        obj.insert("taskRoleArn".into(), json!(r));
    }
    if let Some(r) = &spec.execution_role_arn {
        obj.insert("executionRoleArn".into(), json!(r));
    }
    for (k, v) in spec.extra.iter().flatten() {
        obj.insert(k.clone(), v.clone());
    }
    req
}

/// ECS tags as (key, value) pairs.
fn tag_pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn container_definition(c: &crate::task_spec::ContainerSpec) -> ContainerDefinition {
    let mut def = ContainerDefinition::builder()
        .name(&c.name)
        .image(&c.image)
        .essential(c.essential)
        .set_cpu(c.cpu.map(|v| v as i32))
        .set_memory(c.memory.map(|v| v as i32))
        .set_memory_reservation(c.memory_reservation.map(|v| v as i32))
        .set_entry_point(c.entry_point.clone())
        .set_command(Some(c.command.clone()))
        .set_links(if c.links.is_empty() {
            None
        } else {
            Some(c.links.clone())
        })
        .set_docker_labels(Some(c.docker_labels.clone().into_iter().collect()))
        .privileged(c.privileged)
        // Our keep-alive exits on SIGTERM at once; a user image that ignores it gets 10 s.
        .stop_timeout(10);
    // Plugins' `extra` (only keys the plugin host validated).
    if let Some(extra) = &c.extra {
        if let Some(user) = extra.get("user").and_then(|v| v.as_str()) {
            def = def.user(user);
        }
        if let Some(dir) = extra.get("workingDirectory").and_then(|v| v.as_str()) {
            def = def.working_directory(dir);
        }
        if let Some(secs) = extra.get("stopTimeout").and_then(|v| v.as_i64()) {
            def = def.stop_timeout(secs as i32);
        }
        for u in extra.get("ulimits").and_then(|v| v.as_array()).into_iter().flatten() {
            let limit = |k: &str| u.get(k).and_then(|v| v.as_i64()).unwrap_or(0) as i32;
            if let Ok(ulimit) = aws_sdk_ecs::types::Ulimit::builder()
                .name(aws_sdk_ecs::types::UlimitName::from(
                    u.get("name").and_then(|v| v.as_str()).unwrap_or_default(),
                ))
                .soft_limit(limit("softLimit"))
                .hard_limit(limit("hardLimit"))
                .build()
            {
                def = def.ulimits(ulimit);
            }
        }
    }
    for (name, value) in &c.environment {
        def = def.environment(KeyValuePair::builder().name(name).value(value).build());
    }
    for (host, ip) in &c.extra_hosts {
        def = def.extra_hosts(
            HostEntry::builder()
                .hostname(host)
                .ip_address(ip)
                .build()
                .expect("both fields are set"),
        );
    }
    for p in &c.port_mappings {
        def = def.port_mappings(
            aws_sdk_ecs::types::PortMapping::builder()
                .container_port(i32::from(p.container_port))
                .host_port(i32::from(p.host_port))
                .protocol(aws_sdk_ecs::types::TransportProtocol::Tcp)
                .build(),
        );
    }
    for m in &c.mount_points {
        def = def.mount_points(
            MountPoint::builder()
                .source_volume(&m.source_volume)
                .container_path(&m.container_path)
                .read_only(m.read_only)
                .build(),
        );
    }
    if let Some(log) = &c.log_configuration {
        def = def.log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::from(log.driver.as_str()))
                .set_options(Some(log.options.clone().into_iter().collect()))
                .build()
                .expect("log driver is set"),
        );
    }
    def.build()
}

// ---- Listing and removing what this executor made (gc, unregister, check) -----------------

/// A task of the cluster as `gc` judges it.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    pub arn: String,
    pub started_by: String,
    /// Seconds since the epoch (ECS `createdAt`).
    pub created_at: Option<f64>,
    pub tags: Vec<(String, String)>,
}

impl TaskSummary {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A task definition revision with its tags.
#[derive(Debug, Clone)]
pub struct TaskDefinitionSummary {
    pub arn: String,
    pub tags: Vec<(String, String)>,
}

impl TaskDefinitionSummary {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Is this AWS error "it is not there (any more)"? Two hosts running gc race on the same
/// resources: the loser's answer is one of these, and that is success.
fn already_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("does not exist") || m.contains("unable to describe")
}

impl Ecs {
    /// Every task of the cluster that is meant to run, with tags and creation time.
    pub async fn tasks_meant_to_run(&self) -> Result<Vec<TaskSummary>, EcsError> {
        let mut arns = Vec::new();
        let mut pages = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTasks"))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        let mut tasks = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(100) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .map_err(api("DescribeTasks"))?;
            tasks.extend(out.tasks().iter().map(|t| TaskSummary {
                arn: t.task_arn().unwrap_or_default().to_string(),
                started_by: t.started_by().unwrap_or_default().to_string(),
                created_at: t.created_at().map(|d| d.as_secs_f64()),
                tags: tag_pairs(t.tags()),
            }));
        }
        Ok(tasks)
    }

    /// Task definition families whose name starts with `prefix` (any status).
    pub async fn families_with_prefix(&self, prefix: &str) -> Result<Vec<String>, EcsError> {
        let mut families = Vec::new();
        let mut pages = self
            .client
            .list_task_definition_families()
            .family_prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTaskDefinitionFamilies"))?;
            families.extend(page.families().iter().filter(|f| f.starts_with(prefix)).cloned());
        }
        Ok(families)
    }

    /// The revisions of `family` with `status` (ACTIVE or INACTIVE), tags included.
    pub async fn task_definitions_of(
        &self,
        family: &str,
        status: aws_sdk_ecs::types::TaskDefinitionStatus,
    ) -> Result<Vec<TaskDefinitionSummary>, EcsError> {
        let mut arns = Vec::new();
        let mut pages = self
            .client
            .list_task_definitions()
            .family_prefix(family)
            .status(status.clone())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTaskDefinitions"))?;
            arns.extend(page.task_definition_arns().iter().cloned());
        }
        let mut out = Vec::new();
        for arn in arns {
            let described = self
                .client
                .describe_task_definition()
                .task_definition(&arn)
                .include(TaskDefinitionField::Tags)
                .send()
                .await;
            let described = match described {
                Ok(d) => d,
                Err(e) if already_gone(&describe_sdk_error(&e)) => continue,
                Err(e) => return Err(api("DescribeTaskDefinition")(e)),
            };
            let Some(td) = described.task_definition() else {
                continue;
            };
            if td.family() != Some(family) {
                continue;
            }
            out.push(TaskDefinitionSummary {
                arn,
                tags: tag_pairs(described.tags()),
            });
        }
        Ok(out)
    }

    /// Tasks of `family` meant to run (any startedBy).
    pub async fn running_tasks_of_family(&self, family: &str) -> Result<Vec<String>, EcsError> {
        let out = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .family(family)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .map_err(api("ListTasks"))?;
        Ok(out.task_arns().to_vec())
    }

    /// DeleteTaskDefinitions (INACTIVE revisions only; at most 10 per call). Revisions that
    /// are already gone count as deleted. Returns the failures worth reporting.
    pub async fn delete_task_definitions(&self, arns: &[String]) -> Result<Vec<String>, EcsError> {
        let mut problems = Vec::new();
        for chunk in arns.chunks(10) {
            let out = self
                .client
                .delete_task_definitions()
                .set_task_definitions(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(api("DeleteTaskDefinitions"))?;
            for f in out.failures() {
                let reason = f.reason().unwrap_or("unknown reason");
                if !already_gone(reason) {
                    problems.push(format!("{}: {reason}", f.arn().unwrap_or("?")));
                }
            }
        }
        Ok(problems)
    }

    /// DescribeClusters: the cluster's status (ACTIVE when usable).
    pub async fn cluster_status(&self) -> Result<Option<String>, EcsError> {
        let out = self
            .client
            .describe_clusters()
            .clusters(&self.cluster)
            .send()
            .await
            .map_err(api("DescribeClusters"))?;
        Ok(out.clusters().first().and_then(|c| c.status()).map(String::from))
    }

    /// The cluster's container instances (ARNs).
    pub async fn container_instances(&self) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        let mut pages = self
            .client
            .list_container_instances()
            .cluster(&self.cluster)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListContainerInstances"))?;
            arns.extend(page.container_instance_arns().iter().cloned());
        }
        Ok(arns)
    }
}

// ---- end of listing and removing ----------------------------------------------------------
