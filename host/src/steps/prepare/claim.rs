//! The claim phase of `prepare` (warm pools, `docs/warm-pools.md`): after the plugins and the
//! task definition, a job of a pool's shape claims one of this host's idle warm tasks of that
//! very task definition instead of starting one. A claimed task is checked before the job gets
//! it — ECS says RUNNING, its instance is ACTIVE (not draining), Docker on the instance answers
//! and runs every container of the task — and is discarded (stopped) otherwise; one that is
//! still starting goes back for a later job. The instance's status and the Docker checks are
//! asked at once; once both passed, the job's tags and the job's stage runners are added at
//! once. No warm task passes its checks: a cold start, as without the pool.

use std::time::Instant;

use ecs_executor_plugin_host::PluginSet;

use super::PhaseTimer;
use crate::aws::AwsClients;
use crate::config::{Config, PoolConfig};
use crate::docker::DockerHost;
use crate::ecs::poller::TaskWatch;
use crate::ecs::task_definitions::TaskDefinitionUse;
use crate::ecs::{self, Ecs};
use crate::failure::Failure;
use crate::job::JobContext;
use crate::joblog::{log_note, log_phase};
use crate::pool::{Claim, PoolStore, Shape, now_secs};
use crate::protocol::JobResponse;
use crate::state::{JobState, StateStore};
use crate::task::build::JobTask;

/// The pool this job's task belongs to, if any: its image is a pool's, and nothing of the task
/// is the job's own beyond the task definition (no services the executor launches, no pull
/// with the job's registry login).
pub(super) fn pool_of<'c>(config: &'c Config, job: &JobContext, task: &JobTask) -> Option<&'c PoolConfig> {
    if !task.services.services.is_empty() || !task.registry.secrets.is_empty() {
        return None;
    }
    config.pool.iter().find(|p| p.image == job.image)
}

/// Why a claimed warm task is not handed out.
enum Verdict {
    /// Still starting: back to the pool.
    NotYet(String),
    /// Stopped and forgotten; (metrics label, reason).
    Discard(&'static str, String),
}

/// The claim phase: a checked warm task bound to the job (its state saved, `launched` set), or
/// `None` for a cold start. Each discarded task is one line in the job log.
#[allow(clippy::too_many_arguments)]
pub(super) async fn warm_task(
    config: &Config,
    (job, response, plugins): (&JobContext, &JobResponse, &PluginSet),
    store: &StateStore,
    ecs: &Ecs,
    clients: &AwsClients,
    (task, td, pool): (&JobTask, &TaskDefinitionUse, &PoolConfig),
    launched: &mut Option<JobState>,
) -> Result<Option<Bound>, Failure> {
    let phase = Instant::now();
    let _timer = PhaseTimer("claim", phase);
    let pools = PoolStore::open(store)?;
    let shape = Shape {
        pool: pool.name.clone(),
        task_definition_arn: td.arn.clone(),
        containers: task.spec.containers.len(),
    };
    pools.save_shape(&shape)?;
    let mut not_yet: Vec<Claim> = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    let outcome = loop {
        let Some(claim) = pools.claim(&shape.key(), &tried) else {
            break None;
        };
        tried.push(claim.entry.task_arn.clone());
        match bind(
            config,
            (job, response, plugins),
            store,
            ecs,
            clients,
            &shape,
            &claim,
            launched,
        )
        .await
        {
            Ok(bound) => break Some((claim, bound)),
            Err(Verdict::NotYet(why)) => {
                log_note(format!(
                    "warm task {} not ready ({why}): left for a later job",
                    claim.entry.task_arn
                ));
                not_yet.push(claim);
            }
            Err(Verdict::Discard(label, why)) => {
                let arn = claim.entry.task_arn.clone();
                // Forgotten first: no other job may claim a task being stopped.
                claim.forget();
                let _ = ecs
                    .stop_task(&arn, &format!("ecs-executor: warm task discarded: {why}"))
                    .await;
                *launched = None;
                let _ = store.remove(&job.key);
                crate::metrics::pool_discarded(&pool.name, label);
                log_note(format!("warm task {arn} discarded: {why}"));
                if label == "tag" {
                    // Not the task's fault (IAM, ECS): the next one would fare no better.
                    break None;
                }
            }
        }
    };
    for claim in not_yet {
        claim.put_back();
    }
    match outcome {
        Some((claim, bound)) => {
            let idle = claim.entry.idle_secs(now_secs());
            claim.forget();
            crate::metrics::pool_claim(&pool.name, "hit");
            crate::metrics::pool_idle_seconds(&pool.name, idle);
            log_phase(
                phase,
                format_args!(
                    "warm task {} claimed (idle {} s)",
                    bound.state.task_arn,
                    idle.round() as u64
                ),
            );
            Ok(Some(bound))
        }
        None => {
            crate::metrics::pool_claim(&pool.name, "miss");
            log_phase(phase, "no warm task for this shape: cold start");
            Ok(None)
        }
    }
}

/// A warm task bound to a job: the job's state (saved), Docker, the task's containers and
/// the job's stage runners (started at the claim, with the job's own certificates).
pub(super) struct Bound {
    pub state: JobState,
    pub docker: DockerHost,
    pub containers: std::collections::BTreeMap<String, String>,
    pub stage_runner: Option<crate::stages::runner::StageRunnerState>,
}

/// Check a claimed warm task and bind it to the job: the job's state (saved), Docker, and the
/// instance host.
#[allow(clippy::too_many_arguments)]
async fn bind(
    config: &Config,
    (job, response, plugins): (&JobContext, &JobResponse, &PluginSet),
    store: &StateStore,
    ecs: &Ecs,
    clients: &AwsClients,
    shape: &Shape,
    claim: &Claim,
    launched: &mut Option<JobState>,
) -> Result<Bound, Verdict> {
    let arn = &claim.entry.task_arn;
    let status = ecs
        .describe_task(arn)
        .await
        .map_err(|e| Verdict::NotYet(e.to_string()))?;
    if status.missing {
        return Err(Verdict::Discard("not_running", "ECS does not know it (MISSING)".into()));
    }
    if status.desired_status != "RUNNING" {
        return Err(Verdict::Discard(
            "not_running",
            format!("ECS stops it (desired status {})", status.desired_status),
        ));
    }
    match status.last_status.as_str() {
        "RUNNING" => {}
        "PROVISIONING" | "PENDING" | "ACTIVATING" => {
            return Err(Verdict::NotYet(format!("ECS says {}", status.last_status)));
        }
        other => return Err(Verdict::Discard("not_running", format!("ECS says {other}"))),
    }
    let Some(ci) = status.container_instance_arn.clone() else {
        return Err(Verdict::Discard(
            "not_running",
            "ECS names no container instance".into(),
        ));
    };
    // The job's state names the task from here on (a discard below removes it again).
    let mut state = JobState::new(job.key.job_id, ecs.cluster(), arn, &shape.task_definition_arn, false);
    state.container_instance_arn = Some(ci.clone());
    state.pool = Some(shape.pool.clone());
    *launched = Some(state.clone());
    store
        .save(&job.key, &state)
        .map_err(|e| Verdict::NotYet(e.to_string()))?;
    // The instance's status (DescribeContainerInstances, never cached: a draining instance
    // must discard the task) and Docker on the instance (ping, the task's containers) are
    // independent: asked at once. Both must pass before the job gets anything of the task.
    let mut watch = TaskWatch::new(ecs, arn, None);
    let (instance_status, reached) = tokio::join!(ecs.container_instance_status(&ci), async {
        let reached = super::reach_docker(
            config,
            (job, response, plugins),
            store,
            (ecs, &mut watch),
            clients,
            &mut state,
            launched,
        )
        .await
        .map_err(|f| Verdict::Discard("docker", format!("Docker on its instance: {}", f.message)))?;
        let running = reached.0.running_task_containers(arn).await.unwrap_or(0);
        Ok::<_, Verdict>((reached, running))
    });
    drop(watch);
    match instance_status {
        Ok(Some(s)) if s == "ACTIVE" => {}
        Ok(s) => {
            return Err(Verdict::Discard(
                "instance_not_active",
                format!("its instance {ci} is {}", s.as_deref().unwrap_or("unknown to ECS")),
            ));
        }
        Err(e) => return Err(Verdict::NotYet(e.to_string())),
    }
    let ((docker, host, attributes), running) = reached?;
    if running < shape.containers {
        return Err(Verdict::Discard(
            "containers",
            format!("Docker runs {running} of its {} containers", shape.containers),
        ));
    }
    let containers = docker
        .task_containers(arn)
        .await
        .map_err(|e| Verdict::Discard("docker", format!("Docker on its instance: {e}")))?;
    let tags = [
        (ecs::TAG_RUNNER_TOKEN, job.key.runner_token.clone()),
        (ecs::TAG_JOB, job.key.job_id.to_string()),
        (ecs::TAG_PROJECT, job.project_path.chars().take(256).collect()),
    ];
    // Every check passed: the job's tags and the job's own stage runners (its fresh
    // certificates) at once. A failed tag discards the task, runners and all: it is stopped.
    let (tagged, stage_runner) = tokio::join!(
        ecs.tag_task(arn, &tags),
        super::start_stage_runners(config, &docker, &containers, &host, &attributes)
    );
    tagged.map_err(|e| Verdict::Discard("tag", e.to_string()))?;
    Ok(Bound {
        state,
        docker,
        containers,
        stage_runner,
    })
}
