//! The executor at scale on one runner host (issue 15): the prepares waiting on a host share
//! their DescribeTasks (`host/src/ecs/poller.rs`), and each request says who made it.

mod support;

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
    let e = E2e::new("shared-poll");
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
        text.replace("[aws]", "[aws]\nshared_polling = false")
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
