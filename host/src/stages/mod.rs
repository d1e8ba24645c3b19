//! How one stage runs: on the job's stage runner when prepare started one, else through
//! Docker exec — and what its end means for gitlab-runner. The whole fallback policy is here:
//!
//! - no stage runner for the stage's container → Docker exec;
//! - the stage runner provably started nothing (TCP connect or the TLS handshake failed) →
//!   Docker exec, with a note in the job log;
//! - it refused the stage before starting it → system failure;
//! - anything after the request was sent (no `Started` in time, the connection ended, garbage)
//!   → the stage may be running: never run it a second time. If the task stopped under it, the
//!   stage died with its container; otherwise it is a lost stage (system failure), which
//!   gitlab-runner may retry as a whole job.
//!
//! While a stage runs longer than `[aws] stage_watch_secs`, its task is watched through the
//! host's shared poller: a task ECS stopped under the stage (its instance drained and
//! terminated, a spot interruption) ends the stage within seconds as a system failure naming
//! ECS's stop code and reason, also when the Docker or stage-runner connection to a vanished
//! host just hangs. A connection that breaks asks ECS too, for the same reason.

pub mod exec;
pub mod runner;

use std::future::Future;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::unix::io::FromRawFd;
use std::pin::Pin;
use std::time::Duration;

use ecs_executor_stage_runner::protocol::RunRequest;

use crate::config::Config;
use crate::docker::{DockerEndpoint, DockerHost};
use crate::ecs::Ecs;
use crate::ecs::budget::Budget;
use crate::ecs::poller::TaskWatch;
use crate::ecs::stop_reason;
use crate::ecs::tasks::TaskStatus;
use crate::failure::{Blame, Failure};
use crate::joblog::log_note;
use crate::protocol::{JobKey, StageRoute};
use crate::state::JobState;
use exec::{EXEC_MARKER_VAR, ExecStream, KILL_GRACE, stage_wrapper};
use runner::RunnerEnd;

/// How a stage ended, on either path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageEnd {
    /// The script ended with this exit code.
    Exited(i64),
    /// We were told to stop; the script's processes were killed in the container.
    Cancelled,
    /// The script died with its container: the task was stopped under it (StopTask, the
    /// instance went away, an essential container exited). `state` is Docker's word on the
    /// container ("exited (137)", "removed", ...); `exit_code` is -1 when unknown.
    ContainerStopped { exit_code: i64, state: String },
}

/// One stage of the job: `script` in the container `stage` belongs to, its output on our
/// stdout/stderr; `Ok` when it exited 0.
pub async fn run(
    config: &Config,
    state: &JobState,
    key: &JobKey,
    stage: &str,
    script: Vec<u8>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Failure> {
    let route = StageRoute::for_stage(stage);
    let endpoint = state.docker.as_ref().filter(|_| state.is_ready()).ok_or_else(|| {
        Failure::system(format!(
            "prepare did not finish for job {} (task {})",
            key.job_id, state.task_arn
        ))
    })?;
    let stage_run = StageRun {
        config,
        state,
        endpoint,
        stage,
        route,
        marker: format!("{}-{stage}-{}", key.job_id, std::process::id()),
    };
    tokio::pin!(shutdown);
    let stopped = task_stopped(config, state);
    tokio::pin!(stopped);
    let on_runner = state
        .stage_runner
        .as_ref()
        .is_some_and(|r| r.addresses.contains_key(route.container_name()));
    crate::metrics::stage(if on_runner { "stage_runner" } else { "exec" });
    let end = match state.stage_runner.as_ref().and_then(|r| {
        let addr = *r.addresses.get(route.container_name())?;
        Some((r, addr))
    }) {
        Some((stage_runner, addr)) => {
            let request = RunRequest {
                argv: vec!["sh".into(), "-c".into(), stage_wrapper(route)],
                env: vec![(EXEC_MARKER_VAR.to_string(), stage_run.marker.clone())],
                kill_grace: KILL_GRACE,
                stdin: script.clone(),
            };
            let timeout = Duration::from_millis(config.stage_runner.connect_timeout_ms);
            // ECS stopping the task cancels the stage as gitlab-runner's SIGTERM does: the
            // runner kills the script if its host is still there, and the client gives up
            // after the kill grace if not (a blocking client thread must not outlive us).
            let mut stopped_by_ecs: Option<TaskStatus> = None;
            let cancel = async {
                tokio::select! {
                    () = &mut shutdown => {}
                    status = &mut stopped => stopped_by_ecs = Some(status),
                }
            };
            let ended = runner::run_stage(stage_runner, addr, request, timeout, cancel).await;
            // A script that finished well just before the cancel reached it keeps its success
            // (the next stage finds the task stopped); anything else is the task's loss.
            if let Some(status) = stopped_by_ecs
                && !matches!(ended, RunnerEnd::Exited(0))
            {
                return Err(stop_reason::during_stage(&stage_run.place(), &status));
            }
            match ended {
                RunnerEnd::Exited(code) => StageEnd::Exited(code.into()),
                RunnerEnd::Cancelled => StageEnd::Cancelled,
                RunnerEnd::NotStarted(why) => {
                    log_note(format!(
                        "the stage runner of the {} container at {addr} does not answer ({why}); using Docker exec",
                        route.container_name()
                    ));
                    stage_run.exec_watched(script, &mut shutdown, stopped.as_mut()).await?
                }
                RunnerEnd::Refused(why) => {
                    return Err(Failure::system(format!(
                        "{}: the stage runner refused it: {why}",
                        stage_run.place()
                    )));
                }
                RunnerEnd::Output(e) => {
                    return Err(Failure::system(format!(
                        "{}: cannot write its output: {e}",
                        stage_run.place()
                    )));
                }
                RunnerEnd::Lost(why) => stage_run.lost_on_runner(addr, &why).await?,
            }
        }
        None => stage_run.exec_watched(script, &mut shutdown, stopped.as_mut()).await?,
    };
    stage_run.finish(end).await
}

/// Completes when ECS says the job's task stopped (or is being stopped) while the stage runs:
/// that status. Never with `[aws] stage_watch_secs = 0`. A stage shorter than one period asks
/// AWS nothing; after that the task is looked at about once a period, in the host's shared
/// DescribeTasks rounds and within its rate budget.
async fn task_stopped(config: &Config, state: &JobState) -> TaskStatus {
    let secs = config.aws.stage_watch_secs;
    if secs == 0 {
        return std::future::pending().await;
    }
    let every = Duration::from_secs(secs);
    tokio::time::sleep(every).await;
    let clients = crate::aws::AwsClients::load(config).await;
    let ecs = Ecs::new(clients.ecs, &state.cluster).with_budget(Budget::new(&config.state_dir, config.aws.rate_share));
    let shared = config.aws.shared_polling.then_some(config.state_dir.as_path());
    let mut watch = TaskWatch::watching(&ecs, &state.task_arn, shared, every);
    watch.until_stopped().await
}

/// One stage being run, with what its messages name.
struct StageRun<'a> {
    config: &'a Config,
    state: &'a JobState,
    endpoint: &'a DockerEndpoint,
    stage: &'a str,
    route: StageRoute,
    /// In the environment of every process of the stage (Docker exec's cancel finds them by it).
    marker: String,
}

impl StageRun<'_> {
    fn place(&self) -> String {
        format!(
            "stage {} in the {} container of task {}",
            self.stage,
            self.route.container_name(),
            self.state.task_arn
        )
    }

    fn exec_stream<'d>(&self, docker: &'d DockerHost, container_id: &'d str) -> ExecStream<'d> {
        ExecStream {
            docker,
            container_id,
            route: self.route,
            marker: self.marker.clone(),
        }
    }

    /// The stage through Docker exec, ended at once when ECS stops the task under it (the
    /// exec stream to a vanished host may never end by itself). A stage whose Docker
    /// connection failed asks ECS whether the task was stopped, to say why.
    async fn exec_watched(
        &self,
        script: Vec<u8>,
        shutdown: impl Future<Output = ()>,
        stopped: Pin<&mut impl Future<Output = TaskStatus>>,
    ) -> Result<StageEnd, Failure> {
        let result = tokio::select! {
            biased;
            result = self.exec(script, shutdown) => result,
            status = stopped => return Err(stop_reason::during_stage(&self.place(), &status)),
        };
        // A broken Docker connection, or a script killed by a signal while Docker could not
        // say whether its container died: ECS says whether the task was stopped under it.
        let ask_ecs = match &result {
            Err(_) => true,
            Ok(StageEnd::Exited(code)) => *code > 128,
            Ok(_) => false,
        };
        if ask_ecs
            && let Some(status) = stop_reason::stopped_now(self.config, &self.state.cluster, &self.state.task_arn).await
        {
            return Err(stop_reason::during_stage(&self.place(), &status));
        }
        result
    }

    /// The stage through Docker exec.
    async fn exec(&self, script: Vec<u8>, shutdown: impl Future<Output = ()>) -> Result<StageEnd, Failure> {
        let docker = DockerHost::connect(&self.config.docker, self.endpoint)?;
        let container_id = docker.pick(&self.state.containers, self.route.container_name())?;
        self.exec_stream(&docker, &container_id)
            .run(script, shutdown)
            .await
            .map_err(|e| Failure::from(e).context(self.place()))
    }

    /// The stage runner's connection ended after the stage may have started: the stage ended
    /// with its container if the task stopped under it, else it is lost. Never run again.
    async fn lost_on_runner(&self, addr: std::net::SocketAddr, why: &str) -> Result<StageEnd, Failure> {
        let docker = DockerHost::connect(&self.config.docker, self.endpoint)?;
        let container_id = docker.pick(&self.state.containers, self.route.container_name())?;
        if let Some(state) = self.exec_stream(&docker, &container_id).container_stopped(true).await {
            return Ok(StageEnd::ContainerStopped { exit_code: -1, state });
        }
        // Docker did not answer either: an instance that went away? ECS knows.
        match stop_reason::stopped_now(self.config, &self.state.cluster, &self.state.task_arn).await {
            Some(status) => Err(stop_reason::during_stage(&self.place(), &status)),
            None => Err(Failure::system(format!(
                "{}: connection lost to its stage runner at {addr} after the stage was sent ({why}). The stage \
                 may have run in part, or still be running in the container until cleanup stops the task; it \
                 is not run a second time. Output after this point was lost and the script's exit status is \
                 unknown",
                self.place()
            ))),
        }
    }

    /// What the stage's end means for gitlab-runner.
    async fn finish(&self, end: StageEnd) -> Result<(), Failure> {
        match end {
            StageEnd::Exited(0) => Ok(()),
            StageEnd::Exited(code) => Err(Failure::script(i32::try_from(code).unwrap_or(1))),
            StageEnd::ContainerStopped {
                exit_code,
                state: docker_state,
            } => {
                let why = crate::ecs::stop_reason::after_stage(self.config, &self.state.task_arn).await;
                let code = if exit_code < 0 {
                    "unknown".to_string()
                } else {
                    exit_code.to_string()
                };
                Err(Failure::system(format!(
                    "the {} container stopped while stage {} ran (script exit code {code}, container {docker_state}): \
                     task {} was stopped. ECS says: {why}",
                    self.route.container_name(),
                    self.stage,
                    self.state.task_arn
                )))
            }
            StageEnd::Cancelled => Err(Failure {
                blame: Blame::Build,
                message: format!(
                    "stage {} was cancelled; its processes in the container were killed",
                    self.stage
                ),
                script_exit_code: Some(143),
            }),
        }
    }
}

/// Unbuffered writes to our own stdout/stderr: chunks reach gitlab-runner in the order they
/// came, with nothing held back in a line buffer.
pub(crate) struct RawOut {
    pub out: ManuallyDrop<std::fs::File>,
    pub err: ManuallyDrop<std::fs::File>,
}

impl RawOut {
    pub fn new() -> RawOut {
        // SAFETY: fds 1 and 2 stay open for the whole process; ManuallyDrop never closes them.
        unsafe {
            RawOut {
                out: ManuallyDrop::new(std::fs::File::from_raw_fd(1)),
                err: ManuallyDrop::new(std::fs::File::from_raw_fd(2)),
            }
        }
    }

    pub fn stdout(&mut self, bytes: &[u8]) {
        // A closed stdout (runner gone) must not stop us from reaping the exec.
        let _ = self.out.write_all(bytes);
    }

    pub fn stderr(&mut self, bytes: &[u8]) {
        let _ = self.err.write_all(bytes);
    }
}
