//! Warm pools (issue 16, `docs/warm-pools.md`) through the real binary, each test on a cluster
//! and agent stand-in of its own (`support::standin_agent`): the first job of a shape starts
//! cold and its cleanup fills the pool; many prepares racing for a small pool never get one
//! task twice (the rest start cold); a claimed task runs its job's stages and is stopped at
//! cleanup, never returned to the pool; a warm task whose container died is discarded, never
//! handed out; `gc` evicts warm tasks idle past their timeout and tops the pool up;
//! the pool policy (a host cap, a schedule, eager mode) makes `gc` stop the oldest idle tasks
//! beyond the target and start more for jobs in flight; `unregister` stops the warm tasks.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ecs_executor_tests::runner::{JobSpec, Runner, StageResult, stages};
use ecs_executor_tests::standin::Standin;
use support::standin_agent::OwnCluster;
use support::{E2e, admin, assert_ok, show, stage_script, text};

const POOL: &str = "busybox";

/// This test's executor on `own`'s cluster, with a pool of the tests' build image.
fn pooled(own: &OwnCluster, name: &str, min_idle: u32, max: u32) -> E2e {
    let image = Standin::require().images.build;
    let edit = own.config_edit();
    E2e::with_config_edit(name, move |text| {
        let text = edit(text);
        let metrics = text
            .lines()
            .find_map(|l| l.strip_prefix("state_dir = \""))
            .map(|d| d.trim_end_matches('"').replace("/state", "/metrics"))
            .expect("the config copy names its state_dir");
        std::fs::create_dir_all(&metrics).expect("the metrics dir");
        format!(
            "{text}\n[metrics]\ntextfile_dir = \"{metrics}\"\n\n[[pool]]\nname = \"{POOL}\"\nimage = \"{image}\"\nmin_idle = {min_idle}\nmax = {max}\nidle_timeout_secs = 3600\n"
        )
    })
}

/// The task ARNs of the pool's idle entries on this host.
fn idle_warm_tasks(e: &E2e) -> BTreeSet<String> {
    let mut arns = BTreeSet::new();
    let Ok(shapes) = std::fs::read_dir(e.state_dir.join("pool")) else {
        return arns;
    };
    for shape in shapes.flatten() {
        for entry in std::fs::read_dir(shape.path().join("idle"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|x| x == "json") {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).expect("an entry is JSON");
                arns.insert(v["task_arn"].as_str().unwrap().to_string());
            }
        }
    }
    arns
}

/// ECS's (desired, last) status of each task.
fn statuses(e: &E2e, arns: &BTreeSet<String>) -> Vec<(String, String, String)> {
    if arns.is_empty() {
        return Vec::new();
    }
    e.block_on(async {
        let out = e
            .ecs
            .describe_tasks()
            .cluster(&e.standin.cluster)
            .set_tasks(Some(arns.iter().cloned().collect()))
            .send()
            .await
            .expect("DescribeTasks");
        out.tasks()
            .iter()
            .map(|t| {
                (
                    t.task_arn().unwrap_or_default().to_string(),
                    t.desired_status().unwrap_or_default().to_string(),
                    t.last_status().unwrap_or_default().to_string(),
                )
            })
            .collect()
    })
}

/// Waits until the pool has `n` idle entries and ECS says each of their tasks RUNNING.
fn wait_for_warm(e: &E2e, n: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let idle = idle_warm_tasks(e);
        let s = statuses(e, &idle);
        if idle.len() == n && s.len() == n && s.iter().all(|(_, d, l)| d == "RUNNING" && l == "RUNNING") {
            return idle;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not get {n} running warm tasks: {idle:?} {s:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until ECS says each task is STOPPED (desired and last).
fn wait_stopped(e: &E2e, arns: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = statuses(e, arns);
        if s.len() == arns.len() && s.iter().all(|(_, d, l)| d == "STOPPED" && l == "STOPPED") {
            return;
        }
        assert!(Instant::now() < deadline, "not all stopped: {s:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The task the job's state names (a claimed warm task has the pool's startedBy, not the job's).
fn job_task(e: &E2e, job: &JobSpec) -> String {
    let path = e.state_file(job);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display())))
            .expect("the job state is JSON");
    state["task_arn"].as_str().unwrap().to_string()
}

fn output(call: &StageResult) -> String {
    format!("{}\n{}", call.stdout_text(), call.stderr_text())
}

/// The warm task a prepare says it claimed, if any.
fn claimed(call: &StageResult) -> Option<String> {
    let out = output(call);
    let line = out.lines().find(|l| l.contains("claimed (idle "))?;
    let rest = line.split("warm task ").nth(1)?;
    Some(rest.split(' ').next()?.to_string())
}

const COLD: &str = "no warm task for this shape: cold start";

/// A job's tags on ECS.
fn tags(e: &E2e, arn: &str) -> Vec<(String, String)> {
    e.block_on(async {
        let out = e
            .ecs
            .describe_tasks()
            .cluster(&e.standin.cluster)
            .tasks(arn)
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await
            .expect("DescribeTasks");
        out.tasks()[0]
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    })
}

fn metric(e: &E2e, series: &str) -> f64 {
    let text = std::fs::read_to_string(e.dir.join("metrics/ecs_executor.prom")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The first job of the shape starts cold and fills the pool at cleanup; six prepares race for
/// its three warm tasks: three claim one each, no task twice, three start cold; claimed tasks
/// carry their job's tags and run its stages; after the cleanups every used task is stopped
/// and the pool holds three fresh tasks, none of them a used one; `unregister` stops them.
#[test]
fn racing_prepares_claim_each_warm_task_once_and_used_tasks_never_return() {
    let own = OwnCluster::start("warm", 1);
    let e = pooled(&own, "warm-race", 3, 3);

    let first = e.job();
    let (mut r, prepare) = e.prepare(&first);
    assert_ok(&prepare);
    assert!(output(&prepare).contains(COLD), "{}", show(&prepare));
    let mut used = BTreeSet::from([job_task(&e, &first)]);
    let cleanup = r.cleanup();
    assert_ok(&cleanup);
    assert!(
        output(&cleanup).contains(&format!("warm pool {POOL}: started 3 warm task(s)")),
        "{}",
        show(&cleanup)
    );
    let warm = wait_for_warm(&e, 3);
    assert!(warm.is_disjoint(&used), "{warm:?} {used:?}");

    let jobs: Vec<JobSpec> = (0..6).map(|_| e.job()).collect();
    let prepared: Vec<(Runner, StageResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|job| s.spawn(|| e.prepare(job))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut hits = Vec::new();
    let mut tasks = BTreeSet::new();
    for ((_, prepare), job) in prepared.iter().zip(&jobs) {
        assert_ok(prepare);
        let task = job_task(&e, job);
        assert!(tasks.insert(task.clone()), "{task} given to two jobs");
        match claimed(prepare) {
            Some(arn) => {
                assert_eq!(arn, task, "{}", show(prepare));
                assert!(warm.contains(&arn), "{arn} is not one of the pool's {warm:?}");
                let tags = tags(&e, &arn);
                assert!(
                    tags.contains(&("ecs-executor:job-id".to_string(), job.id().to_string())),
                    "{tags:?}"
                );
                hits.push(arn);
            }
            None => assert!(output(prepare).contains(COLD), "{}", show(prepare)),
        }
    }
    for (_, prepare) in &prepared {
        let kind = if claimed(prepare).is_some() { "hit" } else { "cold" };
        eprintln!(
            "FIGURE prepare {kind} (6 racing): {:.3} s",
            prepare.duration.as_secs_f64()
        );
        for line in support::executor_lines(prepare) {
            eprintln!("  {line}");
        }
    }
    let hit_set: BTreeSet<String> = hits.iter().cloned().collect();
    assert_eq!((hits.len(), hit_set.len()), (3, 3), "claims: {hits:?}");
    // The first job's miss, then 3 hits and 3 misses.
    let claims = |outcome: &str| {
        metric(
            &e,
            &format!("ecs_executor_pool_claims_total{{pool=\"{POOL}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!((claims("hit"), claims("miss")), (3.0, 4.0));

    // A claimed task runs its job's stage on the job's own stage runner.
    let (i, _) = prepared
        .iter()
        .enumerate()
        .find(|(_, (_, p))| claimed(p).is_some())
        .unwrap();
    let mut runners: Vec<Runner> = prepared.into_iter().map(|(r, _)| r).collect();
    let script = stage_script(&runners[i], "echo hello-from-a-warm-task");
    let stage = runners[i].run_script(stages::BUILD_SCRIPT, &script);
    assert_ok(&stage);
    assert!(
        stage.stdout_text().contains("hello-from-a-warm-task"),
        "{}",
        show(&stage)
    );

    for r in &mut runners {
        assert_ok(&r.cleanup());
    }
    used.extend(tasks);
    wait_stopped(&e, &used);
    let refilled = wait_for_warm(&e, 3);
    assert!(
        refilled.is_disjoint(&used),
        "a used task is back in the pool: {refilled:?}"
    );

    let out = admin(&e.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_stopped(&e, &refilled);
    assert!(idle_warm_tasks(&e).is_empty());
}

/// A warm task whose build container died is discarded (stopped, never handed out) and the job
/// starts cold; `gc` then evicts a warm task idle past `idle_timeout_secs` and tops the pool
/// up with a fresh one.
#[test]
fn a_dead_warm_task_is_discarded_and_gc_evicts_and_tops_up() {
    let own = OwnCluster::start("warm", 1);
    let e = pooled(&own, "warm-dead", 1, 2);
    let first = e.job();
    let mut r = e.prepared(&first);
    let mut used = BTreeSet::from([job_task(&e, &first)]);
    assert_ok(&r.cleanup());
    let warm = wait_for_warm(&e, 1);
    let dead = warm.iter().next().unwrap().clone();

    let docker = e.standin.docker();
    let build = e.container_id(&dead, "build");
    e.block_on(docker.kill_container(&build, None::<bollard::query_parameters::KillContainerOptions>))
        .expect("kill the warm task's build container");
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    let out = output(&prepare);
    assert!(
        out.contains(&format!("warm task {dead} discarded")),
        "{}",
        show(&prepare)
    );
    assert!(out.contains(COLD), "{}", show(&prepare));
    for line in support::executor_lines(&prepare) {
        eprintln!("  {line}");
    }
    let task = job_task(&e, &job);
    assert_ne!(task, dead);
    wait_stopped(&e, &BTreeSet::from([dead.clone()]));
    used.insert(task);
    assert_ok(&r.cleanup());

    let fresh = wait_for_warm(&e, 1);
    assert!(fresh.is_disjoint(&used) && !fresh.contains(&dead), "{fresh:?}");
    // Idle past a timeout of 1 s: gc stops it and starts a replacement.
    let config = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(
        &e.config,
        config.replace("idle_timeout_secs = 3600", "idle_timeout_secs = 1"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let out = admin(&e.config, &["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("evicted 1 idle warm task(s)") && said.contains("started 1 warm task(s)"),
        "{}",
        text(&out)
    );
    wait_stopped(&e, &fresh);
    let topped = idle_warm_tasks(&e);
    assert_eq!(topped.len(), 1);
    assert!(topped.is_disjoint(&fresh) && topped.is_disjoint(&used), "{topped:?}");
    let out = admin(&e.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_stopped(&e, &topped);
}

/// The pool policy (`docs/warm-pools.md`, "Policy") through `gc`: a host cap below what is idle
/// makes gc stop the oldest warm task (the newest stays); a schedule that matches now with
/// `min_idle = 0` scales the pool to zero; lazy (`min_idle = 0`) starts nothing for a job in
/// flight, eager (`scale_factor = 2`) starts two for it, and once that job is cleaned up gc
/// stops them as beyond the target. The target gauge follows each step.
#[test]
fn schedules_and_the_host_cap_make_gc_stop_the_oldest_and_eager_starts_more() {
    let own = OwnCluster::start("warm", 1);
    let e = pooled(&own, "warm-policy", 2, 4);
    let base = std::fs::read_to_string(&e.config).unwrap();
    assert!(base.contains("min_idle = 2\n"), "{base}");
    // The pool's own keys go right after its entry; tables after them.
    let set = |min_idle: u32, pool_keys: &str, tables: &str| {
        let text = base.replace("min_idle = 2\n", &format!("min_idle = {min_idle}\n{pool_keys}"));
        std::fs::write(&e.config, format!("{text}\n{tables}")).unwrap();
    };
    let gc = || {
        let out = admin(&e.config, &["gc"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let target = || metric(&e, &format!("ecs_executor_pool_target{{pool=\"{POOL}\"}}"));
    let first = e.job();
    let mut r = e.prepared(&first);
    assert_ok(&r.cleanup());
    let warm = wait_for_warm(&e, 2);
    let started = |arn: &String| -> f64 {
        let dir = e.state_dir.join("pool");
        for shape in std::fs::read_dir(&dir).unwrap().flatten() {
            let id = arn.rsplit('/').next().unwrap();
            if let Ok(b) = std::fs::read(shape.path().join("idle").join(format!("{id}.json"))) {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                return v["started_unix"].as_f64().unwrap();
            }
        }
        panic!("no idle entry for {arn}");
    };
    let mut by_age: Vec<&String> = warm.iter().collect();
    by_age.sort_by(|a, b| started(a).total_cmp(&started(b)));
    let (oldest, newest) = (by_age[0].clone(), by_age[1].clone());

    // 1. A host cap of 1: the oldest goes, nothing is started.
    set(2, "", "[pool_limits]\nmax_idle_total = 1\n");
    let said = gc();
    assert!(
        said.contains("and 1 beyond the targets") && said.contains("started 0 warm task(s)"),
        "{said}"
    );
    assert!(
        said.contains(&format!("stop warm task {oldest}: beyond the target")),
        "{said}"
    );
    wait_stopped(&e, &BTreeSet::from([oldest.clone()]));
    assert_eq!(idle_warm_tasks(&e), BTreeSet::from([newest.clone()]));
    assert_eq!(target(), 2.0, "the gauge is the pool's target (the cap is the host's)");

    // 2. A schedule matching every minute with min_idle = 0: scaled to zero.
    set(
        2,
        "",
        "[[pool.schedule]]\nperiods = [\"* * * * *\"]\ntimezone = \"Europe/Berlin\"\nmin_idle = 0\n",
    );
    let said = gc();
    assert!(
        said.contains("and 1 beyond the targets") && said.contains("started 0 warm task(s)"),
        "{said}"
    );
    wait_stopped(&e, &BTreeSet::from([newest.clone()]));
    assert!(idle_warm_tasks(&e).is_empty());
    assert_eq!(target(), 0.0);

    // 3. A job in flight: lazy with min_idle = 0 starts nothing; eager starts 2 for it.
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    set(0, "", "");
    assert!(gc().contains("started 0 warm task(s)"));
    assert!(idle_warm_tasks(&e).is_empty());
    set(0, "scale_factor = 2.0\n", "");
    let said = gc();
    assert!(said.contains("started 2 warm task(s)"), "{said}");
    assert_eq!(target(), 2.0);
    let eager = wait_for_warm(&e, 2);
    assert_ok(&r.cleanup());
    // Nothing in flight any more: target 0, both stopped as beyond it.
    let said = gc();
    assert!(
        said.contains("and 2 beyond the targets") && said.contains("started 0 warm task(s)"),
        "{said}"
    );
    wait_stopped(&e, &eager);
    assert!(idle_warm_tasks(&e).is_empty());
    assert_eq!(target(), 0.0);
}

/// A warm task whose instance is draining is discarded, never handed out: the job gets a task
/// on the other instance (a warm one there, or a cold start), and the cleanup's refill lands
/// there too.
#[test]
fn a_warm_task_on_a_draining_instance_is_discarded() {
    let own = OwnCluster::start("warm", 2);
    let e = pooled(&own, "warm-drain", 2, 2);
    let first = e.job();
    let mut r = e.prepared(&first);
    assert_ok(&r.cleanup());
    let warm = wait_for_warm(&e, 2);
    let instance_of = |arn: &str| -> String {
        e.block_on(async {
            let out = e
                .ecs
                .describe_tasks()
                .cluster(&e.standin.cluster)
                .tasks(arn)
                .send()
                .await
                .expect("DescribeTasks");
            out.tasks()[0].container_instance_arn().unwrap_or_default().to_string()
        })
    };
    let drained_arn = instance_of(warm.iter().next().unwrap());
    let on_drained: BTreeSet<String> = warm.iter().filter(|t| instance_of(t) == drained_arn).cloned().collect();
    own.instance_control(own.instance_of(&drained_arn), serde_json::json!({"state": "DRAINING"}));

    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    let out = output(&prepare);
    for arn in &on_drained {
        assert!(
            out.contains(&format!(
                "warm task {arn} discarded: its instance {drained_arn} is DRAINING"
            )),
            "{}",
            show(&prepare)
        );
    }
    let task = job_task(&e, &job);
    assert!(!on_drained.contains(&task), "{task} is on the draining instance");
    assert_ne!(instance_of(&task), drained_arn);
    wait_stopped(&e, &on_drained);
    assert_ok(&r.cleanup());
    let refilled = wait_for_warm(&e, 2);
    for arn in &refilled {
        assert_ne!(
            instance_of(arn),
            drained_arn,
            "a warm task was placed on the draining instance"
        );
    }
    let out = admin(&e.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_stopped(&e, &refilled);
}

/// A claim whose TagResource fails (the job's stage runners start at the same moment) discards
/// the warm task: it is stopped with the job's certificates in it, never handed out, and the
/// job starts cold and runs its stage.
#[test]
fn a_warm_task_whose_tag_fails_is_discarded_and_the_job_starts_cold() {
    let own = OwnCluster::start("warm", 1);
    let e = pooled(&own, "warm-tag", 1, 1);
    let first = e.job();
    let mut r = e.prepared(&first);
    assert_ok(&r.cleanup());
    let warm = wait_for_warm(&e, 1);
    let arn = warm.iter().next().unwrap().clone();
    let fault = ecs_executor_tests::standin::Fault {
        matching: Some(own.name.clone()),
        ..ecs_executor_tests::standin::Fault::ecs_error("TagResource", "AccessDeniedException", 1)
    };
    let guard = e.standin.inject(&fault);
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    drop(guard);
    assert_ok(&prepare);
    let out = output(&prepare);
    assert!(
        out.contains(&format!("warm task {arn} discarded")),
        "{}",
        show(&prepare)
    );
    assert!(out.contains(COLD), "{}", show(&prepare));
    assert_ne!(job_task(&e, &job), arn);
    wait_stopped(&e, &warm);
    let script = stage_script(&r, "echo cold-after-a-failed-tag");
    let stage = r.run_script(stages::BUILD_SCRIPT, &script);
    assert_ok(&stage);
    assert!(
        stage.stdout_text().contains("cold-after-a-failed-tag"),
        "{}",
        show(&stage)
    );
    assert_ok(&r.cleanup());
    let out = admin(&e.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// p50 and p95 of `values` (seconds).
fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.95))
}

/// The warm-pool benchmark (`tests/bench/warm`, figures in docs/benchmarks.md), not a test:
/// on a cluster of its own whose agent stand-in has the realistic latency profile, `BENCH_JOBS`
/// (default 50) jobs of the pooled shape one after another, each claiming a warm task (the
/// pool of 5 is waited for between rounds), then as many cold ones of the same shape from a
/// config without the pool; per job prepare's wall time and the first stage's. Prints
/// `BENCH` lines (Markdown table rows).
#[test]
#[ignore = "a benchmark: tests/bench/warm"]
fn bench_prepare_hit_vs_cold() {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let own = OwnCluster::start_with("warm", 1, &["--latency", "realistic"]);
    let pooled = pooled(&own, "warm-bench", 5, 5);
    let cold = E2e::with_config_edit("warm-bench-cold", own.config_edit());
    // The first job of the shape fills the pool.
    let mut r = pooled.prepared(&pooled.job());
    assert_ok(&r.cleanup());
    // The executor's AWS calls for this cluster or this setup's task definitions (the
    // shared moto records every client's; the agent stand-in's carry no executor user agent).
    let aws_calls = |e: &E2e, mark: u64| -> usize {
        e.standin
            .requests_since(mark)
            .iter()
            .filter(|q| {
                q.user_agent
                    .as_deref()
                    .is_some_and(|ua| ua.contains("app/ecs-executor"))
            })
            .filter(|q| q.body.contains(own.name.as_str()) || q.body.contains(e.family_prefix.as_str()))
            .count()
    };
    let run = |e: &E2e, expect_hit: bool| -> (f64, f64, usize, usize) {
        let job = e.job();
        let mark = e.standin.request_mark();
        let (mut r, prepare) = e.prepare(&job);
        assert_ok(&prepare);
        let prepare_calls = aws_calls(e, mark);
        assert_eq!(claimed(&prepare).is_some(), expect_hit, "{}", show(&prepare));
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("PHASES prepare {:.3} s", prepare.duration.as_secs_f64());
            for line in support::executor_lines(&prepare) {
                eprintln!("  {line}");
            }
        }
        let script = stage_script(&r, "echo first-byte");
        let stage = r.run_script(stages::BUILD_SCRIPT, &script);
        assert_ok(&stage);
        assert_ok(&r.cleanup());
        (
            prepare.duration.as_secs_f64(),
            stage.duration.as_secs_f64(),
            prepare_calls,
            aws_calls(e, mark),
        )
    };
    let (mut hit_prepare, mut hit_stage, mut cold_prepare, mut cold_stage) = (vec![], vec![], vec![], vec![]);
    let (mut hit_calls, mut cold_calls) = ((0, 0), (0, 0));
    let started = Instant::now();
    for i in 0..jobs {
        if i % 5 == 0 {
            wait_for_warm(&pooled, 5);
        }
        let (p, s, pc, jc) = run(&pooled, true);
        hit_prepare.push(p);
        hit_stage.push(s);
        hit_calls = (hit_calls.0 + pc, hit_calls.1 + jc);
    }
    let hits_took = started.elapsed().as_secs_f64();
    for _ in 0..jobs {
        let (p, s, pc, jc) = run(&cold, false);
        cold_prepare.push(p);
        cold_stage.push(s);
        cold_calls = (cold_calls.0 + pc, cold_calls.1 + jc);
    }
    for (what, (p, j)) in [("pool hit", hit_calls), ("cold", cold_calls)] {
        eprintln!(
            "BENCH calls {what}: {:.1} executor AWS calls per prepare, {:.1} per whole job (prepare, stage, cleanup with its refill)",
            p as f64 / jobs as f64,
            j as f64 / jobs as f64
        );
    }
    eprintln!("BENCH pace: {jobs} pooled jobs in {hits_took:.0} s");
    let idle = metric(
        &pooled,
        &format!("ecs_executor_pool_idle_task_seconds_total{{pool=\"{POOL}\"}}"),
    );
    for (what, p, s) in [
        ("pool hit", &mut hit_prepare, &mut hit_stage),
        ("cold", &mut cold_prepare, &mut cold_stage),
    ] {
        let (p50, p95) = percentiles(p);
        let (s50, s95) = percentiles(s);
        eprintln!("BENCH | {what} | {jobs} | {p50:.2} | {p95:.2} | {s50:.2} | {s95:.2} |");
    }
    eprintln!(
        "BENCH idle task-seconds of claimed warm tasks: {idle:.0} over {jobs} hits ({:.1} idle task-minutes per 100 jobs)",
        idle / 60.0 * 100.0 / jobs as f64
    );
    let out = admin(&pooled.config, &["unregister"]);
    assert!(out.status.success(), "{}", text(&out));
}
