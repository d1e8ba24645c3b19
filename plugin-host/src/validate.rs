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

/// What a plugin's `[[plugins]]` entry lets it ask for beyond an ordinary container: each one
/// removes an isolation boundary between the job and the instance (or other jobs on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    /// `privileged: true` on a container (root on the instance, in effect).
    pub privileged: bool,
    /// `pidMode`/`ipcMode` `host`, or `network-mode: host`: the instance's namespaces.
    pub host_namespaces: bool,
    /// A volume bound to a path on the instance that the executor did not put there.
    pub host_paths: bool,
}

impl Grants {
    /// Everything (what a library user gets unless it says otherwise; `plugin test`).
    pub const ALL: Grants = Grants {
        privileged: true,
        host_namespaces: true,
        host_paths: true,
    };
    /// Nothing beyond ordinary containers (the executor's default for a `[[plugins]]` entry).
    pub const NONE: Grants = Grants {
        privileged: false,
        host_namespaces: false,
        host_paths: false,
    };
    /// The grant names a `[[plugins]]` entry may list.
    pub const NAMES: &'static [&'static str] = &["privileged", "host-namespaces", "host-paths"];

    /// Grants from their names (`Err` names the unknown one).
    pub fn from_names(names: &[String]) -> Result<Grants, String> {
        let mut g = Grants::NONE;
        for name in names {
            match name.as_str() {
                "privileged" => g.privileged = true,
                "host-namespaces" => g.host_namespaces = true,
                "host-paths" => g.host_paths = true,
                other => return Err(other.to_string()),
            }
        }
        Ok(g)
    }
}

fn host_mode(extra: &Option<String>, key: &str) -> bool {
    extra
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| v.get(key).and_then(|m| m.as_str()).map(|m| m == "host"))
        .unwrap_or(false)
}

/// What `after` asks for that `before` did not and `grants` does not allow, as messages
/// naming the grant (empty: nothing).
pub fn ungranted(before: Option<&TaskDefinition>, after: &TaskDefinition, grants: Grants) -> Vec<String> {
    let mut missing = Vec::new();
    let was_privileged =
        |name: &str| before.is_some_and(|b| b.containers.iter().any(|c| c.name == name && c.privileged));
    if !grants.privileged {
        for c in after
            .containers
            .iter()
            .filter(|c| c.privileged && !was_privileged(&c.name))
        {
            missing.push(format!(
                "container `{}` is privileged: needs the `privileged` grant",
                c.name
            ));
        }
    }
    if !grants.host_namespaces {
        for key in ["pidMode", "ipcMode"] {
            if host_mode(&after.extra, key) && !before.is_some_and(|b| host_mode(&b.extra, key)) {
                missing.push(format!("`{key}: host` needs the `host-namespaces` grant"));
            }
        }
        if after.network_mode == crate::types::NetworkMode::Host
            && before.is_none_or(|b| b.network_mode != crate::types::NetworkMode::Host)
        {
            missing.push("`network-mode: host` needs the `host-namespaces` grant".into());
        }
    }
    if !grants.host_paths {
        let ours = |path: &str| before.is_some_and(|b| b.volumes.iter().any(|v| v.host_path.as_deref() == Some(path)));
        for v in &after.volumes {
            if let Some(path) = v.host_path.as_deref().filter(|p| !ours(p)) {
                missing.push(format!(
                    "volume `{}` binds the instance's {path}: needs the `host-paths` grant",
                    v.name
                ));
            }
        }
    }
    missing
}

/// Service containers a `map-services` answer adds, against `grants`.
pub fn ungranted_service_containers(list: &[ContainerDefinition], grants: Grants) -> Vec<String> {
    if grants.privileged {
        return Vec::new();
    }
    list.iter()
        .filter(|c| c.privileged)
        .map(|c| {
            format!(
                "service container `{}` is privileged: needs the `privileged` grant",
                c.name
            )
        })
        .collect()
}

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

#[cfg(test)]
mod grant_tests {
    use super::*;
    use crate::types::NetworkMode;

    fn task() -> TaskDefinition {
        crate::json::default_task(&crate::testing::job(serde_json::json!({})))
    }

    #[test]
    fn privileged_host_namespaces_and_host_paths_each_need_their_grant() {
        let before = task();
        let mut after = before.clone();
        after.containers[0].privileged = true;
        after.extra = Some(r#"{"pidMode": "host"}"#.into());
        after.network_mode = NetworkMode::Host;
        let mut v = after.volumes[0].clone();
        v.name = "docker-sock".into();
        v.host_path = Some("/var/run/docker.sock".into());
        after.volumes.push(v);
        let missing = ungranted(Some(&before), &after, Grants::NONE);
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(missing[0].contains("`privileged` grant"), "{missing:?}");
        assert!(
            missing
                .iter()
                .any(|m| m.contains("pidMode") && m.contains("host-namespaces"))
        );
        assert!(
            missing
                .iter()
                .any(|m| m.contains("/var/run/docker.sock") && m.contains("host-paths"))
        );
        assert!(ungranted(Some(&before), &after, Grants::ALL).is_empty());
        // What the executor itself put there needs no grant.
        assert!(ungranted(Some(&before), &before, Grants::NONE).is_empty());
        let names = ["privileged".to_string(), "host-paths".to_string()];
        let g = Grants::from_names(&names).unwrap();
        assert_eq!(ungranted(Some(&before), &after, g).len(), 2);
        assert_eq!(Grants::from_names(&["network".into()]).unwrap_err(), "network");
    }
}
