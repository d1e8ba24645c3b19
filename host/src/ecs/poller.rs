//! One DescribeTasks poller per runner host, not one per job. Every `prepare` waiting for its
//! task registers it under `<state_dir>/poll/<cluster>/waiting/`; whichever waiting process
//! finds the round lock free and the last round old enough describes every waiting task in
//! one call per 100 and writes each status to `status/<task id>.json`; the others read their
//! task's status from there. No process leads for longer than one round, so nothing relies on
//! a process outliving its step (gitlab-runner kills each step's process group), and a process
//! that dies mid-round releases its flock with it.
//!
//! Pace: a round at most every second; every 250 ms while a waiter asks for an early look
//! (Docker says its containers started); every 5 s while every waiting task is PROVISIONING
//! (capacity is being added, which takes minutes). So a host spends about one DescribeTasks a
//! second however many jobs wait. `[aws] shared_polling = false` makes every job poll alone.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::tasks::TaskStatus;
use super::{Ecs, EcsError};

/// A status from a round that began at most this long before a (non-urgent) ask answers it.
const FRESH_ENOUGH_MS: u64 = 500;
/// How often a waiter looks for its status (and whether it may run a round).
const LOOK_EVERY: Duration = Duration::from_millis(100);
const ROUND_GAP: Duration = Duration::from_secs(1);
const URGENT_GAP: Duration = Duration::from_millis(250);
const PROVISIONING_GAP: Duration = Duration::from_secs(5);
/// A waiter that got no fresh status from the shared rounds for this long asks ECS itself.
const ALONE_AFTER: Duration = Duration::from_secs(20);
/// A waiting entry older than this belongs to a process that died without removing it.
const STALE_WAITING: Duration = Duration::from_secs(3 * 3600);

/// A task's status as one round saw it.
#[derive(Serialize, Deserialize)]
struct Seen {
    polled_at_ms: u64,
    status: TaskStatus,
}

/// Watching one task until prepare is done with it.
pub struct TaskWatch<'a> {
    ecs: &'a Ecs,
    arn: String,
    /// `None`: this job polls alone.
    shared: Option<PollDir>,
    /// DescribeTasks calls this process made.
    calls: u32,
}

struct PollDir {
    root: PathBuf,
    id: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn task_id(arn: &str) -> String {
    arn.rsplit('/')
        .next()
        .unwrap_or(arn)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// Write `data` to `path` atomically (a temp file renamed over it).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", crate::state::random_hex()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl PollDir {
    fn new(state_dir: &Path, cluster: &str, arn: &str) -> std::io::Result<PollDir> {
        let cluster: String = cluster
            .rsplit('/')
            .next()
            .unwrap_or(cluster)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let root = state_dir.join("poll").join(cluster);
        for sub in ["waiting", "urgent", "status"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))?;
        }
        let dir = PollDir { root, id: task_id(arn) };
        write_atomic(&dir.root.join("waiting").join(&dir.id), arn.as_bytes())?;
        Ok(dir)
    }

    fn status_path(&self, id: &str) -> PathBuf {
        self.root.join("status").join(format!("{id}.json"))
    }

    fn read(&self, id: &str) -> Option<Seen> {
        serde_json::from_slice(&fs::read(self.status_path(id)).ok()?).ok()
    }

    fn urgent(&self) -> PathBuf {
        self.root.join("urgent").join(&self.id)
    }

    /// Run a round if the round lock is free and the last round is old enough. Returns how
    /// many DescribeTasks calls it made.
    async fn maybe_round(&self, ecs: &Ecs) -> Result<u32, EcsError> {
        let lock_path = self.root.join("round.lock");
        let Ok(lock) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&lock_path)
        else {
            return Ok(0);
        };
        if lock.try_lock().is_err() {
            return Ok(0);
        }
        let last: u64 = fs::read_to_string(self.root.join("last-round"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let waiting: Vec<(String, String)> = fs::read_dir(self.root.join("waiting"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                if name.contains(".tmp.") {
                    return None;
                }
                let stale = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > STALE_WAITING);
                if stale {
                    let _ = fs::remove_file(e.path());
                    let _ = fs::remove_file(self.status_path(&name));
                    return None;
                }
                Some((name, fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        let urgent = fs::read_dir(self.root.join("urgent"))
            .into_iter()
            .flatten()
            .any(|e| e.is_ok());
        let all_provisioning = !waiting.is_empty()
            && waiting
                .iter()
                .all(|(id, _)| self.read(id).is_some_and(|s| s.status.last_status == "PROVISIONING"));
        let gap = if urgent {
            URGENT_GAP
        } else if all_provisioning {
            PROVISIONING_GAP
        } else {
            ROUND_GAP
        };
        let now = now_ms();
        if now.saturating_sub(last) < gap.as_millis() as u64 || waiting.is_empty() {
            return Ok(0);
        }
        let _ = write_atomic(&self.root.join("last-round"), now.to_string().as_bytes());
        let urgent_before: Vec<PathBuf> = fs::read_dir(self.root.join("urgent"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        let arns: Vec<String> = waiting.iter().map(|(_, arn)| arn.clone()).collect();
        let mut calls = 0;
        for chunk in arns.chunks(100) {
            calls += 1;
            let statuses = ecs.describe_tasks(chunk).await?;
            for (arn, status) in statuses {
                let seen = Seen {
                    polled_at_ms: now,
                    status,
                };
                let _ = write_atomic(
                    &self.status_path(&task_id(&arn)),
                    &serde_json::to_vec(&seen).expect("a status serializes"),
                );
            }
        }
        for path in urgent_before {
            let _ = fs::remove_file(path);
        }
        drop(lock);
        Ok(calls)
    }
}

impl Drop for PollDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.root.join("waiting").join(&self.id));
        let _ = fs::remove_file(self.urgent());
        let _ = fs::remove_file(self.status_path(&self.id));
    }
}

impl<'a> TaskWatch<'a> {
    /// Watch `arn`; `shared_under`: the state dir whose `poll/` this host's prepares share
    /// (`None`, or a poll dir that cannot be made: this job polls alone).
    pub fn new(ecs: &'a Ecs, arn: &str, shared_under: Option<&Path>) -> TaskWatch<'a> {
        let shared = shared_under.and_then(|dir| PollDir::new(dir, ecs.cluster(), arn).ok());
        TaskWatch {
            ecs,
            arn: arn.to_string(),
            shared,
            calls: 0,
        }
    }

    /// A status of the task no older than this call. `urgent`: the caller has reason to
    /// expect a change (its containers started), so the next round may come sooner.
    pub async fn status(&mut self, urgent: bool) -> Result<TaskStatus, EcsError> {
        let Some(dir) = &self.shared else {
            self.calls += 1;
            return self.ecs.describe_task(&self.arn).await;
        };
        // A round that began just before this ask answers it too (unless urgent): waiters that
        // wake together on the fallback grid are served by one round, not one and a late one.
        let asked = now_ms().saturating_sub(if urgent { 0 } else { FRESH_ENOUGH_MS });
        if urgent {
            let _ = write_atomic(&dir.urgent(), b"");
        }
        let give_up = tokio::time::Instant::now() + ALONE_AFTER;
        loop {
            if tokio::time::Instant::now() >= give_up {
                // No round answered for this task (ECS said nothing of it, or the host's
                // rounds keep failing): ask alone rather than wait for ever.
                self.calls += 1;
                return self.ecs.describe_task(&self.arn).await;
            }
            if let Some(seen) = dir.read(&dir.id)
                && seen.polled_at_ms >= asked
            {
                return Ok(seen.status);
            }
            self.calls += dir.maybe_round(self.ecs).await?;
            if let Some(seen) = dir.read(&dir.id)
                && seen.polled_at_ms >= asked
            {
                return Ok(seen.status);
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// DescribeTasks calls this process made (for everyone, when shared).
    pub fn calls(&self) -> u32 {
        self.calls
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
}
