//! Self-tests of the runner-protocol harness, against a fake executor (a small sh script) so
//! they need neither Docker nor AWS. The fake records each call (argv, environment, cwd,
//! stdin, process group, script, job response) under its own dir, then runs the test's hook
//! for that call or behaves like a tiny local driver (config prints JSON; run executes the
//! script with the shell its shebang names).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ecs_executor_tests::runner::{
    CallOutcome, ConfigOutput, Image, JobOutcome, JobSpec, JobState, JobStatus, KillReason, LogChunk, Port,
    ProcessStatus, Runner, Stream, Verb, script, stages,
};

const FAKE_EXECUTOR: &str = r#"#!/bin/sh
# A stand-in for ecs-executor (see runner_harness.rs).
dir=$FAKE_DIR
n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count"
rec=$dir/call$n
mkdir -p "$rec"
for a in "$@"; do printf '%s\n' "$a"; done > "$rec/argv"
env -0 > "$rec/env"
pwd -P > "$rec/cwd"
readlink /proc/$$/fd/0 > "$rec/stdin"
cut -d' ' -f5 /proc/$$/stat > "$rec/pgid"
echo $$ > "$rec/pid"
if [ -n "${JOB_RESPONSE_FILE:-}" ]; then
  cp "$JOB_RESPONSE_FILE" "$rec/response.json"
  stat -c %a "$JOB_RESPONSE_FILE" > "$rec/response_mode"
fi
while [ $# -gt 0 ]; do
  case $1 in --config) shift 2 ;; --*) shift ;; *) break ;; esac
done
verb=$1; shift
script=; stage=
if [ "$verb" = run ]; then
  script=$1; stage=$2
  cp "$script" "$rec/script"
  stat -c %a "$script" > "$rec/script_mode"
fi
if [ -n "$stage" ] && [ -f "$dir/on_${verb}_${stage}.sh" ]; then
  . "$dir/on_${verb}_${stage}.sh"
elif [ -f "$dir/on_${verb}.sh" ]; then
  . "$dir/on_${verb}.sh"
else
  case $verb in
    config)
      printf '{"builds_dir":"%s/builds","driver":{"name":"fake","version":"0.1"},"job_env":{"FAKE_JOB_ENV":"from-config"}}' "$dir" ;;
    prepare) echo "prepared" ;;
    run)
      shell=$(head -n 1 "$script" | sed 's/.* //')
      "$shell" "$script"; rc=$?
      if [ $rc -ne 0 ]; then
        echo $rc > "$BUILD_EXIT_CODE_FILE"
        exit "$BUILD_FAILURE_EXIT_CODE"
      fi ;;
    cleanup) echo "cleaned up" ;;
  esac
fi
exit 0
"#;

/// One call as the fake saw it.
#[derive(Debug)]
struct Recorded {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    stdin: String,
    pgid: i32,
    pid: i32,
    script: Option<String>,
    script_mode: Option<String>,
    response: Option<String>,
    response_mode: Option<String>,
}

/// A fake executor in a private dir, removed at the end of the test.
struct Fake {
    dir: PathBuf,
    exe: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("ecs-harness-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let exe = dir.join("fake-executor");
        fs::write(&exe, FAKE_EXECUTOR).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir, exe }
    }

    /// `on_<name>.sh`, sourced by the fake instead of its default (e.g. `run_build_script`).
    fn hook(&self, name: &str, body: &str) {
        fs::write(self.dir.join(format!("on_{name}.sh")), body).unwrap();
    }

    fn runner(&self, job: &JobSpec) -> Runner {
        Runner::new(job)
            .executor(&self.exe)
            .env("FAKE_DIR", self.dir.display().to_string())
    }

    fn read(&self, call: usize, file: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(format!("call{call}/{file}"))).ok()
    }

    fn calls(&self) -> Vec<Recorded> {
        let count: usize = fs::read_to_string(self.dir.join("count"))
            .map(|c| c.trim().parse().unwrap())
            .unwrap_or(0);
        (1..=count)
            .map(|n| {
                let env_bytes = fs::read(self.dir.join(format!("call{n}/env"))).unwrap();
                let env = env_bytes
                    .split(|b| *b == 0)
                    .filter(|e| !e.is_empty())
                    .map(|e| {
                        let e = String::from_utf8_lossy(e);
                        let (k, v) = e.split_once('=').unwrap();
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                let trimmed = |f: &str| self.read(n, f).map(|s| s.trim().to_owned());
                Recorded {
                    argv: self.read(n, "argv").unwrap().lines().map(str::to_owned).collect(),
                    env,
                    cwd: PathBuf::from(trimmed("cwd").unwrap()),
                    stdin: trimmed("stdin").unwrap(),
                    pgid: trimmed("pgid").unwrap().parse().unwrap(),
                    pid: trimmed("pid").unwrap().parse().unwrap(),
                    script: self.read(n, "script"),
                    script_mode: trimmed("script_mode"),
                    response: self.read(n, "response.json"),
                    response_mode: trimmed("response_mode"),
                }
            })
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn simple_job() -> JobSpec {
    JobSpec::new(42, "group/project").script(["echo hello"])
}

/// The calls gitlab-runner makes for a job that runs only its script (as `simple_job`).
const SCRIPT_ONLY_CALLS: [&str; 6] = [
    "config",
    "prepare",
    "run prepare_script",
    "run get_sources",
    "run build_script",
    "cleanup",
];

/// The calls of a prepare attempt that failed (gitlab-runner retries it).
const FAILED_PREPARE: [&str; 3] = ["config", "prepare", "cleanup"];

fn wait_until_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    ecs_executor_tests::wait_until(Duration::from_secs(5), Duration::from_millis(20), || unsafe {
        libc::kill(pid, 0) != 0
    })
}

#[test]
fn argv_has_config_file_and_verb_args_first_and_the_runners_own_args_last() {
    let fake = Fake::new("argv");
    let outcome = fake
        .runner(&simple_job())
        .config_file("/etc/ecs/x.toml")
        .args(Verb::Run, ["--verbose"])
        .run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());

    let calls = fake.calls();
    let argvs: Vec<Vec<String>> = calls.iter().map(|c| c.argv.clone()).collect();
    let config = ["--config", "/etc/ecs/x.toml"];
    assert_eq!(argvs[0], [&config[..], &["config"]].concat());
    assert_eq!(argvs[1], [&config[..], &["prepare"]].concat());
    let runs: Vec<&Vec<String>> = argvs.iter().filter(|a| a.contains(&"run".to_owned())).collect();
    assert_eq!(runs.len(), 3, "prepare_script, get_sources, build_script: {argvs:?}");
    for (run, stage) in runs
        .iter()
        .zip([stages::PREPARE_SCRIPT, stages::GET_SOURCES, stages::BUILD_SCRIPT])
    {
        assert_eq!(run[..4], ["--config", "/etc/ecs/x.toml", "--verbose", "run"]);
        assert!(run[4].ends_with("/script.sh"), "{run:?}");
        assert_eq!(run[5], stage);
        assert_eq!(run.len(), 6);
    }
    assert_eq!(argvs.last().unwrap(), &[&config[..], &["cleanup"]].concat());

    // The script lives in the call's temp dir.
    let build = outcome.stage(stages::BUILD_SCRIPT).unwrap();
    assert!(build.script_path.as_ref().unwrap().starts_with(&build.temp_dir));
}

#[test]
fn every_call_gets_the_runner_variables_and_the_job_as_custom_env() {
    let fake = Fake::new("env");
    let job = JobSpec::new(42, "group/project")
        .runner_short_token("abcd1234")
        .runner_version("19.4.0")
        .concurrency_slot(3, 5)
        .image(Image::new("registry.example.com/$IMAGE_NAME:1"))
        .service(
            Image::new("postgres:16")
                .alias("db,pg")
                .command(["postgres", "-c", "fsync=off"])
                .variable("POSTGRES_PASSWORD", "x"),
        )
        .service(Image::new("redis:7"))
        .variable("IMAGE_NAME", "app")
        .masked_variable("SECRET", "s3cr3t-value")
        .file_variable("KUBECONFIG", "line1\nline2\n")
        .script(["true"]);
    let outcome = fake.runner(&job).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());

    let calls = fake.calls();
    assert_eq!(calls.len(), outcome.calls.len());
    for (seen, result) in calls.iter().zip(&outcome.calls) {
        let env = &seen.env;
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("BUILD_FAILURE_EXIT_CODE"), Some("1"));
        assert_eq!(get("SYSTEM_FAILURE_EXIT_CODE"), Some("2"));
        assert_eq!(Path::new(get("TMPDIR").unwrap()), seen.cwd);
        assert_eq!(
            Path::new(get("JOB_RESPONSE_FILE").unwrap()),
            seen.cwd.join("response.json")
        );
        assert!(Path::new(get("BUILD_EXIT_CODE_FILE").unwrap()).starts_with(&seen.cwd));
        assert_eq!(get("CUSTOM_ENV_CI_JOB_ID"), Some("42"));
        assert_eq!(get("CUSTOM_ENV_CI_PROJECT_PATH"), Some("group/project"));
        assert_eq!(get("CUSTOM_ENV_CI_CONCURRENT_ID"), Some("3"));
        assert_eq!(get("CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID"), Some("5"));
        assert_eq!(get("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN"), Some("abcd1234"));
        assert_eq!(get("CUSTOM_ENV_CI_RUNNER_VERSION"), Some("19.4.0"));
        // Expanded, as gitlab-runner does it.
        assert_eq!(get("CUSTOM_ENV_CI_JOB_IMAGE"), Some("registry.example.com/app:1"));
        assert_eq!(
            get("CUSTOM_ENV_CI_JOB_SERVICES"),
            Some(
                r#"[{"name":"postgres:16","alias":"db","entrypoint":null,"command":["postgres","-c","fsync=off"],"variables":{"POSTGRES_PASSWORD":"x"}},{"name":"redis:7","alias":"","entrypoint":null,"command":null}]"#
            )
        );
        // Masked values arrive in clear, file variables as their content.
        assert_eq!(get("CUSTOM_ENV_SECRET"), Some("s3cr3t-value"));
        assert_eq!(get("CUSTOM_ENV_KUBECONFIG"), Some("line1\nline2\n"));

        // A clean environment: nothing of the test process but PATH and HOME.
        let runner_keys: Vec<&str> = result
            .env
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !k.starts_with("CUSTOM_ENV_"))
            .collect();
        let mut expected = vec![
            "PATH",
            "HOME",
            "FAKE_DIR",
            "TMPDIR",
            "BUILD_FAILURE_EXIT_CODE",
            "SYSTEM_FAILURE_EXIT_CODE",
            "BUILD_EXIT_CODE_FILE",
            "JOB_RESPONSE_FILE",
        ];
        expected.retain(|k| *k != "HOME" || std::env::var_os("HOME").is_some());
        if result.verb != Verb::Config {
            expected.push("FAKE_JOB_ENV");
        }
        assert_eq!(runner_keys, expected, "{}", result.describe());
    }

    // config runs before gitlab-runner knows the builds dir and before job_env exists.
    let config = &calls[0].env;
    assert_eq!(config.get("CUSTOM_ENV_CI_BUILDS_DIR").map(String::as_str), Some(""));
    assert_eq!(config.get("CUSTOM_ENV_CI_PROJECT_DIR").map(String::as_str), Some(""));
    assert!(!config.contains_key("FAKE_JOB_ENV"));
    let prepare = &calls[1].env;
    let builds = format!("{}/builds", fake.dir.display());
    assert_eq!(prepare.get("FAKE_JOB_ENV").map(String::as_str), Some("from-config"));
    assert_eq!(prepare.get("CUSTOM_ENV_CI_BUILDS_DIR"), Some(&builds));
    assert_eq!(
        prepare.get("CUSTOM_ENV_CI_PROJECT_DIR"),
        Some(&format!("{builds}/group/project"))
    );

    // Without an image there is no CI_JOB_IMAGE; without services CI_JOB_SERVICES is "".
    let bare = Fake::new("env-bare");
    bare.runner(&simple_job()).run_job();
    let env = &bare.calls()[0].env;
    assert!(!env.contains_key("CUSTOM_ENV_CI_JOB_IMAGE"));
    assert_eq!(env.get("CUSTOM_ENV_CI_JOB_SERVICES").map(String::as_str), Some(""));
}

#[test]
fn job_response_file_has_gitlabs_shape() {
    let fake = Fake::new("response");
    let job = JobSpec::new(7, "group/project")
        .image(
            Image::new("alpine:$TAG")
                .entrypoint(["/bin/sh", "-c"])
                .pull_policy(["if-not-present"])
                .port(Port::new(8080).protocol("http").name("web")),
        )
        .service(
            Image::new("postgres:16")
                .alias("db,pg")
                .variable("POSTGRES_PASSWORD", "x")
                .port(Port::new(5432)),
        )
        .variable("TAG", "3.20")
        .variable("HTML", "a<b&c>d")
        .masked_variable("SECRET", "s3cr3t-value")
        .registry_credentials("registry.example.com", "gitlab-ci-token", "job-token")
        .git(
            "https://gitlab.example.com/group/project.git",
            "0123456789abcdef0123456789abcdef01234567",
            "main",
        )
        .variable("GIT_STRATEGY", "none")
        .script(["true"])
        .after_script(["true"]);
    fake.runner(&job).run_job();
    let calls = fake.calls();
    let raw = calls[0].response.clone().unwrap();
    assert_eq!(calls[0].response_mode.as_deref(), Some("600"));
    // Go's encoder: HTML-escaped, one trailing newline.
    assert!(raw.contains(r"a\u003cb\u0026c\u003ed"), "{raw}");
    assert!(raw.ends_with("}\n"));

    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(json["id"], 7);
    assert_eq!(json["token"], "glcbt-harness-job-token-7");
    assert_eq!(
        json["image"]["name"], "alpine:$TAG",
        "the response keeps the unexpanded name"
    );
    assert_eq!(json["image"]["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(json["image"]["pull_policy"], serde_json::json!(["if-not-present"]));
    assert_eq!(
        json["image"]["ports"],
        serde_json::json!([{"number": 8080, "protocol": "http", "name": "web"}])
    );
    assert_eq!(
        json["services"][0]["alias"], "db,pg",
        "all aliases, as GitLab writes them"
    );
    assert_eq!(json["services"][0]["variables"][0]["key"], "POSTGRES_PASSWORD");
    assert_eq!(json["services"][0]["ports"], serde_json::json!([{"number": 5432}]));
    assert_eq!(
        json["credentials"],
        serde_json::json!([{"type": "registry", "url": "registry.example.com", "username": "gitlab-ci-token", "password": "job-token"}])
    );
    assert_eq!(json["git_info"]["sha"], "0123456789abcdef0123456789abcdef01234567");
    let secret = json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "SECRET")
        .unwrap();
    assert_eq!(secret["masked"], true);
    assert_eq!(secret["value"], "s3cr3t-value");
    let steps: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["script", "after_script"]);
}

#[test]
fn masked_values_travel_only_inside_the_script_and_are_masked_in_the_log() {
    let fake = Fake::new("masked");
    let job = JobSpec::new(1, "group/project")
        .masked_variable("SECRET", "hunter2-very-secret")
        .script(["echo \"token=$SECRET\""]);
    let outcome = fake.runner(&job).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());

    for call in &outcome.calls {
        assert!(!call.args.iter().any(|a| a.contains("hunter2")), "{:?}", call.args);
    }
    let build = outcome.stage(stages::BUILD_SCRIPT).unwrap();
    assert!(build.script.as_ref().unwrap().contains("export SECRET="));
    assert!(build.script.as_ref().unwrap().contains("hunter2-very-secret"));
    assert!(
        build.stdout_text().contains("token=hunter2-very-secret"),
        "the driver printed it"
    );
    let log = outcome.log_text();
    assert!(log.contains("token=[MASKED]"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(outcome.raw_log_text().contains("token=hunter2-very-secret"));
}

#[test]
fn calls_run_in_the_temp_dir_with_stdin_from_dev_null_in_their_own_process_group() {
    let fake = Fake::new("process");
    let outcome = fake.runner(&simple_job()).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
    // SAFETY: getpgrp has no preconditions.
    let our_group = unsafe { libc::getpgrp() };
    for (seen, result) in fake.calls().iter().zip(&outcome.calls) {
        assert_eq!(
            seen.cwd,
            result.temp_dir.canonicalize().unwrap_or(result.temp_dir.clone())
        );
        assert_eq!(Path::new(&seen.env["TMPDIR"]), seen.cwd);
        assert_eq!(seen.stdin, "/dev/null");
        assert_eq!(seen.pgid, seen.pid, "the driver leads its own process group");
        assert_ne!(seen.pgid, our_group);
        assert_eq!(result.pid as i32, seen.pid);
    }
    // One temp dir for the single attempt, gone after cleanup.
    assert_eq!(outcome.temp_dirs.len(), 1);
    assert!(!outcome.temp_dirs[0].exists());
}

#[test]
fn cancel_sends_sigterm_to_the_whole_process_group() {
    let fake = Fake::new("cancel");
    fake.hook(
        "run_build_script",
        r#"
trap 'echo leader >> "$dir/term"; exit 1' TERM
sh -c 'trap "echo child >> \"$FAKE_DIR/term\"; exit 0" TERM; echo $$ > "$FAKE_DIR/child.pid"; sleep 30 & wait' &
sleep 30 &
wait
"#,
    );
    let mut runner = fake.runner(&simple_job()).cancel_after(Duration::from_millis(700));
    let result = runner.run_script(stages::BUILD_SCRIPT, "#!/usr/bin/env bash\n");
    assert!(result.duration < Duration::from_secs(5), "{:?}", result.duration);
    let termination = result.termination.expect("the harness ended the call");
    assert_eq!(termination.reason, KillReason::Cancel);
    assert!(!termination.sigkill, "SIGTERM was enough");
    let term = fs::read_to_string(fake.dir.join("term")).unwrap();
    assert!(term.contains("leader"), "{term}");
    assert!(
        term.contains("child"),
        "the TERM reached the driver's child too: {term}"
    );
    let child: i32 = fs::read_to_string(fake.dir.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_until_gone(child));
    // A driver killed while running reports the script as failed; never as success.
    assert!(result.is_build_failure(1));
}

#[test]
fn sigkill_follows_when_the_group_ignores_sigterm() {
    let fake = Fake::new("sigkill");
    fake.hook("run_build_script", "trap '' TERM\nsleep 30 &\nwait\n");
    let mut runner = fake
        .runner(&simple_job())
        .call_timeout(Duration::from_millis(300))
        .kill_grace(Duration::from_millis(300));
    let result = runner.run_script(stages::BUILD_SCRIPT, "#!/usr/bin/env bash\n");
    let termination = result.termination.unwrap();
    assert_eq!(termination.reason, KillReason::Timeout);
    assert!(termination.sigkill);
    assert_eq!(result.status, ProcessStatus::Signaled(libc::SIGKILL));
    assert_eq!(result.outcome(), CallOutcome::UnknownFailure { exit_code: -1 });
    assert_eq!(
        result.failure_message().unwrap(),
        "unknown Custom executor executable exit code -1; executable execution terminated with: signal: killed"
    );
    assert!(result.duration < Duration::from_secs(5));
}

#[test]
fn prepare_is_retried_with_cleanup_after_each_failed_attempt_and_a_new_temp_dir() {
    let fake = Fake::new("retry");
    fake.hook(
        "prepare",
        r#"
a=$(( $(cat "$dir/prepare_count" 2>/dev/null || echo 0) + 1 ))
echo $a > "$dir/prepare_count"
if [ $a -lt 3 ]; then echo "no capacity" >&2; exit "$SYSTEM_FAILURE_EXIT_CODE"; fi
echo prepared
"#,
    );
    let outcome = fake.runner(&simple_job()).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
    assert_eq!(
        outcome.call_sequence(),
        [&FAILED_PREPARE[..], &FAILED_PREPARE, &SCRIPT_ONLY_CALLS].concat()
    );
    assert_eq!(outcome.prepare_attempts, 3);
    let dirs: Vec<&PathBuf> = outcome.calls.iter().map(|c| &c.temp_dir).collect();
    assert_eq!(outcome.temp_dirs.len(), 3);
    assert_eq!(
        dirs[0..3],
        [&outcome.temp_dirs[0]; 3],
        "config, prepare and cleanup share an attempt's dir"
    );
    assert_eq!(dirs[3..6], [&outcome.temp_dirs[1]; 3]);
    assert!(dirs[6..].iter().all(|d| *d == &outcome.temp_dirs[2]));
    assert!(
        outcome.temp_dirs.iter().all(|d| !d.exists()),
        "every attempt's dir is deleted after its cleanup"
    );
    // The failed attempts' cleanups got job_env: their config had succeeded.
    assert_eq!(outcome.calls[2].env_var("FAKE_JOB_ENV"), Some("from-config"));
    let log = outcome.log_text();
    assert_eq!(
        log.matches("WARNING: Preparation failed: exit status 2").count(),
        2,
        "{log}"
    );
    assert!(log.contains("no capacity"), "prepare's stderr is in the job log: {log}");
    assert!(!log.contains("cleaned up"), "cleanup's output is not: {log}");
}

#[test]
fn a_build_failure_in_prepare_is_not_retried() {
    let fake = Fake::new("prepare-build-failure");
    fake.hook("prepare", "exit \"$BUILD_FAILURE_EXIT_CODE\"\n");
    let outcome = fake.runner(&simple_job()).run_job();
    assert_eq!(outcome.call_sequence(), ["config", "prepare", "cleanup"]);
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 1 });
}

#[test]
fn bad_config_output_fails_every_attempt_and_cleanup_runs_without_job_env() {
    let fake = Fake::new("bad-config");
    fake.hook("config", "echo 'builds_dir: /b'\n");
    let outcome = fake.runner(&simple_job()).run_job();
    assert_eq!(
        outcome.call_sequence(),
        ["config", "cleanup", "config", "cleanup", "config", "cleanup"]
    );
    let JobStatus::SystemFailure { message } = &outcome.status else {
        panic!("{:?}", outcome.status)
    };
    assert!(message.starts_with("error while parsing JSON output"), "{message}");
    for cleanup in outcome.calls.iter().filter(|c| c.verb == Verb::Cleanup) {
        assert_eq!(cleanup.env_var("FAKE_JOB_ENV"), None);
        assert_eq!(cleanup.env_var("CUSTOM_ENV_CI_BUILDS_DIR"), Some(""));
    }
}

#[test]
fn config_output_is_parsed_with_gos_rules() {
    assert_eq!(ConfigOutput::parse(b"").unwrap(), ConfigOutput::default());
    assert_eq!(ConfigOutput::parse(b"null").unwrap(), ConfigOutput::default());
    assert!(
        ConfigOutput::parse(b"\n").is_err(),
        "whitespace only is not empty to Go"
    );
    assert!(ConfigOutput::parse(b"[]").is_err());
    assert!(ConfigOutput::parse(br#"{"builds_dir": 5}"#).is_err());
    assert!(ConfigOutput::parse(br#"{"job_env": {"A": 1}}"#).is_err());
    assert!(ConfigOutput::parse(br#"{} trailing"#).is_err());
    let parsed = ConfigOutput::parse(
        br#" {"Builds_Dir": "/b", "unknown": [1], "builds_dir_is_shared": true,
              "driver": {"name": "ecs", "version": "1.0"}, "job_env": {"K": "V"}, "shell": "sh"} "#,
    )
    .unwrap();
    assert_eq!(
        parsed.builds_dir.as_deref(),
        Some("/b"),
        "Go matches keys case-insensitively"
    );
    assert_eq!(parsed.builds_dir_is_shared, Some(true));
    assert_eq!(parsed.driver_name.as_deref(), Some("ecs"));
    assert_eq!(parsed.job_env.get("K").map(String::as_str), Some("V"));
    assert_eq!(parsed.shell.as_deref(), Some("sh"));
}

/// after_script (which echoes `status=$CI_JOB_STATUS`) saw the job as `status`.
fn assert_after_script_saw(outcome: &JobOutcome, status: &str) {
    let after = outcome.stage(stages::AFTER_SCRIPT).expect("after_script ran");
    assert!(
        after.stdout_text().contains(&format!("status={status}")),
        "{}",
        after.log_text()
    );
}

/// The stages gitlab-runner runs before build_script, in its order.
const BEFORE_BUILD: [&str; 4] = ["prepare_script", "get_sources", "restore_cache", "download_artifacts"];

#[test]
fn stages_run_in_gitlab_order_and_after_script_runs_after_a_failure() {
    let with_stage_lines = |job: JobSpec| {
        [
            stages::RESTORE_CACHE,
            stages::DOWNLOAD_ARTIFACTS,
            stages::ARCHIVE_CACHE,
            stages::ARCHIVE_CACHE_ON_FAILURE,
            stages::UPLOAD_ARTIFACTS_ON_SUCCESS,
            stages::UPLOAD_ARTIFACTS_ON_FAILURE,
        ]
        .into_iter()
        .fold(job, |job, stage| job.stage_lines(stage, [format!("echo in {stage}")]))
    };

    let fake = Fake::new("order-failure");
    let job = with_stage_lines(JobSpec::new(1, "group/project"))
        .file_variable("CREDS", "secret file")
        .script(["echo building", "exit 3"])
        .after_script(["echo \"status=$CI_JOB_STATUS\""]);
    let outcome = fake.runner(&job).run_job();
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 3 });
    assert_eq!(
        outcome.stages_run(),
        [
            &BEFORE_BUILD[..],
            &[
                "build_script",
                "after_script",
                "archive_cache_on_failure",
                "upload_artifacts_on_failure",
                "cleanup_file_variables",
            ],
        ]
        .concat()
    );
    assert_eq!(outcome.calls.last().unwrap().verb, Verb::Cleanup);
    assert_after_script_saw(&outcome, "failed");
    assert_eq!(
        outcome
            .stage(stages::BUILD_SCRIPT)
            .unwrap()
            .env_var("CUSTOM_ENV_CI_JOB_STATUS"),
        Some("running")
    );
    assert_eq!(
        outcome.calls.last().unwrap().env_var("CUSTOM_ENV_CI_JOB_STATUS"),
        Some("failed"),
        "and it stays"
    );
    let log = outcome.log_text();
    assert!(log.contains("Running after_script"), "{log}");
    assert!(log.trim_end().ends_with("ERROR: Job failed: exit status 3"), "{log}");

    let fake = Fake::new("order-success");
    let job = with_stage_lines(JobSpec::new(1, "group/project"))
        .script(["echo building"])
        .step("release", ["echo releasing"])
        .after_script(["echo \"status=$CI_JOB_STATUS\""]);
    let outcome = fake.runner(&job).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
    assert_eq!(
        outcome.stages_run(),
        [
            &BEFORE_BUILD[..],
            &[
                "build_script",
                "step_release",
                "after_script",
                "archive_cache",
                "upload_artifacts_on_success"
            ],
        ]
        .concat()
    );
    assert_after_script_saw(&outcome, "success");
    assert!(outcome.log_text().trim_end().ends_with("Job succeeded"));
}

#[test]
fn exit_codes_are_classified_like_gitlab_runner() {
    let fake = Fake::new("exit-codes");
    fake.hook(
        "run",
        r#"
case $(cat "$dir/mode") in
  ok) exit 0 ;;
  code42) echo 42 > "$BUILD_EXIT_CODE_FILE"; exit "$BUILD_FAILURE_EXIT_CODE" ;;
  crlf) printf '7\r\nmore\n' > "$BUILD_EXIT_CODE_FILE"; exit 1 ;;
  nofile) exit 1 ;;
  garbage) echo oops > "$BUILD_EXIT_CODE_FILE"; exit 1 ;;
  empty) : > "$BUILD_EXIT_CODE_FILE"; exit 1 ;;
  system) exit "$SYSTEM_FAILURE_EXIT_CODE" ;;
  unknown) exit 255 ;;
esac
"#,
    );
    let mut runner = fake.runner(&simple_job());
    let mut run = |mode: &str| {
        fs::write(fake.dir.join("mode"), mode).unwrap();
        runner.run_script(stages::BUILD_SCRIPT, "#!/usr/bin/env bash\n")
    };

    let ok = run("ok");
    assert!(ok.is_success());
    assert_eq!(ok.outcome(), CallOutcome::Success);

    let code42 = run("code42");
    assert!(code42.is_build_failure(42));
    assert_eq!(code42.build_exit_code_file.as_deref(), Some("42\n"));
    assert_eq!(code42.failure_message().unwrap(), "exit status 42");
    assert_eq!(run("crlf").outcome(), CallOutcome::BuildFailure { exit_code: 7 });

    let nofile = run("nofile");
    assert!(nofile.is_build_failure(1), "no file: the exit code is 1");
    assert_eq!(nofile.build_exit_code_file, None, "each call gets a fresh file path");

    for mode in ["garbage", "empty"] {
        let bad = run(mode);
        assert_eq!(bad.outcome(), CallOutcome::UnknownFailure { exit_code: 2 }, "{mode}");
        assert!(bad.is_unknown_failure());
    }

    let system = run("system");
    assert!(system.is_system_failure());
    assert_eq!(system.failure_message().unwrap(), "exit status 2");

    let unknown = run("unknown");
    assert_eq!(unknown.outcome(), CallOutcome::UnknownFailure { exit_code: 255 });
    assert_eq!(
        unknown.failure_message().unwrap(),
        "unknown Custom executor executable exit code 255; executable execution terminated with: exit status 255"
    );
}

#[test]
fn job_status_follows_the_failing_calls_classification() {
    for (code, expected) in [
        ("exit 2", JobStatus::SystemFailure { message: "exit status 2".into() }),
        (
            "exit 255",
            JobStatus::SystemFailure {
                message: "unknown Custom executor executable exit code 255; executable execution terminated with: exit status 255"
                    .into(),
            },
        ),
    ] {
        let fake = Fake::new("job-status");
        fake.hook("run_build_script", code);
        let outcome = fake.runner(&simple_job()).run_job();
        assert_eq!(outcome.status, expected);
        assert!(outcome.log_text().contains("ERROR: Job failed (system failure)"));
    }
}

#[test]
fn generated_scripts_have_gitlabs_shape_and_run_under_bash_and_sh() {
    for shell in ["bash", "sh"] {
        let fake = Fake::new(&format!("script-{shell}"));
        if shell == "sh" {
            fake.hook("config", r#"printf '{"builds_dir":"%s/builds","shell":"sh"}' "$dir""#);
        }
        let job = JobSpec::new(1, "group/project")
            .file_variable("MY_FILE", "file content")
            .variable("QUOTED", "it's \"quoted\" $HOME")
            .script(["echo hello", "cat \"$MY_FILE\"; echo", "echo \"$QUOTED\"", "pwd"]);
        let outcome = fake.runner(&job).run_job();
        assert_eq!(outcome.status, JobStatus::Success, "{shell}: {}", outcome.log_text());

        let build = outcome.stage(stages::BUILD_SCRIPT).unwrap();
        let text = build.script.clone().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("#!/usr/bin/env {shell}"));
        assert!(lines.contains(&"trap 'exit 1' TERM"));
        assert!(lines.contains(&"case \"$(set -o)\" in *\"pipefail\"*) set -o pipefail;; esac; set -o errexit"));
        assert!(lines.contains(&"set +o noclobber"));
        assert!(text.contains("( trap 'exit 1' TERM; eval '"));
        assert!(text.ends_with("' ) < /dev/null\nexit 0\n"));
        let recorded = fake
            .calls()
            .into_iter()
            .find(|c| c.script.as_deref() == Some(text.as_str()))
            .unwrap();
        assert_eq!(recorded.script_mode.as_deref(), Some("700"));

        let out = build.stdout_text();
        assert!(out.contains("\x1b[32;1m$ echo hello\x1b[0;m"), "{out}");
        assert!(out.contains("\nhello\n"), "{out}");
        assert!(out.contains("file content"), "{out}");
        // Quotes survive; `$HOME` was expanded by the runner (not a job variable: empty).
        assert!(out.contains("it's \"quoted\" \n"), "{out}");
        assert!(
            out.contains(&format!("{}/builds/group/project\n", fake.dir.display())),
            "{out}"
        );
    }
}

#[test]
fn merged_log_keeps_arrival_order_and_exact_bytes() {
    let fake = Fake::new("merged");
    fake.hook(
        "run",
        "printf 'out1\\n'; sleep 0.2; printf 'err1\\n' >&2; sleep 0.2; printf 'out2 \\001\\377'\n",
    );
    let mut runner = fake.runner(&simple_job());
    let result = runner.run_script("step_anything", "#!/usr/bin/env bash\n");
    assert_eq!(
        result.log,
        [
            LogChunk {
                stream: Stream::Stdout,
                bytes: b"out1\n".to_vec()
            },
            LogChunk {
                stream: Stream::Stderr,
                bytes: b"err1\n".to_vec()
            },
            LogChunk {
                stream: Stream::Stdout,
                bytes: b"out2 \x01\xff".to_vec()
            },
        ]
    );
    assert_eq!(result.stdout, b"out1\nout2 \x01\xff");
    assert_eq!(result.stderr, b"err1\n");
}

#[test]
fn output_held_open_by_a_leftover_process_is_reported() {
    let fake = Fake::new("held-open");
    fake.hook("run", "(sleep 30 &)\necho done\n");
    let mut runner = fake.runner(&simple_job()).drain_limit(Duration::from_millis(300));
    let result = runner.run_script(stages::BUILD_SCRIPT, "#!/usr/bin/env bash\n");
    assert!(result.is_success());
    assert!(result.pipes_held_open, "gitlab-runner would hang here");
    assert!(result.duration < Duration::from_secs(5));
}

#[test]
fn graceful_cancel_kills_the_script_and_still_runs_after_script() {
    let fake = Fake::new("graceful-cancel");
    fake.hook("run_build_script", "sleep 30 &\nwait\n");
    let job = simple_job()
        // Longer than the cancel delay: after_script must not be cancelled itself.
        .after_script(["sleep 2", "echo \"status=$CI_JOB_STATUS\""])
        .stage_lines(stages::ARCHIVE_CACHE_ON_FAILURE, ["echo caching"])
        .stage_lines(stages::UPLOAD_ARTIFACTS_ON_FAILURE, ["echo uploading"]);
    let outcome = fake.runner(&job).cancel_after(Duration::from_millis(1500)).run_job();
    assert_eq!(outcome.status, JobStatus::Canceled, "{}", outcome.log_text());
    assert_eq!(
        outcome.stages_run(),
        ["prepare_script", "get_sources", "build_script", "after_script"]
    );
    let build = outcome.stage(stages::BUILD_SCRIPT).unwrap();
    assert_eq!(build.termination.unwrap().reason, KillReason::Cancel);
    assert_after_script_saw(&outcome, "canceled");
    assert_eq!(outcome.calls.last().unwrap().verb, Verb::Cleanup);
    assert!(outcome.log_text().trim_end().ends_with("ERROR: Job failed: canceled"));
}

#[test]
fn abort_and_job_timeout_run_no_further_stage_but_cleanup() {
    for (abort, expected) in [(true, JobStatus::Canceled), (false, JobStatus::TimedOut)] {
        let fake = Fake::new(if abort { "abort" } else { "job-timeout" });
        fake.hook("run_build_script", "sleep 30 &\nwait\n");
        let job = simple_job()
            .after_script(["echo after"])
            .stage_lines(stages::UPLOAD_ARTIFACTS_ON_FAILURE, ["echo up"]);
        let runner = fake.runner(&job);
        let runner = if abort {
            runner.abort_after(Duration::from_millis(1500))
        } else {
            runner.job_timeout(Duration::from_millis(1500))
        };
        let outcome = runner.run_job();
        assert_eq!(outcome.status, expected, "{}", outcome.log_text());
        assert_eq!(outcome.call_sequence(), SCRIPT_ONLY_CALLS);
        let reason = outcome.stage(stages::BUILD_SCRIPT).unwrap().termination.unwrap().reason;
        assert_eq!(
            reason,
            if abort {
                KillReason::Cancel
            } else {
                KillReason::JobTimeout
            }
        );
        if !abort {
            assert!(
                outcome.log_text().contains("execution took longer than 1.5s seconds"),
                "{}",
                outcome.log_text()
            );
        }
    }
}

#[test]
fn variables_are_expanded_and_ordered_like_gitlab_runner() {
    let job = JobSpec::new(9, "group/project")
        .image(Image::new("$REGISTRY/app:${TAG}"))
        .variable("REGISTRY", "registry.example.com")
        .variable("TAG", "1.0")
        .variable("PRICE", "5$$ and $NOPE.")
        .file_variable("CERT", "pem")
        .variable("CERT_PATH", "$CERT")
        .add_variable(ecs_executor_tests::runner::Variable::new("RAW", "$TAG").raw())
        .variable("TAG", "2.0");
    let state = JobState {
        dirs: Some(job.build_dirs("/builds", false)),
        ..JobState::default()
    };
    let vars = job.all_variables(&state);
    let value = |k: &str| vars.iter().rev().find(|v| v.key == k).unwrap().value.clone();
    assert_eq!(
        value("CI_JOB_IMAGE"),
        "registry.example.com/app:2.0",
        "the last TAG wins"
    );
    assert_eq!(value("PRICE"), "5$ and .");
    assert_eq!(
        value("CERT_PATH"),
        "/builds/group/project.tmp/CERT",
        "a file variable expands to its path"
    );
    assert_eq!(value("CERT"), "pem");
    assert_eq!(value("RAW"), "$TAG");
    assert_eq!(value("CI_PROJECT_DIR"), "/builds/group/project");
    assert_eq!(value("RUNNER_TEMP_PROJECT_DIR"), "/builds/group/project.tmp");
    let keys: Vec<&str> = vars.iter().map(|v| v.key.as_str()).collect();
    let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(pos("CI_JOB_IMAGE") < pos("CI_RUNNER_SHORT_TOKEN"));
    assert!(
        pos("CI_BUILDS_DIR") < pos("CI_JOB_ID"),
        "runner defaults come before GitLab's variables"
    );
    assert!(pos("REGISTRY") < pos("CI_RUNNER_VERSION"));

    // Shared builds dirs nest under the runner token and the concurrency slot.
    let shared = JobSpec::new(9, "group/project")
        .runner_short_token("tok")
        .concurrency_slot(0, 4)
        .build_dirs("/b", true);
    assert_eq!(shared.project_dir, "/b/tok/4/group/project");
}

#[test]
fn user_lines_can_be_run_in_any_stage() {
    let fake = Fake::new("user-lines");
    let job = simple_job();
    let mut runner = fake.runner(&job);
    let config = runner.config();
    assert!(matches!(config.config_output, Some(Ok(_))));
    assert!(runner.run(stages::GET_SOURCES).unwrap().is_success());
    assert!(
        runner.run(stages::ARCHIVE_CACHE).is_none(),
        "gitlab-runner would skip it"
    );
    let body = script::user_lines_body(runner.job(), runner.state(), &["echo custom stage".to_owned()]);
    let result = runner.run_script("step_custom", &script::wrap("bash", &body));
    assert!(result.is_success(), "{}", result.log_text());
    assert!(result.stdout_text().contains("custom stage"));
    let cleanup = runner.cleanup();
    assert!(cleanup.is_success());
    assert!(runner.temp_dir().is_none());
}

#[test]
fn job_log_reads_like_gitlabs() {
    let fake = Fake::new("job-log");
    fake.hook(
        "config",
        r#"echo 'config diagnostics' >&2
printf '{"builds_dir":"%s/builds","driver":{"name":"fake","version":"0.1"}}' "$dir""#,
    );
    let job = JobSpec::new(5, "group/project")
        .image(Image::new("alpine:3.20"))
        .script(["echo hello"])
        .after_script(["echo bye"]);
    let outcome = fake.runner(&job).run_job();
    outcome.print_log();
    let log = outcome.log_text();
    let order = [
        "Running with gitlab-runner 19.4.0",
        "Preparing the \"custom\" executor",
        "config diagnostics",
        "Using Custom executor with driver fake 0.1...",
        "prepared",
        "Preparing environment",
        "Running on ",
        "Getting source from Git repository",
        "Skipping Git repository setup",
        "Executing \"step_script\" stage of the job script",
        "$ echo hello",
        "Running after_script",
        "Running after script...",
        "$ echo bye",
        "Job succeeded",
    ];
    let mut from = 0;
    for needle in order {
        let at = log[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not after byte {from} in:\n{log}"));
        from += at + needle.len();
    }
    assert!(!log.contains("cleaned up"), "cleanup output stays out of the job log");
}
