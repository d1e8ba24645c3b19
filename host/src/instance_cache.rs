//! Container instance lookups cached on the runner host. Every job's prepare needs its
//! instance's EC2 id, attributes and addresses: DescribeContainerInstances (ECS's cluster
//! resource read bucket, shared with DescribeTasks and ListTasks by the whole account) and EC2
//! DescribeInstances. Jobs land on the same few instances over and over, so the answer is kept
//! in `<state_dir>/instances/<container instance id>.json` for [`FRESH_FOR`] and shared by
//! every executor process on the host: a burst of 200 job starts on ten instances costs ten
//! lookups, not 200.
//!
//! A container instance ARN never moves to another EC2 instance, and an instance keeps its
//! private address for life; what may change (attributes, metadata options, a public address
//! re-associated) is at most [`FRESH_FOR`] old. An entry whose Docker address did not answer
//! is dropped ([`forget`]), so the next job looks again. The state dir is the runner's own
//! (prepare refuses one others can write), as for the job state files. The cache never fails
//! a job: an unreadable or unwritable entry means a fresh lookup.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ecs::Ecs;
use crate::instance::{ContainerInstance, InstanceError};

/// How long a looked-up container instance is used without asking AWS again.
pub const FRESH_FOR: Duration = Duration::from_secs(300);

#[derive(Serialize, Deserialize)]
struct Entry {
    cached_at: u64,
    instance: ContainerInstance,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn entry_path(state_dir: &Path, arn: &str) -> PathBuf {
    let id: String = arn
        .rsplit('/')
        .next()
        .unwrap_or(arn)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(100)
        .collect();
    state_dir.join("instances").join(format!("{id}.json"))
}

fn read(path: &Path, arn: &str, now: u64) -> Option<ContainerInstance> {
    let entry: Entry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let age = now.checked_sub(entry.cached_at)?;
    (age < FRESH_FOR.as_secs() && entry.instance.container_instance_arn == arn).then_some(entry.instance)
}

fn write(path: &Path, instance: &ContainerInstance, now: u64) -> std::io::Result<()> {
    let dir = path.parent().expect("an entry has a directory");
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", crate::state::random_hex()));
    let data = serde_json::to_vec(&Entry {
        cached_at: now,
        instance: instance.clone(),
    })
    .expect("an instance serializes");
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &data)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The container instance `arn`, from this host's cache when fresh, else looked up (and kept).
pub async fn resolve(
    state_dir: &Path,
    ecs: &Ecs,
    ec2: &aws_sdk_ec2::Client,
    arn: &str,
) -> Result<ContainerInstance, InstanceError> {
    let path = entry_path(state_dir, arn);
    if let Some(instance) = read(&path, arn, now_secs()) {
        return Ok(instance);
    }
    let instance = ContainerInstance::resolve(ecs, ec2, arn).await?;
    let _ = write(&path, &instance, now_secs());
    Ok(instance)
}

/// Drop the cached entry of `arn` (its Docker address did not answer).
pub fn forget(state_dir: &Path, arn: &str) {
    let _ = fs::remove_file(entry_path(state_dir, arn));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(arn: &str) -> ContainerInstance {
        ContainerInstance {
            container_instance_arn: arn.into(),
            ec2_instance_id: "i-1".into(),
            private_ip: Some("10.0.0.1".into()),
            public_ip: None,
            ipv6: vec![],
            subnet_id: None,
            vpc_id: None,
            availability_zone: Some("eu-west-1a".into()),
            instance_type: None,
            tags: vec![],
            attributes: vec![("ecs.os-type".into(), Some("linux".into()))],
            metadata_options: None,
        }
    }

    #[test]
    fn an_entry_is_used_while_fresh_and_only_for_its_own_arn() {
        let dir = std::env::temp_dir().join(format!("ecs-executor-instance-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let arn = "arn:aws:ecs:eu-west-1:1:container-instance/ci/abc123";
        let path = entry_path(&dir, arn);
        assert!(path.ends_with("instances/abc123.json"), "{}", path.display());
        write(&path, &instance(arn), 1000).unwrap();
        let got = read(&path, arn, 1000 + FRESH_FOR.as_secs() - 1).expect("fresh");
        assert_eq!(got.private_ip.as_deref(), Some("10.0.0.1"));
        assert!(read(&path, arn, 1000 + FRESH_FOR.as_secs()).is_none(), "stale");
        assert!(read(&path, "arn:aws:ecs:eu-west-1:1:container-instance/other/abc123", 1001).is_none());
        assert!(read(&path, arn, 999).is_none(), "from the future: not trusted");
        forget(&dir, arn);
        assert!(read(&path, arn, 1001).is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
