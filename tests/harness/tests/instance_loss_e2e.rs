//! Instance loss mid-job (issue 15): on a cluster of the test's own with three container
//! instances — each with its own loopback addresses and mutual-TLS Docker listener, served by
//! an agent stand-in of the test's own (`support::standin_agent`) — a job in a long stage on
//! an instance that is drained and then terminated, and one on an instance hit by a spot
//! interruption, end as system failures naming ECS's stop code and reason, long before their
//! scripts would have; a job on the instance left alone passes.
//!
//! Lines starting `FIGURE` are measured numbers (docs/reliability.md quotes them).

mod support;

use std::time::{Duration, Instant};

use ecs_executor_tests::runner::{JobSpec, Runner, StageResult, stages};
use ecs_executor_tests::standin::ClientCert;
use support::standin_agent::{Instance, OwnCluster};
use support::{E2e, assert_ok, assert_system_failure_saying, container_processes, show, stage_script};

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name}: {value}");
}

/// Far longer than any stage here should take: a stage that is not ended by the watch is
/// killed by the harness at this point and the test fails on its outcome.
const LONG_STAGE_LIMIT: Duration = Duration::from_secs(150);
/// The long stage's script: it would sleep for five minutes.
const LONG_STAGE: &str = "echo stage-started\nsleep 300\necho slept-through\n";

/// config and prepare of `job` with a per-call limit: the runner and the job's task.
fn prepare(e: &E2e, job: &JobSpec) -> (Runner, aws_sdk_ecs::types::Task) {
    let mut r = e.runner(job).call_timeout(LONG_STAGE_LIMIT);
    assert_ok(&r.config());
    assert_ok(&r.prepare());
    (r, e.running_task(job))
}

/// Waits until the long stage's `sleep 300` runs in the task's build container.
fn wait_for_script(e: &E2e, task: &aws_sdk_ecs::types::Task) {
    let id = e.container_id(task.task_arn().unwrap(), "build");
    let deadline = Instant::now() + Duration::from_secs(60);
    while container_processes(&id, "sleep 300").is_empty() {
        assert!(Instant::now() < deadline, "the long stage did not start in {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The long stage on its own thread: (the stage's result, when it ended).
fn long_stage(mut r: Runner) -> std::thread::JoinHandle<(Runner, StageResult, Instant)> {
    std::thread::spawn(move || {
        let script = stage_script(&r, LONG_STAGE);
        let stage = r.run_script(stages::BUILD_SCRIPT, &script);
        (r, stage, Instant::now())
    })
}

fn instance_of<'a>(own: &'a OwnCluster, task: &aws_sdk_ecs::types::Task) -> &'a Instance {
    own.instance_of(task.container_instance_arn().expect("a placed task names its instance"))
}

/// The stage ended because its instance was lost: a system failure naming ECS's stop code and
/// reason for that instance, before the script's own end.
#[track_caller]
fn assert_lost_with_ecs_reason(stage: &StageResult, instance: &Instance) {
    let reason = format!("Host EC2 (instance {}) terminated.", instance.instance_id);
    assert_system_failure_saying(stage, &["TerminationNotice", &reason, "ECS says"]);
    assert!(stage.stdout_text().contains("stage-started"), "{}", show(stage));
    assert!(!stage.stdout_text().contains("slept-through"), "{}", show(stage));
}

#[test]
fn jobs_on_drained_and_spot_interrupted_instances_fail_with_ecs_reason_and_others_pass() {
    let own = OwnCluster::start("loss", 3);
    // Docker exec for the drained instance's job (through that instance's own TLS listener),
    // the stage runner for the others: both paths must notice the loss.
    let exec = E2e::with_config_edit("loss-exec", |t| {
        own.config_edit()(t).replace("[stage_runner]", "[stage_runner]\nmode = \"off\"")
    });
    let runner = E2e::with_config_edit("loss-runner", own.config_edit());

    // Job A lands on the first instance (first fit); the instance is set DRAINING while A's
    // stage runs: no new task goes there, A's task goes on.
    let job_a = exec.job();
    let (r_a, task_a) = prepare(&exec, &job_a);
    let lost_a = instance_of(&own, &task_a).clone();
    let stage_a = long_stage(r_a);
    wait_for_script(&exec, &task_a);
    own.instance_control(&lost_a, serde_json::json!({"state": "DRAINING"}));

    // Job B lands elsewhere; its instance gets the two-minute spot notice (shortened).
    let job_b = runner.job();
    let (r_b, task_b) = prepare(&runner, &job_b);
    let lost_b = instance_of(&own, &task_b).clone();
    assert_ne!(
        lost_b.instance_id, lost_a.instance_id,
        "a DRAINING instance got a new task"
    );
    let stage_b = long_stage(r_b);
    wait_for_script(&runner, &task_b);
    const NOTICE_S: f64 = 8.0;
    let spot = own.instance_control(&lost_b, serde_json::json!({"lost": "spot", "notice_s": NOTICE_S}));
    assert_eq!(spot["status"], "DRAINING", "{spot}");
    let b_lost_at = Instant::now() + Duration::from_secs_f64(NOTICE_S);

    // Job C on the third instance, in a stage while the drained instance is terminated.
    let job_c = runner.job();
    let (mut r_c, task_c) = prepare(&runner, &job_c);
    let kept = instance_of(&own, &task_c).clone();
    assert!(
        kept.instance_id != lost_a.instance_id && kept.instance_id != lost_b.instance_id,
        "job C was placed on a draining instance: {task_c:?}"
    );
    let script_c = stage_script(&r_c, "sleep 6\necho on-a-healthy-instance\n");
    let stage_c = std::thread::spawn(move || {
        let stage = r_c.run_script(stages::BUILD_SCRIPT, &script_c);
        (r_c, stage)
    });
    // The admin (or the ASG) terminates the drained instance.
    own.instance_control(
        &lost_a,
        serde_json::json!({"state": "DRAINING", "terminate_after_s": 0}),
    );
    let a_lost_at = Instant::now();

    let (mut r_c, stage) = stage_c.join().unwrap();
    assert_ok(&stage);
    assert!(
        stage.stdout_text().contains("on-a-healthy-instance"),
        "{}",
        show(&stage)
    );
    assert_eq!(own.instance_status(&kept), "ACTIVE");
    assert_ok(&r_c.cleanup());
    runner.assert_tasks_stopped(&job_c, 1);

    for (e, job, stage, lost, lost_at, what) in [
        (
            &exec,
            &job_a,
            stage_a,
            &lost_a,
            a_lost_at,
            "drained and terminated, Docker exec",
        ),
        (
            &runner,
            &job_b,
            stage_b,
            &lost_b,
            b_lost_at,
            "spot interruption, stage runner",
        ),
    ] {
        let (mut r, stage, ended) = stage.join().unwrap();
        figure(
            &format!("stage end after its instance was lost ({what}), s"),
            format!("{:.1}", ended.saturating_duration_since(lost_at).as_secs_f64()),
        );
        assert_lost_with_ecs_reason(&stage, lost);
        assert_eq!(own.instance_status(lost), "INACTIVE");
        // cleanup still works: the task is STOPPED already, StopTask is idempotent.
        assert_ok(&r.cleanup());
        let tasks = e.assert_tasks_stopped(job, 1);
        assert_eq!(tasks[0].stop_code().map(|c| c.as_str()), Some("TerminationNotice"));
    }
}

#[test]
fn each_instance_has_its_own_docker_listener_that_goes_with_the_instance() {
    let own = OwnCluster::start("listeners", 2);
    let [first, second] = [&own.instances[0], &own.instances[1]];
    let addresses = [
        &first.private_ip,
        &first.public_ip,
        &second.private_ip,
        &second.public_ip,
    ];
    for (i, a) in addresses.iter().enumerate() {
        assert!(!addresses[..i].contains(a), "two instances share {a}: {addresses:?}");
        own.docker_answers(a)
            .unwrap_or_else(|e| panic!("Docker at {a} with the client certificate: {e}"));
        let refused = own.block_on(own.docker_at(a, ClientCert::Absent).ping());
        assert!(
            refused.is_err(),
            "{a} answered a client without a certificate: {refused:?}"
        );
    }

    // A connection held open to the first instance's Docker (an event stream, as an exec's
    // output stream is) is cut when the instance is terminated, and the address then refuses.
    let docker = own.docker_at(&first.private_ip, ClientCert::Present);
    let held = own.block_on(async {
        use futures_util::StreamExt;
        // Only events of a label nothing carries: other tests share this dockerd.
        let quiet = bollard::query_parameters::EventsOptions {
            filters: Some(std::collections::HashMap::from([(
                "label".to_string(),
                vec!["ecs-executor-test.instance-loss-quiet=none".to_string()],
            )])),
            ..Default::default()
        };
        let mut events = docker.events(Some(quiet));
        // The stream is open once the request went through; nothing happens on it.
        let opened = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
        assert!(opened.is_err(), "the event stream ended at once: {opened:?}");
        events
    });
    own.instance_control(first, serde_json::json!({"lost": "terminated"}));
    let cut = own.block_on(async {
        use futures_util::StreamExt;
        let mut events = held;
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    });
    assert!(
        cut.is_ok(),
        "the connection to a terminated instance's Docker was not cut; agent log:\n{}",
        own.agent_log()
    );
    for a in [&first.private_ip, &first.public_ip] {
        assert!(
            own.docker_answers(a).is_err(),
            "{a} still answers after its instance was terminated"
        );
    }
    own.docker_answers(&second.private_ip)
        .unwrap_or_else(|e| panic!("the other instance's Docker stopped answering: {e}"));
    assert!(
        own.agent_log().contains("Docker listeners") && own.agent_log().contains("connections cut"),
        "{}",
        own.agent_log()
    );
}

#[test]
fn a_stage_whose_docker_connection_hangs_when_its_instance_is_lost_is_ended_by_watching_the_task() {
    // The lost instance's Docker connections go silent instead of closing, as with a host
    // that vanished without a word: only ECS can tell the stage its task is gone.
    let own = OwnCluster::start_with("hang", 1, &["--lost-connections", "hang"]);
    let e = E2e::with_config_edit("loss-hang", |t| {
        own.config_edit()(t).replace("[stage_runner]", "[stage_runner]\nmode = \"off\"")
    });
    let job = e.job();
    let (r, task) = prepare(&e, &job);
    let lost = instance_of(&own, &task).clone();
    let stage = long_stage(r);
    wait_for_script(&e, &task);
    own.instance_control(&lost, serde_json::json!({"lost": "terminated"}));
    let lost_at = Instant::now();
    let (mut r, stage, ended) = stage.join().unwrap();
    figure(
        "stage end after its instance was lost, Docker connection silent (stage_watch_secs 5), s",
        format!("{:.1}", ended.saturating_duration_since(lost_at).as_secs_f64()),
    );
    assert_lost_with_ecs_reason(&stage, &lost);
    // Ended by the watch: it names the task's stop, not a broken connection.
    assert!(
        stage.stderr_text().contains("ECS stopped the task while the stage ran"),
        "{}",
        show(&stage)
    );
    assert!(
        own.agent_log().contains("their connections silent"),
        "{}",
        own.agent_log()
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);

    // Without the watch the same stage would wait for the connection: the harness's call
    // limit ends it, not the executor.
    let own = OwnCluster::start_with("hang-nowatch", 1, &["--lost-connections", "hang"]);
    let e = E2e::with_config_edit("loss-nowatch", |t| {
        own.config_edit()(t)
            .replace("[stage_runner]", "[stage_runner]\nmode = \"off\"")
            .replace("[aws]", "[aws]\nstage_watch_secs = 0")
    });
    let job = e.job();
    let mut r = e.runner(&job).call_timeout(Duration::from_secs(25));
    assert_ok(&r.config());
    assert_ok(&r.prepare());
    let task = e.running_task(&job);
    let lost = instance_of(&own, &task).clone();
    let stage = std::thread::spawn(move || {
        let script = stage_script(&r, LONG_STAGE);
        let stage = r.run_script(stages::BUILD_SCRIPT, &script);
        (r, stage)
    });
    wait_for_script(&e, &task);
    own.instance_control(&lost, serde_json::json!({"lost": "terminated"}));
    let (mut r, stage) = stage.join().unwrap();
    assert_eq!(
        stage.termination.map(|t| t.reason),
        Some(ecs_executor_tests::runner::KillReason::Timeout),
        "{}",
        show(&stage)
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}
