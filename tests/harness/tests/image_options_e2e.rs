//! `image:` and `services:` options (issue 13) end to end, through the built binary driven as
//! gitlab-runner drives it: `docker: user:` runs the build container, its stages (on the stage
//! runner and through Docker exec) and a service as the job's users; `docker: platform:` puts
//! the task on an instance of that architecture (`attribute:ecs.cpu-architecture`), and a
//! platform the cluster has no instance for, one ECS instances do not have, or a service that
//! disagrees with the image, fails prepare as the job's failure before anything is registered
//! or run.
//!
//! The arm64 placement runs on a cluster of the test's own (`support::standin_agent`) with one
//! instance registered as x86_64 and one as arm64: the attribute only — every instance's
//! containers run on this host's dockerd, whatever architecture it claims.

mod support;

use aws_sdk_ecs::types::Task;
use ecs_executor_tests::runner::{Image, JobSpec, JobStatus, StageResult, stages};
use support::standin_agent::OwnCluster;
use support::{E2e, assert_ok, show};

/// gitlab-runner's default BUILD_FAILURE_EXIT_CODE (the harness's).
const BUILD_FAILURE: i32 = 1;
const ECHO: &str = "ecs-executor-test/svc-echo:1";

/// The Docker platform of the architecture this host is not, and ECS's name for it (the
/// shared stand-in's instance reports this host's).
fn other_platform() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("linux/amd64", "x86_64"),
        _ => ("linux/arm64", "arm64"),
    }
}

/// The task's container definitions by name: (name, user).
fn definition_users(e: &E2e, task: &Task) -> Vec<(String, Option<String>)> {
    let arn = task
        .task_definition_arn()
        .expect("a task names its definition")
        .to_string();
    let out = e
        .block_on(e.ecs.describe_task_definition().task_definition(&arn).send())
        .expect("DescribeTaskDefinition");
    let td = out.task_definition().expect("a task definition");
    td.container_definitions()
        .iter()
        .map(|c| (c.name().unwrap_or_default().to_string(), c.user().map(String::from)))
        .collect()
}

fn placement_expressions(e: &E2e, task: &Task) -> Vec<String> {
    let arn = task
        .task_definition_arn()
        .expect("a task names its definition")
        .to_string();
    let out = e
        .block_on(e.ecs.describe_task_definition().task_definition(&arn).send())
        .expect("DescribeTaskDefinition");
    out.task_definition()
        .expect("a task definition")
        .placement_constraints()
        .iter()
        .filter_map(|p| p.expression().map(String::from))
        .collect()
}

/// `Uid:` and `Gid:` (real ids) of PID 1 of a container: the process its image runs.
fn pid1_ids(e: &E2e, container: &str) -> (String, String) {
    let docker = e.standin.docker();
    let (code, status) = e
        .block_on(ecs_executor_tests::standin::docker_exec(
            &docker,
            container,
            &["cat", "/proc/1/status"],
        ))
        .expect("docker exec");
    assert_eq!(code, 0, "{status}");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_string()
    };
    (field("Uid:"), field("Gid:"))
}

/// What a call printed, both streams.
fn said(call: &StageResult) -> String {
    format!("{}{}", call.stdout_text(), call.stderr_text())
}

#[test]
fn docker_user_runs_the_build_its_stage_runner_stages_and_a_service_as_those_users() {
    let e = E2e::new("user-runner");
    let job = e
        .job()
        .image(
            Image::new(&e.standin.images.build)
                .docker_user("1234:5678")
                .pull_policy(["if-not-present"]),
        )
        .service(Image::new(ECHO).alias("db").docker_user("4321").pull_policy(["always"]));
    let mut live = e.start(job);
    assert!(
        said(&live.prepare).contains("stage runners up"),
        "the stage runner started as the build user: {}",
        show(&live.prepare)
    );
    // `pull_policy:` is the cluster's (ECS_IMAGE_PULL_BEHAVIOR): the job log says which it did
    // not apply; `always` is the agent's default behaviour and is not named.
    let note = format!(
        "pull_policy not applied (image {}: [if-not-present]): on ECS",
        e.standin.images.build
    );
    assert!(said(&live.prepare).contains(&note), "{note:?}: {}", show(&live.prepare));
    assert!(
        !said(&live.prepare).contains(&format!("service {ECHO}: [")),
        "{}",
        show(&live.prepare)
    );
    let users = definition_users(&e, &live.task());
    let user_of = |name: &str| users.iter().find(|(n, _)| n == name).and_then(|(_, u)| u.clone());
    assert_eq!(user_of("build").as_deref(), Some("1234:5678"), "{users:?}");
    assert_eq!(user_of("svc-0").as_deref(), Some("4321"), "{users:?}");
    assert_eq!(user_of("helper"), None, "the helper keeps its image's user: {users:?}");

    let stage = live.stage(stages::BUILD_SCRIPT, "echo \"build-ids=$(id -u):$(id -g)\"\n");
    assert_ok(&stage);
    assert!(stage.stdout_text().contains("build-ids=1234:5678"), "{}", show(&stage));
    assert!(!said(&stage).contains("using Docker exec"), "{}", show(&stage));
    // The build container's main process too.
    assert_eq!(
        pid1_ids(&e, &live.container_id("build")),
        ("1234".into(), "5678".into())
    );

    // The service's own process runs as its user, and still serves (prepare waited for its
    // port; the build reaches it).
    assert_eq!(pid1_ids(&e, &live.container_id("svc-0")).0, "4321");
    let reach = live.stage(
        stages::BUILD_SCRIPT,
        "nc db 6379 </dev/null > /tmp/reply.txt; head -n 1 /tmp/reply.txt\n",
    );
    assert_ok(&reach);
    assert!(reach.stdout_text().contains("hello from"), "{}", show(&reach));
    live.finish();
}

#[test]
fn docker_user_runs_a_whole_job_through_docker_exec_and_its_checkout_is_writable() {
    let e = E2e::with_config_edit("user-exec", |t| {
        t.replace("[stage_runner]", "[stage_runner]\nmode = \"off\"")
    });
    assert!(
        std::fs::read_to_string(&e.config).unwrap().contains("mode = \"off\""),
        "the stand-in's executor config has a [stage_runner] table to turn the runner off in"
    );
    let job = e
        .job()
        .image(Image::new(&e.standin.images.build).docker_user("1234:5678"))
        .script([
            "echo \"build-ids=$(id -u):$(id -g)\"",
            "touch written-by-the-build",
            "ls -n written-by-the-build",
        ]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    assert!(!log.contains("stage runners up"), "every stage is a Docker exec: {log}");
    let build = outcome.stage(stages::BUILD_SCRIPT).expect("build_script ran");
    let out = build.stdout_text();
    assert!(out.contains("build-ids=1234:5678"), "{}", show(build));
    assert!(
        out.lines()
            .any(|l| l.contains(" 1234 ") && l.contains(" 5678 ") && l.ends_with("written-by-the-build")),
        "the build user wrote into its checkout: {}",
        show(build)
    );
    e.assert_tasks_stopped(&job, 1);
}

/// prepare failed as the job's failure, saying every one of `parts`; nothing was registered,
/// run or left behind.
fn assert_refused_before_anything_exists(e: &E2e, job: &JobSpec, mark: u64, parts: &[&str]) {
    let (mut r, prepare) = e.prepare(job);
    assert!(prepare.is_build_failure(BUILD_FAILURE), "{}", show(&prepare));
    let err = prepare.stderr_text();
    for part in parts {
        assert!(err.contains(part), "prepare says {part:?}: {}", show(&prepare));
    }
    assert_ok(&r.cleanup());
    assert!(e.tasks_of(job).is_empty(), "no task: {:?}", e.tasks_of(job));
    for action in ["RegisterTaskDefinition", "RunTask"] {
        assert!(
            e.own_calls_since(mark, action).is_empty(),
            "no {action}: {}",
            show(&prepare)
        );
    }
}

#[test]
fn a_platform_the_cluster_has_no_instance_of_fails_before_anything_is_registered_or_run() {
    let e = E2e::new("platform-lacking");
    let (other, other_arch) = other_platform();
    let mark = e.standin.request_mark();
    let job = e
        .job()
        .image(Image::new(&e.standin.images.build).docker_platform(other));
    let cluster = format!("cluster {} has no container instance", e.standin.cluster);
    let attribute = format!("ecs.cpu-architecture = {other_arch}");
    assert_refused_before_anything_exists(
        &e,
        &job,
        mark,
        &[
            other,
            "image: docker: platform:",
            &cluster,
            &attribute,
            "nothing was started",
        ],
    );
}

#[test]
fn platforms_ecs_cannot_place_or_that_disagree_are_the_jobs_failure() {
    let e = E2e::new("platform-bad");
    let mark = e.standin.request_mark();
    let build = e.standin.images.build.clone();
    let riscv = e.job().image(Image::new(&build).docker_platform("linux/riscv64"));
    assert_refused_before_anything_exists(
        &e,
        &riscv,
        mark,
        &["image: docker: platform: is \"linux/riscv64\"", "x86_64 or arm64"],
    );
    let disagree = e
        .job()
        .image(Image::new(&build).docker_platform("linux/amd64"))
        .service(Image::new(ECHO).docker_platform("linux/arm64"));
    assert_refused_before_anything_exists(
        &e,
        &disagree,
        mark,
        &[
            "image: docker: platform: \"linux/amd64\"",
            "services[0] (ecs-executor-test/svc-echo:1): docker: platform: \"linux/arm64\"",
            "must agree",
        ],
    );
}

#[test]
fn platforms_place_the_task_on_instances_of_that_architecture() {
    let own = OwnCluster::start_with_arches("platform", &["x86_64", "arm64"]);
    let (x86, arm) = (own.instances[0].clone(), own.instances[1].clone());
    let e = E2e::with_config_edit("platform-place", own.config_edit());
    let build = e.standin.images.build.clone();

    let mut tasks = Vec::new();
    for (platform, instance) in [("linux/amd64", &x86), ("linux/arm64/v8", &arm)] {
        let job = e.job().image(Image::new(&build).docker_platform(platform));
        let mut live = e.start(job);
        let task = live.task();
        assert_eq!(
            task.container_instance_arn(),
            Some(instance.container_instance_arn.as_str()),
            "{platform}: placed on the {} instance",
            if std::ptr::eq(instance, &x86) {
                "x86_64"
            } else {
                "arm64"
            }
        );
        let stage = live.stage(stages::BUILD_SCRIPT, "echo ran-on-the-platform\n");
        assert_ok(&stage);
        assert!(stage.stdout_text().contains("ran-on-the-platform"), "{}", show(&stage));
        live.finish();
        tasks.push(task);
    }
    let expressions = placement_expressions(&e, &tasks[0]);
    assert_eq!(expressions, ["attribute:ecs.cpu-architecture == x86_64"]);
    assert_eq!(
        placement_expressions(&e, &tasks[1]),
        ["attribute:ecs.cpu-architecture == arm64"]
    );
    // Another platform, another definition (reuse per image and platform: unit
    // `task::tests::docker_user_and_platform_shape_the_definition_and_its_hash`).
    assert_ne!(tasks[0].task_definition_arn(), tasks[1].task_definition_arn());
}
