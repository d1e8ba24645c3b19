//! A host-wide rate budget for ECS calls: one token bucket per ECS throttling category (ECS
//! throttles per account and Region, all actions of a category sharing one bucket), sized at
//! `[aws] rate_share` of the account's published limits and shared by every executor process
//! on the runner host through a file under `<state_dir>/budget/`, updated under `flock`. A
//! burst of job starts then queues here instead of turning into `ThrottlingException`s.
//!
//! The budget never fails a call: if its file cannot be used, the call goes ahead (the SDK's
//! standard retry mode still backs off on throttling).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// ECS's throttling categories the executor calls into (`shared/docs/ecs-at-scale.md` §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// RunTask, StartTask, StopTask: 100 burst, 40/s.
    ClusterModify,
    /// DescribeTasks, DescribeContainerInstances, ListTasks, ListContainerInstances: 100, 20/s.
    ClusterResourceRead,
    /// DescribeTaskDefinition, ListTaskDefinitions, ListTaskDefinitionFamilies: 50, 20/s.
    TaskDefinitionRead,
    /// RegisterTaskDefinition, DeregisterTaskDefinition: 20, 1/s.
    TaskDefinitionModify,
    /// DeleteTaskDefinitions: 5, 1/s.
    TaskDefinitionDelete,
    /// DescribeClusters, ListClusters: 50, 20/s.
    ClusterRead,
}

impl Category {
    /// The account's bucket: (burst, refill per second).
    pub fn account_limits(self) -> (f64, f64) {
        match self {
            Category::ClusterModify => (100.0, 40.0),
            Category::ClusterResourceRead => (100.0, 20.0),
            Category::TaskDefinitionRead => (50.0, 20.0),
            Category::TaskDefinitionModify => (20.0, 1.0),
            Category::TaskDefinitionDelete => (5.0, 1.0),
            Category::ClusterRead => (50.0, 20.0),
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Category::ClusterModify => "cluster-modify",
            Category::ClusterResourceRead => "cluster-resource-read",
            Category::TaskDefinitionRead => "task-definition-read",
            Category::TaskDefinitionModify => "task-definition-modify",
            Category::TaskDefinitionDelete => "task-definition-delete",
            Category::ClusterRead => "cluster-read",
        }
    }
}

/// This host's share of the account's ECS rate limits.
#[derive(Debug, Clone)]
pub struct Budget {
    dir: PathBuf,
    share: f64,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Budget {
    /// Buckets in `<state_dir>/budget/`, sized at `share` (0 < share ≤ 1) of ECS's.
    pub fn new(state_dir: &std::path::Path, share: f64) -> Budget {
        Budget {
            dir: state_dir.join("budget"),
            share: share.clamp(0.01, 1.0),
        }
    }

    /// Wait until a call of `category` fits this host's budget, then spend one token.
    pub async fn spend(&self, category: Category) {
        loop {
            match self.try_take(category, now_secs()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Take a token at time `now` (seconds), or say how long until one is there.
    fn try_take(&self, category: Category, now: f64) -> Result<(), Duration> {
        let (burst, rate) = category.account_limits();
        let (burst, rate) = ((burst * self.share).max(1.0), rate * self.share);
        let file = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(self.dir.join(category.file_name()))
            });
        let Ok(mut file) = file else {
            return Ok(());
        };
        if file.lock().is_err() {
            return Ok(());
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let mut parts = text.split_whitespace().map(|p| p.parse::<f64>().ok());
        // A new bucket starts full.
        let (tokens, last) = match (parts.next().flatten(), parts.next().flatten()) {
            (Some(t), Some(l)) => (t, l),
            _ => (burst, now),
        };
        let tokens = (tokens + (now - last).max(0.0) * rate).min(burst);
        let (left, answer) = if tokens >= 1.0 {
            (tokens - 1.0, Ok(()))
        } else {
            (
                tokens,
                Err(Duration::from_secs_f64(((1.0 - tokens) / rate).clamp(0.01, 5.0))),
            )
        };
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{left} {now}");
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(share: f64) -> Budget {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ecs-executor-budget-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Budget::new(&dir, share)
    }

    #[test]
    fn a_burst_is_served_then_calls_wait_for_the_refill() {
        // Half of RegisterTaskDefinition's 20 burst / 1 per s: 10 at once, then one per 2 s.
        let b = budget(0.5);
        let t = 1000.0;
        for i in 0..10 {
            assert!(b.try_take(Category::TaskDefinitionModify, t).is_ok(), "call {i}");
        }
        let wait = b.try_take(Category::TaskDefinitionModify, t).unwrap_err();
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(b.try_take(Category::TaskDefinitionModify, t + 2.0).is_ok());
        // Categories are separate buckets.
        assert!(b.try_take(Category::ClusterModify, t).is_ok());
    }

    #[test]
    fn processes_share_the_bucket_through_its_file() {
        let a = budget(0.05); // 5 burst of DescribeTasks' 100
        let b = Budget {
            dir: a.dir.clone(),
            share: a.share,
        };
        let t = 50.0;
        for _ in 0..5 {
            assert!(a.try_take(Category::ClusterResourceRead, t).is_ok());
        }
        assert!(b.try_take(Category::ClusterResourceRead, t).is_err());
    }
}
