//! Support for the end-to-end job tests (`job_e2e.rs`): one isolated executor setup per test
//! (its own config copy with a unique `family_prefix` and `state_dir`, its own runner token and
//! job ids), ECS checks that a job left no task running, and Docker access to the job's
//! containers over the stand-in's Unix socket.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::{DesiredStatus, Task};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptions;
use ecs_executor_tests::runner::{Image, JobSpec, Runner, StageResult, script};
use ecs_executor_tests::standin::{Standin, unique_name};
use futures_util::StreamExt;

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
        std::fs::write(&config, edit(text)).expect("write the config copy");
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

    /// ECS `startedBy` of a job, as the executor sets it.
    pub fn started_by(&self, job: &JobSpec) -> String {
        let mut s = format!("gl/{}/{}", self.runner_token, job.id());
        s.truncate(36);
        s
    }

    /// The job's state file (present between prepare and cleanup).
    pub fn state_file(&self, job: &JobSpec) -> PathBuf {
        self.state_dir
            .join("jobs")
            .join(format!("{}-{}.json", self.runner_token, job.id()))
    }

    /// Every task the job started, whatever its state.
    pub fn tasks_of(&self, job: &JobSpec) -> Vec<Task> {
        let started_by = self.started_by(job);
        self.block_on(async {
            let mut arns = Vec::new();
            for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
                let out = self
                    .ecs
                    .list_tasks()
                    .cluster(&self.standin.cluster)
                    .started_by(&started_by)
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

/// `docker exec` without a TTY: (exit code, stdout and stderr together).
pub async fn docker_exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
) -> Result<(i64, String), bollard::errors::Error> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await? {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk?.to_string());
        }
    }
    let code = docker.inspect_exec(&created.id).await?.exit_code.unwrap_or(-1);
    Ok((code, text))
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

/// Asserts a call exited 0, showing its output otherwise.
#[track_caller]
pub fn assert_ok(call: &StageResult) {
    assert!(call.is_success(), "expected success:\n{}", show(call));
}
