//! `run <script> <stage>`: one stage of the job, in the container the stage belongs to.
//! Uses the state file and the job's stage runner (or Docker exec where there is none): no AWS
//! config, no plugins; it starts ~10 times a job.

use std::path::Path;
use std::time::Duration;

use ecs_executor_stage_runner::protocol::RunRequest;

use crate::config::Config;
use crate::docker::{DockerEndpoint, DockerHost};
use crate::exec::{EXEC_MARKER_VAR, ExecEnd, ExecStream, KILL_GRACE, stage_wrapper};
use crate::failure::{Blame, Failure};
use crate::protocol::{JobKey, StageRoute, validate_stage};
use crate::stage_runner::{RunnerEnd, run_stage};
use crate::state::{JobState, StateStore};

pub async fn run(
    config: &Config,
    script_path: &Path,
    stage: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    validate_stage(stage)?;
    let key = JobKey::load()?;
    let state = StateStore::new(&config.state_dir).require(&key)?;
    let script = std::fs::read(script_path)
        .map_err(|e| Failure::system(format!("cannot read the script file {}: {e}", script_path.display())))?;
    let route = StageRoute::for_stage(stage);
    let endpoint = state.docker.as_ref().filter(|_| state.is_ready()).ok_or_else(|| {
        Failure::system(format!(
            "prepare did not finish for job {} (task {})",
            key.job_id, state.task_arn
        ))
    })?;
    let marker = format!("{}-{stage}-{}", key.job_id, std::process::id());
    let place = || {
        format!(
            "stage {stage} in the {} container of task {}",
            route.container_name(),
            state.task_arn
        )
    };
    tokio::pin!(shutdown);

    // The job's stage runner, when prepare started one: no Docker exec, no Docker at all.
    if let Some(runner) = &state.runner
        && let Some(addr) = runner.addresses.get(route.container_name())
    {
        let request = RunRequest {
            argv: vec!["sh".into(), "-c".into(), stage_wrapper(route)],
            env: vec![(EXEC_MARKER_VAR.to_string(), marker.clone())],
            kill_grace: KILL_GRACE,
            stdin: script.clone(),
        };
        let timeout = Duration::from_millis(config.stage_runner.connect_timeout_ms);
        let end = match run_stage(runner, *addr, request, timeout, &mut shutdown).await {
            RunnerEnd::Exited(code) => ExecEnd::Exited(code.into()),
            RunnerEnd::Cancelled => ExecEnd::Cancelled,
            RunnerEnd::Unreachable(why) => {
                // Nothing started: Docker exec runs the stage instead.
                eprintln!(
                    "ecs-executor: the stage runner of the {} container at {addr} does not answer ({why}); \
                     using Docker exec",
                    route.container_name()
                );
                return exec_stage(config, &state, endpoint, stage, route, script, marker, shutdown).await;
            }
            RunnerEnd::Refused(why) => {
                return Err(Failure::system(format!(
                    "{}: the stage runner refused it: {why}",
                    place()
                )));
            }
            RunnerEnd::Output(e) => {
                return Err(Failure::system(format!("{}: cannot write its output: {e}", place())));
            }
            RunnerEnd::Lost(why) => {
                // Did the task stop under the stage? Docker knows.
                let docker = DockerHost::connect(&config.docker, endpoint)?;
                let container_id = docker.pick(&state.containers, route.container_name())?;
                let exec = ExecStream {
                    docker: &docker,
                    container_id: &container_id,
                    route,
                    marker,
                };
                match exec.container_stopped(true).await {
                    Some(docker_state) => ExecEnd::ContainerStopped {
                        exit_code: -1,
                        state: docker_state,
                    },
                    None => {
                        return Err(Failure::system(format!(
                            "{}: connection lost to its stage runner at {addr} while the stage ran: {why}. \
                             Output after this point was lost and the script's exit status is unknown (it \
                             may still be running in the container until cleanup stops the task)",
                            place()
                        )));
                    }
                }
            }
        };
        return finish(config, &state, stage, route, end).await;
    }
    exec_stage(config, &state, endpoint, stage, route, script, marker, shutdown).await
}

/// The stage through Docker exec.
#[allow(clippy::too_many_arguments)]
async fn exec_stage(
    config: &Config,
    state: &JobState,
    endpoint: &DockerEndpoint,
    stage: &str,
    route: StageRoute,
    script: Vec<u8>,
    marker: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let docker = DockerHost::connect(&config.docker, endpoint)?;
    let container_id = docker.pick(&state.containers, route.container_name())?;
    let exec = ExecStream {
        docker: &docker,
        container_id: &container_id,
        route,
        marker,
    };
    let end = exec.run(script, shutdown).await.map_err(|e| {
        Failure::from(e).context(format_args!(
            "stage {stage} in the {} container of task {}",
            route.container_name(),
            state.task_arn
        ))
    })?;
    finish(config, state, stage, route, end).await
}

/// What the stage's end means for gitlab-runner.
async fn finish(
    config: &Config,
    state: &JobState,
    stage: &str,
    route: StageRoute,
    end: ExecEnd,
) -> Result<(), Failure> {
    match end {
        ExecEnd::Exited(0) => Ok(()),
        ExecEnd::Exited(code) => Err(Failure::script(i32::try_from(code).unwrap_or(1))),
        ExecEnd::ContainerStopped {
            exit_code,
            state: docker_state,
        } => {
            let why = ecs_stop_reason(config, &state.task_arn).await;
            let code = if exit_code < 0 {
                "unknown".to_string()
            } else {
                exit_code.to_string()
            };
            Err(Failure::system(format!(
                "the {} container stopped while stage {stage} ran (script exit code {code}, container {docker_state}): \
                 task {} was stopped. ECS says: {why}",
                route.container_name(),
                state.task_arn
            )))
        }
        ExecEnd::Cancelled => Err(Failure {
            blame: Blame::Build,
            message: format!("stage {stage} was cancelled; its processes in the container were killed"),
            script_exit_code: Some(143),
        }),
    }
}

/// ECS's reason for stopping the task. Only on this failure path does a run stage talk to
/// AWS: the agent reports a stop a moment after the containers die, so look for a few seconds.
async fn ecs_stop_reason(config: &Config, task_arn: &str) -> String {
    use std::time::Duration;
    let clients = crate::aws::AwsClients::load(config).await;
    let ecs = crate::ecs::Ecs::new(clients.ecs, &config.cluster);
    let look = async {
        let mut last = String::from("no answer");
        for _ in 0..20 {
            match ecs.describe_task(task_arn).await {
                Ok(status) if status.missing => return "the task is unknown to ECS (MISSING)".to_string(),
                Ok(status) if status.desired_status == "STOPPED" || status.last_status == "STOPPED" => {
                    return status.stop_explanation();
                }
                Ok(status) => {
                    last = format!(
                        "the task is still {} (desired {})",
                        status.last_status, status.desired_status
                    )
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last
    };
    tokio::time::timeout(Duration::from_secs(15), look)
        .await
        .unwrap_or_else(|_| "ECS did not answer within 15 s".into())
}
