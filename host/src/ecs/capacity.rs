//! Waiting for capacity, visibly. Two ways a cluster can be full when a job starts:
//!
//! - without managed scaling, RunTask places nothing and answers `RESOURCE:*`: the instances
//!   are busy with other jobs, so prepare tries again with back-off ([`Ecs::run_when_capacity`]);
//! - with a capacity provider with managed scaling, RunTask creates the task PROVISIONING and
//!   ECS adds an instance, which takes minutes ([`Ecs::wait_for_placement`]).
//!
//! Both waits end at `capacity_wait_secs` (default: `start_timeout_secs`) as a system failure
//! (gitlab-runner may retry the job), and both tell the job log every `capacity_note_secs`
//! (default 30 s) how long the job has waited and for which capacity provider. A task ECS
//! itself stops while it waits (its provisioning timeout, `TaskFailedToStart`) is reported with
//! ECS's reason. Cancel (SIGTERM) and cleanup work during the wait: prepare races the wait
//! against the signal and stops the task, as after any failure.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::poller::TaskWatch;
use super::tasks::{PlacedTask, TaskStatus};
use super::{Ecs, EcsError};
use crate::config::Config;
use crate::failure::Failure;
use crate::joblog::log_note;

/// DescribeTasks may not know a task RunTask has just created (eventual consistency): a
/// MISSING answer this soon after RunTask means "not yet", not "gone".
const MISSING_GRACE: Duration = Duration::from_secs(10);

/// Where the task landed after a wait for capacity.
#[derive(Debug, Clone)]
pub struct Placement {
    pub container_instance_arn: String,
}

fn provider_words(status: Option<&TaskStatus>) -> String {
    status
        .and_then(|s| s.capacity_provider.as_deref())
        .map(|c| format!("capacity provider {c}"))
        .unwrap_or_else(|| "a capacity provider".into())
}

impl Ecs {
    /// RunTask, waiting while the cluster is full: a `RESOURCE:*` placement failure means the
    /// instances are busy with other jobs (or capacity is being added), which passes; the job
    /// waits for room within `capacity_wait_secs` instead of failing at once.
    pub async fn run_when_capacity(
        &self,
        config: &Config,
        task_definition_arn: &str,
        started_by: &str,
        tags: &[(&str, String)],
    ) -> Result<PlacedTask, EcsError> {
        let started = Instant::now();
        let limit = config.capacity_wait();
        let deadline = started + limit;
        let mut pause = Duration::from_secs(2);
        let mut told: Option<Instant> = None;
        for attempt in 1u32.. {
            // A new token per attempt: a placement failure started nothing, and ECS would
            // answer a repeated token with the same failure.
            let token = format!("{started_by}-{attempt}-{}", crate::state::random_hex());
            let token: String = token
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect();
            match self
                .run_task(config, task_definition_arn, started_by, tags, &token)
                .await
            {
                Err(EcsError::Placement { reasons, .. })
                    if reasons.contains("RESOURCE:") && Instant::now() + pause < deadline =>
                {
                    if told.is_none_or(|t| t.elapsed() >= config.capacity_note_every()) {
                        log_note(format!(
                            "cluster {} has no room for the task yet ({reasons}); waiting ({} s of at most {} s)",
                            self.cluster(),
                            started.elapsed().as_secs(),
                            limit.as_secs()
                        ));
                        told = Some(Instant::now());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 3 / 2).min(Duration::from_secs(15));
                }
                other => return other,
            }
        }
        unreachable!("the attempts never run out before the deadline")
    }

    /// The container instance of a task RunTask returned without one: with a capacity
    /// provider, a task that fits nowhere is PROVISIONING until scaling adds an instance (ECS
    /// takes minutes). Waits up to `capacity_wait_secs`, polling less often the longer it
    /// waits (the host's shared poller slows down further while all its tasks are
    /// PROVISIONING), and says in the job log at once and then every `capacity_note_secs` how
    /// long it has waited and for which capacity provider — on time even while a look at ECS
    /// is held up.
    pub async fn wait_for_placement(&self, config: &Config, watch: &mut TaskWatch<'_>) -> Result<Placement, Failure> {
        let task_arn = watch.arn().to_string();
        let started = Instant::now();
        let limit = config.capacity_wait();
        let deadline = started + limit;
        let every = config.capacity_note_every();
        let mut pause = Duration::from_secs(1);
        let mut last: Option<TaskStatus> = None;
        // Set once the task is seen waiting: the first note goes out then.
        let mut next_note: Option<Instant> = None;
        let note = |last: Option<&TaskStatus>, first: bool| {
            let state = last
                .map(|s| s.last_status.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("not placed");
            if first {
                log_note(format!(
                    "task {state}: no container instance has room for it; waiting for {} to add \
                     capacity (at most {} s, capacity_wait_secs)",
                    provider_words(last),
                    limit.as_secs()
                ));
            } else {
                log_note(format!(
                    "task still {state} after {} s, waiting for {} to add capacity (at most {} s)",
                    started.elapsed().as_secs(),
                    provider_words(last),
                    limit.as_secs()
                ));
            }
        };
        let gave_up = |last: Option<&TaskStatus>| {
            Failure::system(format!(
                "no capacity for the task within {} s: it was still {} waiting for {}; prepare gave \
                 up (capacity_wait_secs) and stops it. Raise capacity_wait_secs, or the capacity \
                 provider's maximum size or scaling step",
                limit.as_secs(),
                last.map(|s| s.last_status.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("unplaced"),
                provider_words(last)
            ))
        };
        loop {
            // One look at ECS; the job log is told on time and the limit kept while it takes.
            let status = {
                let look = watch.status(false);
                tokio::pin!(look);
                loop {
                    let note_at = next_note.unwrap_or(deadline);
                    tokio::select! {
                        biased;
                        s = &mut look => break s?,
                        () = sleep_until(deadline) => return Err(gave_up(last.as_ref())),
                        () = sleep_until(note_at), if next_note.is_some() => {
                            note(last.as_ref(), false);
                            next_note = Some(Instant::now() + every);
                        }
                    }
                }
            };
            if let Some(arn) = status.container_instance_arn.clone() {
                let waited = started.elapsed();
                if next_note.is_some() {
                    log_note(format!(
                        "task placed on container instance {arn} after {} s waiting for {}",
                        waited.as_secs(),
                        provider_words(Some(&status))
                    ));
                }
                return Ok(Placement {
                    container_instance_arn: arn,
                });
            }
            if status.missing && started.elapsed() < MISSING_GRACE {
                // Not visible yet; look again.
            } else if status.missing {
                return Err(Failure::system(format!(
                    "task {task_arn} disappeared from ECS (MISSING) while it waited for capacity"
                )));
            } else if status.last_status == "STOPPED" || status.desired_status == "STOPPED" {
                return Err(stopped_while_waiting(&task_arn, &status, started.elapsed()));
            } else {
                if next_note.is_none() {
                    note(Some(&status), true);
                    next_note = Some(Instant::now() + every);
                }
                last = Some(status);
            }
            let look_again = Instant::now() + pause;
            loop {
                let note_at = next_note.unwrap_or(deadline);
                tokio::select! {
                    biased;
                    () = sleep_until(deadline) => return Err(gave_up(last.as_ref())),
                    () = sleep_until(note_at), if next_note.is_some() && note_at < look_again => {
                        note(last.as_ref(), false);
                        next_note = Some(Instant::now() + every);
                    }
                    () = sleep_until(look_again) => break,
                }
            }
            // Placement by scaling takes minutes: no need to ask every second.
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// ECS stopped the task before it had an instance: its provisioning timeout
/// (`TaskFailedToStart`, e.g. "EMPTY CAPACITY PROVIDER"), or a StopTask by someone else.
fn stopped_while_waiting(task_arn: &str, status: &TaskStatus, waited: Duration) -> Failure {
    let why = status.stop_explanation();
    let code = status
        .stop_code
        .as_deref()
        .filter(|c| !why.contains(c))
        .map(|c| format!(" (stop code {c})"))
        .unwrap_or_default();
    Failure::system(format!(
        "ECS stopped task {task_arn} after {} s waiting for {}, before it was placed on an \
         instance: {why}{code}",
        waited.as_secs(),
        provider_words(Some(status))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provisioning_timeout_names_ecs_reason_code_and_provider() {
        let status = TaskStatus {
            last_status: "STOPPED".into(),
            desired_status: "STOPPED".into(),
            stop_code: Some("TaskFailedToStart".into()),
            stopped_reason: Some("EMPTY CAPACITY PROVIDER".into()),
            capacity_provider: Some("ci-asg".into()),
            ..Default::default()
        };
        let f = stopped_while_waiting("arn:task/1", &status, Duration::from_secs(42));
        assert_eq!(f.blame, crate::failure::Blame::System);
        for part in [
            "EMPTY CAPACITY PROVIDER",
            "stop code TaskFailedToStart",
            "capacity provider ci-asg",
            "after 42 s",
        ] {
            assert!(f.message.contains(part), "{part}: {}", f.message);
        }
    }
}
