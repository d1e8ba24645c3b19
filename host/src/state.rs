//! Per-job state on the runner host: what `prepare` created, for `run` and `cleanup`.
//!
//! One JSON file per job under `<state_dir>/jobs/`, mode 0600, written atomically (temp file +
//! rename) so a killed process never leaves half a file. It holds task and container ids, the
//! Docker address and, when the job uses the stage runner, the client key of a CA made for
//! this job only (worth nothing once the task stops). Locks for races between jobs live in `<state_dir>/locks/`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::docker::DockerEndpoint;
use crate::failure::{Blame, Classify};
use crate::protocol::JobKey;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is corrupt ({message}); run `cleanup` for this job or remove the file")]
    Corrupt { path: PathBuf, message: String },
    #[error("no state for job {job}: prepare did not finish for this job on this host ({path} is missing)")]
    Missing { job: String, path: PathBuf },
    #[error(
        "state directory {path} {problem}: another user could change job states and locks. \
         Fix its owner and mode (chown root, chmod go-w), or set `state_dir` to a directory only \
         root or the executor's user can write"
    )]
    Insecure { path: PathBuf, problem: String },
}

impl Classify for StateError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    pub version: u32,
    pub job_id: u64,
    pub cluster: String,
    pub task_arn: String,
    pub task_definition_arn: String,
    /// `per-job` mode: cleanup deregisters the task definition.
    pub deregister_task_definition: bool,
    #[serde(default)]
    pub container_instance_arn: Option<String>,
    #[serde(default)]
    pub ec2_instance_id: Option<String>,
    /// Set once Docker on the instance was reached.
    #[serde(default)]
    pub docker: Option<DockerEndpoint>,
    /// ECS container name -> Docker container id; set when prepare finished.
    #[serde(default)]
    pub containers: BTreeMap<String, String>,
    /// The job's stage runners (addresses and the client half of the job's certificates);
    /// `None`: stages use Docker exec.
    #[serde(default, alias = "runner", skip_serializing_if = "Option::is_none")]
    pub stage_runner: Option<crate::stages::runner::StageRunnerState>,
    pub created_unix: u64,
    /// Names of the registry secrets prepare wrote for this job (cleanup deletes them; never
    /// their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_secrets: Vec<String>,
    /// The warm pool whose shape the job's task has (`crate::pool`): cleanup tops that shape
    /// up again. `None`: the job is not a pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl JobState {
    pub fn new(job_id: u64, cluster: &str, task_arn: &str, task_definition_arn: &str, deregister: bool) -> JobState {
        JobState {
            version: VERSION,
            job_id,
            cluster: cluster.to_string(),
            task_arn: task_arn.to_string(),
            task_definition_arn: task_definition_arn.to_string(),
            deregister_task_definition: deregister,
            container_instance_arn: None,
            ec2_instance_id: None,
            docker: None,
            containers: BTreeMap::new(),
            stage_runner: None,
            registry_secrets: Vec::new(),
            pool: None,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// prepare finished: Docker reached and containers known.
    pub fn is_ready(&self) -> bool {
        self.docker.is_some() && !self.containers.is_empty()
    }
}

pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> StateStore {
        StateStore {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The state dir, created (0700) if missing, after checking — as ssh checks `~/.ssh` —
    /// that no other user can change what it holds: it and every parent must be owned by root
    /// or by us and not writable by group or others (a parent may be world-writable only with
    /// the sticky bit, as `/tmp` is). Job states hold per-job keys and decide which task a
    /// stage talks to.
    pub fn open(state_dir: &Path) -> Result<StateStore, StateError> {
        if !state_dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(Self::io(state_dir))?;
        }
        check_ownership(state_dir, true)?;
        let mut parent = state_dir.parent();
        while let Some(dir) = parent {
            check_ownership(dir, false)?;
            parent = dir.parent();
        }
        Ok(Self::new(state_dir))
    }

    /// The state dir itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn subdir(&self, name: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir.join(name);
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(Self::io(&dir))?;
        }
        Ok(dir)
    }

    pub fn path(&self, key: &JobKey) -> PathBuf {
        self.dir.join("jobs").join(format!("{}.json", key.file_stem()))
    }

    pub fn load(&self, key: &JobKey) -> Result<Option<JobState>, StateError> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let state: JobState = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if state.version != VERSION || state.job_id != key.job_id {
            return Err(StateError::Corrupt {
                path,
                message: "it belongs to another job or version".into(),
            });
        }
        Ok(Some(state))
    }

    /// The state prepare left, or an error saying there is none.
    pub fn require(&self, key: &JobKey) -> Result<JobState, StateError> {
        self.load(key)?.ok_or_else(|| StateError::Missing {
            job: key.file_stem(),
            path: self.path(key),
        })
    }

    pub fn save(&self, key: &JobKey, state: &JobState) -> Result<(), StateError> {
        let dir = self.subdir("jobs")?;
        let path = self.path(key);
        // An unpredictable name, created anew (O_EXCL, never through a symlink).
        let tmp = dir.join(format!(".{}.{}.tmp", key.file_stem(), random_hex()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StateError::Io {
                path: path.clone(),
                source: e,
            }
        })
    }

    pub fn remove(&self, key: &JobKey) -> Result<(), StateError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// `(task ARN, registry secrets)` of every job state on this host that names secrets (for
    /// `gc`). Unreadable states name nothing; `Err` only when the directory cannot be read.
    pub fn registry_secrets_by_task(&self) -> Result<Vec<(String, Vec<String>)>, StateError> {
        let dir = self.dir.join("jobs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Ok(bytes) = fs::read(&path)
                && let Ok(state) = serde_json::from_slice::<JobState>(&bytes)
                && !state.registry_secrets.is_empty()
            {
                out.push((state.task_arn, state.registry_secrets));
            }
        }
        Ok(out)
    }

    /// How many job states on this host name pool `pool` and task definition
    /// `task_definition_arn`: the shape's jobs in flight (the pools' eager mode).
    pub fn pool_jobs_in_flight(&self, pool: &str, task_definition_arn: &str) -> usize {
        let Ok(entries) = fs::read_dir(self.dir.join("jobs")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice::<JobState>(&fs::read(e.path()).ok()?).ok())
            .filter(|s| s.pool.as_deref() == Some(pool) && s.task_definition_arn == task_definition_arn)
            .count()
    }

    /// An exclusive lock shared by every executor process on this host (released on drop).
    pub fn lock(&self, name: &str) -> Result<FileLock, StateError> {
        let dir = self.subdir("locks")?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io(&path))?;
        // flock(2): blocks until the lock is ours; released when the file closes.
        file.lock().map_err(Self::io(&path))?;
        Ok(FileLock { _file: file })
    }
}

// ---- What `gc` needs to know on this host: runners served, task definitions last used -----

/// Seconds since the epoch.
/// 16 hex digits from the kernel's random source.
pub fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // No /dev/urandom: still unique per process and moment; O_EXCL keeps it safe.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (nanos ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex::encode(bytes)
}

/// `dir` is owned by root or by us and not writable by group or others; `strict`: no
/// exception for sticky world-writable directories.
fn check_ownership(dir: &Path, strict: bool) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(StateStore::io(dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode();
    let sticky_shared = !strict && mode & 0o1000 != 0;
    let problem = if meta.uid() != 0 && meta.uid() != me {
        Some(format!(
            "is owned by uid {}, not by root or the executor's user (uid {me})",
            meta.uid()
        ))
    } else if mode & 0o022 != 0 && !sticky_shared {
        Some(format!("is writable by group or others (mode {:o})", mode & 0o7777))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(StateError::Insecure {
            path: dir.to_path_buf(),
            problem,
        }),
        None => Ok(()),
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StateStore {
    /// prepare, under the task definition's lock, before RunTask: this host serves the
    /// gitlab-runner with this short token (`runners/<token>`, so `gc` knows whose tasks are its to judge) and uses `family` now
    /// (`taskdefs/<family>` holds the time, so `gc` leaves it registered while in use).
    pub fn note_use(&self, runner_token: &str, family: &str) -> Result<(), StateError> {
        let runners = self.subdir("runners")?;
        let marker = runners.join(runner_token);
        if !marker.exists() {
            fs::write(&marker, b"").map_err(Self::io(&marker))?;
        }
        self.touch_task_definition(family, unix_now())
    }

    /// Record `family` as used at `when`.
    pub fn touch_task_definition(&self, family: &str, when: u64) -> Result<(), StateError> {
        let dir = self.subdir("taskdefs")?;
        let path = dir.join(family);
        fs::write(&path, when.to_string()).map_err(Self::io(&path))
    }

    /// When a prepare on this host last used `family` (None: never recorded).
    pub fn task_definition_last_used(&self, family: &str) -> Option<u64> {
        let text = fs::read_to_string(self.dir.join("taskdefs").join(family)).ok()?;
        text.trim().parse().ok()
    }

    pub fn forget_task_definition(&self, family: &str) {
        let _ = fs::remove_file(self.dir.join("taskdefs").join(family));
        let _ = fs::remove_file(self.dir.join("registered").join(family));
        self.forget_verified(family);
    }

    /// Record that ECS just showed `arn` (the revision this host registered in `family`)
    /// ACTIVE with content hash `hash`: the jobs of the next [`VERIFIED_FRESH_FOR`] reuse it
    /// without a DescribeTaskDefinition of their own (`verified_recently`). Best effort: a
    /// record that cannot be written only costs the next job a lookup.
    pub fn note_verified(&self, family: &str, arn: &str, hash: &str) {
        let Ok(dir) = self.subdir("verified") else { return };
        let path = dir.join(family);
        let tmp = dir.join(format!(".{family}.tmp.{}", random_hex()));
        let text = format!("{} {hash} {arn}\n", unix_now());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Whether ECS showed `arn` ACTIVE with content hash `hash` less than `fresh_for` ago
    /// (`note_verified`), and `arn` is still the revision this host registered last.
    pub fn verified_recently(&self, family: &str, arn: &str, hash: &str, fresh_for: std::time::Duration) -> bool {
        if self.registered_here(family).as_deref() != Some(arn) {
            return false;
        }
        let Ok(text) = fs::read_to_string(self.dir.join("verified").join(family)) else {
            return false;
        };
        let mut parts = text.trim().splitn(3, ' ');
        let (Some(at), Some(h), Some(a)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(at) = at.parse::<u64>() else { return false };
        h == hash && a == arn && unix_now().checked_sub(at).is_some_and(|age| age < fresh_for.as_secs())
    }

    /// Drop the verification record of `family` (RunTask refused its task definition, or gc
    /// removed it): the next job asks ECS again.
    pub fn forget_verified(&self, family: &str) {
        let _ = fs::remove_file(self.dir.join("verified").join(family));
    }

    /// Record that this host registered `arn` (under the task definition's lock): reuse
    /// trusts only revisions this host registered, never one someone else planted in the
    /// family with the same content-hash tag.
    pub fn note_registered(&self, family: &str, arn: &str) -> Result<(), StateError> {
        let dir = self.subdir("registered")?;
        let path = dir.join(family);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io(&path))?;
        writeln!(file, "{arn}").map_err(Self::io(&path))
    }

    /// The revision of `family` this host registered last, if any.
    pub fn registered_here(&self, family: &str) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("registered").join(family)).ok()?;
        text.lines().rev().find(|l| !l.is_empty()).map(String::from)
    }

    /// The gitlab-runner short tokens this host has served (`runners/`).
    pub fn known_runner_tokens(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.dir.join("runners")) else {
            return Vec::new();
        };
        let mut runners: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        runners.sort();
        runners
    }
}

/// How long a task definition ECS showed ACTIVE with the job's content is reused on this host
/// without asking again (one DescribeTaskDefinition per family and host in that time, instead
/// of one per job: the task-definition read bucket is 20/s for the whole account).
pub const VERIFIED_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(300);

// ---- end of gc records ----------------------------------------------------------------------

/// Held while it lives; the kernel releases the flock when the file closes (even on SIGKILL).
pub struct FileLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ecs-executor-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_verified_task_definition_is_trusted_only_fresh_same_content_and_registered_here() {
        let dir = temp_dir("verified");
        let store = StateStore::new(&dir);
        let fresh = std::time::Duration::from_secs(300);
        let arn = "arn:aws:ecs:us-east-1:1:task-definition/fam:3";
        store.note_verified("fam", arn, "h1");
        assert!(!store.verified_recently("fam", arn, "h1", fresh), "not registered here");
        store.note_registered("fam", arn).unwrap();
        assert!(store.verified_recently("fam", arn, "h1", fresh));
        assert!(!store.verified_recently("fam", arn, "h2", fresh), "other content");
        assert!(
            !store.verified_recently("fam", arn, "h1", std::time::Duration::ZERO),
            "stale"
        );
        store
            .note_registered("fam", "arn:aws:ecs:us-east-1:1:task-definition/fam:4")
            .unwrap();
        assert!(
            !store.verified_recently("fam", arn, "h1", fresh),
            "a newer revision here"
        );
        store.note_registered("fam", arn).unwrap();
        store.forget_verified("fam");
        assert!(!store.verified_recently("fam", arn, "h1", fresh), "forgotten");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_round_trips_with_mode_0600() {
        let dir = temp_dir("roundtrip");
        let store = StateStore::new(&dir);
        let key = JobKey::new(42, Some("tok"));
        assert!(store.load(&key).unwrap().is_none());
        let state = JobState::new(42, "c", "arn:task", "arn:td", false);
        store.save(&key, &state).unwrap();
        assert_eq!(store.load(&key).unwrap().unwrap(), state);
        let mode = fs::metadata(store.path(&key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.remove(&key).unwrap();
        store.remove(&key).unwrap();
        assert!(store.load(&key).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let dir = temp_dir("insecure");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let err = StateStore::open(&dir).err().unwrap().to_string();
        assert!(
            err.contains("writable by group or others") && err.contains("777"),
            "{err}"
        );
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        assert!(StateStore::open(&dir).is_ok());
        // A sticky, world-writable parent (like /tmp) is fine; the state dir itself is not.
        let shared = dir.join("shared");
        fs::create_dir_all(&shared).unwrap();
        fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        assert!(StateStore::open(&shared.join("state")).is_ok());
        assert!(StateStore::open(&shared).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_temp_file_of_a_save_never_follows_a_planted_symlink() {
        let dir = temp_dir("symlink");
        let store = StateStore::open(&dir).unwrap();
        let key = JobKey::new(9, Some("tok"));
        store.save(&key, &JobState::new(9, "c", "t", "td", false)).unwrap();
        // Lock files are not followed through symlinks either.
        let target = dir.join("victim");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("locks").join("x.lock")).unwrap_or_else(|_| {
            fs::create_dir_all(dir.join("locks")).unwrap();
            std::os::unix::fs::symlink(&target, dir.join("locks").join("x.lock")).unwrap()
        });
        assert!(store.lock("x").is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = temp_dir("corrupt");
        let store = StateStore::new(&dir);
        let key = JobKey::new(7, None);
        fs::create_dir_all(dir.join("jobs")).unwrap();
        fs::write(store.path(&key), b"{not json").unwrap();
        let err = store.load(&key).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("runner-7.json"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
