//! `prepare`: build the task for the job, run it on ECS, wait until it runs, reach Docker on
//! its instance and record what `run` and `cleanup` need.
//!
//! Every phase prints one line to the job log. Whatever fails after RunTask, the task is
//! stopped before we exit, so a failed prepare leaves nothing running.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;

use crate::aws::AwsClients;
use crate::config::{Config, TaskDefinitionMode};
use crate::docker::{DockerHost, LABEL_TASK_ARN};
use crate::ecs::{self, Ecs, TaskStatus};
use crate::failure::Failure;
use crate::instance::ContainerInstance;
use crate::job::JobContext;
use crate::protocol::JobResponse;
use crate::services::{self, JobServices};
use crate::state::{JobState, StateStore};
use crate::task_spec::TaskSpec;
use ecs_executor_plugin_host::PluginSet;

use super::{log_note, log_phase};

pub async fn run(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
    let started = Instant::now();
    let (job, response) = JobContext::load_with_response(config)?;
    // Site plugins: loaded (and their settings checked) before anything is created.
    let plugins = crate::plugins::load(config).map_err(|f| Failure {
        message: job.redact(&f.message),
        ..f
    })?;
    let store = StateStore::new(&config.state_dir);
    let clients = AwsClients::load(config).await;
    let ecs = Ecs::new(clients.ecs.clone(), &config.cluster);

    // A previous prepare attempt of this job may have left a task behind.
    if let Some(old) = store.load(&job.key).unwrap_or(None) {
        log_note(format!("stopping {} left by an earlier prepare attempt", old.task_arn));
        ecs.stop_task(&old.task_arn, "ecs-executor: superseded by a new prepare attempt")
            .await?;
        store.remove(&job.key)?;
    }

    let mut launched: Option<JobState> = None;
    let result = tokio::select! {
        r = launch(config, (&job, &response, &plugins), &store, &ecs, &clients, &mut launched) => r,
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
            // Error texts can quote ECS or Docker, which may echo what the job gave them.
            Err(Failure {
                message: job.redact(&failure.message),
                ..failure
            })
        }
    }
}

async fn launch(
    config: &Config,
    (job, response, plugins): (&JobContext, &JobResponse, &PluginSet),
    store: &StateStore,
    ecs: &Ecs,
    clients: &AwsClients,
    launched: &mut Option<JobState>,
) -> Result<(), Failure> {
    // 1. The task definition: reuse one with the same content, else register it.
    let phase = Instant::now();
    let (spec, services) = task_spec_for_job(config, job, response, plugins)?;
    let per_job = config.task_definition_mode == TaskDefinitionMode::PerJob;
    let per_job_family = format!("{}-job-{}", config.family_prefix, job.key.job_id);
    let td = {
        // Jobs racing on one runner host register one revision, not one each.
        let _lock = store.lock(&format!("taskdef-{}", &spec.content_hash()[..16]))?;
        let td = ecs.ensure_task_definition(&spec, config, &per_job_family).await?;
        // Under the same lock `gc` takes before removing it: in use from now on.
        store.note_use(&job.key.runner, &td.family)?;
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

    // 2. Run the task. Tags identify runner, project and job; no job variable goes to ECS.
    let phase = Instant::now();
    let tags = [
        (ecs::TAG_MANAGED_BY, config.family_prefix.clone()),
        (ecs::TAG_RUNNER, job.key.runner.clone()),
        (ecs::TAG_JOB, job.key.job_id.to_string()),
        (ecs::TAG_PROJECT, job.project_path.chars().take(256).collect()),
    ];
    let placed = run_when_capacity(config, ecs, &td.arn, &job.key.started_by(), &tags).await;
    let placed = match placed {
        Ok(p) => p,
        Err(e) => {
            if per_job {
                let _ = ecs.deregister(&td.arn).await;
            }
            return Err(e.into());
        }
    };
    let mut state = JobState::new(job.key.job_id, ecs.cluster(), &placed.arn, &td.arn, per_job);
    // Known to the failure path before the save: a state dir that cannot take the file must
    // not leave the task running.
    *launched = Some(state.clone());
    store.save(&job.key, &state)?;
    log_phase(
        phase,
        format_args!("task {} started on cluster {}", placed.arn, ecs.cluster()),
    );

    // 3. The container instance and its Docker daemon.
    let phase = Instant::now();
    let ci_arn = match placed.container_instance_arn.clone() {
        Some(arn) => arn,
        None => wait_for_placement(ecs, &placed.arn).await?,
    };
    let instance = ContainerInstance::resolve(ecs, &clients.ec2, &ci_arn).await?;
    // An address plugin may choose the address (and TLS name); else `use_private_ip`.
    let (endpoint, chosen_by) = crate::plugins::docker_endpoint(plugins, config, job, response, &instance)?;
    if let Some(plugin) = &chosen_by {
        log_note(format!("plugin {plugin} chose Docker address {}", endpoint.address()));
    }
    let docker = DockerHost::connect(&config.docker, &endpoint)?;
    docker.api.ping().await.map_err(|e| docker.error(&e))?;
    state.container_instance_arn = Some(ci_arn.clone());
    state.ec2_instance_id = Some(instance.ec2_instance_id.clone());
    state.docker = Some(endpoint.clone());
    store.save(&job.key, &state)?;
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

    // 4. Wait for RUNNING.
    let phase = Instant::now();
    let waited = wait_until_running(config, ecs, &docker, &placed.arn, spec.containers.len()).await;
    let polls = match waited {
        Ok(polls) => polls,
        Err(Stopped(status)) => return Err(stopped_failure(&spec, &status)),
        Err(Other(f)) => return Err(f),
    };
    log_phase(phase, format_args!("task RUNNING ({polls} DescribeTasks)"));

    // 5. The task's containers, by the ECS agent's labels.
    let containers = docker.task_containers(&placed.arn).await?;
    for c in &spec.containers {
        docker.pick(&containers, &c.name)?;
    }
    // 6. Services: launch them with their variables (over Docker exec, never through ECS) and
    // wait for their ports; a service that does not come up is a warning, as with GitLab.
    if !services.is_empty() {
        let phase = Instant::now();
        let reports = services::start(config, &docker, &containers, &services, &|t| job.redact(t)).await?;
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
    }
    // 7. The stage runners (else every stage is a Docker exec).
    match crate::stage_runner::disabled_because(config) {
        _ if config.stage_runner.mode == crate::config::StageRunnerMode::Off => {}
        Some(why) => log_note(format!("stages use Docker exec: {why}")),
        None => {
            let phase = Instant::now();
            match crate::stage_runner::start(config, &docker, &containers, &endpoint.host).await {
                Ok(runner) => {
                    let at: Vec<String> = runner.addresses.iter().map(|(c, a)| format!("{c} {a}")).collect();
                    log_phase(phase, format_args!("stage runners up ({})", at.join(", ")));
                    state.runner = Some(runner);
                }
                Err(why) => log_note(format!(
                    "stages use Docker exec: {why} (open the instance's dynamic ports to this host, \
                     or set stage_runner.mode = \"off\")"
                )),
            }
        }
    }
    state.containers = containers;
    store.save(&job.key, &state)?;
    *launched = Some(state);
    Ok(())
}

/// RunTask, waiting while the cluster is full: a `RESOURCE:*` placement failure means the
/// instances are busy with other jobs (or capacity is being added), which passes; the job
/// waits for room within `start_timeout_secs` instead of failing at once.
async fn run_when_capacity(
    config: &Config,
    ecs: &Ecs,
    task_definition_arn: &str,
    started_by: &str,
    tags: &[(&str, String)],
) -> Result<ecs::PlacedTask, ecs::EcsError> {
    let deadline = Instant::now() + Duration::from_secs(config.start_timeout_secs);
    let mut pause = Duration::from_secs(2);
    let mut told = false;
    loop {
        match ecs.run_task(config, task_definition_arn, started_by, tags).await {
            Err(ecs::EcsError::Placement { reasons, .. })
                if reasons.contains("RESOURCE:") && Instant::now() + pause < deadline =>
            {
                if !told {
                    log_note(format!(
                        "cluster {} has no room for the task yet ({reasons}); waiting",
                        ecs.cluster()
                    ));
                    told = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 3 / 2).min(Duration::from_secs(15));
            }
            other => return other,
        }
    }
}

/// RunTask on EC2 places at once; this only covers a task reported without an instance.
async fn wait_for_placement(ecs: &Ecs, task_arn: &str) -> Result<String, Failure> {
    for _ in 0..30 {
        let status = ecs.describe_task(task_arn).await?;
        if let Some(arn) = status.container_instance_arn.clone() {
            return Ok(arn);
        }
        if status.last_status == "STOPPED" || status.missing {
            return Err(Failure::system(format!(
                "task {task_arn} stopped before it was placed: {}",
                status.stop_explanation()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Failure::system(format!(
        "task {task_arn} was not placed on a container instance within 30 s"
    )))
}

enum WaitError {
    Stopped(TaskStatus),
    Other(Failure),
}
use WaitError::{Other, Stopped};

impl From<ecs::EcsError> for WaitError {
    fn from(e: ecs::EcsError) -> Self {
        Other(e.into())
    }
}

/// Poll DescribeTasks once a second, and once more 100 ms after Docker on the instance says
/// the last of the task's containers started: RUNNING is noticed quickly without a poll storm.
/// Returns how many DescribeTasks calls it took.
async fn wait_until_running(
    config: &Config,
    ecs: &Ecs,
    docker: &DockerHost,
    task_arn: &str,
    container_count: usize,
) -> Result<u32, WaitError> {
    const STEADY: Duration = Duration::from_millis(1000);
    const AFTER_START: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.start_timeout_secs);
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["start".to_string()]),
        ("label".to_string(), vec![format!("{LABEL_TASK_ARN}={task_arn}")]),
    ]);
    let mut events = docker
        .api
        .events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .boxed();
    // Containers that started before we subscribed.
    let mut started_containers = docker.running_task_containers(task_arn).await.unwrap_or(0);
    let mut events_open = true;
    // With the event stream open, the start events usually tell first: the first timed poll
    // comes a little later so a quick start costs one DescribeTasks, not two.
    let mut next_poll = tokio::time::Instant::now()
        + if started_containers >= container_count {
            Duration::ZERO
        } else {
            2 * STEADY
        };
    let mut polls = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_poll) => {}
            event = events.next(), if events_open => {
                match event {
                    Some(Ok(_)) => {
                        started_containers += 1;
                        if started_containers < container_count {
                            continue;
                        }
                        // All started: the agent reports RUNNING shortly after. One look a
                        // little later (not at once, which would usually be too early and cost
                        // a second call), then back to the steady pace.
                        next_poll = tokio::time::Instant::now() + AFTER_START;
                        continue;
                    }
                    // The event stream is only a hint; polling goes on without it.
                    _ => { events_open = false; continue; }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let last = ecs.describe_task(task_arn).await?;
            return Err(Other(Failure::system(format!(
                "task {task_arn} did not reach RUNNING within {} s (last status {})",
                config.start_timeout_secs, last.last_status
            ))));
        }
        polls += 1;
        let status = ecs.describe_task(task_arn).await?;
        if status.missing {
            return Err(Other(Failure::system(format!(
                "task {task_arn} disappeared from ECS (MISSING)"
            ))));
        }
        match status.last_status.as_str() {
            "RUNNING" => return Ok(polls),
            "STOPPED" | "DEPROVISIONING" | "STOPPING" => return Err(Stopped(status)),
            _ if status.desired_status == "STOPPED" => return Err(Stopped(status)),
            _ => {}
        }
        next_poll = tokio::time::Instant::now() + STEADY;
    }
}

/// Why the task stopped before RUNNING, in words a user understands, with ECS's reason quoted.
/// An image that does not exist is the job's failure (as with GitLab's Docker executor); a
/// pull that failed for reasons that may pass (throttling, timeouts) is a system failure, so
/// gitlab-runner retries.
fn stopped_failure(spec: &TaskSpec, status: &TaskStatus) -> Failure {
    let why = status.stop_explanation();
    let pull_failed = |text: &str| text.contains("CannotPullContainerError");
    if !pull_failed(&why) {
        return Failure::system(format!("ECS stopped the task before it ran: {why}"));
    }
    let failed_container = status
        .containers
        .iter()
        .find(|c| c.reason.as_deref().is_some_and(pull_failed))
        .map(|c| c.name.as_str())
        .unwrap_or("build");
    let image = spec
        .containers
        .iter()
        .find(|c| c.name == failed_container)
        .map(|c| c.image.as_str())
        .unwrap_or("?");
    let message = format!("the image {image:?} (container {failed_container}) could not be pulled. ECS says: {why}");
    if pull_error_is_transient(&why) {
        Failure::system(message)
    } else {
        Failure::build(message)
    }
}

fn pull_error_is_transient(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    let permanent = [
        "not found",
        "manifest unknown",
        "repository does not exist",
        "pull access denied",
        "invalid reference format",
    ];
    if permanent.iter().any(|p| r.contains(p)) {
        return false;
    }
    // Anything else (throttling, timeouts, 5xx, network) may pass: let gitlab-runner retry.
    true
}

/// The task the job gets, as prepare registers it and `plan` shows it: the built-in task,
/// the job's services (mapped by a services plugin, else built in), then the plugins'
/// task-definition chain. Also the services the executor itself launches after RUNNING.
pub fn task_spec_for_job(
    config: &Config,
    job: &JobContext,
    response: &JobResponse,
    plugins: &PluginSet,
) -> Result<(TaskSpec, JobServices), Failure> {
    // Services: validated (limits, allowlist, aliases) before any ECS call. A site plugin may
    // map a service (`services` hook); the others get the built-in mapping, and only those are
    // launched and waited for by the executor after the task runs.
    let mut services = JobServices::load(config, response)?;
    for note in &services.notes {
        log_note(note);
    }
    let mut spec = TaskSpec::for_job(config, job);
    let mapped = crate::plugins::map_services(plugins, job, response)?;
    let mut builtin = Vec::new();
    for (i, service) in services.services.iter().enumerate() {
        match mapped.get(i).cloned().flatten() {
            Some(defs) => {
                let containers = defs
                    .iter()
                    .map(|d| crate::plugins::container_from_wit(d, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Failure::system(format!("the services plugins' mapping of {}: {e}", service.image)))?;
                if let Some(dup) = containers
                    .iter()
                    .find(|c| spec.containers.iter().any(|o| o.name == c.name))
                {
                    return Err(Failure::system(format!(
                        "the services plugins' mapping of {}: container name {:?} is already taken",
                        service.image, dup.name
                    )));
                }
                services::add_to_spec(&mut spec, service, containers);
            }
            None => {
                services::add_to_spec(&mut spec, service, services::builtin_containers(config, service));
                builtin.push(service.clone());
            }
        }
    }
    services.services = builtin;
    // Site plugins change the definition (or refuse the job) before anything is registered;
    // the reuse hash below is taken from their answer.
    let mut spec = crate::plugins::customize_task(plugins, config, job, response, spec)?;
    crate::stage_runner::publish_ports(config, &mut spec);
    Ok((spec, services))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::ContainerStatus;

    #[test]
    fn pull_errors_are_classified() {
        assert!(!pull_error_is_transient(
            "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref docker.io/library/nosuch:latest: docker.io/library/nosuch:latest: not found"
        ));
        assert!(pull_error_is_transient(
            "CannotPullContainerError: toomanyrequests: You have reached your pull rate limit"
        ));
        assert!(pull_error_is_transient(
            "CannotPullContainerError: dial tcp 1.2.3.4:443: i/o timeout"
        ));
    }

    #[test]
    fn stopped_task_names_the_image_that_failed() {
        let config = Config::parse(
            "cluster='c'\nregion='us-east-1'\nhelper_image='helper:1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let job = JobContext {
            key: crate::protocol::JobKey::new(1, None),
            project_path: String::new(),
            runner_version: String::new(),
            image: "nosuch:1".into(),
            image_entrypoint: None,
            secrets: vec![],
        };
        let spec = TaskSpec::for_job(&config, &job);
        let reason = "CannotPullContainerError: failed to resolve ref docker.io/library/nosuch:1: not found";
        let status = TaskStatus {
            last_status: "STOPPED".into(),
            stopped_reason: Some(reason.into()),
            containers: vec![ContainerStatus {
                name: "build".into(),
                reason: Some(reason.into()),
            }],
            ..Default::default()
        };
        let f = stopped_failure(&spec, &status);
        assert_eq!(f.blame, crate::failure::Blame::Build);
        assert!(
            f.message.contains("\"nosuch:1\"") && f.message.contains("not found"),
            "{}",
            f.message
        );
    }
}
