//! The names and labels the real ECS agent gives to what it creates in Docker, so that anything
//! finding a task's containers on a real instance (by label or by name) finds them here too.

use std::collections::HashMap;
use std::io::Read;

pub const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
pub const LABEL_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
pub const LABEL_VERSION: &str = "com.amazonaws.ecs.task-definition-version";
/// Ours, not the real agent's: which task definition volume a task-scoped Docker volume serves,
/// so that a restarted stand-in can find a task's volumes again.
pub const LABEL_VOLUME_NAME: &str = "ecs-agent-standin.volume-name";
/// Ours, not the real agent's: the ECS endpoint (moto) whose task this container or volume
/// serves. A real instance has a Docker of its own; the stand-in's instances and every
/// stand-in on the machine (the shared one, a test's or a benchmark's own, each with its own
/// moto and perhaps the same cluster name) share one dockerd, so this label and the cluster
/// label together say which containers an agent may treat as its own (orphan stops, cleanup).
pub const LABEL_ECS_ENDPOINT: &str = "ecs-agent-standin.ecs-endpoint";

/// Docker's label filter for what an agent serving `cluster` through the ECS at `endpoint`
/// created: both labels must match (Docker ANDs label filters).
pub fn own_label_filter(cluster: &str, endpoint: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_CLUSTER}={cluster}"),
            format!("{LABEL_ECS_ENDPOINT}={endpoint}"),
        ],
    )])
}

/// The task as the agent names things after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity {
    /// The cluster as the agent was configured with it (a name, as `ECS_CLUSTER` usually is).
    pub cluster: String,
    /// The ECS endpoint the agent serves (the value of `LABEL_ECS_ENDPOINT`).
    pub endpoint: String,
    pub task_arn: String,
    pub family: String,
    pub revision: i32,
}

impl TaskIdentity {
    /// `ecs-<family>-<revision>-<container>-<20 hex digits>`, as the agent's `createContainer`.
    pub fn container_name(&self, container: &str) -> String {
        format!("ecs-{}-{}-{}-{}", self.family, self.revision, container, rand_hex())
    }

    /// A task-scoped Docker volume: `ecs-<family>-<revision>-<volume>-<20 hex digits>`.
    pub fn volume_name(&self, volume: &str) -> String {
        format!("ecs-{}-{}-{}-{}", self.family, self.revision, volume, rand_hex())
    }

    /// The labels the agent puts on every container of the task. The definition's
    /// `dockerLabels` are applied first, so these win on a clash (as with the real agent).
    pub fn container_labels(
        &self,
        container: &str,
        docker_labels: Option<&HashMap<String, String>>,
    ) -> HashMap<String, String> {
        let mut labels = docker_labels.cloned().unwrap_or_default();
        labels.insert(LABEL_CLUSTER.into(), self.cluster.clone());
        labels.insert(LABEL_ECS_ENDPOINT.into(), self.endpoint.clone());
        labels.insert(LABEL_TASK_ARN.into(), self.task_arn.clone());
        labels.insert(LABEL_CONTAINER_NAME.into(), container.into());
        labels.insert(LABEL_FAMILY.into(), self.family.clone());
        labels.insert(LABEL_VERSION.into(), self.revision.to_string());
        labels
    }

    /// Labels on a task-scoped volume (ours: lets cleanup and a restarted agent find it).
    pub fn volume_labels(&self, volume: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_CLUSTER.into(), self.cluster.clone()),
            (LABEL_ECS_ENDPOINT.into(), self.endpoint.clone()),
            (LABEL_TASK_ARN.into(), self.task_arn.clone()),
            (LABEL_VOLUME_NAME.into(), volume.into()),
        ])
    }
}

/// The task id: the last part of the task ARN (what logs and the console show).
pub fn task_id(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

/// The agent's `utils.RandHex`: a random non-negative int64, zig-zag varint-encoded into a
/// 10-byte buffer, in hex — always 20 hex digits, the tail often `00`.
pub fn rand_hex() -> String {
    let mut raw = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .is_err()
    {
        // Never expected on Linux; the clock still makes names unique enough for a test host.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        raw = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    varint_hex(i64::from_le_bytes(raw) & i64::MAX)
}

fn varint_hex(value: i64) -> String {
    let mut out = [0u8; 10];
    // Go's binary.PutVarint: zig-zag, then 7 bits per byte, least significant first.
    let mut ux = (value as u64) << 1;
    if value < 0 {
        ux = !ux;
    }
    let mut i = 0;
    while ux >= 0x80 {
        out[i] = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
    out[i] = ux as u8;
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> TaskIdentity {
        TaskIdentity {
            cluster: "local".into(),
            endpoint: "http://127.0.0.1:4566".into(),
            task_arn: "arn:aws:ecs:us-east-1:123456789012:task/local/0123abcd".into(),
            family: "web-app".into(),
            revision: 7,
        }
    }

    fn is_agent_hex(s: &str) -> bool {
        s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn container_names_follow_the_agent_pattern() {
        let name = identity().container_name("build");
        let suffix = name.strip_prefix("ecs-web-app-7-build-").expect(&name);
        assert!(is_agent_hex(suffix), "{name}");
        assert_ne!(identity().container_name("build"), name, "each name is new");
    }

    #[test]
    fn rand_hex_matches_go_put_varint() {
        // Go: binary.PutVarint(buf[:10], 1) => 02 00 ...; 300 => d8 04 00 ...
        assert_eq!(varint_hex(1), "02000000000000000000");
        assert_eq!(varint_hex(300), "d8040000000000000000");
        assert_eq!(varint_hex(i64::MAX), "feffffffffffffffff01");
        for _ in 0..50 {
            assert!(is_agent_hex(&rand_hex()));
        }
    }

    #[test]
    fn labels_are_the_agents_and_win_over_docker_labels() {
        let docker_labels = HashMap::from([
            ("team".to_string(), "ci".to_string()),
            (LABEL_CLUSTER.to_string(), "spoofed".to_string()),
        ]);
        let labels = identity().container_labels("build", Some(&docker_labels));
        let expected = HashMap::from([
            ("team".to_string(), "ci".to_string()),
            (LABEL_CLUSTER.to_string(), "local".to_string()),
            (LABEL_ECS_ENDPOINT.to_string(), "http://127.0.0.1:4566".to_string()),
            (
                LABEL_TASK_ARN.to_string(),
                "arn:aws:ecs:us-east-1:123456789012:task/local/0123abcd".to_string(),
            ),
            (LABEL_CONTAINER_NAME.to_string(), "build".to_string()),
            (LABEL_FAMILY.to_string(), "web-app".to_string()),
            (LABEL_VERSION.to_string(), "7".to_string()),
        ]);
        assert_eq!(labels, expected);
    }

    #[test]
    fn task_id_is_the_last_arn_segment() {
        assert_eq!(
            task_id("arn:aws:ecs:us-east-1:123456789012:task/local/0123abcd"),
            "0123abcd"
        );
        assert_eq!(task_id("0123abcd"), "0123abcd");
    }
}
