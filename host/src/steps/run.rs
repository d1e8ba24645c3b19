//! `run <script> <stage>`: one stage of the job, in the container the stage belongs to.
//! Uses the state file and Docker only: no AWS config, no plugins; it starts ~10 times a job.

use std::path::Path;

use crate::config::Config;
use crate::docker::DockerHost;
use crate::exec::{ExecEnd, ExecStream};
use crate::failure::{Blame, Failure};
use crate::protocol::{JobKey, StageRoute, validate_stage};
use crate::state::StateStore;

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
    let docker = DockerHost::connect(&config.docker, endpoint)?;
    let container_id = docker.pick(&state.containers, route.container_name())?;
    let exec = ExecStream {
        docker: &docker,
        container_id: &container_id,
        route,
        marker: format!("{}-{stage}-{}", key.job_id, std::process::id()),
    };
    let end = exec.run(script, shutdown).await.map_err(|e| {
        Failure::from(e).context(format_args!(
            "stage {stage} in the {} container of task {}",
            route.container_name(),
            state.task_arn
        ))
    })?;
    match end {
        ExecEnd::Exited(0) => Ok(()),
        ExecEnd::Exited(code) => Err(Failure::script(i32::try_from(code).unwrap_or(1))),
        ExecEnd::ContainerStopped {
            exit_code,
            state: docker_state,
        } => {
            let why = ecs_stop_reason(config, &state.task_arn).await;
            Err(Failure::system(format!(
                "the {} container stopped while stage {stage} ran (script exit code {exit_code}, container {docker_state}): \
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
