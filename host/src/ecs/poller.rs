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
//!
//! Running stages watch their task the same way (`TaskWatch::watching`, entries under
//! `watching/`): a stage that runs longer than `[aws] stage_watch_secs` looks at its task's
//! status from the shared rounds, so a task ECS stopped under it (its instance drained or
//! lost) ends the stage within seconds. While only stages watch, a round comes at most every
//! `stage_watch_secs`, for all of them at once.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::tasks::TaskStatus;
use super::{Ecs, EcsError};

/// A status from a round that began at most this long before a (non-urgent) ask answers it.
const FRESH_ENOUGH_MS: u64 = 500;
/// The same for an ask on prepare's fallback grid (`TaskWatch::status_on_grid`): the host's
/// waiters all ask at the grid step, but on a loaded machine their wake-ups spread over a
/// second or more, and with 500 ms each late one made a round of its own (2-4 DescribeTasks
/// per host and step instead of one). Grid steps are 10 s or more apart, so a status this old
/// is as good as new for what the fallback looks for (a task ECS stopped, a failed pull).
const GRID_FRESH_ENOUGH_MS: u64 = 3000;
/// How often a waiter looks for its status (and whether it may run a round).
const LOOK_EVERY: Duration = Duration::from_millis(100);
const ROUND_GAP: Duration = Duration::from_secs(1);
const URGENT_GAP: Duration = Duration::from_millis(250);
const PROVISIONING_GAP: Duration = Duration::from_secs(5);
/// A waiter that got no fresh status from the shared rounds for this long asks ECS itself.
const ALONE_AFTER: Duration = Duration::from_secs(20);
/// A waiting entry older than this belongs to a process that died without removing it.
const STALE_WAITING: Duration = Duration::from_secs(3 * 3600);
/// How often a stage's watcher reads its task's status file.
const WATCH_LOOK_EVERY: Duration = Duration::from_millis(250);
/// A stage's watcher rewrites its entry this often, so a stage of many hours is not taken for
/// a dead process's leftover.
const WATCH_REFRESH: Duration = Duration::from_secs(1800);
/// A watching entry whose task was seen STOPPED this long ago has no live watcher (it would
/// have ended its stage and removed the entry): a process killed with SIGKILL left it.
const STOPPED_WATCH_LEFTOVER: Duration = Duration::from_secs(10);

/// What a poll entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A prepare waiting for its task to run (`waiting/`).
    Waiting,
    /// A running stage watching its task (`watching/`).
    Watching,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Waiting => "waiting",
            Kind::Watching => "watching",
        }
    }
}

/// How long a round waits after the last one: shortest while a waiter asks for an early look,
/// a second while prepares wait, longer while all of them wait for capacity, and the stages'
/// own period while only stages watch.
fn round_gap(urgent: bool, waiting: usize, all_provisioning: bool, watch_every: Duration) -> Duration {
    if urgent {
        URGENT_GAP
    } else if waiting == 0 {
        watch_every.max(ROUND_GAP)
    } else if all_provisioning {
        PROVISIONING_GAP
    } else {
        ROUND_GAP
    }
}

/// A task's status as one round saw it.
#[derive(Serialize, Deserialize)]
struct Seen {
    polled_at_ms: u64,
    status: TaskStatus,
    /// When a round first saw the task stopped (a watching entry still there long after is a
    /// dead process's leftover).
    #[serde(default)]
    stopped_since_ms: Option<u64>,
}

/// Watching one task until prepare is done with it.
pub struct TaskWatch<'a> {
    ecs: &'a Ecs,
    arn: String,
    /// `None`: this job polls alone.
    shared: Option<PollDir>,
    /// DescribeTasks calls this process made.
    calls: u32,
    /// A stage's watch: how fresh its task's status must be.
    every: Duration,
}

struct PollDir {
    root: PathBuf,
    id: String,
    kind: Kind,
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
    fn new(state_dir: &Path, cluster: &str, arn: &str, kind: Kind) -> std::io::Result<PollDir> {
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
        for sub in ["waiting", "watching", "urgent", "status"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))?;
        }
        let dir = PollDir {
            root,
            id: task_id(arn),
            kind,
        };
        dir.register(arn)?;
        Ok(dir)
    }

    /// (Re)write this process's entry.
    fn register(&self, arn: &str) -> std::io::Result<()> {
        write_atomic(&self.entry(), arn.as_bytes())
    }

    fn entry(&self) -> PathBuf {
        self.root.join(self.kind.dir()).join(&self.id)
    }

    /// The entries of `kind`: (id, task ARN). Leftovers of dead processes are removed.
    fn entries(&self, kind: Kind) -> Vec<(String, String)> {
        fs::read_dir(self.root.join(kind.dir()))
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
                let leftover = kind == Kind::Watching
                    && self.read(&name).and_then(|s| s.stopped_since_ms).is_some_and(|since| {
                        now_ms().saturating_sub(since) > STOPPED_WATCH_LEFTOVER.as_millis() as u64
                    });
                if stale || leftover {
                    let _ = fs::remove_file(e.path());
                    let _ = fs::remove_file(self.status_path(&name));
                    return None;
                }
                Some((name, fs::read_to_string(e.path()).ok()?))
            })
            .collect()
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

    /// Run a round if the round lock is free and the last round is old enough (`watch_every`:
    /// the gap while only stages watch). Returns how many DescribeTasks calls it made.
    async fn maybe_round(&self, ecs: &Ecs, watch_every: Duration) -> Result<u32, EcsError> {
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
        let waiting = self.entries(Kind::Waiting);
        let watching = self.entries(Kind::Watching);
        let urgent = fs::read_dir(self.root.join("urgent"))
            .into_iter()
            .flatten()
            .any(|e| e.is_ok());
        let all_provisioning = !waiting.is_empty()
            && waiting
                .iter()
                .all(|(id, _)| self.read(id).is_some_and(|s| s.status.last_status == "PROVISIONING"));
        let gap = round_gap(urgent, waiting.len(), all_provisioning, watch_every);
        let now = now_ms();
        if now.saturating_sub(last) < gap.as_millis() as u64 || (waiting.is_empty() && watching.is_empty()) {
            return Ok(0);
        }
        let _ = write_atomic(&self.root.join("last-round"), now.to_string().as_bytes());
        let urgent_before: Vec<PathBuf> = fs::read_dir(self.root.join("urgent"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        let mut arns: Vec<String> = waiting.iter().map(|(_, arn)| arn.clone()).collect();
        for (_, arn) in watching {
            if !arns.contains(&arn) {
                arns.push(arn);
            }
        }
        let mut calls = 0;
        for chunk in arns.chunks(100) {
            calls += 1;
            let statuses = ecs.describe_tasks(chunk).await?;
            for (arn, status) in statuses {
                let stopped_since_ms = status.is_stopped().then(|| {
                    self.read(&task_id(&arn))
                        .and_then(|s| s.stopped_since_ms)
                        .unwrap_or(now)
                });
                let seen = Seen {
                    polled_at_ms: now,
                    status,
                    stopped_since_ms,
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
        let _ = fs::remove_file(self.entry());
        let _ = fs::remove_file(self.urgent());
        let _ = fs::remove_file(self.status_path(&self.id));
    }
}

impl<'a> TaskWatch<'a> {
    /// Watch `arn`; `shared_under`: the state dir whose `poll/` this host's prepares share
    /// (`None`, or a poll dir that cannot be made: this job polls alone).
    pub fn new(ecs: &'a Ecs, arn: &str, shared_under: Option<&Path>) -> TaskWatch<'a> {
        let shared = shared_under.and_then(|dir| PollDir::new(dir, ecs.cluster(), arn, Kind::Waiting).ok());
        TaskWatch {
            ecs,
            arn: arn.to_string(),
            shared,
            calls: 0,
            every: ROUND_GAP,
        }
    }

    /// A running stage's watch of `arn`: its status at most about `every` old, from the
    /// host's shared rounds (`None`, or a poll dir that cannot be made: alone).
    pub fn watching(ecs: &'a Ecs, arn: &str, shared_under: Option<&Path>, every: Duration) -> TaskWatch<'a> {
        let shared = shared_under.and_then(|dir| PollDir::new(dir, ecs.cluster(), arn, Kind::Watching).ok());
        TaskWatch {
            ecs,
            arn: arn.to_string(),
            shared,
            calls: 0,
            every,
        }
    }

    /// Completes when ECS says the task is STOPPED or being stopped (desired STOPPED): that
    /// status. Failed looks (throttling, ECS unreachable) never end the watch: a stage is not
    /// failed because ECS could not be asked. Looks at once, then about once a period.
    pub async fn until_stopped(&mut self) -> TaskStatus {
        let every_ms = self.every.as_millis() as u64;
        // Alone when the shared rounds have said nothing for this long.
        let alone_ms = (self.every * 3).max(ALONE_AFTER).as_millis() as u64;
        // The caller waited one period already: the first look comes at once.
        let mut fresh_ms = now_ms().saturating_sub(every_ms);
        let mut refreshed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(if self.shared.is_some() {
                WATCH_LOOK_EVERY
            } else {
                self.every
            })
            .await;
            let now = now_ms();
            let Some(dir) = &self.shared else {
                self.calls += 1;
                if let Ok(status) = self.ecs.describe_task(&self.arn).await
                    && status.is_stopped()
                {
                    return status;
                }
                continue;
            };
            if refreshed.elapsed() >= WATCH_REFRESH || !dir.entry().exists() {
                let _ = dir.register(&self.arn);
                refreshed = tokio::time::Instant::now();
            }
            if let Some(seen) = dir.read(&dir.id) {
                if seen.status.is_stopped() {
                    return seen.status;
                }
                fresh_ms = fresh_ms.max(seen.polled_at_ms);
            }
            let age = now.saturating_sub(fresh_ms);
            if age >= alone_ms {
                self.calls += 1;
                fresh_ms = now;
                match self.ecs.describe_task(&self.arn).await {
                    Ok(status) if status.is_stopped() => return status,
                    _ => continue,
                }
            }
            if age >= every_ms
                && let Ok(calls) = dir.maybe_round(self.ecs, self.every).await
            {
                self.calls += calls;
            }
        }
    }

    /// A status of the task no older than this call. `urgent`: the caller has reason to
    /// expect a change (its containers started), so the next round may come sooner.
    pub async fn status(&mut self, urgent: bool) -> Result<TaskStatus, EcsError> {
        self.status_fresh(urgent, if urgent { 0 } else { FRESH_ENOUGH_MS })
            .await
    }

    /// A status for a fallback look on prepare's host-wide grid: a round of the last
    /// [`GRID_FRESH_ENOUGH_MS`] (the same grid step, begun by a waiter that woke sooner)
    /// answers it.
    pub async fn status_on_grid(&mut self) -> Result<TaskStatus, EcsError> {
        self.status_fresh(false, GRID_FRESH_ENOUGH_MS).await
    }

    async fn status_fresh(&mut self, urgent: bool, fresh_ms: u64) -> Result<TaskStatus, EcsError> {
        let Some(dir) = &self.shared else {
            self.calls += 1;
            return self.ecs.describe_task(&self.arn).await;
        };
        // A round that began just before this ask answers it too (unless urgent): waiters that
        // wake together on the fallback grid are served by one round, not one and a late one.
        let asked = now_ms().saturating_sub(fresh_ms);
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
            self.calls += dir.maybe_round(self.ecs, self.every).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_come_at_the_pace_of_who_is_waiting() {
        let watch = Duration::from_secs(5);
        assert_eq!(round_gap(true, 0, false, watch), URGENT_GAP);
        assert_eq!(round_gap(false, 3, false, watch), ROUND_GAP);
        assert_eq!(round_gap(false, 3, true, watch), PROVISIONING_GAP);
        // Only stages watch: their period, never faster than the prepares' pace.
        assert_eq!(round_gap(false, 0, false, watch), watch);
        assert_eq!(round_gap(false, 0, false, Duration::from_millis(10)), ROUND_GAP);
    }

    fn poll_dir(kind: Kind, arn: &str) -> (PathBuf, PollDir) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = std::env::temp_dir().join(format!("ecs-executor-poll-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        let dir = PollDir::new(&state, "arn:aws:ecs:us-east-1:1:cluster/c", arn, kind).unwrap();
        (state, dir)
    }

    /// A round's word on task `id`: `last`/`desired` status, first seen stopped `stopped_for` ago.
    fn seen(dir: &PollDir, id: &str, last: &str, desired: &str, stopped_for: Option<Duration>) {
        let now = now_ms();
        let seen = Seen {
            polled_at_ms: now,
            status: TaskStatus {
                last_status: last.into(),
                desired_status: desired.into(),
                ..Default::default()
            },
            stopped_since_ms: stopped_for.map(|d| now - d.as_millis() as u64),
        };
        write_atomic(&dir.status_path(id), &serde_json::to_vec(&seen).unwrap()).unwrap();
    }

    #[test]
    fn a_watching_entry_is_described_with_the_waiting_ones_and_removed_with_its_watch() {
        let arn = "arn:aws:ecs:us-east-1:1:task/c/0123abcd";
        let (state, dir) = poll_dir(Kind::Watching, arn);
        assert_eq!(
            dir.entries(Kind::Watching),
            vec![("0123abcd".to_string(), arn.to_string())]
        );
        assert!(dir.entries(Kind::Waiting).is_empty());
        seen(&dir, "0123abcd", "RUNNING", "RUNNING", None);
        let root = dir.root.clone();
        drop(dir);
        assert!(!root.join("watching/0123abcd").exists());
        assert!(!root.join("status/0123abcd.json").exists());
        let _ = fs::remove_dir_all(state);
    }

    #[test]
    fn a_watching_entry_of_a_task_long_stopped_is_a_dead_process_leftover() {
        let (state, dir) = poll_dir(Kind::Watching, "arn:aws:ecs:us-east-1:1:task/c/aaaa");
        write_atomic(&dir.root.join("watching/bbbb"), b"arn:aws:ecs:us-east-1:1:task/c/bbbb").unwrap();
        // Just seen stopped: its watcher is about to end its stage; kept.
        seen(&dir, "aaaa", "RUNNING", "STOPPED", Some(Duration::ZERO));
        // Stopped for a minute (every round since saw it so) and still there: nobody watches
        // it any more.
        seen(&dir, "bbbb", "STOPPED", "STOPPED", Some(Duration::from_secs(60)));
        let ids: Vec<String> = dir.entries(Kind::Watching).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec!["aaaa".to_string()]);
        assert!(!dir.root.join("watching/bbbb").exists());
        assert!(!dir.status_path("bbbb").exists());
        drop(dir);
        let _ = fs::remove_dir_all(state);
    }
}
