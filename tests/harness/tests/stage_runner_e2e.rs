//! The stage runner end to end: prepare starts it in the build and helper containers, `run`
//! reaches it without Docker, and every way it can be missing or break has a clear outcome
//! (Docker exec instead, or a system failure that says what was lost).

mod support;

use std::process::Command;
use std::time::Duration;

use ecs_executor_tests::runner::stages;
use support::{E2e, assert_ok, show, stage_script};

/// Host PIDs of the stage runner in container `id` (`docker top`: the container's processes).
fn runner_pids(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["top", id, "-eo", "pid,args"])
        .output()
        .expect("docker top");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ecs-executor-stage-runner serve"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn kill_runner(id: &str) {
    let pids = runner_pids(id);
    assert!(!pids.is_empty(), "no stage runner in container {id}");
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
}

#[test]
fn stages_run_through_the_stage_runner_without_touching_docker() {
    let e = E2e::new("runner");
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let prepare = r.prepare();
    assert_ok(&prepare);
    assert!(
        prepare.stdout_text().contains("stage runners up (build 127.0.0.1:"),
        "{}",
        show(&prepare)
    );
    let state = std::fs::read_to_string(e.state_file(&job)).expect("state file");
    assert!(
        state.contains("\"stage_runner\"") && state.contains("\"helper\""),
        "{state}"
    );
    let arn = e.running_task(&job).task_arn().unwrap().to_string();
    assert_eq!(runner_pids(&e.container_id(&arn, "build")).len(), 1);
    assert_eq!(runner_pids(&e.container_id(&arn, "helper")).len(), 1);

    // From here on Docker is unreachable for this job's `run`: the stages cannot be execs.
    let text = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(&e.config, text.replace("port = 2376", "port = 1")).unwrap();
    let helper = r.run_script(
        stages::GET_SOURCES,
        &stage_script(&r, "echo in-helper; test -e /etc/debian_version\n"),
    );
    assert_ok(&helper);
    assert!(helper.stdout_text().contains("in-helper"), "{}", show(&helper));
    let failing = r.run_script(
        stages::BUILD_SCRIPT,
        &stage_script(
            &r,
            "echo to-stdout; echo to-stderr >&2; test ! -e /etc/debian_version; exit 7\n",
        ),
    );
    assert!(failing.is_build_failure(7), "{}", show(&failing));
    assert!(failing.stdout_text().contains("to-stdout"), "{}", show(&failing));
    assert!(failing.stderr_text().contains("to-stderr"), "{}", show(&failing));
    std::fs::write(&e.config, text).unwrap();
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn a_runner_that_dies_mid_stage_is_a_system_failure_saying_what_was_lost() {
    let e = E2e::new("runner-dies");
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    assert_ok(&r.prepare());
    let arn = e.running_task(&job).task_arn().unwrap().to_string();
    let build_id = e.container_id(&arn, "build");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        kill_runner(&build_id);
    });
    let stage = r.run_script(
        stages::BUILD_SCRIPT,
        &stage_script(&r, "echo stage-started\nsleep 60\n"),
    );
    killer.join().unwrap();
    assert!(stage.is_system_failure(), "{}", show(&stage));
    assert!(stage.stdout_text().contains("stage-started"), "{}", show(&stage));
    let err = stage.stderr_text();
    assert!(
        err.contains("connection lost to its stage runner") && err.contains("Output after this point was lost"),
        "{}",
        show(&stage)
    );
    assert!(stage.duration < Duration::from_secs(30), "{}", show(&stage));
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn a_runner_that_does_not_answer_leaves_the_stage_to_docker_exec() {
    let e = E2e::new("runner-gone");
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    assert_ok(&r.prepare());
    let arn = e.running_task(&job).task_arn().unwrap().to_string();
    kill_runner(&e.container_id(&arn, "build"));
    let stage = r.run_script(stages::BUILD_SCRIPT, &stage_script(&r, "echo via-exec; exit 4\n"));
    assert!(stage.is_build_failure(4), "{}", show(&stage));
    assert!(stage.stdout_text().contains("via-exec"), "{}", show(&stage));
    assert!(
        stage.stderr_text().contains("does not answer") && stage.stderr_text().contains("using Docker exec"),
        "{}",
        show(&stage)
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn without_the_runner_binary_prepare_says_so_and_the_job_uses_docker_exec() {
    let e = E2e::with_config_edit("runner-missing", |t| {
        let mut out: Vec<String> = t
            .lines()
            .filter(|l| !l.trim_start().starts_with("binary ="))
            .map(str::to_string)
            .collect();
        out.push("binary = \"/nonexistent/ecs-executor-stage-runner\"".into());
        out.join("\n") + "\n"
    });
    let job = e.job().script(["echo built-without-runner"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert!(outcome.is_success(), "{log}");
    assert!(
        log.contains(
            "stages use Docker exec: the stage runner binary /nonexistent/ecs-executor-stage-runner is missing"
        ),
        "{log}"
    );
    assert!(log.contains("built-without-runner"), "{log}");
    e.assert_tasks_stopped(&job, 1);
}
