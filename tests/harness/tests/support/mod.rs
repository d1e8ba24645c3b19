//! Support for the end-to-end job tests (`job_e2e.rs`): one isolated executor setup per test
//! (its own config copy with a unique `family_prefix` and `state_dir`, its own runner token and
//! job ids), ECS checks that a job left no task running, and Docker access to the job's
//! containers over the stand-in's Unix socket.

#![allow(dead_code)]

pub mod capacity;
pub mod faults;
pub mod standin_agent;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::{DesiredStatus, Task};
use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use ecs_executor_tests::runner::{Image, JobSpec, Runner, StageResult, script};
#[allow(unused_imports)]
pub use ecs_executor_tests::standin::docker_exec;
use ecs_executor_tests::standin::{Standin, unique_name};

/// How long the agent stand-in may take to stop a task's containers after StopTask.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One test's own executor setup on the shared stand-in.
pub struct E2e {
    pub standin: Standin,
    pub name: String,
    /// `/var/tmp/ecs-executor/e2e/<unique>`: the config copy and the state dir.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub family_prefix: String,
    /// The runner's short token: part of every job's ECS `startedBy` and state file name.
    pub runner_token: String,
    rt: tokio::runtime::Runtime,
    pub ecs: aws_sdk_ecs::Client,
    /// `startedBy` of every job handed out, for the safety net in `Drop`.
    jobs: Mutex<Vec<String>>,
}

impl E2e {
    /// A fresh setup for the test `name`: a copy of `$STATE/executor.toml` with this test's
    /// `family_prefix` and `state_dir`.
    pub fn new(name: &str) -> E2e {
        Self::with_config_edit(name, |text| text)
    }

    /// As [`E2e::new`], with the config text passed through `edit` last.
    pub fn with_config_edit(name: &str, edit: impl FnOnce(String) -> String) -> E2e {
        let standin = Standin::require();
        let unique = unique_name(&format!("e2e-{name}"));
        let dir = PathBuf::from("/var/tmp/ecs-executor/e2e").join(&unique);
        std::fs::create_dir_all(&dir).expect("create the test dir");
        let state_dir = dir.join("state");
        // ECS families: letters, digits, '-' and '_'; the executor adds `-<16 hex>`.
        let family_prefix: String = unique
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
            .collect();
        let base = std::fs::read_to_string(standin.executor_config())
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", standin.executor_config().display()));
        // Small tasks: the stand-in's one instance has 4096 CPU units and 7482 MiB, and the
        // tests (this file's, run in parallel, and other test files') share it.
        let ours = ["state_dir", "family_prefix", "cpu", "memory"];
        let rest: Vec<&str> = base
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter(|l| {
                !ours
                    .iter()
                    .any(|k| l.split('=').next().is_some_and(|key| key.trim() == *k))
            })
            .chain(base.lines().skip_while(|l| !l.trim_start().starts_with('[')))
            .collect();
        let text = format!(
            "# per-test copy of {} for {name}\nfamily_prefix = \"{family_prefix}\"\nstate_dir = \"{}\"\ncpu = 128\nmemory = 256\n{}\n",
            standin.executor_config().display(),
            state_dir.display(),
            rest.join("\n")
        );
        let config = dir.join("executor.toml");
        let text = edit(text);
        std::fs::write(&config, &text).expect("write the config copy");
        // A test may point the executor at a cluster of its own (`standin_agent`): the ECS
        // checks below then look there.
        let mut standin = standin;
        if let Some(cluster) = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("cluster").and_then(|c| c.as_str()).map(String::from))
        {
            standin.cluster = cluster;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ecs = rt.block_on(standin.ecs(3));
        E2e {
            standin,
            name: name.to_string(),
            dir,
            config,
            state_dir,
            family_prefix,
            runner_token: runner_token(),
            rt,
            ecs,
            jobs: Mutex::default(),
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A job with a new id for this test's runner, running the stand-in's busybox build image.
    pub fn job(&self) -> JobSpec {
        let job = JobSpec::new(job_id(), format!("e2e/{}", self.name.replace('_', "-")))
            .runner_short_token(&self.runner_token)
            .image(Image::new(&self.standin.images.build));
        self.jobs.lock().unwrap().push(self.started_by(&job));
        job
    }

    /// The harness runner for `job` with this test's config.
    pub fn runner(&self, job: &JobSpec) -> Runner {
        Runner::new(job).config_file(&self.config)
    }

    /// This test's calls of `action` after `mark`: those naming its family prefix.
    pub fn own_calls_since(&self, mark: u64, action: &str) -> Vec<ecs_executor_tests::standin::RecordedRequest> {
        self.standin.calls_since(mark, action, &self.family_prefix)
    }

    /// ECS `startedBy` of a job, as the executor sets it.
    pub fn started_by(&self, job: &JobSpec) -> String {
        started_by(&self.runner_token, job.id())
    }

    /// The job's state file (present between prepare and cleanup).
    pub fn state_file(&self, job: &JobSpec) -> PathBuf {
        self.state_dir
            .join("jobs")
            .join(format!("{}-{}.json", self.runner_token, job.id()))
    }

    /// Every task the job started, whatever its state.
    pub fn tasks_of(&self, job: &JobSpec) -> Vec<Task> {
        self.tasks_started_by(&self.started_by(job))
    }

    /// Every task with this ECS `startedBy` in the stand-in's cluster, whatever its state.
    pub fn tasks_started_by(&self, started_by: &str) -> Vec<Task> {
        self.block_on(async {
            let mut arns = Vec::new();
            for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
                let out = self
                    .ecs
                    .list_tasks()
                    .cluster(&self.standin.cluster)
                    .started_by(started_by)
                    .desired_status(desired)
                    .send()
                    .await
                    .expect("ListTasks");
                arns.extend(out.task_arns().iter().cloned());
            }
            if arns.is_empty() {
                return Vec::new();
            }
            let out = self
                .ecs
                .describe_tasks()
                .cluster(&self.standin.cluster)
                .set_tasks(Some(arns))
                .send()
                .await
                .expect("DescribeTasks");
            out.tasks().to_vec()
        })
    }

    /// The job's one task that is meant to run (prepare finished, cleanup not yet).
    pub fn running_task(&self, job: &JobSpec) -> Task {
        let running: Vec<Task> = self
            .tasks_of(job)
            .into_iter()
            .filter(|t| t.desired_status() == Some("RUNNING"))
            .collect();
        assert_eq!(
            running.len(),
            1,
            "expected exactly one running task for {}: {running:#?}",
            self.started_by(job)
        );
        running.into_iter().next().unwrap()
    }

    /// After cleanup: no task of the job is meant to run, and every one of them reaches
    /// lastStatus STOPPED (the agent stopped its containers). Returns the tasks.
    pub fn assert_no_task_left(&self, job: &JobSpec) -> Vec<Task> {
        let started_by = self.started_by(job);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let tasks = self.tasks_of(job);
            for t in &tasks {
                assert_eq!(
                    t.desired_status(),
                    Some("STOPPED"),
                    "task {} of {started_by} is still meant to run after cleanup: {t:#?}",
                    t.task_arn().unwrap_or_default()
                );
            }
            if tasks.iter().all(|t| t.last_status() == Some("STOPPED")) {
                return tasks;
            }
            if Instant::now() >= deadline {
                let agent: Vec<String> = tasks
                    .iter()
                    .map(|t| self.agent_log_about(t.task_arn().unwrap_or_default()))
                    .collect();
                panic!(
                    "tasks of {started_by} did not reach STOPPED within {STOP_TIMEOUT:?}: {tasks:#?}\nagent stand-in log:\n{}",
                    agent.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// As [`E2e::assert_no_task_left`], and the job did start exactly `n` tasks.
    pub fn assert_tasks_stopped(&self, job: &JobSpec, n: usize) -> Vec<Task> {
        let tasks = self.assert_no_task_left(job);
        assert_eq!(tasks.len(), n, "tasks started by {}: {tasks:#?}", self.started_by(job));
        tasks
    }

    /// The task's container `name` (`build`, `helper`) in Docker: its id.
    pub fn container_id(&self, task_arn: &str, name: &str) -> String {
        let docker = self.standin.docker();
        self.block_on(container_id(&docker, task_arn, name))
            .unwrap_or_else(|| panic!("no {name} container for {task_arn}"))
    }

    /// The agent stand-in's log lines about a task (for failure messages).
    pub fn agent_log_about(&self, task_arn: &str) -> String {
        let id = task_arn.rsplit('/').next().unwrap_or(task_arn);
        let log = std::fs::read_to_string(self.standin.state_dir.join("logs/agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// One job from config to cleanup, the ritual every job test shares: [`E2e::start`] runs
/// config and prepare and asserts both succeeded; [`Live::stage`] runs a stage script;
/// [`Live::finish`] runs cleanup and asserts that the job started one task and left none.
pub struct Live<'a> {
    pub e: &'a E2e,
    pub job: JobSpec,
    pub r: Runner,
    /// prepare's call (its output and duration).
    pub prepare: StageResult,
}

impl E2e {
    /// config and prepare of `job`, both asserted to succeed.
    pub fn start(&self, job: JobSpec) -> Live<'_> {
        let (r, prepare) = self.prepare(&job);
        assert_ok(&prepare);
        Live {
            e: self,
            job,
            r,
            prepare,
        }
    }

    /// config and prepare of `job`, both asserted to succeed: the runner, for the stages and
    /// cleanup (the caller's).
    pub fn prepared(&self, job: &JobSpec) -> Runner {
        let (r, prepare) = self.prepare(job);
        assert_ok(&prepare);
        r
    }

    /// config (asserted to succeed) and prepare of `job`: prepare's call, whatever its end.
    /// cleanup is the caller's.
    pub fn prepare(&self, job: &JobSpec) -> (Runner, StageResult) {
        let mut r = self.runner(job);
        assert_ok(&r.config());
        let prepare = r.prepare();
        (r, prepare)
    }
}

impl Live<'_> {
    /// The job's one running task.
    pub fn task(&self) -> Task {
        self.e.running_task(&self.job)
    }

    pub fn task_arn(&self) -> String {
        self.task().task_arn().expect("a task has an ARN").to_string()
    }

    /// The Docker id of the task's container `name` (`build`, `helper`).
    pub fn container_id(&self, name: &str) -> String {
        self.e.container_id(&self.task_arn(), name)
    }

    /// Stage `stage` running `body` (wrapped as gitlab-runner wraps a stage script).
    pub fn stage(&mut self, stage: &str, body: &str) -> StageResult {
        let script = stage_script(&self.r, body);
        self.r.run_script(stage, &script)
    }

    /// cleanup (asserted to succeed), then: the job started exactly one task, and none of
    /// its tasks is left running. Returns its tasks.
    pub fn finish(mut self) -> Vec<Task> {
        assert_ok(&self.r.cleanup());
        self.e.assert_tasks_stopped(&self.job, 1)
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        // Safety net for a failed test: no task of ours may outlive it.
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()));
        for started_by in jobs {
            let listed = self.rt.block_on(
                self.ecs
                    .list_tasks()
                    .cluster(&self.standin.cluster)
                    .started_by(&started_by)
                    .desired_status(DesiredStatus::Running)
                    .send(),
            );
            for arn in listed.map(|l| l.task_arns().to_vec()).unwrap_or_default() {
                eprintln!("e2e {}: stopping {arn} ({started_by}) left running", self.name);
                self.standin.stop_task_blocking(&arn, "e2e test cleanup");
            }
        }
        // Keep the config and state of a failed test for a look; remove a passing one's.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// ECS `startedBy` for a runner token and job id, as the executor builds it.
pub fn started_by(runner_token: &str, job_id: i64) -> String {
    let mut s = format!("gl/{runner_token}/{job_id}");
    s.truncate(36);
    s
}

/// A job id no other job of this or a parallel run uses (ECS `startedBy` allows 36 chars).
pub fn job_id() -> i64 {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 1000;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        % 10_000_000_000;
    i64::try_from(millis).unwrap() * 1000 + i64::from(n)
}

/// A runner short token unique to this process and call (at most 16 characters).
fn runner_token() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("e2e{:x}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub async fn container_id(docker: &Docker, task_arn: &str, name: &str) -> Option<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("com.amazonaws.ecs.task-arn={task_arn}"),
            format!("com.amazonaws.ecs.container-name={name}"),
        ],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .ok()?;
    list.into_iter().next().and_then(|c| c.id)
}

/// A stage script as gitlab-runner would hand it over, around a body of our own (nothing but
/// the body's output reaches stdout/stderr).
pub fn stage_script(runner: &Runner, body: &str) -> String {
    script::wrap(&runner.state().shell, body)
}

/// The project dir gitlab-runner uses for the job (after config).
pub fn project_dir(runner: &Runner) -> String {
    runner
        .state()
        .dirs
        .as_ref()
        .expect("config ran: the build dirs are known")
        .project_dir
        .clone()
}

/// Lines the executor itself wrote (`ecs-executor: ...`) on stdout or stderr of a call.
pub fn executor_lines(call: &StageResult) -> Vec<String> {
    let mut lines = Vec::new();
    for text in [call.stdout_text(), call.stderr_text()] {
        lines.extend(text.lines().filter(|l| l.contains("ecs-executor:")).map(String::from));
    }
    lines
}

/// A one-line summary of a call for assertion messages.
pub fn show(call: &StageResult) -> String {
    format!(
        "{} -> {:?} in {:.2} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
        call.describe(),
        call.status,
        call.duration.as_secs_f64(),
        tail(&call.stdout_text(), 3000),
        tail(&call.stderr_text(), 3000)
    )
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Asserts a call was a system failure whose stderr says every one of `parts`.
#[track_caller]
pub fn assert_system_failure_saying(call: &StageResult, parts: &[&str]) {
    assert!(call.is_system_failure(), "expected a system failure:\n{}", show(call));
    let err = call.stderr_text();
    for part in parts {
        assert!(err.contains(part), "expected stderr to say {part:?}:\n{}", show(call));
    }
}

/// Asserts a call was ended by the cancel (gitlab-runner's SIGTERM), not by anything else.
#[track_caller]
pub fn assert_cancelled(call: &StageResult) {
    assert_eq!(
        call.termination.map(|t| t.reason),
        Some(ecs_executor_tests::runner::KillReason::Cancel),
        "{}",
        show(call)
    );
}

/// Asserts a call exited 0, showing its output otherwise.
#[track_caller]
pub fn assert_ok(call: &StageResult) {
    assert!(call.is_success(), "expected success:\n{}", show(call));
}

/// The first IPv4 address of the network interface `name` on this host (getifaddrs), if any.
pub fn interface_ipv4(name: &str) -> Option<std::net::Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and then free once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; its name is a
        // NUL-terminated string and its address, when not null, a sockaddr of `sa_family`.
        unsafe {
            let ifa = &*cur;
            let addr = ifa.ifa_addr;
            if !addr.is_null()
                && i32::from((*addr).sa_family) == libc::AF_INET
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                let sin = &*(addr as *const libc::sockaddr_in);
                found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once, after the last read.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The executor binary, found as the harness finds it (`$ECS_EXECUTOR_BIN` first).
pub fn executor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ECS_EXECUTOR_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut tried = Vec::new();
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(target).join("debug/ecs-executor"));
    }
    // Test binaries live in <target>/debug/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(debug) = exe.parent().and_then(Path::parent)
    {
        tried.push(debug.join("ecs-executor"));
    }
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("the ecs-executor binary (cargo build --bins): none of {tried:?}"))
}

/// `ecs-executor --config <config> <args...>` as an admin runs it (no job env).
pub fn admin(config: &Path, args: &[&str]) -> Output {
    Command::new(executor_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ECS_EXECUTOR_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run ecs-executor")
}

/// A command's exit code and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A config edit: the top-level `line` goes before the first table.
pub fn top_level(text: &str, line: &str) -> String {
    match text.find("\n[") {
        Some(pos) => format!("{}\n{line}{}", &text[..pos], &text[pos..]),
        None => format!("{text}\n{line}\n"),
    }
}

/// Host processes (`pid args` lines, `docker top`) of container `id` whose command line
/// contains `needle`.
pub fn container_processes(id: &str, needle: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["top", id, "-eo", "pid,args"])
        .output()
        .expect("docker top");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Runs `cmd`, asserting that it exited 0 (showing its stderr otherwise): its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
