//! The runner-protocol harness: calls the built `ecs-executor` binary exactly as
//! gitlab-runner's custom executor does, so integration tests exercise the real protocol.
//!
//! It owns everything on gitlab-runner's side of the boundary: the job as GitLab sends it
//! ([`JobSpec`] → JOB_RESPONSE_FILE and the `CUSTOM_ENV_*` variables), the stage scripts in
//! gitlab-runner's bash shape ([`script`]), the four driver calls with gitlab-runner's argv,
//! environment, temp dirs, process groups and exit-code rules ([`Runner`], [`StageResult`]),
//! and the whole job flow with its retries, stage order and job log ([`Runner::run_job`],
//! [`JobOutcome`]). The protocol facts come from gitlab-runner's source; see
//! `/work/shared/docs/gitlab-custom-executor.md`.
//!
//! ```no_run
//! use ecs_executor_tests::runner::{Image, JobSpec, JobStatus, Runner};
//! let job = JobSpec::new(42, "group/project")
//!     .image(Image::new("alpine:3.20"))
//!     .script(["echo hello"])
//!     .after_script(["echo bye"]);
//! let outcome = Runner::new(&job).config_file("/etc/ecs-executor/config.toml").run_job();
//! outcome.print_log();
//! assert_eq!(outcome.status, JobStatus::Success);
//! ```

mod custom;
mod job;
mod job_flow;
mod process;
pub mod script;
mod wire;

pub use custom::{
    BUILD_FAILURE_EXIT_CODE, CallOutcome, ConfigOutput, GITLAB_PREPARE_RETRY_PAUSE, PREPARE_ATTEMPTS, Runner,
    SYSTEM_FAILURE_EXIT_CODE, StageResult, Verb,
};
pub use job::{BuildDirs, DEFAULT_RUNNER_VERSION, GitInfo, Image, JobSpec, JobState, Port, Step, Variable, go_json};
pub use job_flow::{JobOutcome, JobStatus, LogEntry, run_job};
pub use process::{KillReason, LogChunk, ProcessStatus, Stream, Termination};
pub use script::stages;
