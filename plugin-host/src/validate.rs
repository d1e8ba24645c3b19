//! Checks of plugin answers: what the executor can register and still run the job with. A
//! failed check makes the plugin "broken" (system failure), never a silently changed job.
//!
//! `extra` (fields the WIT does not model): the executor applies exactly the keys listed in
//! [`TASK_EXTRA_KEYS`] and [`CONTAINER_EXTRA_KEYS`] and refuses every other key (volume and
//! log-configuration `extra` must be empty), so nothing a plugin asks for is dropped unseen.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::DockerAddress;
use crate::types::{ContainerDefinition, KeyValue, TaskDefinition};

/// ECS: at most 10 containers per task definition.
pub const MAX_CONTAINERS: usize = 10;
/// ECS: a task definition is at most 64 KiB of JSON; no single string may be larger.
pub const MAX_TASK_JSON: usize = 64 * 1024;
pub const MAX_STRING: usize = 64 * 1024;

/// Task-level `extra` keys the executor applies to RegisterTaskDefinition.
pub const TASK_EXTRA_KEYS: &[&str] = &["pidMode", "ipcMode"];
/// Container-level `extra` keys the executor applies to the container definition.
pub const CONTAINER_EXTRA_KEYS: &[&str] = &["user", "workingDirectory", "stopTimeout", "ulimits"];

/// Check `after`, a plugin's `customize` answer to `before`.
pub fn task_definition(
    before: &TaskDefinition,
    after: &TaskDefinition,
    redact: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let json = crate::json::task_to_json(after);
    let size = json.to_string().len();
    if size > MAX_TASK_JSON {
        return Err(format!(
            "the task definition is {size} bytes of JSON (ECS allows {MAX_TASK_JSON})"
        ));
    }
    long_strings(&json, "task")?;
    for required in ["build", "helper"] {
        let n = after.containers.iter().filter(|c| c.name == required).count();
        if n != 1 {
            return Err(format!(
                "container `{required}` must be present exactly once (found {n}); plugins may not remove or \
                 rename the executor's containers"
            ));
        }
    }
    containers(&after.containers, redact)?;
    // The executor's own labels and tags stay as the executor set them.
    for c in &after.containers {
        let ours = |list: &[KeyValue]| -> BTreeMap<String, String> {
            list.iter()
                .filter(|p| p.key.starts_with("ecs-executor."))
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect()
        };
        let was = before
            .containers
            .iter()
            .find(|b| b.name == c.name)
            .map(|b| ours(&b.docker_labels))
            .unwrap_or_default();
        if ours(&c.docker_labels) != was {
            return Err(format!(
                "container `{}`: docker labels starting with `ecs-executor.` belong to the executor",
                c.name
            ));
        }
    }
    unique_keys(&after.tags, "tags")?;
    let tag_ours = |t: &TaskDefinition| -> Vec<(String, String)> {
        t.tags
            .iter()
            .filter(|p| p.key.starts_with("ecs-executor:"))
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect()
    };
    if tag_ours(after) != tag_ours(before) {
        return Err("tags starting with `ecs-executor:` belong to the executor".into());
    }
    if after.tags.len() > 40 {
        return Err(format!(
            "{} tags (ECS allows 50, the executor keeps 10 for itself)",
            after.tags.len()
        ));
    }
    if !after.volumes.iter().any(|v| v.name == "builds") {
        return Err("the `builds` volume was removed".into());
    }
    let volumes: BTreeSet<&str> = after.volumes.iter().map(|v| v.name.as_str()).collect();
    if volumes.len() != after.volumes.len() {
        return Err("volume names repeat".into());
    }
    for v in &after.volumes {
        extra_keys(&v.extra, &[], &format!("volume `{}`", v.name))?;
    }
    for c in &after.containers {
        for m in &c.mount_points {
            if !volumes.contains(m.source_volume.as_str()) {
                return Err(format!(
                    "container `{}` mounts volume `{}`, which the task does not have",
                    c.name, m.source_volume
                ));
            }
        }
    }
    if !after.family.is_empty()
        && (after.family.len() > 255
            || !after
                .family
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(format!(
            "family {:?} is not 1-255 letters, digits, '-' or '_'",
            after.family
        ));
    }
    if after.cpu.is_none() || after.memory.is_none() {
        return Err(
            "task-level cpu and memory must stay set (the executor runs on the EC2 launch type with task-level sizes)"
                .into(),
        );
    }
    for p in &after.placement_constraints {
        if p.kind != "memberOf" && p.kind != "distinctInstance" {
            return Err(format!(
                "placement constraint kind {:?} is not memberOf or distinctInstance",
                p.kind
            ));
        }
    }
    extra_keys(&after.extra, TASK_EXTRA_KEYS, "the task")?;
    Ok(())
}

/// Containers a services plugin adds: valid, unique names that are not the executor's.
pub fn service_containers(list: &[ContainerDefinition], redact: &dyn Fn(&str) -> String) -> Result<(), String> {
    for c in list {
        if c.name == "build" || c.name == "helper" {
            return Err(format!("a service container may not be named `{}`", c.name));
        }
    }
    containers(list, redact)
}

fn containers(list: &[ContainerDefinition], redact: &dyn Fn(&str) -> String) -> Result<(), String> {
    if list.len() > MAX_CONTAINERS {
        return Err(format!(
            "{} containers (ECS allows {MAX_CONTAINERS} per task)",
            list.len()
        ));
    }
    let mut names = BTreeSet::new();
    for c in list {
        let ok = !c.name.is_empty()
            && c.name.len() <= 255
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
        if !ok {
            return Err(format!(
                "container name {:?} is not 1-255 letters, digits, '-' or '_'",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("container name `{}` repeats", c.name));
        }
        if c.image.trim().is_empty() || c.image.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(format!("container `{}` has no usable image ({:?})", c.name, c.image));
        }
        unique_keys(&c.environment, &format!("container `{}` environment", c.name))?;
        unique_keys(&c.docker_labels, &format!("container `{}` docker labels", c.name))?;
        for p in &c.environment {
            if redact(&p.value) != p.value || redact(&p.key) != p.key {
                return Err(format!(
                    "container `{}` environment variable `{}` contains a secret of the job (task definitions are \
                     readable by anyone who may describe them)",
                    c.name,
                    redact(&p.key)
                ));
            }
        }
        if let Some(log) = &c.log_configuration {
            unique_keys(&log.options, &format!("container `{}` log options", c.name))?;
            extra_keys(&log.extra, &[], &format!("container `{}` log configuration", c.name))?;
            if log.log_driver.is_empty() {
                return Err(format!("container `{}` log configuration has no log driver", c.name));
            }
        }
        extra_keys(&c.extra, CONTAINER_EXTRA_KEYS, &format!("container `{}`", c.name))?;
    }
    Ok(())
}

fn unique_keys(list: &[KeyValue], what: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for p in list {
        if !seen.insert(p.key.as_str()) {
            return Err(format!("{what}: key `{}` repeats", p.key));
        }
    }
    Ok(())
}

/// `extra` must be a JSON object with only `allowed` keys, each of the type the API takes.
fn extra_keys(extra: &Option<String>, allowed: &[&str], what: &str) -> Result<(), String> {
    let Some(text) = extra else { return Ok(()) };
    let value: Value = serde_json::from_str(text).map_err(|e| format!("{what}: `extra` is not JSON: {e}"))?;
    let map = value
        .as_object()
        .ok_or_else(|| format!("{what}: `extra` must be a JSON object"))?;
    for (key, v) in map {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "{what}: `extra` key `{key}` is not supported by this executor (supported here: {}); change a \
                 typed field instead, or ask for the key to be supported",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        let ok = match key.as_str() {
            "pidMode" => matches!(v.as_str(), Some("host" | "task")),
            "ipcMode" => matches!(v.as_str(), Some("host" | "task" | "none")),
            "user" | "workingDirectory" => v.as_str().is_some_and(|s| !s.is_empty()),
            "stopTimeout" => v.as_u64().is_some_and(|n| n <= 120),
            "ulimits" => v.as_array().is_some_and(|items| {
                items.iter().all(|u| {
                    u.get("name").and_then(Value::as_str).is_some()
                        && u.get("softLimit").and_then(Value::as_i64).is_some()
                        && u.get("hardLimit").and_then(Value::as_i64).is_some()
                })
            }),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{what}: `extra` key `{key}` has a value ECS does not accept: {v}"
            ));
        }
    }
    Ok(())
}

fn long_strings(v: &Value, path: &str) -> Result<(), String> {
    match v {
        Value::String(s) if s.len() > MAX_STRING => {
            Err(format!("{path}: a string of {} bytes (at most {MAX_STRING})", s.len()))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| long_strings(x, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, x)| long_strings(x, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

/// A picked address must be usable as a host name or IP address.
pub fn docker_address(a: &DockerAddress) -> Result<(), String> {
    let host_ok =
        |h: &str| !h.is_empty() && h.len() <= 253 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c));
    if !host_ok(&a.host) {
        return Err(format!("host {:?} is not a host name or IP address", a.host));
    }
    if a.port == Some(0) {
        return Err("port 0".into());
    }
    if let Some(name) = &a.tls_server_name
        && !host_ok(name)
    {
        return Err(format!("tls-server-name {name:?} is not a host name or IP address"));
    }
    Ok(())
}
