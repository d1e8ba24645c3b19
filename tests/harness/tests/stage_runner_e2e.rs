//! The stage runner end to end: prepare starts it in the build and helper containers, `run`
//! reaches it without Docker, and every way it can be missing or break has a clear outcome
//! (Docker exec instead, or a system failure that says what was lost) — and a stage whose
//! request reached the runner never runs a second time.

mod support;

use std::process::Command;
use std::time::Duration;

use ecs_executor_tests::runner::stages;
use support::faults::{AfterRequest, Proxy};
use support::{E2e, assert_ok, assert_system_failure_saying, container_processes, show};

/// Host PIDs of the stage runner in container `id`.
fn runner_pids(id: &str) -> Vec<String> {
    container_processes(id, "ecs-executor-stage-runner serve")
        .iter()
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
    let mut live = e.start(e.job());
    assert!(
        live.prepare
            .stdout_text()
            .contains("stage runners up (build 127.0.0.1:"),
        "{}",
        show(&live.prepare)
    );
    let state = std::fs::read_to_string(e.state_file(&live.job)).expect("state file");
    assert!(
        state.contains("\"stage_runner\"") && state.contains("\"helper\""),
        "{state}"
    );
    assert_eq!(runner_pids(&live.container_id("build")).len(), 1);
    assert_eq!(runner_pids(&live.container_id("helper")).len(), 1);

    // From here on Docker is unreachable for this job's `run`: the stages cannot be execs.
    let text = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(&e.config, text.replace("port = 2376", "port = 1")).unwrap();
    let helper = live.stage(stages::GET_SOURCES, "echo in-helper; test -e /etc/debian_version\n");
    assert_ok(&helper);
    assert!(helper.stdout_text().contains("in-helper"), "{}", show(&helper));
    let failing = live.stage(
        stages::BUILD_SCRIPT,
        "echo to-stdout; echo to-stderr >&2; test ! -e /etc/debian_version; exit 7\n",
    );
    assert!(failing.is_build_failure(7), "{}", show(&failing));
    assert!(failing.stdout_text().contains("to-stdout"), "{}", show(&failing));
    assert!(failing.stderr_text().contains("to-stderr"), "{}", show(&failing));
    std::fs::write(&e.config, text).unwrap();
    live.finish();
}

#[test]
fn a_runner_that_dies_mid_stage_is_a_system_failure_saying_what_was_lost() {
    let e = E2e::new("runner-dies");
    let mut live = e.start(e.job());
    let build_id = live.container_id("build");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        kill_runner(&build_id);
    });
    let stage = live.stage(stages::BUILD_SCRIPT, "echo stage-started\nsleep 60\n");
    killer.join().unwrap();
    assert_system_failure_saying(
        &stage,
        &[
            "connection lost to its stage runner",
            "Output after this point was lost",
        ],
    );
    assert!(stage.stdout_text().contains("stage-started"), "{}", show(&stage));
    assert!(stage.duration < Duration::from_secs(30), "{}", show(&stage));
    live.finish();
}

#[test]
fn a_runner_that_does_not_answer_leaves_the_stage_to_docker_exec() {
    let e = E2e::new("runner-gone");
    let mut live = e.start(e.job());
    kill_runner(&live.container_id("build"));
    let stage = live.stage(stages::BUILD_SCRIPT, "echo via-exec; exit 4\n");
    assert!(stage.is_build_failure(4), "{}", show(&stage));
    assert!(stage.stdout_text().contains("via-exec"), "{}", show(&stage));
    assert!(
        stage.stderr_text().contains("does not answer") && stage.stderr_text().contains("using Docker exec"),
        "{}",
        show(&stage)
    );
    live.finish();
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

/// Routes `run`'s connections to the build container's stage runner through a proxy that
/// does `fault` once the request has gone through: the job's state file gets the proxy's
/// address instead of the runner's (what `run` reads; the runner itself is untouched).
fn through_faulty_proxy(e: &E2e, job: &ecs_executor_tests::runner::JobSpec, fault: AfterRequest) -> Proxy {
    let path = e.state_file(job);
    let text = std::fs::read_to_string(&path).expect("state file");
    let mut state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
    let addr = &mut state["stage_runner"]["addresses"]["build"];
    let runner = addr
        .as_str()
        .unwrap_or_else(|| panic!("no build runner in {text}"))
        .to_string();
    // More than a TLS handshake sends; the stage's script below is larger.
    let proxy = Proxy::with_fault(&runner, REQUEST_THRESHOLD, fault);
    *addr = format!("127.0.0.1:{}", proxy.port).into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).expect("rewrite the state file");
    proxy
}

const REQUEST_THRESHOLD: usize = 16 * 1024;

/// A stage script that counts its runs in the build container's /tmp/stage-runs (one line
/// per start), then waits a little; padded with a comment so its request is over REQUEST_THRESHOLD.
fn counting_script() -> String {
    let padding = format!("# {}\n", "x".repeat(4 * REQUEST_THRESHOLD));
    format!("{padding}echo run >> /tmp/stage-runs\necho counted\nsleep 5\n")
}

/// How many times the stage started in the build container: waits until the count stops
/// changing (a second start, if any, would come right after the first).
fn stage_runs(e: &E2e, build_id: &str) -> usize {
    let docker = e.standin.docker();
    let count = || {
        let (_, out) = e
            .block_on(support::docker_exec(
                &docker,
                build_id,
                &["sh", "-c", "cat /tmp/stage-runs 2>/dev/null"],
            ))
            .expect("docker exec in the build container");
        out.lines().filter(|l| *l == "run").count()
    };
    ecs_executor_tests::wait_until(Duration::from_secs(10), Duration::from_millis(100), || count() > 0);
    std::thread::sleep(Duration::from_secs(2));
    count()
}

/// The issue-11 flaw: a stage whose request reached the runner must never run a second time
/// through Docker exec, whatever happens to the connection afterwards.
fn a_stage_whose_request_went_through_is_lost_not_run_again(name: &str, fault: AfterRequest) {
    let e = E2e::new(name);
    let mut live = e.start(e.job());
    let build_id = live.container_id("build");
    let _proxy = through_faulty_proxy(&e, &live.job, fault);
    let stage = live.stage(stages::BUILD_SCRIPT, &counting_script());
    // The runner read the whole request and started the script: exactly once, never again.
    assert_eq!(
        stage_runs(&e, &build_id),
        1,
        "{fault:?}: times the script started:\n{}",
        show(&stage)
    );
    assert_system_failure_saying(
        &stage,
        &["connection lost to its stage runner", "it is not run a second time"],
    );
    assert!(
        !stage.stderr_text().contains("using Docker exec"),
        "{fault:?}: no fallback: {}",
        show(&stage)
    );
    assert!(stage.duration < Duration::from_secs(25), "{fault:?}: {}", show(&stage));
    live.finish();
}

#[test]
fn a_runner_that_stalls_after_reading_the_request_is_a_lost_stage_run_once() {
    a_stage_whose_request_went_through_is_lost_not_run_again("runner-stalls", AfterRequest::Stall);
}

#[test]
fn a_connection_that_closes_after_the_request_is_a_lost_stage_run_once() {
    a_stage_whose_request_went_through_is_lost_not_run_again("runner-closes", AfterRequest::Close);
}
