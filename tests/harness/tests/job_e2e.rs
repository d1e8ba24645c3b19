//! End-to-end jobs: the built `ecs-executor` binary driven exactly as gitlab-runner drives it
//! (the runner-protocol harness), against the local ECS stand-in (patched moto, the agent
//! stand-in, Docker with mutual TLS) brought up by `tests/local-ecs/up`.
//!
//! Every test has its own executor config (unique `family_prefix` and `state_dir`), runner
//! token and job ids, so the tests run in parallel; every test checks through the ECS API that
//! its jobs' tasks were stopped.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerStateChange, DesiredStatus};
use bollard::query_parameters::InspectContainerOptions;
use ecs_executor_tests::runner::{Image, JobSpec, JobStatus, Stream, Verb, script, stages};
use ecs_executor_tests::standin::{Fault, Standin, unique_name};
use sha2::{Digest, Sha256};
use support::{E2e, assert_cancelled, assert_ok, executor_lines, project_dir, show, stage_script};

#[test]
fn a_job_shares_files_between_helper_and_build_stages_and_runs_after_script() {
    let e = E2e::new("share");
    let job = e
        .job()
        .script([
            "test -f from-get-sources.txt",
            "cat from-get-sources.txt",
            "if [ -e /etc/debian_version ]; then echo WRONG-CONTAINER; exit 9; fi",
            "ls -ln from-get-sources.txt",
            "echo \"built in $(hostname)\" > build-output.txt",
        ])
        .after_script(["cat build-output.txt", "echo after_script-ran"]);
    let mut r = e.runner(&job);
    let config = r.config();
    assert_ok(&config);
    let prepare = r.prepare();
    assert_ok(&prepare);
    eprintln!("prepare took {:.2} s", prepare.duration.as_secs_f64());
    let task = e.running_task(&job);
    let arn = task.task_arn().unwrap().to_string();
    let helper_id = e.container_id(&arn, "helper");
    let build_id = e.container_id(&arn, "build");

    // get_sources runs in the helper (Debian) and writes into the builds dir. The stand-in has
    // no git server, so this get_sources script makes the "checkout" itself.
    let dir = project_dir(&r);
    let get_sources = r.run_script(
        stages::GET_SOURCES,
        &stage_script(
            &r,
            &format!(
                "mkdir -p '{dir}'\ncd '{dir}'\n\
                 printf 'from get_sources in %s (debian %s)\\n' \"$(hostname)\" \"$(cat /etc/debian_version)\" > from-get-sources.txt\n\
                 echo get_sources-wrote-the-file\n"
            ),
        ),
    );
    assert_ok(&get_sources);
    assert!(
        get_sources.stdout_text().contains("get_sources-wrote-the-file"),
        "{}",
        show(&get_sources)
    );

    let build = r.run(stages::BUILD_SCRIPT).expect("the job has a script");
    assert_ok(&build);
    let out = build.stdout_text();
    // The file came from the helper container (its hostname is its short container id)...
    assert!(
        out.contains(&format!("from get_sources in {} (debian ", &helper_id[..12])),
        "{}",
        show(&build)
    );
    // ...was written with umask 0000 (so a non-root build user could change it)...
    assert!(out.contains("-rw-rw-rw-"), "{}", show(&build));

    // after_script runs in the build container and sees what build_script left.
    let after = r.run(stages::AFTER_SCRIPT).expect("the job has an after_script");
    assert_ok(&after);
    assert!(
        after.stdout_text().contains(&format!("built in {}", &build_id[..12])),
        "{}",
        show(&after)
    );
    assert!(after.stdout_text().contains("after_script-ran"), "{}", show(&after));

    let cleanup = r.cleanup();
    assert_ok(&cleanup);
    assert!(!e.state_file(&job).exists(), "cleanup removes the state file");
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert_eq!(tasks[0].task_arn(), Some(arn.as_str()));
}

#[test]
fn a_failing_script_is_a_build_failure_with_its_exit_code_and_after_script_still_runs() {
    let e = E2e::new("exit3");
    let job = e
        .job()
        .script(["echo before-the-failure", "exit 3", "echo never-printed"])
        .after_script(["echo \"after_script ran with CI_JOB_STATUS=$CI_JOB_STATUS\""]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 3 }, "{log}");
    let build = outcome.stage(stages::BUILD_SCRIPT).expect("build_script ran");
    assert_eq!(build.exit_code(), Some(1), "BUILD_FAILURE_EXIT_CODE: {}", show(build));
    assert_eq!(
        build.build_exit_code_file.as_deref().map(str::trim),
        Some("3"),
        "{}",
        show(build)
    );
    assert!(build.stdout_text().contains("before-the-failure"), "{}", show(build));
    assert!(!log.contains("never-printed"), "{log}");
    let after = outcome.stage(stages::AFTER_SCRIPT).expect("after_script ran");
    assert_ok(after);
    assert!(
        after
            .stdout_text()
            .contains("after_script ran with CI_JOB_STATUS=failed"),
        "{}",
        show(after)
    );
    assert_eq!(outcome.prepare_attempts, 1);
    assert!(log.trim_end().ends_with("ERROR: Job failed: exit status 3"), "{log}");
    assert_eq!(outcome.call_sequence().last().map(String::as_str), Some("cleanup"));
    assert_ok(outcome.calls.last().unwrap());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn a_missing_image_fails_prepare_as_a_build_failure_quoting_ecs_and_leaves_no_task() {
    let e = E2e::new("noimage");
    let image = format!("ecs-executor-test/{}:1", unique_name("no-such-image"));
    let job = e.job().image(Image::new(&image)).script(["echo never-runs"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    // BUILD_FAILURE: the user's image is wrong; gitlab-runner does not retry prepare.
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 1 }, "{log}");
    assert_eq!(outcome.prepare_attempts, 1, "{log}");
    assert_eq!(outcome.call_sequence(), ["config", "prepare", "cleanup"], "{log}");
    let prepare = &outcome.calls[1];
    assert_eq!(prepare.exit_code(), Some(1), "{}", show(prepare));
    let said = prepare.stderr_text();
    assert!(
        said.contains(&format!("\"{image}\"")),
        "the message names the image:\n{}",
        show(prepare)
    );
    // ECS's own reason, quoted: the agent's CannotPullContainerError with the normalised ref.
    let reason = format!(
        "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref docker.io/{image}"
    );
    assert!(
        said.contains(&reason) && said.contains("not found"),
        "ECS's reason is quoted:\n{}",
        show(prepare)
    );
    assert!(log.contains(&reason), "the reason reaches the job log:\n{log}");
    assert!(!log.contains("never-runs\n"), "{log}");
    assert_ok(&outcome.calls[2]);
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert!(
        tasks[0]
            .stopped_reason()
            .is_some_and(|r| r.starts_with("CannotPullContainerError")),
        "{:#?}",
        tasks[0]
    );
}

#[test]
fn a_transient_pull_failure_is_a_system_failure() {
    // The agent stand-in never pulls: a missing image is always reported as "not found"
    // (permanent). A transient failure is staged here: moto holds the agent's own STOPPED
    // report back (fault on SubmitTaskStateChange matching its "<ref>: not found"), and the
    // test reports the task STOPPED with a registry rate-limit reason instead, as the ECS
    // agent does when Docker Hub throttles.
    const REASON: &str = "CannotPullContainerError: failed to copy: httpReadSeeker: failed open: unexpected status \
                          code https://registry-1.docker.io/v2/library/x/manifests/sha256:0: 429 Too Many Requests - \
                          Server message: toomanyrequests: You have reached your pull rate limit.";
    let e = E2e::new("flakypull");
    let name = unique_name("flaky-pull");
    let image = format!("ecs-executor-test/{name}:1");
    let job = e.job().image(Image::new(&image)).script(["echo never-runs"]);
    let fault = e.standin.inject(
        &Fault::ecs_error("SubmitTaskStateChange", "ServerException", -1)
            .status(500)
            .message("e2e: the agent's report is held back")
            .matching(&format!("{name}:1: not found")),
    );
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let preparing = std::thread::spawn(move || {
        let prepare = r.prepare();
        (r, prepare)
    });

    // Wait until the agent tried (and failed) to report the pull failure, then report ours.
    let deadline = Instant::now() + Duration::from_secs(60);
    let arn = loop {
        let held = e
            .standin
            .faults()
            .iter()
            .any(|f| f["id"] == fault.id.as_str() && f["hits"].as_u64().unwrap_or(0) > 0);
        let tasks = e.tasks_of(&job);
        if held && let Some(t) = tasks.first() {
            break t.task_arn().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline && !preparing.is_finished(),
            "the agent never reported the pull failure: {tasks:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    e.block_on(
        e.ecs
            .submit_task_state_change()
            .cluster(&e.standin.cluster)
            .task(&arn)
            .status("STOPPED")
            .reason(REASON)
            .containers(
                ContainerStateChange::builder()
                    .container_name("build")
                    .status("STOPPED")
                    .reason(REASON)
                    .build(),
            )
            .send(),
    )
    .expect("SubmitTaskStateChange");

    let (mut r, prepare) = preparing.join().unwrap();
    assert!(
        prepare.is_system_failure(),
        "a throttled pull may pass: SYSTEM_FAILURE so gitlab-runner retries\n{}",
        show(&prepare)
    );
    let said = prepare.stderr_text();
    assert!(
        said.contains(&format!("\"{image}\"")) && said.contains("toomanyrequests"),
        "{}",
        show(&prepare)
    );
    drop(fault);
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn cancel_kills_the_remote_script_runs_after_script_and_stops_the_task() {
    let cancel_after = Duration::from_secs(12);
    let e = E2e::new("cancel");
    let job = e
        .job()
        .script(["sh -c 'sleep 86417' &", "echo build-started", "sleep 300", "echo never-printed"])
        .after_script([
            "echo \"after_script: CI_JOB_STATUS=$CI_JOB_STATUS\"",
            "if ps | grep -v grep | grep -q -e 'sleep 86417' -e 'sleep 300'; then echo LEFTOVER; ps; else echo no-leftover-processes; fi",
            "sleep 1",
        ]);

    // Watch the build container from outside (Docker's Unix socket) while the job runs.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (standin, started_by, done) = (e.standin.clone(), e.started_by(&job), Arc::clone(&done));
        std::thread::spawn(move || watch_build_processes(&standin, &started_by, &done))
    };
    let t0 = Instant::now();
    let outcome = e.runner(&job).cancel_after(cancel_after).run_job();
    let cancelled_at = t0 + cancel_after;
    done.store(true, Ordering::SeqCst);
    let samples = watcher.join().unwrap();
    let log = outcome.log_text();

    assert_eq!(outcome.status, JobStatus::Canceled, "{log}");
    let build = outcome.stage(stages::BUILD_SCRIPT).expect("build_script ran");
    assert!(
        build.stdout_text().contains("build-started"),
        "the script was running when the cancel came:\n{log}"
    );
    assert_cancelled(build);
    assert!(
        !build.is_success(),
        "a cancelled stage never reports success: {}",
        show(build)
    );
    assert!(!log.contains("never-printed\n"), "{log}");

    let seen = samples.iter().find(|s| s.1 == Some(true)).map(|s| s.0);
    let seen =
        seen.unwrap_or_else(|| panic!("the marker process was never seen in the build container:\n{samples:?}\n{log}"));
    assert!(
        seen < cancelled_at,
        "prepare took longer than {cancel_after:?}; the test needs the script running before the cancel:\n{log}"
    );
    let gone = samples
        .iter()
        .find(|s| s.0 > cancelled_at && s.1 == Some(false))
        .map(|s| s.0);
    let gone = gone.unwrap_or_else(|| {
        panic!("the script's processes never disappeared from the running container:\n{samples:?}\n{log}")
    });
    let took = gone.duration_since(cancelled_at);
    eprintln!("script processes gone {:.2} s after the cancel", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(5),
        "the remote processes took {took:?} to go after SIGTERM"
    );

    let after = outcome
        .stage(stages::AFTER_SCRIPT)
        .expect("after_script runs after a graceful cancel");
    assert_ok(after);
    let after_out = after.stdout_text();
    assert!(
        after_out.contains("after_script: CI_JOB_STATUS=canceled"),
        "{}",
        show(after)
    );
    assert!(
        after_out.lines().any(|l| l.trim() == "no-leftover-processes"),
        "{}",
        show(after)
    );
    assert_eq!(
        outcome.call_sequence().last().map(String::as_str),
        Some("cleanup"),
        "{log}"
    );
    assert_ok(outcome.calls.last().unwrap());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn a_job_timeout_ends_the_script_runs_no_further_stage_and_stops_the_task() {
    // gitlab-runner's job timeout: SIGTERM to the running call, then no after_script, no
    // cache or artifact stage, only cleanup. (Counted from the job's start, prepare included.)
    // The job names no image: the build container runs the config's `default_image`.
    let e = E2e::new("jobtimeout");
    let job = e
        .job()
        .without_image()
        .script([
            "test -x /bin/busybox",
            "echo build-started",
            "sleep 300",
            "echo never-printed",
        ])
        .after_script(["echo after-script-ran"])
        .stage_lines(stages::UPLOAD_ARTIFACTS_ON_FAILURE, ["echo upload-ran"]);
    let outcome = e.runner(&job).job_timeout(Duration::from_secs(20)).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::TimedOut, "{log}");
    let build = outcome.stage(stages::BUILD_SCRIPT).expect("build_script ran");
    assert!(
        build.stdout_text().contains("build-started"),
        "the script was running when the timeout came (prepare took too long?):\n{log}"
    );
    assert!(
        build
            .termination
            .is_some_and(|t| t.reason == ecs_executor_tests::runner::KillReason::JobTimeout),
        "{}",
        show(build)
    );
    assert!(
        !build.is_success(),
        "a timed-out stage never reports success: {}",
        show(build)
    );
    assert!(!log.contains("never-printed\n"), "{log}");
    assert!(
        outcome.stage(stages::AFTER_SCRIPT).is_none() && outcome.stage(stages::UPLOAD_ARTIFACTS_ON_FAILURE).is_none(),
        "no stage runs after a job timeout: {:?}",
        outcome.stages_run()
    );
    assert!(
        !log.contains("after-script-ran") && !log.contains("upload-ran"),
        "{log}"
    );
    assert_eq!(
        outcome.call_sequence().last().map(String::as_str),
        Some("cleanup"),
        "{log}"
    );
    assert_ok(outcome.calls.last().unwrap());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn an_image_entrypoint_wraps_the_build_containers_main_process_not_each_stage() {
    // `image: entrypoint:` becomes the build container's ECS entryPoint, with the keep-alive
    // as its command: the entry point runs once when the task starts, and must run its
    // arguments (`exec "$@"`) for the container to stay up. Stages run by Docker exec or the
    // stage runner, so what the entry point exports does not reach the scripts (with GitLab's
    // Docker executor it does: there the entry point starts the shell that reads the script).
    let e = E2e::new("entrypoint");
    let job = e
        .job()
        .image(Image::new(&e.standin.images.build).entrypoint([
            "sh",
            "-c",
            "echo \"entrypoint ran with: $*\" > /tmp/entrypoint-ran; export FROM_ENTRYPOINT=set; exec \"$0\" \"$@\"",
        ]))
        .script([
            "cat /tmp/entrypoint-ran",
            "echo \"entrypoint-env=[${FROM_ENTRYPOINT:-}]\"",
            "echo \"pid1=[$(tr '\\0' ' ' < /proc/1/cmdline)]\"",
        ]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    let out = outcome
        .stage(stages::BUILD_SCRIPT)
        .expect("build_script ran")
        .stdout_text();
    assert!(
        out.contains("entrypoint ran with: -c trap "),
        "the entry point ran, with the keep-alive as its arguments:\n{out}"
    );
    assert!(
        out.contains("pid1=[sh -c trap "),
        "the entry point exec'd the keep-alive, which is PID 1:\n{out}"
    );
    assert!(
        out.contains("entrypoint-env=[]\n"),
        "the entry point's environment is not the stages':\n{out}"
    );
    e.assert_tasks_stopped(&job, 1);
}

/// Samples `ps` in the job's build container every 150 ms until `done`: (when, Some(true) when
/// the script's processes are there, Some(false) when the container runs without them, None
/// when the container cannot be asked).
fn watch_build_processes(standin: &Standin, started_by: &str, done: &AtomicBool) -> Vec<(Instant, Option<bool>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ecs = rt.block_on(standin.ecs(3));
    let docker = standin.docker();
    let mut container = None;
    let mut samples = Vec::new();
    while !done.load(Ordering::SeqCst) {
        if container.is_none() {
            let listed = rt.block_on(
                ecs.list_tasks()
                    .cluster(&standin.cluster)
                    .started_by(started_by)
                    .desired_status(DesiredStatus::Running)
                    .send(),
            );
            if let Some(arn) = listed.ok().and_then(|l| l.task_arns().first().cloned()) {
                container = rt.block_on(support::container_id(&docker, &arn, "build"));
            }
        }
        if let Some(id) = &container {
            let sample = match rt.block_on(support::docker_exec(&docker, id, &["ps"])) {
                Ok((0, ps)) => Some(ps.contains("sleep 86417") || ps.contains("sleep 300")),
                _ => None,
            };
            samples.push((Instant::now(), sample));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    samples
}

#[test]
fn cleanup_after_a_failed_prepare_exits_0_and_is_idempotent() {
    let e = E2e::new("cleanfail");
    let job = e
        .job()
        .image(Image::new(format!("ecs-executor-test/{}:1", unique_name("missing"))))
        .script(["true"]);
    let (mut r, prepare) = e.prepare(&job);
    assert!(prepare.is_build_failure(1), "{}", show(&prepare));
    assert!(!e.state_file(&job).exists(), "a failed prepare leaves no state behind");
    let first = r.cleanup();
    assert_ok(&first);
    let second = r.cleanup();
    assert_ok(&second);
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn cleanup_without_any_state_exits_0_twice() {
    let e = E2e::new("cleannone");
    let job = e.job().script(["true"]);
    let mut r = e.runner(&job);
    // gitlab-runner calls cleanup even when config failed: nothing was ever created.
    for _ in 0..2 {
        let cleanup = r.cleanup();
        assert_ok(&cleanup);
        assert!(cleanup.stdout_text().contains("nothing to stop"), "{}", show(&cleanup));
    }
    assert!(e.tasks_of(&job).is_empty());
}

#[test]
fn cleanup_finds_the_task_when_the_state_file_is_lost() {
    // prepare killed between RunTask and writing its state: cleanup finds the task by startedBy.
    let e = E2e::new("cleanlost");
    let job = e.job().script(["true"]);
    let mut live = e.start(job);
    let arn = live.task_arn();
    std::fs::remove_file(e.state_file(&live.job)).expect("prepare wrote a state file");
    let cleanup = live.r.cleanup();
    assert_ok(&cleanup);
    assert!(
        cleanup.stdout_text().contains(&format!("stopped {arn}")),
        "{}",
        show(&cleanup)
    );
    live.finish();
}

#[test]
fn unknown_stage_names_run_in_the_build_container() {
    let e = E2e::new("stages");
    let job = e.job().step(
        "release",
        [
            "echo \"release step in $(hostname)\"",
            "test ! -e /etc/debian_version",
            "test -x /bin/busybox",
        ],
    );
    let mut live = e.start(job);
    let arn = live.task_arn();
    let build_id = e.container_id(&arn, "build");
    assert_ok(&live.r.run(stages::GET_SOURCES).expect("get_sources always runs"));

    // Ran in the build container: its hostname is the container's short id.
    let ran_in_build = |call: &ecs_executor_tests::runner::StageResult, what: &str| {
        assert_ok(call);
        let said = format!("{what} in {}", &build_id[..12]);
        assert!(call.stdout_text().contains(&said), "{said:?}: {}", show(call));
    };
    ran_in_build(
        &live.r.run("step_release").expect("the job has a release step"),
        "release step",
    );

    let body = script::user_lines_body(
        live.r.job(),
        live.r.state(),
        &[
            "echo \"future stage in $(hostname)\"".to_string(),
            "test ! -e /etc/debian_version".to_string(),
        ],
    );
    ran_in_build(&live.stage("some_future_stage", &body), "future stage");

    live.finish();
}

#[test]
fn jobs_with_the_same_image_reuse_one_task_definition_and_a_new_image_registers_another() {
    let e = E2e::new("reuse");
    let registrations = |mark: u64| e.own_calls_since(mark, "RegisterTaskDefinition").len();
    let run = |job: &JobSpec| {
        let mark = e.standin.request_mark();
        let outcome = e.runner(job).run_job();
        assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
        let tasks = e.assert_tasks_stopped(job, 1);
        (
            registrations(mark),
            tasks[0].task_definition_arn().unwrap().to_string(),
            outcome.log_text(),
        )
    };

    let first = e.job().script(["echo first"]);
    let (registered, td_first, log) = run(&first);
    assert_eq!(
        registered, 1,
        "a new family prefix registers its first task definition:\n{log}"
    );
    assert!(log.contains(" registered ("), "{log}");

    let second = e.job().script(["echo second"]);
    let (registered, td_second, log) = run(&second);
    assert_eq!(registered, 0, "the same content is found again, not registered:\n{log}");
    assert_eq!(td_second, td_first);
    assert!(log.contains(" reused ("), "{log}");

    let other = e
        .job()
        .image(Image::new(&e.standin.images.helper))
        .script(["echo other image"]);
    let (registered, td_other, log) = run(&other);
    assert_eq!(registered, 1, "another image is another task definition:\n{log}");
    assert_ne!(td_other, td_first);
    assert!(td_other.contains(&e.family_prefix), "{td_other}");
}

#[test]
fn masked_values_never_reach_ecs_the_task_definition_the_executor_log_or_the_state_file() {
    let e = E2e::new("masked");
    let secret = format!("Zq9-{}-masked", unique_name("sec"));
    let file_secret = format!("Fv7-{}-file", unique_name("sec"));
    let job_token = format!("glcbt-{}", unique_name("tok"));
    let registry_password = format!("Rp3-{}-pw", unique_name("sec"));
    let secrets = [
        secret.as_str(),
        file_secret.as_str(),
        job_token.as_str(),
        registry_password.as_str(),
    ];
    let job = e
        .job()
        .masked_variable("E2E_SECRET", &secret)
        .file_variable("E2E_FILE_SECRET", &file_secret)
        .job_token(&job_token)
        .registry_credentials("registry.example.com", "ci", &registry_password)
        .script([
            "echo \"script sees $E2E_SECRET\"",
            "cat \"$E2E_FILE_SECRET\"; echo",
            "echo \"to stderr $E2E_SECRET\" >&2",
        ])
        .after_script(["echo \"after_script sees $E2E_SECRET\""]);
    let leaks = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} contains the secret {s}:\n{text}");
        }
    };

    let mark = e.standin.request_mark();
    let mut r = e.runner(&job);
    let mut calls = vec![r.config(), r.prepare()];
    calls.iter().for_each(assert_ok);
    let state = std::fs::read_to_string(e.state_file(&job)).expect("prepare wrote the state file");
    leaks("the state file", &state);
    let task = e.running_task(&job);
    let arn = task.task_arn().unwrap().to_string();
    for stage in [
        stages::GET_SOURCES,
        stages::BUILD_SCRIPT,
        stages::AFTER_SCRIPT,
        stages::CLEANUP_FILE_VARIABLES,
    ] {
        let call = r.run(stage).unwrap_or_else(|| panic!("{stage} runs for this job"));
        assert_ok(&call);
        calls.push(call);
    }
    leaks(
        "the state file after the stages",
        &std::fs::read_to_string(e.state_file(&job)).unwrap(),
    );
    // The script itself got the values (so the test would notice them if they leaked).
    let build = &calls[3];
    assert!(
        build.stdout_text().contains(&format!("script sees {secret}")),
        "{}",
        show(build)
    );
    assert!(build.stdout_text().contains(&file_secret), "{}", show(build));
    assert!(
        build.stderr_text().contains(&format!("to stderr {secret}")),
        "{}",
        show(build)
    );

    // What ECS and Docker hold about the job.
    let described = e
        .block_on(e.ecs.describe_tasks().cluster(&e.standin.cluster).tasks(&arn).send())
        .expect("DescribeTasks");
    leaks("DescribeTasks", &format!("{described:?}"));
    let td = e
        .block_on(
            e.ecs
                .describe_task_definition()
                .task_definition(task.task_definition_arn().unwrap())
                .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
                .send(),
        )
        .expect("DescribeTaskDefinition");
    leaks("the task definition", &format!("{td:?}"));
    let docker = e.standin.docker();
    for name in ["build", "helper"] {
        let id = e.container_id(&arn, name);
        let inspected = e
            .block_on(docker.inspect_container(&id, None::<InspectContainerOptions>))
            .expect("docker inspect");
        leaks(
            &format!("the {name} container"),
            &serde_json::to_string(&inspected).unwrap(),
        );
    }

    let cleanup = r.cleanup();
    assert_ok(&cleanup);
    calls.push(cleanup);
    for call in &calls {
        leaks(
            &format!("the executor's own lines of {}", call.describe()),
            &executor_lines(call).join("\n"),
        );
        if call.verb != Verb::Run {
            leaks(
                &format!("the output of {}", call.describe()),
                &format!("{}{}", call.stdout_text(), call.stderr_text()),
            );
        }
    }
    e.assert_tasks_stopped(&job, 1);
    let requests = e.standin.requests_since(mark);
    assert!(
        requests
            .iter()
            .any(|q| q.action.as_deref() == Some("RunTask") && q.body.contains(&e.started_by(&job))),
        "the job's calls were recorded"
    );
    for q in &requests {
        leaks(
            &format!(
                "recorded {} {} request #{}",
                q.service,
                q.action.as_deref().unwrap_or("?"),
                q.seq
            ),
            &q.body,
        );
    }
}

/// `yes abcdefgh | head -c n`, as busybox prints it.
fn yes_bytes(n: usize) -> Vec<u8> {
    b"abcdefgh\n".iter().copied().cycle().take(n).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn output_arrives_byte_exact() {
    let e = E2e::new("bytes");
    let job = e.job().script(["true"]);
    let mut live = e.start(job);
    // Each body writes the bytes to a file, prints the container's sha256sum of it on stderr
    // and the bytes on stdout; the wrapper adds nothing to either stream.
    let cases: [(&str, String, Vec<u8>); 3] = [
        (
            "1 MiB of text",
            "{ yes abcdefgh || true; } | head -c 1048576 > /tmp/e2e-out".into(),
            yes_bytes(1 << 20),
        ),
        (
            "1 MiB of every byte value",
            r#"i=0; while [ $i -lt 256 ]; do printf "\\$(printf %o $i)"; i=$((i+1)); done > /tmp/e2e-out
for k in 1 2 3 4 5 6 7 8 9 10 11 12; do cat /tmp/e2e-out /tmp/e2e-out > /tmp/e2e-2; mv /tmp/e2e-2 /tmp/e2e-out; done"#
                .into(),
            (0..=255u8).cycle().take(1 << 20).collect(),
        ),
        (
            "64 MiB of text",
            "{ yes abcdefgh || true; } | head -c 67108864 > /tmp/e2e-out".into(),
            yes_bytes(64 << 20),
        ),
    ];
    for (what, produce, expected) in cases {
        let body = format!("{produce}\nsha256sum /tmp/e2e-out >&2\ncat /tmp/e2e-out\nrm -f /tmp/e2e-out\n");
        let call = live.stage(stages::BUILD_SCRIPT, &body);
        assert!(call.is_success(), "{what}: {:?}\n{}", call.status, call.stderr_text());
        let in_container = call
            .stderr_text()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let expected_hash = sha256_hex(&expected);
        assert_eq!(
            in_container, expected_hash,
            "{what}: the container made other bytes than expected"
        );
        assert_eq!(call.stdout.len(), expected.len(), "{what}: stdout length");
        assert_eq!(
            sha256_hex(&call.stdout),
            expected_hash,
            "{what}: stdout differs from what the container wrote"
        );
        eprintln!(
            "{what}: {} bytes byte-exact in {:.2} s",
            call.stdout.len(),
            call.duration.as_secs_f64()
        );
    }
    live.finish();
}

#[test]
fn each_streams_own_line_order_is_preserved() {
    let e = E2e::new("streams");
    let job = e.job().script(["true"]);
    let mut live = e.start(job);
    // A pause half way: the first half of both streams is written (and must be forwarded)
    // before the second half exists, so "arrived as written" does not depend on how fast the
    // reader drains two 64 KiB pipes that a fast script may fill before the first read.
    let body = "i=1; while [ $i -le 1000 ]; do echo \"out $i\"; echo \"err $i\" >&2; \
                [ $i -eq 500 ] && sleep 1; i=$((i+1)); done\n";
    let call = live.stage(stages::BUILD_SCRIPT, body);
    assert_ok(&call);
    let expect = |prefix: &str| (1..=1000).map(|i| format!("{prefix} {i}")).collect::<Vec<_>>();
    let out: Vec<String> = call.stdout_text().lines().map(String::from).collect();
    let err: Vec<String> = call.stderr_text().lines().map(String::from).collect();
    assert_eq!(out, expect("out"), "stdout lines out of order or lost");
    assert_eq!(err, expect("err"), "stderr lines out of order or lost");
    // Both streams arrived as they were written, not one after the other at the end.
    let first_err = call.log.iter().position(|c| c.stream == Stream::Stderr).unwrap();
    let last_out = call.log.iter().rposition(|c| c.stream == Stream::Stdout).unwrap();
    assert!(first_err < last_out, "stderr only arrived after all of stdout");
    live.finish();
}

#[test]
fn an_unknown_config_key_is_a_system_failure_naming_the_key_and_the_file() {
    for (case, edit) in [
        (
            "top-level",
            Box::new(|t: String| format!("bogus_key = 1\n{t}")) as Box<dyn FnOnce(String) -> String>,
        ),
        (
            "in [docker]",
            Box::new(|t: String| t.replace("[docker]\n", "[docker]\nverify_server = false\n")),
        ),
    ] {
        let e = E2e::with_config_edit("badconfig", edit);
        let key = if case == "top-level" {
            "bogus_key"
        } else {
            "verify_server"
        };
        let job = e.job().script(["true"]);
        let mut r = e.runner(&job);
        let config = r.config();
        assert!(config.is_system_failure(), "{case}: {}", show(&config));
        assert!(config.stdout.is_empty(), "{case}: no JSON on stdout: {}", show(&config));
        let said = config.stderr_text();
        assert!(said.contains(key), "{case}: names the key: {}", show(&config));
        assert!(
            said.contains(&e.config.display().to_string()),
            "{case}: names the file: {}",
            show(&config)
        );

        // The whole job: a system failure, every prepare attempt fails at config.
        let outcome = e.runner(&job).run_job();
        assert!(
            matches!(outcome.status, JobStatus::SystemFailure { .. }),
            "{case}: {}",
            outcome.log_text()
        );
        assert!(
            !outcome.call_sequence().contains(&"prepare".to_string()),
            "{case}: {:?}",
            outcome.call_sequence()
        );
        assert!(e.tasks_of(&job).is_empty());
    }
}

#[test]
fn two_jobs_starting_together_register_one_task_definition() {
    let e = E2e::new("race");
    let mark = e.standin.request_mark();
    let jobs = [e.job().script(["echo one"]), e.job().script(["echo two"])];
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|job| s.spawn(|| e.runner(job).run_job())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for outcome in &outcomes {
        assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
    }
    let registered = e.own_calls_since(mark, "RegisterTaskDefinition").len();
    assert_eq!(
        registered, 1,
        "racing jobs on one runner host register one revision, not one each"
    );
    let tds: Vec<String> = jobs
        .iter()
        .map(|j| {
            e.assert_tasks_stopped(j, 1)[0]
                .task_definition_arn()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tds[0], tds[1]);
}

#[test]
fn cancel_during_prepare_leaves_no_task() {
    let e = E2e::new("cancelprep");
    let job = e.job().script(["echo never-runs"]);
    // config takes a few ms, prepare about a second: the cancel lands inside prepare.
    let outcome = e.runner(&job).cancel_after(Duration::from_millis(600)).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Canceled, "{log}");
    let prepare = outcome.first_call(Verb::Prepare).expect("prepare ran");
    assert_cancelled(prepare);
    assert!(!prepare.is_success(), "{}", show(prepare));
    assert!(
        prepare.termination.is_some_and(|t| !t.sigkill),
        "prepare ended on SIGTERM, without SIGKILL: {}",
        show(prepare)
    );
    assert!(outcome.stages_run().is_empty(), "{log}");
    assert_ok(
        outcome
            .calls
            .last()
            .filter(|c| c.verb == Verb::Cleanup)
            .expect("cleanup ran last"),
    );
    assert!(!e.state_file(&job).exists());
    // Whether RunTask had happened yet or not, nothing of the job runs on.
    let tasks = e.assert_no_task_left(&job);
    assert!(tasks.len() <= 1, "{tasks:#?}");
    if prepare.stdout_text().contains("started on cluster") {
        assert_eq!(tasks.len(), 1, "prepare said it started a task: {}", show(prepare));
    }
}

#[test]
fn a_full_cluster_makes_prepare_wait_then_fail_cleanly_at_the_start_timeout() {
    // 100 000 MiB never fits the stand-in's instance (7482 MiB): RunTask reports
    // RESOURCE:MEMORY every time, which prepare treats as "wait for room".
    let e = E2e::with_config_edit("full", |text| {
        text.replace("memory = 256", "memory = 100000")
            .replace("cpu = 128", "cpu = 128\nstart_timeout_secs = 4")
    });
    let job = e.job().script(["true"]);
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let started = std::time::Instant::now();
    let prepare = r.prepare();
    let waited = started.elapsed();
    assert!(prepare.is_system_failure(), "{}", show(&prepare));
    let log = prepare.log_text();
    assert!(log.contains("has no room for the task yet"), "{log}");
    assert!(log.contains("RESOURCE:MEMORY"), "{log}");
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "prepare gave up without waiting ({waited:?})"
    );
    assert!(e.tasks_of(&job).is_empty(), "no task may exist: none was ever placed");
    assert_ok(&r.cleanup());
}
