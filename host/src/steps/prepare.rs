//! `prepare`: build the task for the job, run it on ECS, wait until it runs, reach Docker on
//! its instance and record what `run` and `cleanup` need.
//!
//! The phases, in order: the task definition, the claim of a warm task (`claim`, jobs of a
//! warm pool only; a claimed task skips the rest: the claim checks it, reaches Docker and
//! starts the job's stage runners itself, and pooled jobs have no services), the task, Docker
//! on its instance, RUNNING, the services, the stage runners. Every phase prints one line to
//! the job log. Whatever fails after RunTask, the task is stopped before we exit, so a failed
//! prepare leaves nothing running.

use std::collections::BTreeMap;
use std::time::Instant;

use ecs_executor_plugin_host::PluginSet;

use crate::aws::AwsClients;
use crate::config::{Config, StageRunnerMode, TaskDefinitionMode};
use crate::docker::DockerHost;
use crate::ecs::budget::Budget;
use crate::ecs::poller::TaskWatch;
use crate::ecs::task_definitions::TaskDefinitionUse;
use crate::ecs::tasks::{Running, WaitError};
use crate::ecs::{self, Ecs, stop_reason};
use crate::failure::Failure;
use crate::job::JobContext;
use crate::joblog::{log_note, log_phase};
use crate::protocol::JobResponse;
use crate::services;
use crate::stages::runner::{self, StageRunnerState};
use crate::state::{JobState, StateStore};
use crate::task::build::JobTask;

mod claim;

pub async fn run(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
    let started = Instant::now();
    let (job, response) = JobContext::load_with_response(config)?;
    // GitLab's Docker executor honours `pull_policy:` per job; ECS has no per-task setting.
    let unapplied = response.unapplied_pull_policies();
    if !unapplied.is_empty() {
        log_note(job.redact(&format!(
            "pull_policy not applied ({}): on ECS the container instance's agent pulls every image \
             as its ECS_IMAGE_PULL_BEHAVIOR says (docs/deploy.md)",
            unapplied.join("; ")
        )));
    }
    // Site plugins: loaded (and their settings checked) before anything is created.
    let plugins = crate::plugins::load(config).map_err(|f| Failure {
        message: job.redact(&f.message),
        ..f
    })?;
    let store = StateStore::open(&config.state_dir)?;
    let clients = AwsClients::load(config).await;
    let ecs =
        Ecs::new(clients.ecs.clone(), &config.cluster).with_budget(Budget::new(store.dir(), config.aws.rate_share));

    // A previous prepare attempt of this job may have left a task behind.
    if let Some(old) = store.load(&job.key).unwrap_or(None) {
        log_note(format!("stopping {} left by an earlier prepare attempt", old.task_arn));
        ecs.stop_task(&old.task_arn, "ecs-executor: superseded by a new prepare attempt")
            .await?;
        store.remove(&job.key)?;
    }

    let mut launched: Option<JobState> = None;
    let mut secrets_written: Vec<String> = Vec::new();
    let result = tokio::select! {
        r = launch(config, (&job, &response, &plugins), &store, &ecs, &clients, (&mut launched, &mut secrets_written)) => r,
        () = shutdown => Err(Failure::system("prepare was interrupted (SIGTERM); the task is being stopped")),
    };
    match result {
        Ok(()) => {
            log_phase(started, "prepare: job environment ready");
            Ok(())
        }
        Err(failure) => {
            if let Some(state) = launched {
                let _ = ecs.stop_task(&state.task_arn, "ecs-executor: prepare failed").await;
                if state.deregister_task_definition {
                    let _ = ecs.deregister(&state.task_definition_arn).await;
                }
                let _ = store.remove(&job.key);
                log_note(format!("stopped {}", state.task_arn));
            }
            for name in &secrets_written {
                if crate::registry_secrets::delete(&clients.secrets, name).await.is_err() {
                    log_note(format!(
                        "registry secret {name} not deleted; `ecs-executor gc` removes it"
                    ));
                }
            }
            // Error texts can quote ECS or Docker, which may echo what the job gave them.
            Err(Failure {
                message: job.redact(&failure.message),
                ..failure
            })
        }
    }
}

/// Records a phase's duration in the metrics when the phase ends (also when it fails).
struct PhaseTimer(&'static str, Instant);

impl Drop for PhaseTimer {
    fn drop(&mut self) {
        crate::metrics::phase(self.0, self.1.elapsed().as_secs_f64());
    }
}

/// The phases of a prepare, in order. Each prints one line to the job log; `launched` tracks
/// what exists so the caller can stop it if a later phase fails.
async fn launch(
    config: &Config,
    (job, response, plugins): (&JobContext, &JobResponse, &PluginSet),
    store: &StateStore,
    ecs: &Ecs,
    clients: &AwsClients,
    (launched, secrets_written): (&mut Option<JobState>, &mut Vec<String>),
) -> Result<(), Failure> {
    let task = JobTask::build(config, job, response, plugins)?;
    // `docker: platform:`: refused before anything is registered when no instance can take it.
    if let Some(platform) = &job.platform {
        let expression = platform.placement_expression();
        if !ecs
            .has_instance_where(&expression, crate::platform::ARCH_ATTRIBUTE, platform.arch)
            .await?
        {
            return Err(platform.missing_on(ecs.cluster()).into());
        }
    }
    let td = task_definition(config, job, store, ecs, &task).await?;
    // Warm pools: a job of a pool's shape claims an idle warm task of that task definition.
    let pool = claim::pool_of(config, job, &task);
    let warm = match pool {
        Some(pool) => {
            claim::warm_task(
                config,
                (job, response, plugins),
                store,
                ecs,
                clients,
                (&task, &td, pool),
                launched,
            )
            .await?
        }
        None => None,
    };
    let (mut state, docker, containers, stage_runner) = match warm {
        // The claim checked the task and started the job's stage runners (pooled jobs have
        // no services).
        Some(claim::Bound {
            state,
            docker,
            containers,
            stage_runner,
        }) => (state, docker, containers, stage_runner),
        None => {
            write_registry_secrets(&clients.secrets, &task, secrets_written).await?;
            let mut state = run_task(config, job, store, ecs, &td, launched, secrets_written).await?;
            state.pool = pool.map(|p| p.name.clone());
            // This host's waiting prepares share their DescribeTasks (`ecs::poller`).
            let shared = config.aws.shared_polling.then(|| store.dir());
            let mut watch = TaskWatch::new(ecs, &state.task_arn, shared);
            let (docker, instance_host, instance_attributes) = reach_docker(
                config,
                (job, response, plugins),
                store,
                (ecs, &mut watch),
                clients,
                &mut state,
                launched,
            )
            .await?;
            wait_until_running(config, ecs, &docker, &task, &mut watch).await?;
            drop(watch);
            let containers = docker.task_containers(&state.task_arn).await?;
            for c in &task.spec.containers {
                docker.pick(&containers, &c.name)?;
            }
            start_services(config, job, &docker, &containers, &task).await?;
            let stage_runner =
                start_stage_runners(config, &docker, &containers, &instance_host, &instance_attributes).await;
            (state, docker, containers, stage_runner)
        }
    };
    // A claimed task: every container of the spec is there too.
    for c in &task.spec.containers {
        docker.pick(&containers, &c.name)?;
    }
    state.stage_runner = stage_runner;
    state.containers = containers;
    store.save(&job.key, &state)?;
    *launched = Some(state);
    Ok(())
}

/// Phase 1, the task definition: reuse one with the same content, else register it.
async fn task_definition(
    config: &Config,
    job: &JobContext,
    store: &StateStore,
    ecs: &Ecs,
    task: &JobTask,
) -> Result<TaskDefinitionUse, Failure> {
    let phase = Instant::now();
    let _timer = PhaseTimer("task_definition", phase);
    let td = {
        // Jobs racing on one runner host register one revision, not one each.
        let _lock = store.lock(&format!("taskdef-{}", &task.spec.content_hash()[..16]))?;
        let family = &task.request.family;
        let hash = task.request.content_hash();
        let registered_here = store.registered_here(family);
        let reuse = config.task_definition_mode == TaskDefinitionMode::Reuse;
        // Another job of this host had ECS show this revision ACTIVE with this content a
        // moment ago: no DescribeTaskDefinition of our own (a burst of jobs costs one per
        // family and host). RunTask refusing it drops the record (`run_task`).
        let cached = registered_here
            .as_deref()
            .filter(|arn| reuse && store.verified_recently(family, arn, hash, crate::state::VERIFIED_FRESH_FOR));
        let td = match cached.and_then(|arn| Some((arn, arn.rsplit(':').next()?.parse().ok()?))) {
            Some((arn, revision)) => TaskDefinitionUse {
                arn: arn.to_string(),
                family: family.clone(),
                revision,
                reused: true,
            },
            None => {
                let td = ecs
                    .ensure_task_definition(&task.request, config.task_definition_mode, registered_here.as_deref())
                    .await?;
                if !td.reused {
                    store.note_registered(family, &td.arn)?;
                }
                if reuse {
                    store.note_verified(family, &td.arn, hash);
                }
                td
            }
        };
        // Under the same lock `gc` takes before removing it: in use from now on.
        store.note_use(&job.key.runner_token, &td.family)?;
        td
    };
    log_phase(
        phase,
        format_args!(
            "task definition {}:{} {}",
            td.family,
            td.revision,
            if td.reused { "reused" } else { "registered" }
        ),
    );
    Ok(td)
}

/// The job's registry logins, written to their secrets before RunTask (the agent reads them
/// when the task starts). One line in the job log, naming registries and users, never a
/// password.
async fn write_registry_secrets(
    client: &aws_sdk_secretsmanager::Client,
    task: &JobTask,
    written: &mut Vec<String>,
) -> Result<(), Failure> {
    if task.registry.secrets.is_empty() {
        return Ok(());
    }
    let phase = Instant::now();
    let _timer = PhaseTimer("registry_secrets", phase);
    for secret in &task.registry.secrets {
        crate::registry_secrets::write(client, secret).await?;
        written.push(secret.name.clone());
    }
    let mut pulls: Vec<String> = task
        .registry
        .pulls
        .iter()
        .map(|p| format!("{} ({} from {} as {})", p.image, p.registry, p.source, p.username))
        .collect();
    pulls.dedup();
    log_phase(
        phase,
        format_args!("registry credentials for {} in Secrets Manager", pulls.join(", ")),
    );
    Ok(())
}

/// Phase 2, the task: RunTask (waiting while the cluster is full), then the job's state file.
/// Tags identify runner, project and job; no job variable goes to ECS.
async fn run_task(
    config: &Config,
    job: &JobContext,
    store: &StateStore,
    ecs: &Ecs,
    td: &TaskDefinitionUse,
    launched: &mut Option<JobState>,
    registry_secrets: &[String],
) -> Result<JobState, Failure> {
    let phase = Instant::now();
    let _timer = PhaseTimer("run_task", phase);
    let per_job = config.task_definition_mode == TaskDefinitionMode::PerJob;
    let tags = [
        (ecs::TAG_MANAGED_BY, config.family_prefix.clone()),
        (ecs::TAG_RUNNER_TOKEN, job.key.runner_token.clone()),
        (ecs::TAG_JOB, job.key.job_id.to_string()),
        (ecs::TAG_PROJECT, job.project_path.chars().take(256).collect()),
    ];
    let placed = match ecs
        .run_when_capacity(config, &td.arn, &job.key.started_by(), &tags)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            if per_job {
                let _ = ecs.deregister(&td.arn).await;
            } else {
                // Perhaps refused for its task definition (deregistered behind our back): the
                // next job asks ECS again instead of trusting the host's record.
                store.forget_verified(&td.family);
            }
            return Err(e.into());
        }
    };
    let mut state = JobState::new(job.key.job_id, ecs.cluster(), &placed.arn, &td.arn, per_job);
    state.container_instance_arn = placed.container_instance_arn;
    state.registry_secrets = registry_secrets.to_vec();
    // Known to the failure path before the save: a state dir that cannot take the file must
    // not leave the task running.
    *launched = Some(state.clone());
    store.save(&job.key, &state)?;
    log_phase(
        phase,
        format_args!("task {} started on cluster {}", placed.arn, ecs.cluster()),
    );
    Ok(state)
}

/// Phase 3, the container instance and its Docker daemon (an address plugin may choose the
/// address and TLS name; else `use_private_ip`). Returns Docker, the instance host and the
/// instance's ECS attributes (its CPU architecture picks the stage runner binary).
async fn reach_docker(
    config: &Config,
    (job, response, plugins): (&JobContext, &JobResponse, &PluginSet),
    store: &StateStore,
    (ecs, watch): (&Ecs, &mut TaskWatch<'_>),
    clients: &AwsClients,
    state: &mut JobState,
    launched: &mut Option<JobState>,
) -> Result<(DockerHost, String, Vec<(String, Option<String>)>), Failure> {
    let phase = Instant::now();
    let _timer = PhaseTimer("docker", phase);
    let (ci_arn, waited) = match state.container_instance_arn.clone() {
        Some(arn) => (arn, false),
        None => {
            let _timer = PhaseTimer("capacity", Instant::now());
            let placed = ecs.wait_for_placement(config, watch).await?;
            (placed.container_instance_arn, true)
        }
    };
    // Cached on the host: jobs land on the same few instances over and over.
    let instance = crate::instance_cache::resolve(store.dir(), ecs, &clients.ec2, &ci_arn).await?;
    let (endpoint, chosen_by) = crate::plugins::docker_endpoint(plugins, config, job, response, &instance)?;
    if let Some(plugin) = &chosen_by {
        log_note(format!("plugin {plugin} chose Docker address {}", endpoint.address()));
    }
    let docker = DockerHost::connect(&config.docker, &endpoint)?;
    if let Err(f) = ping(&docker, waited, &endpoint.address()).await {
        // Looked up afresh by the next job (an address may have changed).
        crate::instance_cache::forget(store.dir(), &ci_arn);
        return Err(f);
    }
    state.container_instance_arn = Some(ci_arn.clone());
    state.ec2_instance_id = Some(instance.ec2_instance_id.clone());
    state.docker = Some(endpoint.clone());
    store.save(&job.key, state)?;
    *launched = Some(state.clone());
    log_phase(
        phase,
        format_args!(
            "instance {} ({}), Docker at {} over mutual TLS",
            instance.ec2_instance_id,
            ci_arn,
            endpoint.address()
        ),
    );
    Ok((docker, endpoint.host, instance.attributes))
}

/// Docker on the instance answers. An instance a scale-out has just added (the task waited
/// for capacity) can register with ECS before its Docker TLS listener is up — the instance's
/// boot script orders the two — so for such a task a refused ping is retried for a while.
async fn ping(docker: &DockerHost, new_instance: bool, address: &str) -> Result<(), Failure> {
    const NEW_INSTANCE_GRACE: std::time::Duration = std::time::Duration::from_secs(20);
    let until = Instant::now() + NEW_INSTANCE_GRACE;
    let mut told = false;
    loop {
        match docker.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if new_instance && Instant::now() < until => {
                if !told {
                    log_note(format!(
                        "Docker at {address} does not answer yet ({e}); the instance is new, trying again"
                    ));
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Phase 4, running: Docker on the instance says every container of the task runs (its start
/// events, then a check that they still run); ECS's RUNNING report is awaited only with
/// `[aws] wait_for_ecs_running`, and ECS is the fallback for what Docker cannot show.
async fn wait_until_running(
    config: &Config,
    ecs: &Ecs,
    docker: &DockerHost,
    task: &JobTask,
    watch: &mut TaskWatch<'_>,
) -> Result<(), Failure> {
    let phase = Instant::now();
    let _timer = PhaseTimer("running", phase);
    let task_arn = watch.arn().to_string();
    let starts = docker.container_starts(&task_arn);
    let already = docker.running_task_containers(&task_arn).await.unwrap_or(0);
    let count = task.spec.containers.len();
    let waited = ecs
        .wait_until_running(config, watch, count, (already, starts), async || {
            docker
                .running_task_containers(&task_arn)
                .await
                .is_ok_and(|n| n >= count)
        })
        .await;
    let running = match waited {
        Ok(running) => running,
        Err(WaitError::Stopped(status)) => {
            return Err(stop_reason::before_running(&task.spec, &task.registry, &status));
        }
        Err(WaitError::Other(f)) => return Err(f),
    };
    let shared = if watch.is_shared() {
        ", shared by the host's waiting jobs"
    } else {
        ""
    };
    match running {
        Running::Docker(_) => log_phase(
            phase,
            format_args!(
                "task running: Docker on the instance runs its {count} containers ({} DescribeTasks from this job{shared})",
                watch.calls()
            ),
        ),
        Running::Ecs(polls) if watch.is_shared() => log_phase(
            phase,
            format_args!(
                "task RUNNING ({polls} looks, {} DescribeTasks from this job{shared})",
                watch.calls()
            ),
        ),
        Running::Ecs(polls) => log_phase(phase, format_args!("task RUNNING ({polls} DescribeTasks)")),
    }
    Ok(())
}

/// Phase 5, services: launch them with their variables (over Docker exec, never through ECS)
/// and wait for their ports; a service that does not come up is a warning, as with GitLab.
async fn start_services(
    config: &Config,
    job: &JobContext,
    docker: &DockerHost,
    containers: &BTreeMap<String, String>,
    task: &JobTask,
) -> Result<(), Failure> {
    if task.services.is_empty() {
        return Ok(());
    }
    let phase = Instant::now();
    let _timer = PhaseTimer("services", phase);
    let reports = services::start(config, docker, containers, &task.services, &|t| job.redact(t)).await?;
    let up = reports.iter().filter(|r| r.problem.is_none()).count();
    let down: Vec<String> = reports
        .iter()
        .filter(|r| r.problem.is_some())
        .map(|r| format!("{} ({})", r.container, r.image))
        .collect();
    let down = if down.is_empty() {
        String::new()
    } else {
        format!("; not up: {}", down.join(", "))
    };
    log_phase(phase, format_args!("services: {up} of {} up{down}", reports.len()));
    Ok(())
}

/// Phase 6, the stage runners; `None` (every stage is a Docker exec) when they are off or
/// cannot be started, with the reason in the job log. The binary is the one for the
/// instance's CPU architecture; with none for it, Docker exec at once.
async fn start_stage_runners(
    config: &Config,
    docker: &DockerHost,
    containers: &BTreeMap<String, String>,
    instance_host: &str,
    instance_attributes: &[(String, Option<String>)],
) -> Option<StageRunnerState> {
    if config.stage_runner.mode == StageRunnerMode::Off {
        return None;
    }
    if let Some(why) = runner::disabled_because(config) {
        log_note(format!("stages use Docker exec: {why}"));
        return None;
    }
    let binary = match runner::binary_for_instance(config, instance_attributes) {
        Ok(binary) => binary,
        Err(why) => {
            log_note(format!("stages use Docker exec: {why}"));
            return None;
        }
    };
    let phase = Instant::now();
    let _timer = PhaseTimer("stage_runners", phase);
    match runner::start(config, docker, containers, instance_host, &binary).await {
        Ok(stage_runner) => {
            let at: Vec<String> = stage_runner.addresses.iter().map(|(c, a)| format!("{c} {a}")).collect();
            log_phase(phase, format_args!("stage runners up ({})", at.join(", ")));
            Some(stage_runner)
        }
        Err(why) => {
            log_note(format!(
                "stages use Docker exec: {why} (open the instance's dynamic ports to this host, \
                 or set stage_runner.mode = \"off\")"
            ));
            None
        }
    }
}
