//! One whole job, in gitlab-runner's order (`common/build.go`): config + prepare with up to
//! three attempts (cleanup after each failed one), the stages, after_script even after a
//! failure, the cache/artifact stages for success or failure, cleanup_file_variables, and
//! cleanup at the end — plus the job log as GitLab would show it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::runner::custom::{CallLimits, CallOutcome, PREPARE_ATTEMPTS, Runner, StageResult, Verb};
use crate::runner::process::{KillReason, Stream};
use crate::runner::script::{self, stages};

/// How the job ended, as GitLab would record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Success,
    /// `script_failure` with the script's exit code (what `allow_failure: exit_codes` sees).
    Failed {
        exit_code: i32,
    },
    /// `runner_system_failure`: exit SYSTEM_FAILURE_EXIT_CODE, an unknown exit code, a bad
    /// config output, or every prepare attempt failing. `message` is gitlab-runner's.
    SystemFailure {
        message: String,
    },
    Canceled,
    TimedOut,
}

/// One piece of the job log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A line gitlab-runner itself writes ("Preparing environment", "Job succeeded", ...).
    Runner(String),
    /// Driver output that reaches the job log: config's stderr, prepare's and run's stdout
    /// and stderr (cleanup's goes only to the runner's own log).
    Output {
        call: String,
        stream: Stream,
        bytes: Vec<u8>,
    },
}

/// The whole result of [`Runner::run_job`].
#[derive(Clone, Debug)]
pub struct JobOutcome {
    pub status: JobStatus,
    /// Every driver call, in order (cleanup ones included).
    pub calls: Vec<StageResult>,
    /// The job log in order, unmasked; [`JobOutcome::log_text`] masks it as GitLab does.
    pub log: Vec<LogEntry>,
    pub prepare_attempts: u32,
    /// Each prepare attempt's temp dir (deleted after its cleanup unless kept).
    pub temp_dirs: Vec<PathBuf>,
    masked: Vec<String>,
}

impl JobOutcome {
    pub fn is_success(&self) -> bool {
        self.status == JobStatus::Success
    }

    /// The calls as `config`, `prepare`, `run build_script`, `cleanup`, ...
    pub fn call_sequence(&self) -> Vec<String> {
        self.calls.iter().map(StageResult::describe).collect()
    }

    /// The stages passed to `run`, in order.
    pub fn stages_run(&self) -> Vec<String> {
        self.calls.iter().filter_map(|c| c.stage.clone()).collect()
    }

    /// The last `run` of `stage`.
    pub fn stage(&self, stage: &str) -> Option<&StageResult> {
        self.calls.iter().rev().find(|c| c.stage.as_deref() == Some(stage))
    }

    /// The job log as GitLab shows it: masked values replaced by `[MASKED]`.
    pub fn log_text(&self) -> String {
        let mut text = self.raw_log_text();
        for secret in &self.masked {
            text = text.replace(secret.as_str(), "[MASKED]");
        }
        text
    }

    /// The job log before masking (to check what the driver actually printed).
    pub fn raw_log_text(&self) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for entry in &self.log {
            match entry {
                LogEntry::Runner(line) => {
                    if bytes.last().is_some_and(|b| *b != b'\n') {
                        bytes.push(b'\n');
                    }
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.push(b'\n');
                }
                LogEntry::Output { bytes: out, .. } => bytes.extend_from_slice(out),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The first call of `verb` (`Verb::Prepare`, ...), if there was one.
    pub fn first_call(&self, verb: crate::runner::Verb) -> Option<&StageResult> {
        self.calls.iter().find(|c| c.verb == verb)
    }

    /// Prints the (masked) job log to stdout, e.g. for a demo or `--nocapture`.
    pub fn print_log(&self) {
        print!("{}", self.log_text());
    }
}

/// Why the job's script part ended badly (gitlab-runner's error values).
#[derive(Clone, Debug)]
enum Failure {
    /// A `BuildError`: the job failed; prepare is not retried.
    Build { exit_code: i32, message: String },
    /// Anything else: a system failure; prepare is retried.
    System { message: String },
    /// The job's context ended (cancel, abort, timeout).
    Interrupted,
}

impl Failure {
    fn from_call(result: &StageResult) -> Option<Failure> {
        if result.termination.is_some_and(|t| t.reason != KillReason::Timeout) {
            return Some(Failure::Interrupted);
        }
        let message = result.failure_message()?;
        Some(match result.outcome() {
            CallOutcome::BuildFailure { exit_code } => Failure::Build { exit_code, message },
            _ => Failure::System { message },
        })
    }

    fn message(&self) -> String {
        match self {
            Failure::Build { message, .. } | Failure::System { message } => message.clone(),
            Failure::Interrupted => "canceled".into(),
        }
    }
}

/// A `run` that did not happen or did not pass.
enum StageRun {
    /// gitlab-runner had nothing to run.
    Skipped,
    Ran(Option<Failure>),
    /// Not started: the job's context had already ended.
    NotStarted,
}

impl StageRun {
    fn failure(self) -> Option<Failure> {
        match self {
            StageRun::Skipped => None,
            StageRun::Ran(failure) => failure,
            StageRun::NotStarted => Some(Failure::Interrupted),
        }
    }
}

struct Flow {
    runner: Runner,
    calls: Vec<StageResult>,
    log: Vec<LogEntry>,
    /// Abort or job timeout: ends every call but cleanup.
    hard_deadline: Option<(Instant, KillReason)>,
    /// Graceful cancel: ends calls up to the user's steps.
    cancel_at: Option<Instant>,
}

impl Flow {
    fn log_line(&mut self, line: impl Into<String>) {
        self.log.push(LogEntry::Runner(line.into()));
    }

    fn hard_fired(&self) -> Option<KillReason> {
        self.hard_deadline
            .filter(|(at, _)| Instant::now() >= *at)
            .map(|(_, reason)| reason)
    }

    fn cancel_fired(&self) -> bool {
        self.cancel_at.is_some_and(|at| Instant::now() >= at)
    }

    /// One driver call under the job's deadlines; `None` when the job's context had already
    /// ended. `cancelable`: a graceful cancel ends this call too.
    fn call(&mut self, verb: Verb, run: Option<(String, String)>, cancelable: bool) -> Option<usize> {
        let mut deadline = if verb == Verb::Cleanup {
            None
        } else {
            self.hard_deadline
        };
        if cancelable
            && verb != Verb::Cleanup
            && let Some(at) = self.cancel_at
            && deadline.is_none_or(|(d, _)| at < d)
        {
            deadline = Some((at, KillReason::Cancel));
        }
        if verb != Verb::Cleanup && deadline.is_some_and(|(at, _)| Instant::now() >= at) {
            return None;
        }
        let result = self.runner.call(
            verb,
            run,
            CallLimits {
                job_deadline: deadline,
                in_job_flow: true,
            },
        );
        self.calls.push(result);
        Some(self.calls.len() - 1)
    }

    fn log_output(&mut self, index: usize, streams: &[Stream]) {
        let call = &self.calls[index];
        let name = call.describe();
        let entries: Vec<LogEntry> = call
            .log
            .iter()
            .filter(|c| streams.contains(&c.stream))
            .map(|c| LogEntry::Output {
                call: name.clone(),
                stream: c.stream,
                bytes: c.bytes.clone(),
            })
            .collect();
        self.log.extend(entries);
    }

    /// `executeStage`: generate the script, skip when empty, else announce and run it.
    fn stage(&mut self, stage: &str, cancelable: bool) -> StageRun {
        if self.hard_fired().is_some() || (cancelable && self.cancel_fired()) {
            return StageRun::NotStarted;
        }
        let Some(script) = script::stage_script(&self.runner.job, &self.runner.state, stage) else {
            return StageRun::Skipped;
        };
        self.log_line(stage_description(stage));
        let Some(index) = self.call(Verb::Run, Some((stage.to_owned(), script)), cancelable) else {
            return StageRun::NotStarted;
        };
        self.log_output(index, &[Stream::Stdout, Stream::Stderr]);
        StageRun::Ran(Failure::from_call(&self.calls[index]))
    }

    /// `attemptExecuteStage`, with clear_worktree before a second get_sources attempt.
    fn attempt_stage(&mut self, stage: &str, attempts_variable: &str) -> Option<Failure> {
        let attempts = self.attempts(attempts_variable);
        let mut failure = None;
        for attempt in 0..attempts {
            if attempt == 1 && stage == stages::GET_SOURCES {
                let _ = self.stage(stages::CLEAR_WORKTREE, true);
            }
            failure = self.stage(stage, true).failure();
            if failure.is_none() {
                break;
            }
        }
        failure
    }

    fn attempts(&self, variable: &str) -> u32 {
        let vars = self.runner.job.all_variables(&self.runner.state);
        let value = vars.iter().rev().find(|v| v.key == variable).map(|v| v.value.clone());
        value
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| (1..=10).contains(n))
            .unwrap_or(1)
    }

    /// config + prepare for one attempt (`executor.Prepare`).
    fn prepare_attempt(&mut self) -> Option<Failure> {
        let Some(index) = self.call(Verb::Config, None, true) else {
            return Some(Failure::Interrupted);
        };
        // config's stdout is the JSON for the runner; only stderr reaches the job log.
        self.log_output(index, &[Stream::Stderr]);
        let config = &self.calls[index];
        if let Some(failure) = Failure::from_call(config) {
            return Some(failure);
        }
        match config.config_output.clone() {
            Some(Err(message)) => return Some(Failure::System { message }),
            Some(Ok(output)) => match (output.driver_name, output.driver_version) {
                (Some(name), Some(version)) => {
                    self.log_line(format!("Using Custom executor with driver {name} {version}..."))
                }
                (Some(name), None) => self.log_line(format!("Using Custom executor with driver {name}...")),
                _ => self.log_line("Using Custom executor..."),
            },
            None => self.log_line("Using Custom executor..."),
        }
        let Some(index) = self.call(Verb::Prepare, None, true) else {
            return Some(Failure::Interrupted);
        };
        self.log_output(index, &[Stream::Stdout, Stream::Stderr]);
        Failure::from_call(&self.calls[index])
    }

    /// `executeScript`.
    fn execute_script(&mut self) -> Option<Failure> {
        if let Some(failure) = self.stage(stages::PREPARE_SCRIPT, true).failure() {
            // The job stops here: no after_script, no cache/artifacts, no file cleanup.
            return Some(match failure {
                Failure::Build { exit_code, message } => Failure::Build {
                    exit_code,
                    message: format!(
                        "prepare environment: {message}. Check \
                         https://docs.gitlab.com/runner/shells/index.html#shell-profile-loading for more information"
                    ),
                },
                other => other,
            });
        }
        let mut failure = self.attempt_stage(stages::GET_SOURCES, "GET_SOURCES_ATTEMPTS");
        if failure.is_none() {
            failure = self.attempt_stage(stages::RESTORE_CACHE, "RESTORE_CACHE_ATTEMPTS");
        }
        if failure.is_none() {
            failure = self.attempt_stage(stages::DOWNLOAD_ARTIFACTS, "ARTIFACT_DOWNLOAD_ATTEMPTS");
        }
        if failure.is_none() {
            let steps: Vec<String> = self
                .runner
                .job
                .steps()
                .iter()
                .filter(|s| s.name != "after_script")
                .map(|s| script::step_stage(&s.name))
                .collect();
            for stage in steps {
                failure = self.stage(&stage, true).failure();
                if failure.is_some() {
                    break;
                }
            }
            self.after_script(&failure);
        }
        // A graceful cancel skips the cache and artifact stages; an abort skips everything.
        let (archive, upload) = if failure.is_none() {
            (stages::ARCHIVE_CACHE, stages::UPLOAD_ARTIFACTS_ON_SUCCESS)
        } else {
            (stages::ARCHIVE_CACHE_ON_FAILURE, stages::UPLOAD_ARTIFACTS_ON_FAILURE)
        };
        let archive_failure = if self.cancel_fired() {
            None
        } else {
            self.stage(archive, false).failure()
        };
        let upload_failure = if self.cancel_fired() {
            None
        } else {
            self.stage(upload, false).failure()
        };
        let _ = self.stage(stages::CLEANUP_FILE_VARIABLES, false);
        failure.or(archive_failure).or(upload_failure)
    }

    /// `executeAfterScript`: CI_JOB_STATUS changes first (and stays changed for every later
    /// call, cleanup included); the result never changes the job's.
    fn after_script(&mut self, failure: &Option<Failure>) {
        let status = match failure {
            None => "success",
            Some(Failure::Interrupted) => match self.hard_fired() {
                Some(KillReason::JobTimeout) => "timedout",
                _ => "canceled",
            },
            Some(_) => "failed",
        };
        self.runner.state.job_status = status.into();
        let _ = self.stage(stages::AFTER_SCRIPT, false);
    }
}

/// `GetStageDescription`; the user's script is gitlab-runner's `step_script` here (the rename
/// to `build_script` happens only on the way to the driver).
fn stage_description(stage: &str) -> String {
    match stage {
        stages::PREPARE_SCRIPT => "Preparing environment".into(),
        stages::GET_SOURCES => "Getting source from Git repository".into(),
        stages::CLEAR_WORKTREE => "Deleting all tracked and untracked files due to source fetching failure".into(),
        stages::RESTORE_CACHE => "Restoring cache".into(),
        stages::DOWNLOAD_ARTIFACTS => "Downloading artifacts".into(),
        stages::AFTER_SCRIPT => "Running after_script".into(),
        stages::ARCHIVE_CACHE => "Saving cache for successful job".into(),
        stages::ARCHIVE_CACHE_ON_FAILURE => "Saving cache for failed job".into(),
        stages::UPLOAD_ARTIFACTS_ON_SUCCESS => "Uploading artifacts for successful job".into(),
        stages::UPLOAD_ARTIFACTS_ON_FAILURE => "Uploading artifacts for failed job".into(),
        stages::CLEANUP_FILE_VARIABLES => "Cleaning up project directory and file based variables".into(),
        stages::BUILD_SCRIPT => "Executing \"step_script\" stage of the job script".into(),
        other => format!("Executing \"{other}\" stage of the job script"),
    }
}

impl Runner {
    /// Runs the whole job as gitlab-runner would and returns what happened. Cleanup always
    /// runs once the executor was prepared (and after every failed prepare attempt).
    pub fn run_job(self) -> JobOutcome {
        let started = Instant::now();
        let hard_deadline = [
            self.abort_after.map(|d| (started + d, KillReason::Cancel)),
            self.job_timeout.map(|d| (started + d, KillReason::JobTimeout)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at);
        let cancel_at = self.cancel_after.map(|d| started + d);
        let masked = self.job.masked_values();
        let version = self.job.runner_version_value().to_owned();
        let short_token = self.job.runner_short_token_value().to_owned();
        let pause = self.prepare_retry_pause;
        let timeout = self
            .job_timeout
            .unwrap_or(Duration::from_secs(self.job.timeout().into()));

        let mut flow = Flow {
            runner: self,
            calls: Vec::new(),
            log: Vec::new(),
            hard_deadline,
            cancel_at,
        };
        flow.log_line(format!(
            "Running with gitlab-runner {version} (ecs-executor test harness)"
        ));
        flow.log_line(format!("  on harness-runner {short_token}"));
        flow.log_line("Preparing the \"custom\" executor");

        let mut prepare_attempts = 0;
        let mut prepared = false;
        let mut failure = None;
        for _ in 0..PREPARE_ATTEMPTS {
            prepare_attempts += 1;
            flow.runner.new_attempt();
            match flow.prepare_attempt() {
                None => {
                    prepared = true;
                    failure = None;
                    break;
                }
                Some(attempt_failure) => {
                    flow.call(Verb::Cleanup, None, false);
                    let stop = matches!(attempt_failure, Failure::Build { .. } | Failure::Interrupted)
                        || flow.hard_fired().is_some()
                        || flow.cancel_fired();
                    let message = attempt_failure.message();
                    failure = Some(attempt_failure);
                    if stop {
                        break;
                    }
                    flow.log_line(format!("WARNING: Preparation failed: {message}"));
                    flow.log_line(format!("Will be retried in {} ...", go_duration(pause)));
                    std::thread::sleep(pause);
                }
            }
        }

        if prepared {
            failure = flow.execute_script();
            flow.call(Verb::Cleanup, None, false);
        }

        let status = if let Some(reason) = flow.hard_fired().filter(|_| failure.is_some()) {
            match reason {
                KillReason::JobTimeout => JobStatus::TimedOut,
                _ => JobStatus::Canceled,
            }
        } else if flow.cancel_fired() && failure.is_some() {
            JobStatus::Canceled
        } else {
            match &failure {
                None => JobStatus::Success,
                Some(Failure::Build { exit_code, .. }) => JobStatus::Failed { exit_code: *exit_code },
                Some(Failure::System { message }) => JobStatus::SystemFailure {
                    message: message.clone(),
                },
                Some(Failure::Interrupted) => JobStatus::Canceled,
            }
        };
        let last_line = match (&status, &failure) {
            (JobStatus::Success, _) => "Job succeeded".to_owned(),
            (JobStatus::Canceled, _) => "ERROR: Job failed: canceled".to_owned(),
            // Go prints the Duration and then " seconds" after it.
            (JobStatus::TimedOut, _) => {
                format!(
                    "ERROR: Job failed: execution took longer than {} seconds",
                    go_duration(timeout)
                )
            }
            (JobStatus::SystemFailure { message }, _) => {
                format!("ERROR: Job failed (system failure): {message}")
            }
            (JobStatus::Failed { .. }, Some(f)) => format!("ERROR: Job failed: {}", f.message()),
            (JobStatus::Failed { exit_code }, None) => {
                format!("ERROR: Job failed: exit status {exit_code}")
            }
        };
        flow.log_line(last_line);

        let temp_dirs = flow.runner.temp_dirs().to_vec();
        JobOutcome {
            status,
            calls: flow.calls,
            log: flow.log,
            prepare_attempts,
            temp_dirs,
            masked,
        }
    }
}

/// Go's `time.Duration.String()` for the values a test uses (`1h0m0s`, `1.5s`, `500ms`).
fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1000.0;
        return format!("{}ms", trim_float(ms));
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let s = if frac == 0 {
        s.to_string()
    } else {
        trim_float(s as f64 + f64::from(frac) / 1e9)
    };
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

fn trim_float(x: f64) -> String {
    let text = format!("{x:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Runs `job` with the executor binary found as [`Runner::executor`] describes and default
/// settings; see [`Runner`] for options.
pub fn run_job(job: &crate::runner::job::JobSpec) -> JobOutcome {
    Runner::new(job).run_job()
}
