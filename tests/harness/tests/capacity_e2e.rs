//! The executor's wait for capacity (issue 15), end to end: a job whose task does not fit
//! waits PROVISIONING while a capacity provider with managed scaling adds an instance, and
//! says so in the job log; prepare's own wait limit, gitlab-runner's cancel and ECS's
//! provisioning timeout each end the wait cleanly. Each test has a cluster and capacity
//! provider of its own in the shared moto, served by an agent stand-in of its own
//! (`support::capacity`). The tests run one at a time: the stand-in's scaling settings
//! (scale-out delay, provisioning timeout) are global.

mod support;

use std::io::{BufRead, BufReader};

use ecs_executor_tests::control::{ScalingGuard, control_get};
use ecs_executor_tests::runner::JobStatus;
use ecs_executor_tests::standin::Standin;
use serde_json::json;
use support::capacity::{CapacityCluster, serial};
use support::faults::spawn_direct;
use support::*;

/// Memory no scale-out instance of the stand-in has (its template: 7482 MiB): such a task
/// stays PROVISIONING and asks for no instance, as in ECS.
const TOO_BIG_MIB: u32 = 8192;

/// One test's setup: its cluster and capacity provider, and an executor config for them
/// (`extra` top-level lines, e.g. `capacity_wait_secs = 4`).
fn setup(name: &str, memory: u32, extra: &str) -> (CapacityCluster, E2e) {
    let standin = Standin::require();
    let dir = std::env::temp_dir().join(ecs_executor_tests::standin::unique_name(&format!("cap-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    let cap = CapacityCluster::new(&standin, &dir);
    let local = standin.cluster.clone();
    let mut e = E2e::with_config_edit(name, |text| {
        let text = text.replace("memory = 256", &format!("memory = {memory}"));
        let text = top_level(&text, extra);
        cap.config_edit(&text, &local)
    });
    // The test's ECS checks (and the safety net on drop) look in this cluster.
    e.standin.cluster = cap.cluster.clone();
    (cap, e)
}

/// The executor's notes that the job waits for capacity.
fn waiting_notes(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("ecs-executor:") && l.contains("to add capacity"))
        .collect()
}

#[test]
fn a_task_that_does_not_fit_waits_provisioning_and_runs_once_a_scale_out_adds_an_instance() {
    let _one = serial();
    // ECS takes minutes to add an instance; the stand-in 8 s, the job log is told every 2 s.
    let (_scaling, _) = ScalingGuard::set(
        &Standin::require().endpoint,
        json!({"scale_out_delay_s": 8, "warmup_s": 0}),
    );
    let (cap, e) = setup("scale-out", 256, "capacity_note_secs = 2\ncapacity_wait_secs = 300");
    assert!(cap.instances().is_empty(), "the provider starts with no instance");
    let mark = cap.event_mark();
    let job = e.job().script(["echo ran-after-the-scale-out"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    assert!(log.contains("ran-after-the-scale-out"), "{log}");
    assert_eq!(outcome.prepare_attempts, 1, "{log}");

    // The job log said at once that the task waits, and again while it waited, naming the
    // capacity provider and how long.
    let notes = waiting_notes(&log);
    eprintln!("FIGURE the job log while waiting:\n{}", notes.join("\n"));
    assert!(
        notes.len() >= 2,
        "at least two notes in an 8 s wait told every 2 s:\n{log}"
    );
    assert!(
        notes[0].contains("task PROVISIONING") && notes[0].contains(&format!("capacity provider {}", cap.provider)),
        "{log}"
    );
    assert!(
        notes[1..]
            .iter()
            .all(|n| n.contains("still PROVISIONING after") && n.contains(&cap.provider)),
        "{log}"
    );
    assert!(log.contains("task placed on container instance"), "{log}");

    // The wait ended because the simulated scale-out registered an instance, and the task
    // ran there.
    let events = cap.events_since(mark);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "scale-out" && e["capacity_provider"] == cap.provider.as_str()),
        "{events:#?}"
    );
    let added: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "instance-registered" && e["cause"] == "scale-out")
        .collect();
    assert_eq!(added.len(), 1, "{events:#?}");
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert_eq!(
        tasks[0].container_instance_arn(),
        added[0]["container_instance_arn"].as_str(),
        "the task ran on the new instance"
    );
    assert_eq!(tasks[0].capacity_provider_name(), Some(cap.provider.as_str()));
}

#[test]
fn prepare_gives_up_at_its_capacity_wait_limit_as_a_system_failure_and_stops_the_task() {
    let _one = serial();
    let (cap, e) = setup(
        "wait-limit",
        TOO_BIG_MIB,
        "capacity_note_secs = 1\ncapacity_wait_secs = 4",
    );
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_system_failure_saying(
        &prepare,
        &[
            "no capacity for the task within 4 s",
            "PROVISIONING",
            &format!("capacity provider {}", cap.provider),
            "capacity_wait_secs",
        ],
    );
    let log = prepare.log_text();
    assert!(!waiting_notes(&log).is_empty(), "{log}");
    assert!(
        log.contains("ecs-executor: stopped arn:"),
        "prepare stopped its task: {log}"
    );
    // Nothing is left: the task was stopped at once (it never had an instance), and the state
    // file is gone, so cleanup finds nothing to do.
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert_eq!(tasks[0].stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert!(!e.state_file(&job).exists());
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn sigterm_to_prepare_while_provisioning_then_cleanup_leaves_no_task() {
    let _one = serial();
    let (cap, e) = setup(
        "cancel",
        TOO_BIG_MIB,
        "capacity_note_secs = 1\ncapacity_wait_secs = 300",
    );
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    // gitlab-runner's cancel: SIGTERM to prepare once it waits for capacity.
    let mut child = spawn_direct(&e, &r, &["prepare"]);
    // Read all of prepare's stderr (as gitlab-runner does), line by line.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    for line in lines.iter() {
        let waiting = line.contains("to add capacity");
        seen.push(line);
        if waiting {
            // SAFETY: kill(2) on our own child, not yet waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains(&cap.provider)),
        "prepare said it waits for {}: {seen:#?}",
        cap.provider
    );
    let status = child.wait().expect("prepare ends");
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    let rest = rest.join("\n");
    assert_eq!(
        status.code(),
        Some(2),
        "a cancelled prepare is a system failure: {rest}"
    );
    assert!(
        rest.contains("interrupted (SIGTERM)") && rest.contains("stopped arn:"),
        "{rest}"
    );
    assert_ok(&r.cleanup());
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert_eq!(tasks[0].stopped_reason(), Some("ecs-executor: prepare failed"));
    assert!(!e.state_file(&job).exists());
}

#[test]
fn a_task_ecs_stops_at_its_provisioning_timeout_is_reported_with_ecs_reason() {
    let _one = serial();
    let standin = Standin::require();
    let (_scaling, settings) = ScalingGuard::set(&standin.endpoint, json!({"provisioning_timeout_s": 3}));
    let reason = settings["provisioning_timeout_reason"].as_str().unwrap().to_string();
    let (cap, e) = setup(
        "ecs-timeout",
        TOO_BIG_MIB,
        "capacity_note_secs = 1\ncapacity_wait_secs = 300",
    );
    let mark = cap.event_mark();
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_system_failure_saying(
        &prepare,
        &[
            "ECS stopped task",
            &reason,
            "stop code TaskFailedToStart",
            &format!("capacity provider {}", cap.provider),
        ],
    );
    let events = cap.events_since(mark);
    assert!(
        events.iter().any(|e| e["type"] == "provisioning-timeout"),
        "ECS's timeout, not prepare's limit, ended the wait: {events:#?}"
    );
    assert_ok(&r.cleanup());
    let tasks = e.assert_tasks_stopped(&job, 1);
    assert_eq!(tasks[0].stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    // The global setting is back after the guard (checked by the next test's own guard too).
    drop(_scaling);
    let now = control_get(&standin.endpoint, "/_standin/scaling");
    assert_ne!(now["provisioning_timeout_s"], json!(3.0), "{now}");
}
