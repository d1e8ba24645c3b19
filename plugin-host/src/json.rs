//! The JSON form of the WIT records (used by case files, `ecs-executor plan` and the
//! test-support API): kebab-case field names; `option<T>` is `null` or the value (a missing key
//! is `none` or the field's default); `list<key-value>` is a JSON object `{"K": "V"}` in order;
//! enums are their kebab-case names; `extra` is any JSON object (the WIT carries it as text).
//! Reading is strict: an unknown key is an error naming its path, so typos do not pass.

use serde_json::{Map, Value, json};

use crate::types::{
    CiService, ContainerDefinition, EcsAttribute, Instance, JobContext, KeyValue, LogConfiguration, MountPoint,
    NetworkMode, PlacementConstraint, TaskDefinition, Volume,
};
use crate::{DockerAddress, ServiceMapping};

/// A JSON read error: where (`task.containers[0].cpu`) and what.
pub type JsonError = String;

// ---------------------------------------------------------------- to JSON

fn kv(list: &[KeyValue]) -> Value {
    Value::Object(
        list.iter()
            .map(|p| (p.key.clone(), Value::String(p.value.clone())))
            .collect(),
    )
}

fn extra(text: &Option<String>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone())),
    }
}

pub fn network_mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Bridge => "bridge",
        NetworkMode::Awsvpc => "awsvpc",
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
    }
}

pub fn job_to_json(j: &JobContext) -> Value {
    json!({
        "job-id": j.job_id, "pipeline-id": j.pipeline_id, "project-id": j.project_id,
        "project-path": j.project_path, "ref-name": j.ref_name, "ref-protected": j.ref_protected,
        "commit-sha": j.commit_sha, "image": j.image, "image-entrypoint": j.image_entrypoint,
        "services": j.services.iter().map(service_to_json).collect::<Vec<_>>(),
        "runner-tags": j.runner_tags, "variables": kv(&j.variables), "trusted": kv(&j.trusted),
    })
}

pub fn service_to_json(s: &CiService) -> Value {
    json!({
        "name": s.name, "aliases": s.aliases, "entrypoint": s.entrypoint, "command": s.command,
        "variables": kv(&s.variables),
    })
}

pub fn container_to_json(c: &ContainerDefinition) -> Value {
    json!({
        "name": c.name, "image": c.image, "cpu": c.cpu, "memory": c.memory,
        "memory-reservation": c.memory_reservation, "essential": c.essential,
        "entry-point": c.entry_point, "command": c.command, "environment": kv(&c.environment),
        "mount-points": c.mount_points.iter().map(|m| json!({
            "source-volume": m.source_volume, "container-path": m.container_path, "read-only": m.read_only,
        })).collect::<Vec<_>>(),
        "links": c.links, "docker-labels": kv(&c.docker_labels),
        "log-configuration": c.log_configuration.as_ref().map(|l| json!({
            "log-driver": l.log_driver, "options": kv(&l.options), "extra": extra(&l.extra),
        })),
        "privileged": c.privileged, "extra": extra(&c.extra),
    })
}

pub fn task_to_json(t: &TaskDefinition) -> Value {
    json!({
        "family": t.family, "task-role-arn": t.task_role_arn, "execution-role-arn": t.execution_role_arn,
        "network-mode": network_mode_name(t.network_mode), "cpu": t.cpu, "memory": t.memory,
        "containers": t.containers.iter().map(container_to_json).collect::<Vec<_>>(),
        "volumes": t.volumes.iter().map(|v| json!({
            "name": v.name, "host-path": v.host_path, "extra": extra(&v.extra),
        })).collect::<Vec<_>>(),
        "placement-constraints": t.placement_constraints.iter().map(|p| json!({
            "kind": p.kind, "expression": p.expression,
        })).collect::<Vec<_>>(),
        "tags": kv(&t.tags), "extra": extra(&t.extra),
    })
}

pub fn instance_to_json(i: &Instance) -> Value {
    json!({
        "container-instance-arn": i.container_instance_arn, "ec2-instance-id": i.ec2_instance_id,
        "private-ipv4": i.private_ipv4, "public-ipv4": i.public_ipv4, "ipv6": i.ipv6,
        "subnet-id": i.subnet_id, "vpc-id": i.vpc_id, "availability-zone": i.availability_zone,
        "instance-type": i.instance_type, "tags": kv(&i.tags),
        "attributes": i.attributes.iter().map(|a| json!({"name": a.name, "value": a.value})).collect::<Vec<_>>(),
    })
}

pub fn address_to_json(a: &DockerAddress) -> Value {
    json!({"host": a.host, "port": a.port, "tls-server-name": a.tls_server_name})
}

pub fn mapping_to_json(m: &ServiceMapping) -> Value {
    match m {
        ServiceMapping::Decline => json!("decline"),
        ServiceMapping::Containers(cs) => json!({"containers": cs.iter().map(container_to_json).collect::<Vec<_>>()}),
    }
}

// ---------------------------------------------------------------- from JSON

/// A JSON object being read, with its path for messages; tracks which keys were used.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    known: &'static [&'static str],
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &str, known: &'static [&'static str]) -> Result<Obj<'a>, JsonError> {
        let map = v
            .as_object()
            .ok_or_else(|| format!("{path}: expected an object, got {}", kind(v)))?;
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                return Err(format!("{path}: unknown field `{key}` (fields: {})", known.join(", ")));
            }
        }
        Ok(Obj {
            map,
            path: path.to_string(),
            known,
        })
    }

    fn at(&self, key: &str) -> String {
        debug_assert!(self.known.contains(&key));
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str, default: &str) -> Result<String, JsonError> {
        self.opt_string(key).map(|v| v.unwrap_or_else(|| default.to_string()))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("{}: expected a string, got {}", self.at(key), kind(v))),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, JsonError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("{}: expected true or false, got {}", self.at(key), kind(v))),
        }
    }

    fn opt_u64(&self, key: &str, max: u64) -> Result<Option<u64>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(format!("{}: expected a whole number 0..={max}, got {v}", self.at(key))),
            },
        }
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, JsonError> {
        Ok(self.opt_u64(key, u32::MAX as u64)?.map(|n| n as u32))
    }

    fn list<T>(&self, key: &str, item: impl Fn(&Value, &str) -> Result<T, JsonError>) -> Result<Vec<T>, JsonError> {
        Ok(self.opt_list(key, item)?.unwrap_or_default())
    }

    fn opt_list<T>(
        &self,
        key: &str,
        item: impl Fn(&Value, &str) -> Result<T, JsonError>,
    ) -> Result<Option<Vec<T>>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(v, &format!("{}[{i}]", self.at(key))))
                .collect::<Result<Vec<T>, _>>()
                .map(Some),
            Some(v) => Err(format!("{}: expected a list, got {}", self.at(key), kind(v))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, JsonError> {
        self.list(key, string_item)
    }

    fn opt_strings(&self, key: &str) -> Result<Option<Vec<String>>, JsonError> {
        self.opt_list(key, string_item)
    }

    fn kv(&self, key: &str) -> Result<Vec<KeyValue>, JsonError> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok(KeyValue {
                        key: k.clone(),
                        value: s.clone(),
                    }),
                    other => Err(format!("{}.{k}: expected a string, got {}", self.at(key), kind(other))),
                })
                .collect(),
            Some(v) => Err(format!(
                "{}: expected an object {{\"NAME\": \"value\"}}, got {}",
                self.at(key),
                kind(v)
            )),
        }
    }

    fn extra(&self, key: &str) -> Result<Option<String>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v.to_string())),
            Some(v) => Err(format!("{}: expected a JSON object, got {}", self.at(key), kind(v))),
        }
    }
}

fn string_item(v: &Value, path: &str) -> Result<String, JsonError> {
    v.as_str()
        .map(String::from)
        .ok_or_else(|| format!("{path}: expected a string, got {}", kind(v)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A job context; missing fields get the fixture defaults of docs/plugins.md ("Case files") (job-id 1,
/// project-path `group/project`, ref-name `main`, image `alpine:3`, the rest empty).
pub fn job_from_json(v: &Value, path: &str) -> Result<JobContext, JsonError> {
    const KNOWN: &[&str] = &[
        "job-id",
        "pipeline-id",
        "project-id",
        "project-path",
        "ref-name",
        "ref-protected",
        "commit-sha",
        "image",
        "image-entrypoint",
        "services",
        "runner-tags",
        "variables",
        "trusted",
    ];
    let o = Obj::new(v, path, KNOWN)?;
    Ok(JobContext {
        job_id: o.opt_u64("job-id", u64::MAX)?.unwrap_or(1),
        pipeline_id: o.opt_u64("pipeline-id", u64::MAX)?.unwrap_or(0),
        project_id: o.opt_u64("project-id", u64::MAX)?.unwrap_or(0),
        project_path: o.string("project-path", "group/project")?,
        ref_name: o.string("ref-name", "main")?,
        ref_protected: o.boolean("ref-protected", false)?,
        commit_sha: o.string("commit-sha", "")?,
        image: o.string("image", "alpine:3")?,
        image_entrypoint: o.opt_strings("image-entrypoint")?,
        services: o.list("services", service_from_json)?,
        runner_tags: o.strings("runner-tags")?,
        variables: o.kv("variables")?,
        trusted: o.kv("trusted")?,
    })
}

pub fn service_from_json(v: &Value, path: &str) -> Result<CiService, JsonError> {
    const KNOWN: &[&str] = &["name", "aliases", "entrypoint", "command", "variables"];
    let o = Obj::new(v, path, KNOWN)?;
    Ok(CiService {
        name: o
            .opt_string("name")?
            .ok_or_else(|| format!("{path}: `name` is required"))?,
        aliases: o.strings("aliases")?,
        entrypoint: o.opt_strings("entrypoint")?,
        command: o.opt_strings("command")?,
        variables: o.kv("variables")?,
    })
}

pub fn network_mode_from_name(name: &str) -> Option<NetworkMode> {
    Some(match name {
        "bridge" => NetworkMode::Bridge,
        "awsvpc" => NetworkMode::Awsvpc,
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        _ => return None,
    })
}

pub fn container_from_json(v: &Value, path: &str) -> Result<ContainerDefinition, JsonError> {
    const KNOWN: &[&str] = &[
        "name",
        "image",
        "cpu",
        "memory",
        "memory-reservation",
        "essential",
        "entry-point",
        "command",
        "environment",
        "mount-points",
        "links",
        "docker-labels",
        "log-configuration",
        "privileged",
        "extra",
    ];
    let o = Obj::new(v, path, KNOWN)?;
    Ok(ContainerDefinition {
        name: o
            .opt_string("name")?
            .ok_or_else(|| format!("{path}: `name` is required"))?,
        image: o.string("image", "")?,
        cpu: o.opt_u32("cpu")?,
        memory: o.opt_u32("memory")?,
        memory_reservation: o.opt_u32("memory-reservation")?,
        essential: o.boolean("essential", false)?,
        entry_point: o.opt_strings("entry-point")?,
        command: o.strings("command")?,
        environment: o.kv("environment")?,
        mount_points: o.list("mount-points", |v, p| {
            let m = Obj::new(v, p, &["source-volume", "container-path", "read-only"])?;
            Ok(MountPoint {
                source_volume: m.string("source-volume", "")?,
                container_path: m.string("container-path", "")?,
                read_only: m.boolean("read-only", false)?,
            })
        })?,
        links: o.strings("links")?,
        docker_labels: o.kv("docker-labels")?,
        log_configuration: match o.get("log-configuration") {
            None => None,
            Some(v) => {
                let l = Obj::new(v, &o.at("log-configuration"), &["log-driver", "options", "extra"])?;
                Some(LogConfiguration {
                    log_driver: l.string("log-driver", "")?,
                    options: l.kv("options")?,
                    extra: l.extra("extra")?,
                })
            }
        },
        privileged: o.boolean("privileged", false)?,
        extra: o.extra("extra")?,
    })
}

pub fn task_from_json(v: &Value, path: &str) -> Result<TaskDefinition, JsonError> {
    const KNOWN: &[&str] = &[
        "family",
        "task-role-arn",
        "execution-role-arn",
        "network-mode",
        "cpu",
        "memory",
        "containers",
        "volumes",
        "placement-constraints",
        "tags",
        "extra",
    ];
    let o = Obj::new(v, path, KNOWN)?;
    let mode = o.string("network-mode", "bridge")?;
    Ok(TaskDefinition {
        family: o.string("family", "")?,
        task_role_arn: o.opt_string("task-role-arn")?,
        execution_role_arn: o.opt_string("execution-role-arn")?,
        network_mode: network_mode_from_name(&mode).ok_or_else(|| {
            format!(
                "{}: {mode:?} is not one of bridge, awsvpc, host, none",
                o.at("network-mode")
            )
        })?,
        cpu: o.opt_u32("cpu")?,
        memory: o.opt_u32("memory")?,
        containers: o.list("containers", container_from_json)?,
        volumes: o.list("volumes", |v, p| {
            let vo = Obj::new(v, p, &["name", "host-path", "extra"])?;
            Ok(Volume {
                name: vo.string("name", "")?,
                host_path: vo.opt_string("host-path")?,
                extra: vo.extra("extra")?,
            })
        })?,
        placement_constraints: o.list("placement-constraints", |v, p| {
            let po = Obj::new(v, p, &["kind", "expression"])?;
            Ok(PlacementConstraint {
                kind: po.string("kind", "")?,
                expression: po.opt_string("expression")?,
            })
        })?,
        tags: o.kv("tags")?,
        extra: o.extra("extra")?,
    })
}

/// An instance; missing fields get the fixture defaults (private-ipv4 `10.0.0.5`, subnet-id
/// `subnet-private`, ec2-instance-id `i-0123456789abcdef0`, no public IP).
pub fn instance_from_json(v: &Value, path: &str) -> Result<Instance, JsonError> {
    const KNOWN: &[&str] = &[
        "container-instance-arn",
        "ec2-instance-id",
        "private-ipv4",
        "public-ipv4",
        "ipv6",
        "subnet-id",
        "vpc-id",
        "availability-zone",
        "instance-type",
        "tags",
        "attributes",
    ];
    let o = Obj::new(v, path, KNOWN)?;
    let defaulted = |key: &str, default: &str| -> Result<Option<String>, JsonError> {
        if o.map.contains_key(key) {
            o.opt_string(key)
        } else {
            Ok(Some(default.to_string()))
        }
    };
    Ok(Instance {
        container_instance_arn: o.string(
            "container-instance-arn",
            "arn:aws:ecs:us-east-1:123456789012:container-instance/ci/0123456789abcdef0123456789abcdef",
        )?,
        ec2_instance_id: o.string("ec2-instance-id", "i-0123456789abcdef0")?,
        private_ipv4: defaulted("private-ipv4", "10.0.0.5")?,
        public_ipv4: o.opt_string("public-ipv4")?,
        ipv6: o.strings("ipv6")?,
        subnet_id: defaulted("subnet-id", "subnet-private")?,
        vpc_id: o.opt_string("vpc-id")?,
        availability_zone: o.opt_string("availability-zone")?,
        instance_type: o.opt_string("instance-type")?,
        tags: o.kv("tags")?,
        attributes: o.list("attributes", |v, p| {
            let a = Obj::new(v, p, &["name", "value"])?;
            Ok(EcsAttribute {
                name: a.string("name", "")?,
                value: a.opt_string("value")?,
            })
        })?,
    })
}

/// The executor's built-in task shape (the case files' `task` fixture, docs/plugins.md): `build` and `helper` sharing the
/// `builds` volume, bridge mode, 1024 CPU units, 2048 MiB.
pub fn default_task(job: &JobContext) -> TaskDefinition {
    let keep_alive = vec![
        "sh".to_string(),
        "-c".to_string(),
        "while :; do sleep 3600; done".to_string(),
    ];
    let container = |name: &str, image: &str| ContainerDefinition {
        name: name.into(),
        image: image.into(),
        cpu: None,
        memory: None,
        memory_reservation: None,
        essential: true,
        entry_point: None,
        command: keep_alive.clone(),
        environment: vec![],
        mount_points: vec![MountPoint {
            source_volume: "builds".into(),
            container_path: "/builds".into(),
            read_only: false,
        }],
        links: vec![],
        docker_labels: vec![KeyValue {
            key: "ecs-executor.role".into(),
            value: name.into(),
        }],
        log_configuration: None,
        privileged: false,
        extra: None,
    };
    TaskDefinition {
        family: "ecs-executor-0000000000000000".into(),
        task_role_arn: None,
        execution_role_arn: None,
        network_mode: NetworkMode::Bridge,
        cpu: Some(1024),
        memory: Some(2048),
        containers: vec![
            ContainerDefinition {
                // As the executor does: the job's `image: entrypoint:` on `build`.
                entry_point: job.image_entrypoint.clone(),
                ..container("build", &job.image)
            },
            container(
                "helper",
                "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:alpine-x86_64-latest",
            ),
        ],
        volumes: vec![Volume {
            name: "builds".into(),
            host_path: None,
            extra: None,
        }],
        placement_constraints: vec![],
        tags: vec![],
        extra: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_definitions_round_trip_through_json() {
        let job = job_from_json(
            &json!({"image": "r.example/x:1", "variables": {"B": "2", "A": "1"}}),
            "job",
        )
        .unwrap();
        assert_eq!(job.project_path, "group/project");
        assert_eq!(job.variables[0].key, "B", "order kept");
        let mut task = default_task(&job);
        task.extra = Some(r#"{"pidMode":"task"}"#.into());
        let v = task_to_json(&task);
        assert_eq!(v["containers"][0]["image"], "r.example/x:1");
        assert_eq!(v["extra"]["pidMode"], "task");
        let back = task_from_json(&v, "task").unwrap();
        assert_eq!(task_to_json(&back), v);
    }

    #[test]
    fn unknown_and_mistyped_fields_name_their_path() {
        let err = task_from_json(&json!({"containers": [{"name": "build", "cpus": 1}]}), "task").unwrap_err();
        assert!(err.contains("task.containers[0]") && err.contains("cpus"), "{err}");
        let err = task_from_json(&json!({"containers": [{"name": "b", "memory": -1}]}), "task").unwrap_err();
        assert!(err.contains("task.containers[0].memory"), "{err}");
        let err = instance_from_json(&json!({"tags": {"a": 1}}), "instance").unwrap_err();
        assert!(err.contains("instance.tags.a"), "{err}");
    }
}
