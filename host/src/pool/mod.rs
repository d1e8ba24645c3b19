//! Warm pools (`docs/warm-pools.md`): idle tasks of common job shapes, owned by this runner
//! host, that `prepare` claims instead of starting a task.
//!
//! What it owns: the pool's state under `<state_dir>/pool/` (the host id, the shapes, one file
//! per idle warm task) and the atomic claim — `rename(2)` of an idle entry, which exactly one
//! of any number of racing processes wins; `refill`: starting warm tasks (from cleanup and
//! `gc`, through the host's ECS rate budget); `sweep`: `gc`'s part (idle timeout, gone tasks,
//! orphans, top-up). The checks a claimed task must pass before a job gets it are prepare's
//! (`steps::prepare::claim`).

pub mod policy;
pub mod refill;
pub mod sweep;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{StateError, StateStore, random_hex};

/// Tag on a warm task: `<host id>/<pool name>` — whose pool it is.
pub const TAG_POOL: &str = "ecs-executor:pool";

/// A shape: the task definition (after the plugins) the jobs of a pool end up with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub pool: String,
    pub task_definition_arn: String,
    /// Containers of the task: a warm task is handed out only when Docker runs them all.
    pub containers: usize,
}

impl Shape {
    /// The shape's name on disk: `<family>-<revision>` of its task definition.
    pub fn key(&self) -> String {
        shape_key(&self.task_definition_arn)
    }
}

/// `<family>-<revision>` of a task definition ARN, as a file name.
pub fn shape_key(task_definition_arn: &str) -> String {
    let tail = task_definition_arn.rsplit('/').next().unwrap_or(task_definition_arn);
    tail.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One warm task of a shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub task_arn: String,
    /// When the pool started it (seconds since the epoch).
    pub started_unix: f64,
}

impl Entry {
    /// Seconds it has been idle at `now`.
    pub fn idle_secs(&self, now: f64) -> f64 {
        (now - self.started_unix).max(0.0)
    }
}

/// The last path segment of a task ARN (its id).
fn task_id(arn: &str) -> String {
    shape_key(arn)
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This host's pool state: `<state_dir>/pool/`.
pub struct PoolStore {
    dir: PathBuf,
}

/// An entry this process won: its file is in `claimed/`, no other process can claim it.
pub struct Claim {
    pub entry: Entry,
    path: PathBuf,
    idle_path: PathBuf,
}

impl Claim {
    /// Not handed out (the task is still starting): back to `idle/` for a later job.
    pub fn put_back(self) {
        let _ = fs::rename(&self.path, &self.idle_path);
    }

    /// Handed out or discarded: the entry is gone for good.
    pub fn forget(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Write `bytes` to `path` atomically (a fresh temp file beside it, renamed), mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let dir = path.parent().expect("pool paths have a parent");
    mkdir(dir)?;
    let tmp = dir.join(format!(".{}.tmp", random_hex()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

impl PoolStore {
    /// The pool state of the host whose state store is `store` (created 0700 on first use).
    pub fn open(store: &StateStore) -> Result<PoolStore, StateError> {
        let dir = store.dir().join("pool");
        mkdir(&dir)?;
        Ok(PoolStore { dir })
    }

    /// This host's pool identity (16 random hex digits, made once): in every warm task's
    /// `ecs-executor:pool` tag and `startedBy`.
    pub fn host_id(&self) -> Result<String, StateError> {
        let path = self.dir.join("host-id");
        if let Ok(text) = fs::read_to_string(&path) {
            let id = text.trim();
            if id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(id.to_string());
            }
        }
        let id = random_hex();
        // Two first uses at once: the rename of the second wins, and both read it back.
        write_atomic(&path, id.as_bytes())?;
        Ok(fs::read_to_string(&path).map_err(io(&path))?.trim().to_string())
    }

    /// `startedBy` of this host's warm tasks (at most 36 characters).
    pub fn started_by(&self) -> Result<String, StateError> {
        Ok(format!("pool/{}", self.host_id()?))
    }

    /// The value of the `ecs-executor:pool` tag of this host's warm tasks of `pool`.
    pub fn tag_value(&self, pool: &str) -> Result<String, StateError> {
        Ok(format!("{}/{pool}", self.host_id()?))
    }

    /// Record the shape (prepare, each time a job of a pool gets its task definition).
    pub fn save_shape(&self, shape: &Shape) -> Result<(), StateError> {
        let path = self.dir.join("shapes").join(format!("{}.json", shape.key()));
        if fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Shape>(&b).ok())
            .as_ref()
            == Some(shape)
        {
            return Ok(());
        }
        write_atomic(&path, &serde_json::to_vec(shape).expect("a shape serializes"))
    }

    pub fn shape(&self, key: &str) -> Option<Shape> {
        let bytes = fs::read(self.dir.join("shapes").join(format!("{key}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every shape this host has seen.
    pub fn shapes(&self) -> Vec<Shape> {
        json_files(&self.dir.join("shapes"))
            .iter()
            .filter_map(|p| serde_json::from_slice(&fs::read(p).ok()?).ok())
            .collect()
    }

    fn idle_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key).join("idle")
    }

    fn claimed_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key).join("claimed")
    }

    /// The file of shape `key`'s idle entry for task `task_arn`.
    pub fn idle_path(&self, key: &str, task_arn: &str) -> PathBuf {
        self.idle_dir(key).join(format!("{}.json", task_id(task_arn)))
    }

    /// A warm task the pool just started, idle from now on.
    pub fn add_idle(&self, key: &str, entry: &Entry) -> Result<(), StateError> {
        let path = self.idle_dir(key).join(format!("{}.json", task_id(&entry.task_arn)));
        write_atomic(&path, &serde_json::to_vec(entry).expect("an entry serializes"))
    }

    /// The idle entries of a shape, with their files, oldest first.
    pub fn idle(&self, key: &str) -> Vec<(PathBuf, Entry)> {
        let mut entries: Vec<(PathBuf, Entry)> = json_files(&self.idle_dir(key))
            .into_iter()
            .filter_map(|p| {
                let entry = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, entry))
            })
            .collect();
        entries.sort_by(|a, b| a.1.started_unix.total_cmp(&b.1.started_unix));
        entries
    }

    /// Entries being claimed right now (or left by a prepare that died while claiming), with
    /// their files and the files' age in seconds.
    pub fn claimed(&self, key: &str) -> Vec<(PathBuf, Entry, f64)> {
        json_files(&self.claimed_dir(key))
            .into_iter()
            .filter_map(|p| {
                let age = fs::metadata(&p)
                    .ok()?
                    .modified()
                    .ok()?
                    .elapsed()
                    .map_or(0.0, |d| d.as_secs_f64());
                let entry = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                Some((p, entry, age))
            })
            .collect()
    }

    /// Remove an entry's file (gc: its task is stopped or gone).
    pub fn remove(&self, path: &Path) {
        let _ = fs::remove_file(path);
    }

    /// Claim the oldest idle entry of shape `key` that is not in `skip`: `rename(2)` of its
    /// file into `claimed/` under a name of this claim's own. Of many processes racing for
    /// one entry exactly one rename succeeds; the others see it gone and try the next.
    pub fn claim(&self, key: &str, skip: &[String]) -> Option<Claim> {
        let claimed_dir = self.claimed_dir(key);
        mkdir(&claimed_dir).ok()?;
        for (idle_path, entry) in self.idle(key) {
            if skip.contains(&entry.task_arn) {
                continue;
            }
            let path = claimed_dir.join(format!("{}.{}.json", task_id(&entry.task_arn), random_hex()));
            if fs::rename(&idle_path, &path).is_ok() {
                return Some(Claim { entry, path, idle_path });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(name: &str) -> PoolStore {
        let dir = std::env::temp_dir().join(format!("ecs-executor-pool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        PoolStore::open(&StateStore::new(&dir)).unwrap()
    }

    #[test]
    fn the_host_id_is_made_once_and_kept() {
        let p = pools("hostid");
        let id = p.host_id().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(p.host_id().unwrap(), id);
        assert!(p.started_by().unwrap().len() <= 36);
    }

    #[test]
    fn a_shape_is_named_after_its_task_definition() {
        assert_eq!(
            shape_key("arn:aws:ecs:eu-west-1:123456789012:task-definition/ci-0123abcd:7"),
            "ci-0123abcd-7"
        );
    }

    #[test]
    fn threads_racing_for_a_small_pool_never_get_one_entry_twice() {
        let p = std::sync::Arc::new(pools("race"));
        for i in 0..3 {
            p.add_idle(
                "s",
                &Entry {
                    task_arn: format!("arn:aws:ecs:r:1:task/c/t{i}"),
                    started_unix: i as f64,
                },
            )
            .unwrap();
        }
        let won: Vec<String> = (0..16)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.claim("s", &[]).map(|c| c.entry.task_arn.clone()))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        let mut unique = won.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((won.len(), unique.len()), (3, 3), "{won:?}");
        assert!(p.idle("s").is_empty());
    }

    #[test]
    fn a_claim_put_back_is_idle_again_and_skip_passes_it_over() {
        let p = pools("putback");
        let e = Entry {
            task_arn: "arn:aws:ecs:r:1:task/c/t1".into(),
            started_unix: 1.0,
        };
        p.add_idle("s", &e).unwrap();
        let c = p.claim("s", &[]).unwrap();
        assert_eq!(c.entry, e);
        assert!(p.claim("s", &[]).is_none());
        assert_eq!(p.claimed("s").len(), 1);
        c.put_back();
        assert!(p.claim("s", std::slice::from_ref(&e.task_arn)).is_none());
        let c = p.claim("s", &[]).unwrap();
        c.forget();
        assert!(p.idle("s").is_empty() && p.claimed("s").is_empty());
    }
}
