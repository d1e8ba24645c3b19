//! The four driver calls as gitlab-runner's custom executor makes them
//! (`executors/custom/custom.go`, `executors/custom/command/command.go`): which argv, which
//! environment, which working directory, and how each exit is classified.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::runner::job::{JobSpec, JobState};
use crate::runner::process::{self, Captured, KillReason, LogChunk, ProcessStatus, Termination};
use crate::runner::script;

/// Exit code a driver uses for "the job's script failed" (`BUILD_FAILURE_EXIT_CODE`).
pub const BUILD_FAILURE_EXIT_CODE: i32 = 1;
/// Exit code a driver uses for "we or the infrastructure failed" (`SYSTEM_FAILURE_EXIT_CODE`).
pub const SYSTEM_FAILURE_EXIT_CODE: i32 = 2;
/// gitlab-runner's pause between prepare attempts (`PreparationRetryInterval`).
pub const GITLAB_PREPARE_RETRY_PAUSE: Duration = Duration::from_secs(3);
/// gitlab-runner's number of prepare attempts (`PreparationRetries`).
pub const PREPARE_ATTEMPTS: u32 = 3;

/// The four calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Config,
    Prepare,
    Run,
    Cleanup,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Config => "config",
            Verb::Prepare => "prepare",
            Verb::Run => "run",
            Verb::Cleanup => "cleanup",
        }
    }
}

/// How gitlab-runner reads a call's end (`command.waitForCommand`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    /// Exit `BUILD_FAILURE_EXIT_CODE`: the job's script failed with `exit_code` — the first
    /// line of BUILD_EXIT_CODE_FILE, or 1 when the driver wrote no file.
    BuildFailure {
        exit_code: i32,
    },
    /// Exit `SYSTEM_FAILURE_EXIT_CODE` (`runner_system_failure`; retried for prepare).
    SystemFailure,
    /// Any other exit code, death by a signal (code -1), or exit 1 with a BUILD_EXIT_CODE_FILE
    /// whose first line is not an integer (then gitlab-runner reports code 2). gitlab-runner
    /// treats it as a system failure.
    UnknownFailure {
        exit_code: i32,
    },
}

/// The driver's config output (`api.ConfigExecOutput`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigOutput {
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub builds_dir_is_shared: Option<bool>,
    pub hostname: Option<String>,
    pub driver_name: Option<String>,
    pub driver_version: Option<String>,
    pub job_env: BTreeMap<String, String>,
    pub shell: Option<String>,
}

impl ConfigOutput {
    /// Parses config's stdout as gitlab-runner does: empty output is fine; anything else must
    /// decode into the config struct with Go's `json.Unmarshal` rules — a JSON object (or
    /// `null`), known keys of the right types, unknown keys ignored, key names matched
    /// case-insensitively. Whitespace-only output is an error in Go, and here.
    pub fn parse(stdout: &[u8]) -> Result<ConfigOutput, String> {
        if stdout.is_empty() {
            return Ok(ConfigOutput::default());
        }
        let value: Value =
            serde_json::from_slice(stdout).map_err(|e| format!("error while parsing JSON output: {e}"))?;
        let object = match value {
            Value::Null => return Ok(ConfigOutput::default()),
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "error while parsing JSON output: cannot unmarshal {} into Go value of type custom.ConfigExecOutput",
                    json_kind(&other)
                ));
            }
        };
        let mut out = ConfigOutput::default();
        for (key, value) in &object {
            let field = |name: &str| key.eq_ignore_ascii_case(name);
            if field("builds_dir") {
                out.builds_dir = opt_string(value, key)?;
            } else if field("cache_dir") {
                out.cache_dir = opt_string(value, key)?;
            } else if field("hostname") {
                out.hostname = opt_string(value, key)?;
            } else if field("shell") {
                out.shell = opt_string(value, key)?;
            } else if field("builds_dir_is_shared") {
                out.builds_dir_is_shared = match value {
                    Value::Null => None,
                    Value::Bool(b) => Some(*b),
                    other => return Err(type_error(key, other, "bool")),
                };
            } else if field("driver") {
                match value {
                    Value::Null => {}
                    Value::Object(driver) => {
                        for (k, v) in driver {
                            if k.eq_ignore_ascii_case("name") {
                                out.driver_name = opt_string(v, k)?;
                            } else if k.eq_ignore_ascii_case("version") {
                                out.driver_version = opt_string(v, k)?;
                            }
                        }
                    }
                    other => return Err(type_error(key, other, "api.DriverInfo")),
                }
            } else if field("job_env") {
                match value {
                    Value::Null => {}
                    Value::Object(env) => {
                        for (k, v) in env {
                            match v {
                                Value::String(s) => {
                                    out.job_env.insert(k.clone(), s.clone());
                                }
                                other => return Err(type_error(k, other, "string")),
                            }
                        }
                    }
                    other => return Err(type_error(key, other, "map[string]string")),
                }
            }
        }
        Ok(out)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(key: &str, value: &Value, go_type: &str) -> String {
    format!(
        "error while parsing JSON output: json: cannot unmarshal {} into field {key} of type {go_type}",
        json_kind(value)
    )
}

fn opt_string(value: &Value, key: &str) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(type_error(key, other, "string")),
    }
}

/// Everything about one driver call.
#[derive(Clone, Debug)]
pub struct StageResult {
    pub verb: Verb,
    /// The stage name for `run`.
    pub stage: Option<String>,
    pub program: PathBuf,
    /// argv after the program: `[--config FILE] [<verb>_args...] <verb> [<script> <stage>]`.
    pub args: Vec<String>,
    /// The environment exactly as passed (in order; later duplicates won).
    pub env: Vec<(String, String)>,
    /// cwd and TMPDIR of the call (the attempt's temp dir).
    pub temp_dir: PathBuf,
    pub script_path: Option<PathBuf>,
    /// The script's content (the file itself goes with the temp dir after cleanup).
    pub script: Option<String>,
    pub pid: u32,
    pub status: ProcessStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// stdout and stderr in arrival order.
    pub log: Vec<LogChunk>,
    /// BUILD_EXIT_CODE_FILE's content, if the driver wrote it.
    pub build_exit_code_file: Option<String>,
    pub duration: Duration,
    /// Set when the harness sent SIGTERM (and maybe SIGKILL) to the group.
    pub termination: Option<Termination>,
    /// The driver exited but something it started kept stdout/stderr open — gitlab-runner
    /// would hang waiting for it.
    pub pipes_held_open: bool,
    /// For `config`: the parsed output (Err = what gitlab-runner would fail with). `None` for
    /// other verbs and for a config call that did not exit 0.
    pub config_output: Option<Result<ConfigOutput, String>>,
}

impl StageResult {
    pub fn exit_code(&self) -> Option<i32> {
        match self.status {
            ProcessStatus::Exited(code) => Some(code),
            ProcessStatus::Signaled(_) => None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == ProcessStatus::Exited(0)
    }

    /// True when gitlab-runner would report the job's script as failed with `code`.
    pub fn is_build_failure(&self, code: i32) -> bool {
        self.outcome() == CallOutcome::BuildFailure { exit_code: code }
    }

    /// True for exit `SYSTEM_FAILURE_EXIT_CODE`.
    pub fn is_system_failure(&self) -> bool {
        self.outcome() == CallOutcome::SystemFailure
    }

    /// True for what gitlab-runner calls an unknown failure (also a system failure to GitLab).
    pub fn is_unknown_failure(&self) -> bool {
        matches!(self.outcome(), CallOutcome::UnknownFailure { .. })
    }

    /// gitlab-runner's classification of this call's end (`waitForCommand` and
    /// `parseBuildFailure`).
    pub fn outcome(&self) -> CallOutcome {
        match self.status {
            ProcessStatus::Exited(0) => CallOutcome::Success,
            ProcessStatus::Exited(BUILD_FAILURE_EXIT_CODE) => match &self.build_exit_code_file {
                None => CallOutcome::BuildFailure {
                    exit_code: BUILD_FAILURE_EXIT_CODE,
                },
                Some(content) => match parse_exit_code_file(content) {
                    Some(code) => CallOutcome::BuildFailure { exit_code: code },
                    None => CallOutcome::UnknownFailure {
                        exit_code: SYSTEM_FAILURE_EXIT_CODE,
                    },
                },
            },
            ProcessStatus::Exited(SYSTEM_FAILURE_EXIT_CODE) => CallOutcome::SystemFailure,
            ProcessStatus::Exited(code) => CallOutcome::UnknownFailure { exit_code: code },
            ProcessStatus::Signaled(_) => CallOutcome::UnknownFailure { exit_code: -1 },
        }
    }

    /// The error text gitlab-runner would print for this call, `None` on success.
    pub fn failure_message(&self) -> Option<String> {
        let exit = go_exit_error(self.status);
        match self.outcome() {
            CallOutcome::Success => None,
            CallOutcome::BuildFailure { exit_code } => Some(if self.build_exit_code_file.is_some() {
                format!("exit status {exit_code}")
            } else {
                exit
            }),
            CallOutcome::SystemFailure => Some(exit),
            CallOutcome::UnknownFailure { exit_code } => Some(format!(
                "unknown Custom executor executable exit code {exit_code}; executable execution terminated with: {exit}"
            )),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout and stderr merged in arrival order.
    pub fn log_text(&self) -> String {
        let bytes: Vec<u8> = self.log.iter().flat_map(|c| c.bytes.iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The value the call saw for `key` (the last occurrence wins, as for the child).
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `config`, `prepare`, `run build_script`, `cleanup`.
    pub fn describe(&self) -> String {
        match &self.stage {
            Some(stage) => format!("{} {stage}", self.verb.as_str()),
            None => self.verb.as_str().to_owned(),
        }
    }
}

/// `bufio.ScanLines` + `strconv.Atoi` on the first line.
fn parse_exit_code_file(content: &str) -> Option<i32> {
    let first = content.split('\n').next().unwrap_or("");
    let first = first.strip_suffix('\r').unwrap_or(first);
    first.parse::<i32>().ok()
}

/// Go's `exec.ExitError` text.
fn go_exit_error(status: ProcessStatus) -> String {
    match status {
        ProcessStatus::Exited(code) => format!("exit status {code}"),
        ProcessStatus::Signaled(sig) => {
            let name = match sig {
                libc::SIGKILL => "killed".to_owned(),
                libc::SIGTERM => "terminated".to_owned(),
                libc::SIGINT => "interrupt".to_owned(),
                libc::SIGABRT => "aborted".to_owned(),
                libc::SIGSEGV => "segmentation fault".to_owned(),
                other => format!("signal {other}"),
            };
            format!("signal: {name}")
        }
    }
}

/// How a call may be ended early: single calls use the Runner's settings; the job flow
/// (`run_job`) passes its own deadline instead of the per-call cancel.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallLimits {
    /// Set by the job flow: its abort/timeout/cancel deadline for this call, if any.
    pub job_deadline: Option<(Instant, KillReason)>,
    pub in_job_flow: bool,
}

/// A runner for one job: owns the job's temp dirs and drives the executor binary through
/// `config`, `prepare`, `run <script> <stage>` and `cleanup` exactly as gitlab-runner does.
/// Use the calls one by one, or [`Runner::run_job`] for gitlab-runner's whole flow.
pub struct Runner {
    pub(crate) job: JobSpec,
    executor: Option<PathBuf>,
    config_file: Option<PathBuf>,
    extra_args: BTreeMap<Verb, Vec<String>>,
    base_env: Vec<(String, String)>,
    pub(crate) state: JobState,
    /// Parsed config output of the current attempt; `job_env` lives here.
    config: Option<ConfigOutput>,
    temp_dir: Option<PathBuf>,
    temp_dirs: Vec<PathBuf>,
    keep_temp_dirs: bool,
    seq: u32,
    call_timeout: Option<Duration>,
    pub(crate) cancel_after: Option<Duration>,
    pub(crate) abort_after: Option<Duration>,
    pub(crate) job_timeout: Option<Duration>,
    kill_grace: Duration,
    drain_limit: Duration,
    pub(crate) prepare_retry_pause: Duration,
    share_exit_code_file: bool,
}

impl Runner {
    /// A runner for `job`. Nothing runs yet; the executor binary is looked up at the first
    /// call (see [`Runner::executor`]).
    pub fn new(job: &JobSpec) -> Self {
        let mut base_env = Vec::new();
        for key in ["PATH", "HOME"] {
            if let Ok(value) = std::env::var(key) {
                base_env.push((key.to_owned(), value));
            }
        }
        Self {
            job: job.clone(),
            executor: None,
            config_file: None,
            extra_args: BTreeMap::new(),
            base_env,
            state: JobState::default(),
            config: None,
            temp_dir: None,
            temp_dirs: Vec::new(),
            keep_temp_dirs: false,
            seq: 0,
            call_timeout: None,
            cancel_after: None,
            abort_after: None,
            job_timeout: None,
            kill_grace: Duration::from_secs(5),
            drain_limit: Duration::from_secs(5),
            prepare_retry_pause: Duration::ZERO,
            share_exit_code_file: false,
        }
    }

    /// The driver binary. Default: `$ECS_EXECUTOR_BIN`, else `$CARGO_TARGET_DIR/debug/
    /// ecs-executor`, else next to the running test binary (`<target>/debug/`), else the
    /// workspace's `target/debug/`.
    pub fn executor(mut self, path: impl Into<PathBuf>) -> Self {
        self.executor = Some(path.into());
        self
    }
    /// Passes `--config FILE` before the verb on every call.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }
    /// `[runners.custom] <verb>_args`: extra arguments before the verb.
    pub fn args<S: Into<String>>(mut self, verb: Verb, args: impl IntoIterator<Item = S>) -> Self {
        self.extra_args.insert(verb, args.into_iter().map(Into::into).collect());
        self
    }
    /// Adds to the clean base environment (PATH and HOME of the test process).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.base_env.push((key.into(), value.into()));
        self
    }
    /// Ends each call after `timeout` (gitlab-runner's `*_exec_timeout`): SIGTERM to the
    /// group, SIGKILL after the grace period.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }
    /// Cancels the job `after` its start, gracefully ("canceling"): the running call gets
    /// SIGTERM; in [`Runner::run_job`] after_script still runs with `CI_JOB_STATUS=canceled`,
    /// cache and artifact stages do not. For single calls it counts from each call's start
    /// (cleanup excepted: it always gets a fresh context).
    pub fn cancel_after(mut self, after: Duration) -> Self {
        self.cancel_after = Some(after);
        self
    }
    /// Aborts the job `after` its start ([`Runner::run_job`] only): the running call gets
    /// SIGTERM and no further stage runs; cleanup still does.
    pub fn abort_after(mut self, after: Duration) -> Self {
        self.abort_after = Some(after);
        self
    }
    /// The job timeout ([`Runner::run_job`] only): like an abort, reported as timed out.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }
    /// Time between SIGTERM and SIGKILL (gitlab-runner's `graceful_kill_timeout`; 5 s here).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }
    /// How long to wait for stdout/stderr to close after a driver exits (5 s).
    pub fn drain_limit(mut self, limit: Duration) -> Self {
        self.drain_limit = limit;
        self
    }
    /// Pause between prepare attempts; 0 by default here, gitlab-runner's is
    /// [`GITLAB_PREPARE_RETRY_PAUSE`].
    pub fn prepare_retry_pause(mut self, pause: Duration) -> Self {
        self.prepare_retry_pause = pause;
        self
    }
    /// Keeps the temp dirs after cleanup (gitlab-runner deletes them), for debugging.
    pub fn keep_temp_dirs(mut self) -> Self {
        self.keep_temp_dirs = true;
        self
    }
    /// Uses one BUILD_EXIT_CODE_FILE per attempt (`<tmp>/build_exit_code`, never deleted
    /// between stages), exactly as gitlab-runner does, instead of a fresh path per call.
    pub fn share_exit_code_file(mut self) -> Self {
        self.share_exit_code_file = true;
        self
    }

    pub fn job(&self) -> &JobSpec {
        &self.job
    }
    /// What gitlab-runner currently knows (dirs, job status, config's hostname and shell).
    pub fn state(&self) -> &JobState {
        &self.state
    }
    /// `job_env` from this attempt's config output.
    pub fn job_env(&self) -> BTreeMap<String, String> {
        self.config.as_ref().map(|c| c.job_env.clone()).unwrap_or_default()
    }
    /// The current attempt's temp dir, if one exists.
    pub fn temp_dir(&self) -> Option<&Path> {
        self.temp_dir.as_deref()
    }
    /// Every attempt's temp dir, oldest first.
    pub fn temp_dirs(&self) -> &[PathBuf] {
        &self.temp_dirs
    }

    /// Starts a new prepare attempt as gitlab-runner does: a new executor object (no
    /// job_env, no config output) with a NEW temp dir holding the JOB_RESPONSE_FILE. Calls
    /// start one on demand.
    pub fn new_attempt(&mut self) {
        self.remove_temp_dir();
        self.config = None;
        let dir = make_temp_dir();
        write_private(
            &dir.join("response.json"),
            self.job.job_response_json().as_bytes(),
            0o600,
        );
        self.temp_dirs.push(dir.clone());
        self.temp_dir = Some(dir);
    }

    /// `config`: stdout must be empty or the config JSON; the parsed output lands in
    /// [`StageResult::config_output`] and, when valid, sets job_env, the builds dir,
    /// hostname and shell for the later calls.
    pub fn config(&mut self) -> StageResult {
        self.call(Verb::Config, None, CallLimits::default())
    }

    /// `prepare`.
    pub fn prepare(&mut self) -> StageResult {
        self.call(Verb::Prepare, None, CallLimits::default())
    }

    /// `run <script> <stage>` with the script gitlab-runner would generate for `stage`;
    /// `None` when gitlab-runner would skip the stage.
    pub fn run(&mut self, stage: &str) -> Option<StageResult> {
        self.ensure_dirs();
        let script = script::stage_script(&self.job, &self.state, stage)?;
        Some(self.run_script(stage, &script))
    }

    /// `run <script> <stage>` with a script of your own (e.g. [`script::wrap`] around
    /// [`script::user_lines_body`]).
    pub fn run_script(&mut self, stage: &str, script: &str) -> StageResult {
        self.call(
            Verb::Run,
            Some((stage.to_owned(), script.to_owned())),
            CallLimits::default(),
        )
    }

    /// `cleanup`, then the temp dir goes, as in gitlab-runner.
    pub fn cleanup(&mut self) -> StageResult {
        self.call(Verb::Cleanup, None, CallLimits::default())
    }

    /// The `CUSTOM_ENV_*` pairs the next call would get.
    pub fn custom_env(&self) -> Vec<(String, String)> {
        self.job.custom_env(&self.state)
    }

    /// With no config output yet (no config_exec), config.toml's builds_dir applies.
    fn ensure_dirs(&mut self) {
        if self.state.dirs.is_none() {
            self.state.dirs = Some(self.job.build_dirs(self.job.default_builds_dir(), false));
        }
    }

    pub(crate) fn call(&mut self, verb: Verb, run: Option<(String, String)>, limits: CallLimits) -> StageResult {
        if self.temp_dir.is_none() {
            self.new_attempt();
        }
        if matches!(verb, Verb::Prepare | Verb::Run) {
            self.ensure_dirs();
        }
        self.seq += 1;
        let seq = self.seq;
        let temp_dir = self.temp_dir.clone().expect("new_attempt made one");
        let program = self.executor_path();

        let mut args = Vec::new();
        if let Some(file) = &self.config_file {
            args.push("--config".to_owned());
            args.push(file.display().to_string());
        }
        args.extend(self.extra_args.get(&verb).cloned().unwrap_or_default());
        args.push(verb.as_str().to_owned());
        let (stage, script_path, script) = match run {
            Some((stage, script)) => {
                // os.MkdirTemp(tempDir, "script") + script.<ext>, both private to the runner.
                let dir = temp_dir.join(format!("script{seq}"));
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .expect("create the script dir");
                let path = dir.join("script.sh");
                write_private(&path, script.as_bytes(), 0o700);
                args.push(path.display().to_string());
                args.push(stage.clone());
                (Some(stage), Some(path), Some(script))
            }
            None => (None, None, None),
        };

        let exit_code_file = if self.share_exit_code_file {
            temp_dir.join("build_exit_code")
        } else {
            temp_dir.join(format!("build_exit_code.{seq}"))
        };
        let env = self.call_env(verb, &temp_dir, &exit_code_file);

        let started = Instant::now();
        let mut deadline = limits.job_deadline;
        let mut tighten = |at: Instant, reason: KillReason| {
            if deadline.is_none_or(|(d, _)| at < d) {
                deadline = Some((at, reason));
            }
        };
        if let Some(timeout) = self.call_timeout {
            tighten(started + timeout, KillReason::Timeout);
        }
        // Direct calls: cancel counts from the call's start. Cleanup never gets cancelled.
        if let (Some(after), true, false) = (self.cancel_after, verb != Verb::Cleanup, limits.in_job_flow) {
            tighten(started + after, KillReason::Cancel);
        }

        let captured = process::run(process::Spawn {
            program: &program,
            args: &args,
            cwd: &temp_dir,
            env: &env,
            deadline,
            kill_grace: self.kill_grace,
            drain_limit: self.drain_limit,
        })
        .unwrap_or_else(|e| panic!("cannot start the executor {}: {e}", program.display()));
        let build_exit_code_file = fs::read(&exit_code_file)
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());

        let Captured {
            pid,
            status,
            stdout,
            stderr,
            log,
            duration,
            termination,
            pipes_held_open,
        } = captured;
        let mut result = StageResult {
            verb,
            stage,
            program,
            args,
            env,
            temp_dir,
            script_path,
            script,
            pid,
            status,
            stdout,
            stderr,
            log,
            build_exit_code_file,
            duration,
            termination,
            pipes_held_open,
            config_output: None,
        };

        match verb {
            Verb::Config if result.is_success() => {
                let parsed = ConfigOutput::parse(&result.stdout);
                if let Ok(config) = &parsed {
                    self.apply_config(config.clone());
                }
                result.config_output = Some(parsed);
            }
            Verb::Cleanup => self.remove_temp_dir(),
            _ => {}
        }
        result
    }

    /// What gitlab-runner does with a valid config output: job_env for later calls, then
    /// `StartBuild` with the (maybe overridden) builds dir.
    fn apply_config(&mut self, config: ConfigOutput) {
        let builds_dir = config
            .builds_dir
            .clone()
            .unwrap_or_else(|| self.job.default_builds_dir().to_owned());
        let shared = config.builds_dir_is_shared.unwrap_or(false);
        self.state.dirs = Some(self.job.build_dirs(&builds_dir, shared));
        self.state.hostname = config.hostname.clone().filter(|h| !h.is_empty());
        self.state.shell = config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "bash".into());
        self.config = Some(config);
    }

    /// The call's environment in gitlab-runner's order (later entries win): the base, the
    /// runner's own variables, job_env (not for config: it does not exist yet), then every
    /// job variable as `CUSTOM_ENV_*`.
    fn call_env(&self, verb: Verb, temp_dir: &Path, exit_code_file: &Path) -> Vec<(String, String)> {
        let mut env = self.base_env.clone();
        env.push(("TMPDIR".into(), temp_dir.display().to_string()));
        env.push(("BUILD_FAILURE_EXIT_CODE".into(), BUILD_FAILURE_EXIT_CODE.to_string()));
        env.push(("SYSTEM_FAILURE_EXIT_CODE".into(), SYSTEM_FAILURE_EXIT_CODE.to_string()));
        env.push(("BUILD_EXIT_CODE_FILE".into(), exit_code_file.display().to_string()));
        env.push((
            "JOB_RESPONSE_FILE".into(),
            temp_dir.join("response.json").display().to_string(),
        ));
        if verb != Verb::Config {
            env.extend(self.job_env());
        }
        env.extend(self.job.custom_env(&self.state));
        env
    }

    fn remove_temp_dir(&mut self) {
        if let Some(dir) = self.temp_dir.take()
            && !self.keep_temp_dirs
        {
            let _ = fs::remove_dir_all(dir);
        }
    }

    fn executor_path(&self) -> PathBuf {
        if let Some(path) = &self.executor {
            return path.clone();
        }
        let mut tried = Vec::new();
        if let Ok(path) = std::env::var("ECS_EXECUTOR_BIN") {
            let path = PathBuf::from(path);
            if path.is_file() {
                return path;
            }
            panic!(
                "ECS_EXECUTOR_BIN={} does not exist; build it or unset the variable",
                path.display()
            );
        }
        if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
            tried.push(PathBuf::from(target).join("debug/ecs-executor"));
        }
        // Test binaries live in <target>/debug/deps/.
        if let Ok(exe) = std::env::current_exe()
            && let Some(debug) = exe.parent().and_then(Path::parent)
        {
            tried.push(debug.join("ecs-executor"));
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        tried.push(workspace.join("target/debug/ecs-executor"));
        if let Some(found) = tried.iter().find(|p| p.is_file()) {
            return found.clone();
        }
        let list: Vec<String> = tried.iter().map(|p| format!("  {}", p.display())).collect();
        panic!(
            "the ecs-executor binary was not found; build it first \
             (`CARGO_TARGET_DIR=/var/tmp/ecs-executor/target cargo build -p ecs-executor`) \
             or point ECS_EXECUTOR_BIN at it. Looked in:\n{}",
            list.join("\n")
        );
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.remove_temp_dir();
    }
}

/// `os.MkdirTemp("", "custom-executor")`: a new private dir under the system temp dir.
fn make_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("custom-executor{}{n}{nanos}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create a temp dir under {}: {e}", base.display()),
        }
    }
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    file.write_all(bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
