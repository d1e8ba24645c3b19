//! The executor at scale on one runner host (issue 15): the prepares waiting on a host share
//! their DescribeTasks (`host/src/ecs/poller.rs`), and each request says who made it.

mod support;

use ecs_executor_tests::standin::Standin;
use support::*;

/// A measured figure in the test output (`cargo test -- --nocapture` shows it).
fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name}: {value}");
}

/// The executor's DescribeTasks requests after `mark` (the agent stand-in polls DescribeTasks
/// too: its requests carry no `app/ecs-executor` user agent) that name at least one of `arns`,
/// with how many of them each names.
fn describe_tasks_naming(e: &E2e, mark: u64, arns: &[String]) -> Vec<(f64, usize)> {
    e.standin
        .requests_since(mark)
        .iter()
        .filter(|q| q.action.as_deref() == Some("DescribeTasks"))
        .filter(|q| {
            q.user_agent
                .as_deref()
                .is_some_and(|ua| ua.contains("app/ecs-executor"))
        })
        .map(|q| (q.time, arns.iter().filter(|a| q.body.contains(a.as_str())).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// `n` jobs prepared at once with `config`'s setup; their task ARNs (read from the state files
/// before cleanup) and the request mark taken before they started.
fn prepare_at_once(e: &E2e, n: usize) -> (Vec<String>, u64) {
    let jobs: Vec<_> = (0..n).map(|_| e.job()).collect();
    let mark = e.standin.request_mark();
    let er = &e;
    let prepared: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                s.spawn(move || {
                    let (r, prepare) = er.prepare(job);
                    (r, prepare)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut arns = Vec::new();
    for (job, (mut r, prepare)) in jobs.iter().zip(prepared) {
        assert_ok(&prepare);
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.state_file(job)).expect("state file")).expect("JSON");
        arns.push(state["task_arn"].as_str().expect("task_arn").to_string());
        assert_ok(&r.cleanup());
    }
    (arns, mark)
}

#[test]
fn prepares_waiting_on_one_host_share_their_describe_tasks() {
    const N: usize = 8;
    // Waiting for ECS's RUNNING, so that every job asks ECS (by default Docker's word ends the
    // wait and most jobs ask nothing).
    let e = E2e::with_config_edit("shared-poll", |text| {
        text.replace("[aws]", "[aws]\nwait_for_ecs_running = true")
    });
    let (arns, mark) = prepare_at_once(&e, N);
    let requests = describe_tasks_naming(&e, mark, &arns);
    // One round describes every waiting task of the host: requests name several of ours, and
    // rounds never come closer than the poller's shortest gap (250 ms; 200 ms allows for the
    // stand-in's clock), however many jobs wait.
    assert!(
        requests.iter().any(|(_, n)| *n >= 2),
        "no DescribeTasks named two of the {N} tasks: {requests:?}"
    );
    let closest = requests.windows(2).map(|w| w[1].0 - w[0].0).fold(f64::MAX, f64::min);
    assert!(closest >= 0.2, "two rounds {closest:.3} s apart: {requests:?}");
    figure("DescribeTasks for 8 prepares at once, shared", requests.len());

    // The same jobs with `shared_polling = false` poll alone: one task per request, at least
    // one request each.
    let e = E2e::with_config_edit("solo-poll", |text| {
        text.replace("[aws]", "[aws]\nshared_polling = false\nwait_for_ecs_running = true")
    });
    assert!(
        std::fs::read_to_string(&e.config)
            .unwrap()
            .contains("shared_polling = false"),
        "the stand-in's config has an [aws] table to switch it off in"
    );
    let (arns, mark) = prepare_at_once(&e, N);
    let requests = describe_tasks_naming(&e, mark, &arns);
    assert!(requests.iter().all(|(_, n)| *n == 1), "{requests:?}");
    assert!(requests.len() >= N, "{requests:?}");
    figure("DescribeTasks for 8 prepares at once, alone", requests.len());
}

#[test]
fn by_default_docker_running_every_container_ends_the_wait_without_asking_ecs() {
    const N: usize = 4;
    let e = E2e::new("docker-word");
    let jobs: Vec<_> = (0..N).map(|_| e.job()).collect();
    let mark = e.standin.request_mark();
    let ended: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|job| s.spawn(|| e.prepare(job))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut arns = Vec::new();
    let mut on_dockers_word = 0;
    for (job, (mut r, prepare)) in jobs.iter().zip(ended) {
        assert_ok(&prepare);
        let log = prepare.log_text();
        // ECS's fallback look comes 5 s into the wait: on a very busy machine it may answer first.
        if log.contains("task running: Docker on the instance runs its 2 containers (") {
            on_dockers_word += 1;
        } else {
            assert!(log.contains("task RUNNING ("), "{log}");
        }
        arns.push(e.running_task(job).task_arn().unwrap().to_string());
        assert_ok(&r.cleanup());
    }
    let requests = describe_tasks_naming(&e, mark, &arns);
    figure("prepares (of 4 at once) that ended on Docker's word", on_dockers_word);
    figure("DescribeTasks for 4 prepares at once, Docker's word", requests.len());
    assert!(on_dockers_word >= 1, "no prepare ended on Docker's word");
    // ECS agrees: each task ran (and cleanup stopped it).
    for job in &jobs {
        let tasks = e.assert_tasks_stopped(job, 1);
        assert!(tasks[0].started_at().is_some(), "{:?}", tasks[0]);
    }
}

#[test]
fn every_request_names_the_executor_its_version_and_the_runner_host() {
    let e = E2e::new("user-agent");
    let job = e.job();
    let mark = e.standin.request_mark();
    let mut r = e.prepared(&job);
    assert_ok(&r.cleanup());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let want = format!("app/ecs-executor-{}-", env!("CARGO_PKG_VERSION"));
    let ours: Vec<String> = e
        .standin
        .requests_since(mark)
        .into_iter()
        // Only the executor registers task definitions and runs tasks.
        .filter(|q| {
            matches!(
                q.action.as_deref(),
                Some("RunTask" | "RegisterTaskDefinition" | "StopTask")
            )
        })
        .filter(|q| q.body.contains(&e.started_by(&job)) || q.body.contains(&e.family_prefix))
        .filter_map(|q| q.user_agent)
        .collect();
    assert!(!ours.is_empty(), "no request of this job was recorded");
    for ua in &ours {
        assert!(ua.contains(&want) && ua.contains(host.trim()), "{ua}");
    }
}

#[test]
fn metrics_land_in_the_textfile_collector_directory() {
    let textfile = std::env::temp_dir().join(ecs_executor_tests::standin::unique_name("prom"));
    std::fs::create_dir_all(&textfile).unwrap();
    let dir = textfile.display().to_string();
    let e = E2e::with_config_edit("metrics", |text| {
        format!("{text}\n[metrics]\ntextfile_dir = \"{dir}\"\n")
    });
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    assert_ok(&r.run_script("build_script", &stage_script(&r, "echo hello\n")));
    assert_ok(&r.cleanup());
    let prom = std::fs::read_to_string(textfile.join("ecs_executor.prom")).expect("the .prom file");
    for want in [
        "ecs_executor_steps_total{step=\"prepare\",outcome=\"ok\"} 1\n",
        "ecs_executor_steps_total{step=\"run\",outcome=\"ok\"} 1\n",
        "ecs_executor_steps_total{step=\"cleanup\",outcome=\"ok\"} 1\n",
        "ecs_executor_aws_calls_total{action=\"RunTask\"} 1\n",
        "ecs_executor_aws_calls_total{action=\"StopTask\"} 1\n",
        "ecs_executor_stages_total{path=\"stage_runner\"} 1\n",
        "ecs_executor_prepare_phase_seconds_count{phase=\"running\"} 1\n",
        "# TYPE ecs_executor_tasks_provisioning gauge\n",
    ] {
        assert!(prom.contains(want), "missing {want:?} in:\n{prom}");
    }
    // Written atomically: no temp file is left beside it.
    let names: Vec<String> = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["ecs_executor.prom"]);
    let _ = std::fs::remove_dir_all(&textfile);
}

/// The scale benchmark (`tests/bench/scale`) scaled down for CI: a burst of 20 job starts over
/// two runner hosts (own state dirs, own runner tokens) against a stand-in of its own (own
/// moto with throttling on, own agent with ECS-like latency), the API buckets and the hosts'
/// rate shares cut to a tenth so that 20 jobs meet the pressure 200 meet at ECS's sizes.
/// Correctness only (no timing): every job passes, no throttling error reaches a job, and the
/// hosts' shared pollers keep DescribeTasks per job low.
#[test]
fn a_burst_of_jobs_over_two_runner_hosts_passes_with_no_throttling_reaching_a_job() {
    let standin = Standin::require();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port for the bench's own moto");
    let out_dir = std::env::temp_dir().join(ecs_executor_tests::standin::unique_name("scale-bench"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let json = out_dir.join("results.json");
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scale");
    let run = std::process::Command::new(&bench)
        .args([
            "--jobs",
            "20",
            "--hosts",
            "2",
            "--poller",
            "on",
            "--phases",
            "burst",
            "--dockerds",
            "0",
        ])
        .args([
            "--latency",
            "realistic",
            "--throttle-scale",
            "0.1",
            "--port",
            &port.to_string(),
            // Stages longer than 5 s would also watch their tasks (one shared round per host
            // per 5 s); this test counts prepare's polling alone.
            "--stage-watch-secs",
            "0",
        ])
        .arg("--executor")
        .arg(executor_bin())
        .arg("--agent")
        .arg(ecs_executor_tests::standin::agent_binary())
        .arg("--json")
        .arg(&json)
        .env("ECS_LOCAL_STATE", &standin.state_dir)
        .output()
        .expect("run tests/bench/scale");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{report}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &results["results"][0];
    figure("scaled-down burst (20 jobs, 2 hosts)", r);
    assert_eq!(r["passed"], 20, "{report}");
    assert_eq!(r["throttles_reaching_jobs"], 0, "{report}");
    // Docker's word ends most waits without asking ECS; ECS's fallback looks fall on a
    // host-wide 10 s grid (30 s after 30 s of waiting), so each host's shared poller makes at
    // most about one DescribeTasks per grid step however many of its jobs wait — not one per job
    // per second. (Per job that is <= 0.2 when containers start within ~5 s, or at the full
    // benchmark's size; this machine's dockerd may be slower.)
    let describe = r["describe_tasks_per_job"].as_f64().unwrap();
    let wall = r["phase_wall_s"].as_f64().unwrap();
    let bound = 2.0 * (wall / 10.0 + 1.0) / 20.0;
    assert!(
        describe <= bound.max(0.2),
        "DescribeTasks per job {describe}, more than two hosts' grid steps in {wall} s allow ({bound}): {report}"
    );
    assert!(describe < 1.0, "fewer DescribeTasks than jobs: {describe}: {report}");
    // The task definition ECS showed ACTIVE is reused on each host for 5 minutes without
    // asking again: about one DescribeTaskDefinition per host, not one per job.
    let td_reads = r["calls_per_job"]["DescribeTaskDefinition"].as_f64().unwrap_or(0.0);
    assert!(
        td_reads <= 4.0 / 20.0,
        "DescribeTaskDefinition per job {td_reads}: more than a couple per host: {report}"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
