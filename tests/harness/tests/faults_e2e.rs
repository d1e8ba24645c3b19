//! Faults the executor must survive, against the stand-in: AWS throttling and 5xx (retried),
//! persistent AWS errors (clear failure, nothing left), the task stopped under a stage, the
//! Docker connection cut mid-stream, Docker TLS problems, signals in every step, many jobs at
//! once, a broken state directory — and the admin commands that clean up after a dead runner:
//! `gc`, `unregister`, `check`.
//!
//! Every fault is scoped with moto's `match` to this test's family prefix or task, since other
//! tests share the stand-in. Lines starting `FIGURE` are the numbers docs/reliability.md quotes.

mod support;

use support::faults;

use std::time::{Duration, Instant};

use ecs_executor_tests::runner::{JobStatus, Verb, stages};
use ecs_executor_tests::standin::Fault;
use faults::{
    BadCerts, Proxy, admin, config_variant, running_count, set_docker_key, spawn_direct, task_definitions, text,
};
use support::{E2e, assert_cancelled, assert_ok, assert_system_failure_saying, show, stage_script};

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name}: {value}");
}

// ---- AWS faults ---------------------------------------------------------------------------

#[test]
fn throttling_and_5xx_in_prepare_and_cleanup_are_retried_and_the_job_succeeds() {
    let e = E2e::new("throttle");
    let job = e.job().script(["echo survived-the-throttling"]);
    let mark = e.standin.request_mark();
    // Bodies of RegisterTaskDefinition and RunTask name our family: only our calls match.
    let _f1 = e
        .standin
        .inject(&Fault::ecs_throttle("RegisterTaskDefinition", 2).matching(&e.family_prefix));
    let _f2 = e.standin.inject(
        &Fault::ecs_error("RunTask", "ServerException", 2)
            .status(500)
            .message("Service unavailable")
            .matching(&e.family_prefix),
    );
    let mut r = e.prepared(&job);
    let task = e.running_task(&job);
    let task_id = task.task_arn().unwrap().rsplit('/').next().unwrap().to_string();
    // Cleanup's StopTask names the task: throttle exactly ours.
    let _f3 = e.standin.inject(&Fault::ecs_throttle("StopTask", 2).matching(&task_id));
    let build = r.run_script(
        stages::BUILD_SCRIPT,
        &stage_script(&r, "echo survived-the-throttling\n"),
    );
    assert_ok(&build);
    assert!(
        build.stdout_text().contains("survived-the-throttling"),
        "{}",
        show(&build)
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);

    let ours: Vec<_> = e
        .standin
        .requests_since(mark)
        .into_iter()
        .filter(|q| q.body.contains(&e.family_prefix) || q.body.contains(&task_id))
        .collect();
    let faulted = |action: &str| {
        ours.iter()
            .filter(|q| q.action.as_deref() == Some(action) && q.fault.is_some())
            .count()
    };
    let served = |action: &str| {
        ours.iter()
            .filter(|q| q.action.as_deref() == Some(action) && q.fault.is_none())
            .count()
    };
    assert_eq!(faulted("RegisterTaskDefinition"), 2);
    assert_eq!(served("RegisterTaskDefinition"), 1);
    assert_eq!(faulted("RunTask"), 2);
    assert_eq!(served("RunTask"), 1, "one task, not one per attempt");
    assert_eq!(faulted("StopTask"), 2);
    assert!(served("StopTask") >= 1);
    // Back-off with jitter: the retries are spread out, not hammered.
    let times: Vec<f64> = ours
        .iter()
        .filter(|q| q.action.as_deref() == Some("RunTask"))
        .map(|q| q.time)
        .collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g > 0.0),
        "retries come one after another: {gaps:?}"
    );
    figure("faults injected (throttle/5xx, retried)", 6);
    eprintln!("RunTask retry gaps (s): {gaps:?}");
}

#[test]
fn persistent_aws_errors_fail_prepare_quoting_aws_and_leave_nothing() {
    let e = E2e::new("persist");
    let job = e.job().script(["echo never-runs"]);
    let mark = e.standin.request_mark();
    let _f = e.standin.inject(
        &Fault::ecs_error("RunTask", "ThrottlingException", -1)
            .message("Rate exceeded (persistent test fault)")
            .matching(&e.family_prefix),
    );
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    let prepare = outcome.first_call(Verb::Prepare).unwrap();
    assert!(prepare.is_system_failure(), "{}", show(prepare));
    let err = prepare.stderr_text();
    assert!(
        err.contains("RunTask") && err.contains("ThrottlingException") && err.contains("persistent test fault"),
        "the AWS error is quoted: {}",
        show(prepare)
    );
    assert!(matches!(outcome.status, JobStatus::SystemFailure { .. }), "{log}");
    let attempts = e.own_calls_since(mark, "RunTask").len();
    // gitlab-runner tries prepare 3 times; each RunTask call is tried max_attempts (5) times.
    assert_eq!(attempts, 3 * 5, "{log}");
    assert!(e.tasks_of(&job).is_empty(), "no task was ever started");
    figure("persistent RunTask error: calls made", attempts);
}

#[test]
fn persistent_errors_in_cleanup_fail_it_and_a_later_cleanup_leaves_no_task() {
    let e = E2e::new("cleanfail");
    let job = e.job().script(["true"]);
    let mut r = e.prepared(&job);
    let task = e.running_task(&job);
    let task_id = task.task_arn().unwrap().rsplit('/').next().unwrap().to_string();
    {
        let _f = e.standin.inject(
            &Fault::ecs_error("StopTask", "ServerException", -1)
                .status(500)
                .message("internal failure (test)")
                .matching(&task_id),
        );
        let cleanup = r.cleanup();
        assert!(cleanup.is_system_failure(), "{}", show(&cleanup));
        assert!(
            cleanup.stderr_text().contains("ServerException")
                && cleanup.stderr_text().contains("internal failure (test)"),
            "{}",
            show(&cleanup)
        );
        assert_eq!(running_count(&e, &job), 1);
    }
    // gitlab-runner does not retry cleanup; the admin's gc does (the job's state is still there).
    let aged = config_variant(&e, "gc-age", |t| format!("{t}\n[gc]\nmax_task_age_secs = 0\n"));
    let gc = admin(&aged, &["gc"]);
    assert!(gc.status.success(), "{}", text(&gc));
    e.assert_tasks_stopped(&job, 1);
}

// ---- The task stops under a stage ---------------------------------------------------------

#[test]
fn stop_task_from_outside_ends_the_stage_within_seconds_naming_ecs_reason() {
    let e = E2e::new("stopmid");
    let job = e.job();
    let mut live = e.start(job);
    let arn = live.task_arn();
    let stopper = {
        let standin = e.standin.clone();
        let arn = arn.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            standin.stop_task_blocking(&arn, "Instance retired by the test (StopTask from outside)");
            Instant::now()
        })
    };
    let stage = live.stage(
        stages::BUILD_SCRIPT,
        "echo stage-started\nsleep 120\necho never-printed\n",
    );
    let ended = Instant::now();
    let stopped_at = stopper.join().unwrap();
    let took = ended.duration_since(stopped_at);
    figure(
        "stage end after external StopTask (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    assert!(stage.stdout_text().contains("stage-started"), "{}", show(&stage));
    assert!(stage.is_system_failure(), "{}", show(&stage));
    let err = stage.stderr_text();
    assert!(
        err.contains("Instance retired by the test") && err.contains(&arn),
        "names ECS's stop reason and the task: {}",
        show(&stage)
    );
    assert!(took < Duration::from_secs(90), "no hang: {took:?}");
    live.finish();
}

#[test]
fn killing_the_essential_container_ends_the_stage_with_a_system_failure() {
    let e = E2e::new("killctr");
    let job = e.job();
    let mut live = e.start(job);
    let arn = live.task_arn();
    let build_id = e.container_id(&arn, "build");
    let killer = {
        let docker = e.standin.docker();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(docker.kill_container(&build_id, None::<bollard::query_parameters::KillContainerOptions>))
                .expect("docker kill");
            Instant::now()
        })
    };
    let stage = live.stage(stages::BUILD_SCRIPT, "echo stage-started\nsleep 120\n");
    let killed_at = killer.join().unwrap();
    let took = Instant::now().duration_since(killed_at);
    figure(
        "stage end after essential container killed (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    assert_system_failure_saying(&stage, &["container stopped while stage build_script ran", "ECS says"]);
    assert!(took < Duration::from_secs(90), "no hang: {took:?}");
    live.finish();
}

// ---- Docker transport faults --------------------------------------------------------------

#[test]
fn docker_connection_cut_mid_stream_is_a_system_failure_saying_what_was_lost() {
    let proxy = Proxy::start("127.0.0.1:2376");
    let port = proxy.port;
    // Docker exec's transport: the stage runner (which bypasses Docker) is off here.
    let e = E2e::with_config_edit("cut", |t| {
        format!("{}\nmode = \"off\"\n", set_docker_key(&t, "port", &port.to_string()))
    });
    let job = e.job();
    let mut live = e.start(job);
    let cutter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        proxy.cut();
        Instant::now()
    });
    let stage = live.stage(
        stages::BUILD_SCRIPT,
        "i=0; while [ $i -lt 600 ]; do echo line-$i; i=$((i+1)); sleep 0.1; done\n",
    );
    let cut_at = cutter.join().unwrap();
    let took = Instant::now().duration_since(cut_at);
    figure(
        "stage end after Docker connection cut (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    assert!(stage.stdout_text().contains("line-5"), "{}", show(&stage));
    assert!(stage.is_system_failure(), "{}", show(&stage));
    let err = stage.stderr_text();
    assert!(
        err.contains("connection lost")
            && err.contains("Output after this point was lost")
            && err.contains(&format!("127.0.0.1:{port}")),
        "{}",
        show(&stage)
    );
    // The script would go on for ~57 s after the cut: ending well before it is the point (a
    // loaded machine took more than the 20 s this allowed before).
    assert!(took < Duration::from_secs(45), "no hang: {took:?}");
    live.finish();
}

/// prepare with a broken Docker TLS setup: SYSTEM_FAILURE naming the address and the problem,
/// and the task it started is stopped.
fn tls_fault(name: &str, edit: impl FnOnce(String) -> String, expect: &[&str]) {
    let e = E2e::with_config_edit(name, edit);
    let job = e.job().script(["echo never-runs"]);
    let (mut r, prepare) = e.prepare(&job);
    assert!(prepare.is_system_failure(), "{}", show(&prepare));
    let err = prepare.stderr_text();
    for needle in expect {
        assert!(err.contains(needle), "{needle:?} missing: {}", show(&prepare));
    }
    assert_ok(&r.cleanup());
    e.assert_no_task_left(&job);
    assert_eq!(running_count(&e, &job), 0);
}

fn bad_certs(name: &str) -> BadCerts {
    let standin = ecs_executor_tests::standin::Standin::require();
    let dir =
        std::path::PathBuf::from("/var/tmp/ecs-executor/e2e").join(ecs_executor_tests::standin::unique_name(name));
    // The expired client certificate is signed by the client CA dockerd trusts.
    let certs = standin.state_dir.join("certs");
    BadCerts::make(&dir, &certs.join("client-ca.pem"), &certs.join("client-ca-key.pem"))
}

#[test]
fn docker_tls_faults_name_the_address_and_the_problem() {
    let certs = bad_certs("certs");
    let ca = format!("\"{}\"", certs.path("other-ca.pem"));
    tls_fault(
        "wrongca",
        |t| set_docker_key(&t, "ca_file", &ca),
        &[
            "127.0.0.1:2376",
            "not signed by the CA in docker.ca_file",
            "other-ca.pem",
        ],
    );
    let (cert, key) = (
        format!("\"{}\"", certs.path("expired.pem")),
        format!("\"{}\"", certs.path("expired-key.pem")),
    );
    tls_fault(
        "expired",
        |t| set_docker_key(&set_docker_key(&t, "cert_file", &cert), "key_file", &key),
        &["127.0.0.1:2376", "refused our client certificate", "expired.pem"],
    );
    let (cert, key) = (
        format!("\"{}\"", certs.path("stranger.pem")),
        format!("\"{}\"", certs.path("stranger-key.pem")),
    );
    tls_fault(
        "stranger",
        |t| set_docker_key(&set_docker_key(&t, "cert_file", &cert), "key_file", &key),
        &["127.0.0.1:2376", "refused our client certificate"],
    );
    let missing = format!("\"{}\"", certs.path("no-such-client.pem"));
    tls_fault(
        "nocert",
        |t| set_docker_key(&t, "cert_file", &missing),
        &["no-such-client.pem", "No such file"],
    );
    // Nothing listens on port 1.
    tls_fault(
        "unreach",
        |t| set_docker_key(&t, "port", "1"),
        &["127.0.0.1:1", "cannot connect"],
    );
    figure("Docker TLS/reachability faults refused cleanly", 5);
    let _ = std::fs::remove_dir_all(&certs.dir);
}

#[test]
fn plain_tcp_is_refused_unless_allowed_and_then_warned_about_on_every_use() {
    let e = E2e::with_config_edit("plain", |t| set_docker_key(&t, "tls", "false"));
    let job = e.job();
    let mut r = e.runner(&job);
    let config = r.config();
    assert!(config.is_system_failure(), "{}", show(&config));
    assert!(
        config.stderr_text().contains("docker.tls") && config.stderr_text().contains("allow_plain_tcp"),
        "{}",
        show(&config)
    );

    // Allowed: a plain TCP proxy to the stand-in's Docker socket plays the daemon.
    let proxy = Proxy::start("/var/run/docker.sock");
    let port = proxy.port.to_string();
    // Every stage through Docker (the stage runner, with its own mutual TLS, is off here).
    let e = E2e::with_config_edit("plainok", |t| {
        let t = set_docker_key(&t, "tls", "false");
        let t = set_docker_key(&t, "allow_plain_tcp", "true");
        format!("{}\nmode = \"off\"\n", set_docker_key(&t, "port", &port))
    });
    let job = e.job().script(["echo over-plain-tcp"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert!(outcome.is_success(), "{log}");
    let warned = outcome
        .calls
        .iter()
        .filter(|c| {
            c.verb != ecs_executor_tests::runner::Verb::Config && c.verb != ecs_executor_tests::runner::Verb::Cleanup
        })
        .all(|c| c.stderr_text().contains("WARNING: Docker at 127.0.0.1") && c.stderr_text().contains("PLAIN TCP"));
    assert!(warned, "every call that talks to Docker warns: {log}");
    e.assert_tasks_stopped(&job, 1);
}

// ---- Signals ------------------------------------------------------------------------------

#[test]
fn sigterm_in_every_step_leaves_no_task_running() {
    let mut cancelled = 0;
    let mut leaked = 0;
    // config: gitlab-runner's cancel can land before anything ran.
    {
        let e = E2e::new("term-config");
        let job = e.job().script(["echo x"]);
        let outcome = e.runner(&job).cancel_after(Duration::from_millis(1)).run_job();
        assert!(!outcome.is_success(), "{}", outcome.log_text());
        cancelled += 1;
        leaked += running_count(&e, &job);
    }
    // prepare while waiting for RUNNING: RunTask is served 2 s late, the cancel comes ~0.5 s
    // after it returns.
    {
        let e = E2e::new("term-prepare");
        let _f = e
            .standin
            .inject(&Fault::ecs_delay("RunTask", 2000, 1).matching(&e.family_prefix));
        let job = e.job().script(["echo x"]);
        let outcome = e.runner(&job).cancel_after(Duration::from_millis(2600)).run_job();
        let log = outcome.log_text();
        assert_eq!(outcome.status, JobStatus::Canceled, "{log}");
        let prepare = outcome.first_call(Verb::Prepare).unwrap();
        assert_cancelled(prepare);
        assert!(
            prepare.stdout_text().contains("started on cluster") || prepare.stderr_text().contains("stopped"),
            "the task existed when the cancel came: {}",
            show(prepare)
        );
        e.assert_no_task_left(&job);
        cancelled += 1;
        leaked += running_count(&e, &job);
    }
    // each run stage: helper (get_sources) and build (build_script, after_script).
    for stage in [stages::GET_SOURCES, stages::BUILD_SCRIPT, stages::AFTER_SCRIPT] {
        let e = E2e::new(&format!("term-{}", stage.replace('_', "")));
        let job = e.job();
        let (r, prepare) = e.prepare(&job);
        assert_ok(&prepare);
        let mut r = r.cancel_after(Duration::from_secs(2));
        let script = stage_script(&r, "echo started\nsleep 60\n");
        let call = r.run_script(stage, &script);
        assert_cancelled(&call);
        assert!(!call.is_success(), "{}", show(&call));
        assert!(
            call.duration < Duration::from_secs(10),
            "ended promptly: {}",
            show(&call)
        );
        assert_ok(&r.cleanup());
        e.assert_no_task_left(&job);
        cancelled += 1;
        leaked += running_count(&e, &job);
    }
    // cleanup itself: StopTask held back 3 s, SIGTERM after 0.3 s. cleanup finishes its work
    // (or, if it could not, a second cleanup does).
    {
        let e = E2e::new("term-cleanup");
        let job = e.job();
        let (r, prepare) = e.prepare(&job);
        assert_ok(&prepare);
        let id = e
            .running_task(&job)
            .task_arn()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let _f = e.standin.inject(&Fault::ecs_delay("StopTask", 3000, 1).matching(&id));
        let mut r = r.call_timeout(Duration::from_millis(300));
        let call = r.cleanup();
        assert!(call.termination.is_some(), "cleanup got the signal: {}", show(&call));
        if running_count(&e, &job) > 0 {
            let mut again = e.runner(&job);
            assert_ok(&again.config());
            assert_ok(&again.cleanup());
        }
        e.assert_no_task_left(&job);
        cancelled += 1;
        leaked += running_count(&e, &job);
    }
    figure(
        "jobs cancelled by SIGTERM (config, prepare, 3 run stages, cleanup)",
        cancelled,
    );
    figure("tasks leaked after SIGTERM", leaked);
    assert_eq!(leaked, 0);
}

#[test]
fn sigkill_in_prepare_then_cleanup_or_gc_leaves_no_task() {
    let mut leaked = 0;
    for then in ["cleanup", "gc"] {
        let e = E2e::new(&format!("kill9-{then}"));
        let job = e.job();
        let mut r = e.runner(&job);
        assert_ok(&r.config());
        let mark = e.standin.request_mark();
        // DescribeContainerInstances is held back (scoped by nothing unique, so briefly and
        // once) ... instead: the kill lands as soon as RunTask of our family was served.
        let mut child = spawn_direct(&e, &r, &["prepare"]);
        assert!(
            faults::wait_for_call(&e, mark, "RunTask", &e.family_prefix, Duration::from_secs(30)),
            "prepare reached RunTask"
        );
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(running_count(&e, &job), 1, "the killed prepare left its task running");
        match then {
            "cleanup" => assert_ok(&r.cleanup()),
            _ => {
                // The runner died too: no cleanup ever comes. gc finds the task by its tags.
                let cfg = config_variant(&e, "gc", |t| {
                    format!("{t}\n[gc]\nstart_grace_secs = 0\nmax_task_age_secs = 0\n")
                });
                let dry = admin(&cfg, &["gc", "--dry-run"]);
                assert!(dry.status.success(), "{}", text(&dry));
                assert!(
                    String::from_utf8_lossy(&dry.stdout).contains("would stop task"),
                    "{}",
                    text(&dry)
                );
                assert_eq!(running_count(&e, &job), 1, "--dry-run stops nothing");
                let gc = admin(&cfg, &["gc"]);
                assert!(gc.status.success(), "{}", text(&gc));
            }
        }
        e.assert_no_task_left(&job);
        leaked += running_count(&e, &job);
    }
    figure("tasks leaked after SIGKILL in prepare (then cleanup / gc)", leaked);
    assert_eq!(leaked, 0);
}

// ---- Many jobs at once --------------------------------------------------------------------

#[test]
fn twelve_concurrent_jobs_keep_their_own_state_and_register_one_task_definition() {
    const N: usize = 12;
    let e = E2e::new("concurrent");
    let mark = e.standin.request_mark();
    let jobs: Vec<_> = (0..N)
        .map(|i| {
            e.job().script([format!(
                "echo job-{i}-ran; echo $CI_JOB_ID > /tmp/id; sleep 1; test $(cat /tmp/id) = $CI_JOB_ID"
            )])
        })
        .collect();
    let er = &e;
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| s.spawn(move || er.runner(job).run_job()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_success(), "job {i}: {}", o.log_text());
        assert!(o.log_text().contains(&format!("job-{i}-ran")), "{}", o.log_text());
    }
    let mut arns = Vec::new();
    for job in &jobs {
        let t = e.assert_tasks_stopped(job, 1);
        arns.push(t[0].task_arn().unwrap().to_string());
    }
    arns.sort();
    arns.dedup();
    assert_eq!(arns.len(), N, "one task per job");
    let registers = e.own_calls_since(mark, "RegisterTaskDefinition").len();
    assert_eq!(
        registers, 1,
        "the same content is registered once even when {N} jobs race"
    );
    figure("concurrent jobs on one runner", N);
    figure("RegisterTaskDefinition calls for them", registers);
}

// ---- The state directory ------------------------------------------------------------------

#[test]
fn a_state_dir_that_cannot_be_written_fails_prepare_clearly_and_leaves_no_task() {
    // `jobs` is a file where the directory should be: the task is started, then its state
    // cannot be saved. prepare must stop that task.
    let e = E2e::new("statebroken");
    std::fs::create_dir_all(&e.state_dir).unwrap();
    std::fs::write(e.state_dir.join("jobs"), b"not a directory").unwrap();
    let job = e.job();
    let (_r, prepare) = e.prepare(&job);
    assert!(prepare.is_system_failure(), "{}", show(&prepare));
    assert!(
        prepare
            .stderr_text()
            .contains(&e.state_dir.join("jobs").display().to_string()),
        "{}",
        show(&prepare)
    );
    e.assert_no_task_left(&job);
    assert_eq!(running_count(&e, &job), 0);

    // A state dir on a full filesystem (a 64 KiB tmpfs, filled up), when we may mount.
    let e = E2e::new("statefull");
    std::fs::create_dir_all(&e.state_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&e.state_dir)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _ = std::fs::write(e.state_dir.join("filler"), vec![0u8; 1 << 20]);
        let job = e.job();
        let (_r, prepare) = e.prepare(&job);
        assert!(prepare.is_system_failure(), "{}", show(&prepare));
        assert!(
            prepare.stderr_text().contains("No space left")
                && prepare.stderr_text().contains(&e.state_dir.display().to_string()),
            "{}",
            show(&prepare)
        );
        e.assert_no_task_left(&job);
        let _ = std::process::Command::new("umount").arg(&e.state_dir).status();
        figure("state dir full: tested", "yes (tmpfs)");
    } else {
        figure("state dir full: tested", "no (cannot mount tmpfs here)");
    }
}

#[test]
fn a_corrupt_state_file_is_a_clear_error_and_cleanup_still_stops_the_task() {
    let e = E2e::new("corrupt");
    let job = e.job();
    let mut r = e.prepared(&job);
    let state = e.state_file(&job);
    std::fs::write(&state, b"{\"version\": 1, \"job_id\": tru").unwrap();
    let run = r.run_script(stages::BUILD_SCRIPT, &stage_script(&r, "echo never-runs\n"));
    assert!(run.is_system_failure(), "{}", show(&run));
    assert!(
        run.stderr_text().contains("corrupt") && run.stderr_text().contains(&state.display().to_string()),
        "{}",
        show(&run)
    );
    let cleanup = r.cleanup();
    assert_ok(&cleanup);
    e.assert_tasks_stopped(&job, 1);
    assert!(!state.exists());
}

// ---- gc, unregister, check ----------------------------------------------------------------

#[test]
fn gc_stops_only_abandoned_tasks_and_removes_idle_task_definitions() {
    let e = E2e::new("gc");
    // A live job (state present) and an abandoned one (its runner died after prepare).
    let live = e.job().script(["echo live-job-still-works"]);
    let dead = e.job();
    let mut rl = e.runner(&live);
    assert_ok(&rl.config());
    assert_ok(&rl.prepare());
    let mut rd = e.runner(&dead);
    assert_ok(&rd.config());
    assert_ok(&rd.prepare());
    std::fs::remove_file(e.state_file(&dead)).unwrap();

    // Default grace (300 s): both tasks are young, nothing is touched.
    let out = admin(&e.config, &["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        (running_count(&e, &live), running_count(&e, &dead)),
        (1, 1),
        "{}",
        text(&out)
    );

    let cfg = config_variant(&e, "gc0", |t| {
        format!("{t}\n[gc]\nstart_grace_secs = 0\ntask_definition_idle_secs = 3600\n")
    });
    let dry = admin(&cfg, &["gc", "--dry-run"]);
    let dry_out = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(dry.status.success(), "{}", text(&dry));
    let dead_arn = e.running_task(&dead).task_arn().unwrap().to_string();
    let live_arn = e.running_task(&live).task_arn().unwrap().to_string();
    assert!(
        dry_out.contains(&format!("would stop task {dead_arn}")),
        "{}",
        text(&dry)
    );
    assert!(!dry_out.contains(&live_arn), "{}", text(&dry));
    assert_eq!(running_count(&e, &dead), 1, "--dry-run changes nothing");

    let out = admin(&cfg, &["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    e.assert_no_task_left(&dead);
    assert_eq!(running_count(&e, &live), 1, "the live job's task is untouched");
    // The task definition was used a moment ago: kept.
    assert_eq!(task_definitions(&e).0.len(), 1);
    // A second gc at once (two hosts, or cron overlap) finds nothing to do and does not fail.
    let again = admin(&cfg, &["gc"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("stopped 0 task(s)"),
        "{}",
        text(&again)
    );

    // The live job carries on.
    let build = rl.run_script(stages::BUILD_SCRIPT, &stage_script(&rl, "echo live-job-still-works\n"));
    assert_ok(&build);
    assert!(build.stdout_text().contains("live-job-still-works"), "{}", show(&build));
    assert_ok(&rl.cleanup());
    assert_ok(&rd.cleanup());
    e.assert_no_task_left(&live);

    // Idle task definitions: with no task of the family running and the idle time 0, gc
    // deregisters and deletes them.
    let idle = config_variant(&e, "idle0", |t| format!("{t}\n[gc]\ntask_definition_idle_secs = 0\n"));
    let out = admin(&idle, &["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deregister task definition") && stdout.contains("delete task definition"),
        "{}",
        text(&out)
    );
    assert_eq!(task_definitions(&e), (vec![], vec![]), "{}", text(&out));

    // And the next job simply registers it again.
    let next = e.job().script(["echo after-gc"]);
    assert!(e.runner(&next).run_job().is_success());
    assert_eq!(task_definitions(&e).0.len(), 1);
}

#[test]
fn unregister_stops_the_runners_tasks_and_removes_its_task_definitions() {
    let e = E2e::new("unreg");
    let job = e.job();
    let mut r = e.prepared(&job);
    assert_eq!(task_definitions(&e).0.len(), 1);
    let dry = admin(&e.config, &["unregister", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(running_count(&e, &job), 1);
    let out = admin(&e.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
    e.assert_no_task_left(&job);
    assert_eq!(task_definitions(&e), (vec![], vec![]), "{}", text(&out));
    // The job's own cleanup afterwards is harmless.
    assert_ok(&r.cleanup());
}

#[test]
fn check_reports_each_check_and_fails_with_what_to_fix() {
    let e = E2e::new("check");
    let out = admin(&e.config, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.lines().any(|l| l.starts_with("ok   config")), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   AWS credentials and cluster local")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("ok   Docker at 127.0.0.1:2376")),
        "{stdout}"
    );
    // The stand-in's dockerd runs with --tlsverify: a client without a certificate is refused.
    let refuses = format!(
        "ok   Docker at 127.0.0.1:2376 on {} refuses a client without a certificate",
        e.standin.instance_id
    );
    assert!(stdout.lines().any(|l| l == refuses), "{refuses:?} in:\n{stdout}");

    // A TLS listener with the instance's own server certificate that does not ask for a client
    // certificate (dockerd with --tls but without --tlsverify does the same): openssl's
    // s_server -HTTP, which answers a GET with the file of that path (a whole HTTP response):
    // `_ping` and the version document.
    let lax = e.dir.join("lax-tls");
    std::fs::create_dir_all(&lax).unwrap();
    let response = |ctype: &str, body: &str| {
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    std::fs::write(lax.join("_ping"), response("text/plain", "OK")).unwrap();
    std::fs::write(
        lax.join("version"),
        response("application/json", r#"{"Version":"0-lax","ApiVersion":"1.41"}"#),
    )
    .unwrap();
    let server_certs = e.standin.certs.ca.parent().expect("the certs dir").to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-HTTP", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(server_certs.join("server.pem"))
        .arg("-key")
        .arg(server_certs.join("server-key.pem"))
        .current_dir(&lax)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _lax = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bad = config_variant(&e, "laxtls", |t| set_docker_key(&t, "port", &port.to_string()));
    let out = admin(&bad, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let answers = format!(
        "FAIL Docker at 127.0.0.1:{port} on {} answers a client WITHOUT a certificate",
        e.standin.instance_id
    );
    let at = stdout.lines().position(|l| l.starts_with(&answers));
    let at = at.unwrap_or_else(|| panic!("{answers:?} in:\n{}", text(&out)));
    assert!(
        stdout
            .lines()
            .nth(at + 1)
            .is_some_and(|l| l.contains("fix:") && l.contains("--tlsverify")),
        "{}",
        text(&out)
    );

    let certs = bad_certs("checkcerts");
    let ca = format!("\"{}\"", certs.path("other-ca.pem"));
    let bad = config_variant(&e, "badca", |t| set_docker_key(&t, "ca_file", &ca));
    let out = admin(&bad, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout.contains("FAIL Docker at 127.0.0.1:2376") && stdout.contains("not signed by the CA"),
        "{stdout}"
    );
    assert!(stdout.contains("fix:"), "{stdout}");

    let bad = config_variant(&e, "badcluster", |t| {
        t.replace("cluster = \"local\"", "cluster = \"no-such-cluster\"")
    });
    let out = admin(&bad, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"), "{}", text(&out));

    let bad = config_variant(&e, "badkey", |t| format!("{t}\nnot_a_key = 1\n"));
    let out = admin(&bad, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAIL config")
            && String::from_utf8_lossy(&out.stdout).contains("not_a_key"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&certs.dir);
}
