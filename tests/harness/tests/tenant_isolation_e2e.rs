//! Tenant isolation (issue 12) end to end: one test per hole, each a job (or an admin command)
//! through the built binary against the local ECS stand-in, doing what a job author — or
//! another principal in the account — would do to reach another project's identity, caches,
//! secrets, task definitions or stage runner. Every test here fails on the executor before
//! the fixes (main at 02d3a8d) and passes after. To see both:
//!
//! ```text
//! cargo build -p ecs-executor && stage-runner/build-static      # this branch, same CARGO_TARGET_DIR
//! cargo test -p ecs-executor-tests --test tenant_isolation_e2e  # passes
//! ECS_EXECUTOR_BIN=<main's ecs-executor> TENANT_STAGE_RUNNER_BIN=<main's static stage runner> \
//!   cargo test -p ecs-executor-tests --test tenant_isolation_e2e  # every test fails
//! ```
//!
//! The later fixes fail on the executor of c05eb45 (the merge before them) and pass after: the
//! forged-token cleanup, the no-project cache and the plugin cache test
//! (`ECS_EXECUTOR_BIN=<c05eb45's ecs-executor>`), and the dind test, which depends on the
//! dind-services plugin only (build c05eb45's `plugins/dind-services` into
//! `$PLUGINS_TARGET_DIR` to see it fail).
//!
//! The setsid test depends on the stage runner binary only (`$TENANT_STAGE_RUNNER_BIN`, default
//! this branch's `build-static` output): the stand-in's config points at the one `up` built.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{TaskDefinitionField, TaskField};
use ecs_executor_tests::runner::{CallOutcome, Image, JobSpec, JobStatus, stages};
use ecs_executor_tests::standin::{cluster_with_instance, unique_name};
use support::{
    E2e, admin, assert_cancelled, assert_ok, container_processes, docker_exec, show, stage_script, started_by, text,
    top_level,
};

const ECHO: &str = "ecs-executor-test/svc-echo:1";
const SILENT: &str = "ecs-executor-test/svc-silent:1";

// ---- helpers ----------------------------------------------------------------------------

/// Stops, when dropped, every running task started under names the E2e safety net does not
/// know (a forged runner token's `startedBy`).
struct StopGuard<'a> {
    e: &'a E2e,
    started_by: Vec<String>,
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        for s in &self.started_by {
            for t in self.e.tasks_started_by(s) {
                if t.desired_status() == Some("RUNNING") {
                    let arn = t.task_arn().unwrap_or_default();
                    eprintln!("tenant e2e: stopping {arn} ({s}) left running");
                    self.e.standin.stop_task_blocking(arn, "tenant e2e cleanup");
                }
            }
        }
    }
}

/// The task's tags (DescribeTasks include TAGS).
fn task_tags(e: &E2e, task_arn: &str) -> BTreeMap<String, String> {
    let out = e
        .block_on(
            e.ecs
                .describe_tasks()
                .cluster(&e.standin.cluster)
                .tasks(task_arn)
                .include(TaskField::Tags)
                .send(),
        )
        .expect("DescribeTasks");
    out.tasks()
        .iter()
        .flat_map(|t| t.tags())
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn is_build_failure(call: &ecs_executor_tests::runner::StageResult) -> bool {
    matches!(call.outcome(), CallOutcome::BuildFailure { .. })
}

// ---- identity: project and runner token come from GitLab, not from the job --------------

#[test]
fn a_job_that_sets_ci_project_path_gets_its_own_projects_tag_on_its_task() {
    let e = E2e::new("forged-project");
    let job = e.job().variable("CI_PROJECT_PATH", "prod/deploy");
    let own = job.project_path().to_string();
    let (mut r, prepare) = e.prepare(&job);
    let tags = if prepare.is_success() {
        let task = e.running_task(&job);
        Some(task_tags(&e, task.task_arn().unwrap()))
    } else {
        None
    };
    assert_ok(&r.cleanup());
    e.assert_no_task_left(&job);
    assert_ok(&prepare);
    let tags = tags.unwrap();
    assert_eq!(
        tags.get("ecs-executor:project").map(String::as_str),
        Some(own.as_str()),
        "the project tag is GitLab's project, not the job's CI_PROJECT_PATH: {tags:#?}"
    );
}

#[test]
fn a_job_that_sets_ci_project_path_gets_its_own_projects_role_from_the_role_mapper() {
    let wasm = ecs_executor_test_components::plugin("role-mapper");
    let own_role = "arn:aws:iam::123456789012:role/own-project-ci";
    let prod_role = "arn:aws:iam::123456789012:role/prod-deploy";
    // E2e::job's project path: `e2e/<test name>`.
    let own = "e2e/forged-project-role";
    let settings = serde_json::json!({
        "roles": [
            {"project": "prod/deploy", "task_role_arn": prod_role},
            {"project": own, "task_role_arn": own_role},
        ]
    });
    let entries = plugins_config("roles", &wasm, &[], Some(settings));
    let e = E2e::with_config_edit("forged_project_role", move |t| format!("{t}\n{entries}"));
    let job = e.job().variable("CI_PROJECT_PATH", "prod/deploy");
    assert_eq!(job.project_path(), own);
    let (mut r, prepare) = e.prepare(&job);
    let role = if prepare.is_success() {
        let task = e.running_task(&job);
        let td = e
            .block_on(
                e.ecs
                    .describe_task_definition()
                    .task_definition(task.task_definition_arn().unwrap())
                    .send(),
            )
            .expect("DescribeTaskDefinition");
        td.task_definition().and_then(|t| t.task_role_arn()).map(String::from)
    } else {
        None
    };
    assert_ok(&r.cleanup());
    e.assert_no_task_left(&job);
    assert_ok(&prepare);
    assert_eq!(
        role.as_deref(),
        Some(own_role),
        "the job's own project's role, not prod/deploy's"
    );
}

#[test]
fn a_job_that_sets_ci_runner_short_token_is_refused_unless_the_config_names_the_runner_token() {
    let e = E2e::new("forged-token");
    let other = format!("oth{:x}", std::process::id());
    // 1. No token in the config: prepare refuses the job, naming the variable; no task under
    //    either token.
    let job = e.job().variable("CI_RUNNER_SHORT_TOKEN", &other);
    let forged = started_by(&other, job.id());
    let _guard = StopGuard {
        e: &e,
        started_by: vec![forged.clone()],
    };
    let (mut r, prepare) = e.prepare(&job);
    let forged_tasks = e.tasks_started_by(&forged);
    let own_tasks = e.tasks_of(&job);
    let cleanup = r.cleanup();
    e.assert_no_task_left(&job);
    assert!(
        forged_tasks.is_empty() && own_tasks.is_empty(),
        "no task for a job that forges the runner token: {forged_tasks:#?} {own_tasks:#?}\n{}",
        show(&prepare)
    );
    assert!(is_build_failure(&prepare), "{}", show(&prepare));
    assert!(
        prepare.stderr_text().contains("CI_RUNNER_SHORT_TOKEN"),
        "the message names the variable:\n{}",
        show(&prepare)
    );
    // Prepare started nothing, so cleanup has nothing to do: it ends OK (not a failed
    // cleanup in the job log), saying why.
    assert_ok(&cleanup);
    assert!(
        cleanup.stdout_text().contains("nothing to stop") && cleanup.stdout_text().contains("CI_RUNNER_SHORT_TOKEN"),
        "{}",
        show(&cleanup)
    );

    // 2. The config names this runner's token: the job runs, under that token.
    let config = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(
        &e.config,
        top_level(&config, &format!("runner_short_token = \"{}\"", e.runner_token)),
    )
    .unwrap();
    let job = e.job().variable("CI_RUNNER_SHORT_TOKEN", &other);
    let forged = started_by(&other, job.id());
    let _guard2 = StopGuard {
        e: &e,
        started_by: vec![forged.clone()],
    };
    let (mut r, prepare) = e.prepare(&job);
    let forged_tasks = e.tasks_started_by(&forged);
    let tags = if prepare.is_success() {
        Some(task_tags(&e, e.running_task(&job).task_arn().unwrap()))
    } else {
        None
    };
    assert_ok(&r.cleanup());
    e.assert_no_task_left(&job);
    assert_ok(&prepare);
    assert!(forged_tasks.is_empty(), "{forged_tasks:#?}");
    let tags = tags.unwrap();
    assert_eq!(
        tags.get("ecs-executor:runner").map(String::as_str),
        Some(e.runner_token.as_str()),
        "{tags:#?}"
    );
}

// ---- caches ----------------------------------------------------------------------------

#[test]
fn caches_are_per_project_and_per_protection_level_and_a_projects_next_job_finds_its_own() {
    let cache_host = std::env::temp_dir().join(unique_name("tenant-cache"));
    let cache_host_s = cache_host.display().to_string();
    let e = E2e::with_config_edit("cache-split", move |t| {
        top_level(&t, &format!("cache_host_path = \"{cache_host_s}\""))
    });
    let mark = unique_name("cached");
    // What the job finds, as `cache=[...]` (the command line gitlab-runner echoes has `[$(`).
    let look = "echo \"cache=[$(cat /cache/shared.txt 2>/dev/null)]\"";
    let build_out = |job: JobSpec| -> String {
        let outcome = e.runner(&job).run_job();
        let log = outcome.log_text();
        assert_eq!(outcome.status, JobStatus::Success, "{log}");
        e.assert_tasks_stopped(&job, 1);
        outcome
            .stage(stages::BUILD_SCRIPT)
            .expect("build_script ran")
            .stdout_text()
    };
    // Project A writes its cache.
    let out = build_out(
        e.job()
            .project_id(7101)
            .script([look, &format!("echo {mark} > /cache/shared.txt")]),
    );
    assert!(out.contains("cache=[]\n"), "a new cache dir is empty:\n{out}");
    // Project B neither sees it nor can poison it.
    let out = build_out(
        e.job()
            .project_id(7102)
            .script([look, "echo poisoned-by-b > /cache/shared.txt"]),
    );
    assert!(out.contains("cache=[]\n"), "project B sees project A's cache:\n{out}");
    // Project A on a protected ref has a cache of its own. (The harness's predefined
    // variables have no CI_COMMIT_REF_PROTECTED; as the first occurrence this one is GitLab's.)
    let out = build_out(
        e.job()
            .project_id(7101)
            .variable("CI_COMMIT_REF_PROTECTED", "true")
            .script([look, "echo protected > /cache/shared.txt"]),
    );
    assert!(
        out.contains("cache=[]\n"),
        "a protected job sees the unprotected cache:\n{out}"
    );
    // Project A's next unprotected job finds what it wrote, unchanged.
    let out = build_out(e.job().project_id(7101).script([look]));
    assert!(
        out.contains(&format!("cache=[{mark}]\n")),
        "project A's next job finds its cache:\n{out}"
    );
    // Jobs without a project id (0) have no trusted project to share with: each gets its own
    // `no-project/job-<id>`, not one `project-0` they would all share.
    let first = e.job().project_id(0);
    let first_id = first.id();
    let out = build_out(first.script([look, "echo from-a-job-without-project > /cache/shared.txt"]));
    assert!(out.contains("cache=[]\n"), "{out}");
    let out = build_out(e.job().project_id(0).script([look]));
    assert!(
        out.contains("cache=[]\n"),
        "a job without a project id sees another such job's cache:\n{out}"
    );
    let own = cache_host.join(format!("no-project/job-{first_id}/shared.txt"));
    assert!(
        std::fs::read_to_string(&own).is_ok_and(|t| t.contains("from-a-job-without-project")),
        "{} holds the first job's cache",
        own.display()
    );
    assert!(!cache_host.join("project-0").exists(), "no shared project-0 cache");
    let _ = std::fs::remove_dir_all(&cache_host);
}

// ---- secrets ---------------------------------------------------------------------------

#[test]
fn a_secrets_keyword_value_never_reaches_a_service_but_runner_internal_variables_do() {
    let e = E2e::new("secret-service");
    let secret = format!("vault-{}", unique_name("s"));
    let job = e
        .job()
        // As the `secrets:` keyword gives it: CUSTOM_ENV_DB_PASSWORD only, not in the job response.
        .runner_environment("DB_PASSWORD", &secret)
        .variable("JOB_PUBLIC", "job-public-value")
        .service(Image::new(ECHO).alias("svc"))
        .script([
            "nc svc 6379 </dev/null > svc.txt",
            "echo \"secret-in-service=$(grep -c -F \"$DB_PASSWORD\" svc.txt)\"",
            "echo \"name-in-service=$(grep -c '^env: DB_PASSWORD=' svc.txt)\"",
            "echo \"builds-dir-in-service=$(grep -c '^env: CI_BUILDS_DIR=' svc.txt)\"",
            "echo \"public-in-service=$(grep -c '^env: JOB_PUBLIC=job-public-value$' svc.txt)\"",
            "echo \"job-secret-length=${#DB_PASSWORD}\"",
        ]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    e.assert_tasks_stopped(&job, 1);
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    let out = outcome
        .stage(stages::BUILD_SCRIPT)
        .expect("build_script ran")
        .stdout_text();
    assert!(
        out.contains("secret-in-service=0"),
        "the secret reached the service:\n{out}"
    );
    assert!(
        out.contains("name-in-service=0"),
        "the secret's name reached the service:\n{out}"
    );
    assert!(
        out.contains("builds-dir-in-service=1"),
        "runner-internal variables still do:\n{out}"
    );
    assert!(
        out.contains("public-in-service=1"),
        "public job variables still do:\n{out}"
    );
    assert!(
        out.contains(&format!("job-secret-length={}\n", secret.len())),
        "the job's own script gets it:\n{out}"
    );
    assert!(!log.contains(&secret), "the secret is in the job log:\n{log}");
}

/// svc-silent never opens its port and prints `svc-silent: secret is $SILENT_SECRET`; prepare's
/// warning about it shows the service's logs in the job log.
#[test]
fn a_secrets_keyword_value_is_not_in_the_job_log_when_a_failing_services_logs_are_shown() {
    let e = E2e::with_config_edit("secret-warning", |t| {
        format!("{t}\n[services]\nwait_timeout_secs = 3\n")
    });
    // 1. The secret is named like a variable the service prints: it must not get it.
    let secret = format!("vault-{}", unique_name("w"));
    let job = e
        .job()
        .runner_environment("SILENT_SECRET", &secret)
        .service(Image::new(SILENT).alias("quiet"))
        .script(["echo the-job-ran"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    e.assert_tasks_stopped(&job, 1);
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    assert!(
        log.contains("probably didn't start properly"),
        "the warning is shown:\n{log}"
    );
    assert!(!log.contains(&secret), "the secret is in the job log:\n{log}");
    // 2. The service knows the value by other means (here its own variable): the warning's
    //    copy of its logs is redacted.
    let secret = format!("vault-{}", unique_name("w"));
    let job = e
        .job()
        .runner_environment("DB_PASSWORD", &secret)
        .service(Image::new(SILENT).alias("quiet").variable("SILENT_SECRET", &secret))
        .script(["echo the-job-ran"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    e.assert_tasks_stopped(&job, 1);
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    assert!(
        log.contains("svc-silent: secret is [MASKED]"),
        "the service's log line, redacted:\n{log}"
    );
    assert!(!log.contains(&secret), "the secret is in the job log:\n{log}");
}

// ---- check: instance metadata ------------------------------------------------------------

#[test]
fn check_fails_an_instance_whose_metadata_service_takes_optional_tokens_naming_it_and_the_fix() {
    let e = E2e::new("check-imds");
    let cluster = unique_name("tenant-imds");
    let instance_id = e.block_on(async {
        let ec2 = e.standin.ec2(3).await;
        let out = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .instance_type(aws_sdk_ec2::types::InstanceType::C5Xlarge)
            .metadata_options(
                aws_sdk_ec2::types::InstanceMetadataOptionsRequest::builder()
                    .http_tokens(aws_sdk_ec2::types::HttpTokensState::Optional)
                    .http_put_response_hop_limit(1)
                    .http_endpoint(aws_sdk_ec2::types::InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("RunInstances");
        let id = out.instances()[0].instance_id().unwrap().to_string();
        let ci = cluster_with_instance(&e.ecs, &cluster, &id).await;
        (id, ci)
    });
    let (instance_id, container_instance) = instance_id;
    // The instance goes when the test ends (the cluster, named uniquely, may stay).
    struct Gone<'a>(&'a E2e, String, String, String);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let Gone(e, cluster, ci, id) = self;
            e.block_on(async {
                let _ = e
                    .ecs
                    .deregister_container_instance()
                    .cluster(cluster.as_str())
                    .container_instance(ci.as_str())
                    .force(true)
                    .send()
                    .await;
                let _ = e
                    .standin
                    .ec2(3)
                    .await
                    .terminate_instances()
                    .instance_ids(id.as_str())
                    .send()
                    .await;
            });
        }
    }
    let _gone = Gone(&e, cluster.clone(), container_instance, instance_id.clone());
    let text_ = std::fs::read_to_string(&e.config).unwrap();
    let ours = e.dir.join("imds-optional.toml");
    std::fs::write(
        &ours,
        text_.replace(
            &format!("cluster = \"{}\"", e.standin.cluster),
            &format!("cluster = \"{cluster}\""),
        ),
    )
    .unwrap();
    let out = admin(&ours, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let fail = stdout
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains(&instance_id) && l.contains("HttpTokens=optional"));
    let fail = fail.unwrap_or_else(|| {
        panic!(
            "a FAIL line names {instance_id} and HttpTokens=optional:\n{}",
            text(&out)
        )
    });
    let fix = stdout.lines().nth(fail + 1).unwrap_or_default();
    assert!(
        fix.contains("fix:")
            && fix.contains(&format!("modify-instance-metadata-options --instance-id {instance_id}"))
            && fix.contains("--http-tokens required"),
        "the fix names the instance and the command:\n{}",
        text(&out)
    );

    // The stand-in's own instance (IMDSv2 only, one hop) passes that check.
    let out = admin(&e.config, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = format!(
        "ok   instance {} metadata options: HttpTokens=required",
        e.standin.instance_id
    );
    assert!(
        stdout.lines().any(|l| l.starts_with(&line)),
        "{line:?} in:\n{}",
        text(&out)
    );
}

// ---- task definitions: what runs is what this host built ---------------------------------

#[test]
fn a_planted_task_definition_revision_with_our_content_tag_is_never_used() {
    let e = E2e::new("planted-td");
    // 1. A job registers the family's revision.
    let first = e.job();
    let (mut r, prepare) = e.prepare(&first);
    assert_ok(&prepare);
    let ours = e.running_task(&first).task_definition_arn().unwrap().to_string();
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&first, 1);

    // 2. Someone else allowed to register task definitions copies it — family, tags and all —
    //    with another build image.
    let planted = e.block_on(async {
        let described = e
            .ecs
            .describe_task_definition()
            .task_definition(&ours)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .expect("DescribeTaskDefinition");
        let td = described.task_definition().unwrap();
        let containers: Vec<_> = td
            .container_definitions()
            .iter()
            .cloned()
            .map(|mut c| {
                if c.name() == Some("build") {
                    // A trojaned build image (the stand-in's helper image stands in for it).
                    c.image = Some(e.standin.images.helper.clone());
                    let mut env = c.environment.take().unwrap_or_default();
                    env.push(
                        aws_sdk_ecs::types::KeyValuePair::builder()
                            .name("PLANTED")
                            .value("yes")
                            .build(),
                    );
                    c.environment = Some(env);
                }
                c
            })
            .collect();
        let out = e
            .ecs
            .register_task_definition()
            .family(td.family().unwrap())
            .set_container_definitions(Some(containers))
            .set_volumes(Some(td.volumes().to_vec()))
            .set_network_mode(td.network_mode().cloned())
            .set_cpu(td.cpu().map(String::from))
            .set_memory(td.memory().map(String::from))
            .set_requires_compatibilities(Some(td.requires_compatibilities().to_vec()))
            .set_task_role_arn(td.task_role_arn().map(String::from))
            .set_execution_role_arn(td.execution_role_arn().map(String::from))
            .set_placement_constraints(Some(td.placement_constraints().to_vec()))
            .set_tags(Some(described.tags().to_vec()))
            .send()
            .await
            .expect("RegisterTaskDefinition (planted)");
        out.task_definition()
            .unwrap()
            .task_definition_arn()
            .unwrap()
            .to_string()
    });
    assert_ne!(planted, ours);

    // 3. The next job runs a revision this host registered, not the planted one.
    let next = e.job();
    let (mut r, prepare) = e.prepare(&next);
    let used = if prepare.is_success() {
        Some(e.running_task(&next).task_definition_arn().unwrap().to_string())
    } else {
        None
    };
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&next, 1);
    let _ = e.block_on(e.ecs.deregister_task_definition().task_definition(&planted).send());
    let planted_name = planted.rsplit('/').next().unwrap();
    assert!(
        !prepare.stdout_text().contains(planted_name),
        "prepare used the planted revision {planted_name}:\n{}",
        show(&prepare)
    );
    assert_ok(&prepare);
    let used = used.unwrap();
    assert_ne!(used, planted, "the job ran the planted revision");
    let td = e
        .block_on(e.ecs.describe_task_definition().task_definition(&used).send())
        .expect("DescribeTaskDefinition");
    let build = td
        .task_definition()
        .unwrap()
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some("build"))
        .cloned()
        .expect("a build container");
    assert_eq!(build.image(), Some(e.standin.images.build.as_str()), "{build:#?}");
    assert!(!format!("{build:?}").contains("PLANTED"), "{build:#?}");
}

// ---- the state dir ---------------------------------------------------------------------

#[test]
fn a_state_dir_or_parent_others_can_write_is_refused_by_prepare_and_no_task_starts() {
    let e = E2e::new("state-writable");
    let cases: [(&str, &Path, u32, u32); 2] = [
        // (what, the dir made writable, its mode, the state dir's mode)
        ("the state dir", &e.state_dir, 0o777, 0o777),
        ("its parent", &e.dir, 0o777, 0o700),
    ];
    for (what, dir, mode, state_mode) in cases {
        std::fs::create_dir_all(&e.state_dir).unwrap();
        std::fs::set_permissions(&e.state_dir, std::fs::Permissions::from_mode(state_mode)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let job = e.job();
        let (mut r, prepare) = e.prepare(&job);
        let tasks = e.tasks_of(&job);
        // Back to private before cleanup (and before any assertion can fail).
        std::fs::set_permissions(&e.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&e.state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let _ = r.cleanup();
        e.assert_no_task_left(&job);
        assert!(!prepare.is_success(), "{what} writable by others: {}", show(&prepare));
        assert!(
            tasks.is_empty(),
            "{what} writable by others: a task started: {tasks:#?}"
        );
        let said = prepare.stderr_text() + &prepare.stdout_text();
        assert!(
            said.contains(&format!("{} is writable by group or others", dir.display())) && said.contains("chmod go-w"),
            "{what}: the message names the dir and the fix:\n{}",
            show(&prepare)
        );
    }
}

// ---- Docker-in-Docker (a privileged service) ----------------------------------------------

/// The dind example plugin through `plan` (prepare's own code without AWS; the stand-in's
/// Docker refuses privileged containers, so the task itself cannot start here): with default
/// settings its daemon has TLS on, with the certificates in the job's own builds volume, and a
/// job's `entrypoint:`/`command:` for the service are not what the privileged container runs.
#[test]
fn a_dind_service_has_tls_on_and_never_runs_the_jobs_entrypoint_or_command_privileged() {
    let wasm = ecs_executor_test_components::plugin("dind-services");
    let entries = plugins_config("dind", &wasm, &["privileged"], None);
    let e = E2e::with_config_edit("dind-privileged", move |t| format!("{t}\n{entries}"));
    let evil = "mount /dev/vda1 /mnt && cat /mnt/etc/shadow";
    let response = e.dir.join("response.json");
    let body = serde_json::json!({
        "id": 8,
        "image": {"name": e.standin.images.build},
        "services": [{
            "name": "docker:27-dind", "alias": "docker",
            "entrypoint": ["sh", "-c"], "command": [evil],
        }],
        "variables": [{"key": "CI_PROJECT_PATH", "value": "g/p", "public": true}],
    });
    std::fs::write(&response, body.to_string()).unwrap();
    let out = admin(&e.config, &["plan", "--job-response", &response.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan prints JSON");
    let containers = plan["register_task_definition"]["containerDefinitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan:#}"))
        .clone();
    let dind = containers
        .iter()
        .find(|c| c["image"] == "docker:27-dind")
        .unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(dind["privileged"], true, "{dind:#}");
    assert!(
        !dind.to_string().contains(evil),
        "the job's command reached the privileged container: {dind:#}"
    );
    assert!(
        dind["entryPoint"].is_null() || dind["entryPoint"].as_array().is_some_and(|a| a.is_empty()),
        "the image's own entry point: {dind:#}"
    );
    let certdir = dind["environment"]
        .as_array()
        .and_then(|env| env.iter().find(|kv| kv["name"] == "DOCKER_TLS_CERTDIR"))
        .and_then(|kv| kv["value"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(certdir, "/builds/.dind-certs/docker", "TLS on by default: {dind:#}");
    assert!(
        dind["mountPoints"].as_array().is_some_and(|m| m
            .iter()
            .any(|m| m["sourceVolume"] == "builds" && m["containerPath"] == "/builds")),
        "the certificates go to the job's own builds volume: {dind:#}"
    );
    let build = containers.iter().find(|c| c["name"] == "build").unwrap();
    assert!(
        build["mountPoints"].as_array().is_some_and(|m| m
            .iter()
            .any(|m| m["sourceVolume"] == "builds" && m["containerPath"] == "/builds")),
        "build sees the same volume at the same path: {build:#}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("entrypoint and command are ignored")
            && said.contains("DOCKER_CERT_PATH=/builds/.dind-certs/docker/client"),
        "the job log says what was ignored and how to connect:\n{}",
        text(&out)
    );
}

// ---- the compiled plugin cache ---------------------------------------------------------

#[test]
fn a_compiled_plugin_others_could_have_written_is_never_loaded_and_prepare_says_which_file() {
    let wasm = ecs_executor_test_components::plugin("role-mapper");
    let settings = serde_json::json!({
        "roles": [{"project": "nobody/here", "task_role_arn": "arn:aws:iam::123456789012:role/none"}]
    });
    let entries = plugins_config("roles", &wasm, &[], Some(settings));
    let e = E2e::with_config_edit("plugin-cache-mode", move |t| format!("{t}\n{entries}"));
    // A whole job (config, prepare, cleanup) that must pass.
    let job_passes = || {
        let job = e.job();
        let mut r = e.runner(&job);
        assert_ok(&r.config());
        let prepare = r.prepare();
        assert_ok(&r.cleanup());
        assert_ok(&prepare);
        job
    };
    // 1. A job compiles the plugin into the cache (<state_dir>/plugin-cache).
    job_passes();
    let cache = e.state_dir.join("plugin-cache");
    let cwasm: Vec<std::path::PathBuf> = std::fs::read_dir(&cache)
        .unwrap_or_else(|err| panic!("{}: {err}", cache.display()))
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cwasm.len(), 1, "{cwasm:?}");
    let cwasm = &cwasm[0];

    // 2. The compiled file becomes writable by others (as if someone could have replaced
    //    its code): the next prepare refuses to load it, naming it and the fix; no task.
    std::fs::set_permissions(cwasm, std::fs::Permissions::from_mode(0o666)).unwrap();
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let prepare = r.prepare();
    let tasks = e.tasks_of(&job);
    let _ = r.cleanup();
    e.assert_no_task_left(&job);
    assert!(tasks.is_empty(), "a task started: {tasks:#?}");
    assert!(prepare.is_system_failure(), "{}", show(&prepare));
    let said = prepare.stderr_text() + &prepare.stdout_text();
    assert!(
        said.contains(&cwasm.display().to_string())
            && said.contains("writable by group or others")
            && said.contains("Remove it"),
        "the message names the file, what is wrong and the fix:\n{}",
        show(&prepare)
    );
    assert_eq!(
        std::fs::metadata(cwasm).unwrap().permissions().mode() & 0o777,
        0o666,
        "the file is left as found (not compiled over)"
    );

    // 3. As the message says: remove it, and the next job compiles the plugin again.
    std::fs::remove_file(cwasm).unwrap();
    let job = job_passes();
    e.assert_tasks_stopped(&job, 1);
}

// ---- the stage runner ------------------------------------------------------------------

#[test]
fn each_container_has_its_own_root_owned_stage_runner_copy_the_build_container_cannot_reach() {
    let e = E2e::new("runner-private");
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    let result = || {
        assert_ok(&prepare);
        assert!(prepare.stdout_text().contains("stage runners up"), "{}", show(&prepare));
        let builds_dir = r.state().dirs.as_ref().unwrap().builds_dir.clone();
        let arn = e.running_task(&job).task_arn().unwrap().to_string();
        let build = e.container_id(&arn, "build");
        let helper = e.container_id(&arn, "helper");
        let docker = e.standin.docker();
        // Nothing of the stage runner on the builds volume (shared by build and helper).
        let (_, found) = e
            .block_on(docker_exec(
                &docker,
                &build,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "find {builds_dir} -name '.ecs-executor-runner' -o -name 'ecs-executor-stage-runner*' -o -name '*.pem'; echo end-of-list"
                    ),
                ],
            ))
            .expect("docker exec");
        assert_eq!(
            found.trim(),
            "end-of-list",
            "the stage runner or its certificates are on the builds volume:\n{found}"
        );
        // The helper's copy is root's, and nobody else may write it.
        let (code, stat) = e
            .block_on(docker_exec(
                &docker,
                &helper,
                &["sh", "-c", "find /.ecs-executor-runner -exec stat -c '%u %a %n' {} +"],
            ))
            .expect("docker exec");
        assert_eq!(code, 0, "{stat}");
        let lines: Vec<&str> = stat.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("/.ecs-executor-runner/ecs-executor-stage-runner")),
            "{stat}"
        );
        for l in &lines {
            let mut parts = l.split_whitespace();
            let (uid, mode) = (parts.next().unwrap(), parts.next().unwrap());
            let mode = u32::from_str_radix(mode, 8).unwrap();
            assert!(uid == "0" && mode & 0o022 == 0, "not root's or writable by others: {l}");
        }
        // What the build container writes into its own copy's dir is not the helper's.
        let _ = e.block_on(docker_exec(
            &docker,
            &build,
            &["sh", "-c", "echo planted > /.ecs-executor-runner/planted-by-build"],
        ));
        let (code, _) = e
            .block_on(docker_exec(
                &docker,
                &helper,
                &["test", "!", "-e", "/.ecs-executor-runner/planted-by-build"],
            ))
            .expect("docker exec");
        assert_eq!(code, 0, "the build container reached the helper's stage runner dir");
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(result));
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The stage runner this branch builds (`stage-runner/build-static`); the stand-in serves
/// the one `up` built. `$TENANT_STAGE_RUNNER_BIN` overrides it (to run against another).
fn fixed_stage_runner() -> String {
    if let Ok(p) = std::env::var("TENANT_STAGE_RUNNER_BIN") {
        return p;
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/ecs-executor/target-tenant".into());
    let bin = format!("{target}/x86_64-unknown-linux-gnu/release/ecs-executor-stage-runner");
    assert!(
        Path::new(&bin).is_file(),
        "build it first: CARGO_TARGET_DIR={target} stage-runner/build-static ({bin} is missing)"
    );
    bin
}

#[test]
fn cancel_on_the_stage_runner_path_ends_a_process_the_stage_started_with_setsid() {
    let binary = fixed_stage_runner();
    let e = E2e::with_config_edit("cancel-setsid", move |t| {
        let mut out: Vec<String> = t
            .lines()
            .filter(|l| !l.trim_start().starts_with("binary ="))
            .map(str::to_string)
            .collect();
        // The stand-in's config ends with the [stage_runner] table.
        assert!(t.contains("[stage_runner]"), "{t}");
        out.push(format!("binary = \"{binary}\""));
        out.join("\n") + "\n"
    });
    let job = e.job();
    let (r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    assert!(prepare.stdout_text().contains("stage runners up"), "{}", show(&prepare));
    let arn = e.running_task(&job).task_arn().unwrap().to_string();
    let build = e.container_id(&arn, "build");
    let mut r = r.cancel_after(Duration::from_secs(3));
    let script = stage_script(
        &r,
        "setsid sleep 313 </dev/null >/dev/null 2>&1 &\nsleep 1\necho started\nsleep 60\n",
    );
    let call = r.run_script(stages::BUILD_SCRIPT, &script);
    let mut left = container_processes(&build, "sleep 313");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = container_processes(&build, "sleep 313");
    }
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
    assert_cancelled(&call);
    assert!(call.stdout_text().contains("started"), "{}", show(&call));
    assert!(
        !call.stderr_text().contains("using Docker exec"),
        "the stage ran through the stage runner: {}",
        show(&call)
    );
    assert!(
        left.is_empty(),
        "the setsid process outlived the cancelled stage: {left:?}"
    );
}

/// A `[[plugins]]` entry for the executor config: `name`, the component at `wasm`, its
/// `grants` and `settings`, as TOML to append to the stand-in's config.
fn plugins_config(name: &str, wasm: &std::path::Path, grants: &[&str], settings: Option<serde_json::Value>) -> String {
    let mut entry = toml::Table::new();
    entry.insert("name".into(), name.into());
    entry.insert("path".into(), wasm.display().to_string().into());
    if !grants.is_empty() {
        entry.insert(
            "grants".into(),
            toml::Value::Array(grants.iter().map(|g| (*g).into()).collect()),
        );
    }
    if let Some(settings) = settings {
        entry.insert(
            "settings".into(),
            serde_json::from_value::<toml::Table>(settings).unwrap().into(),
        );
    }
    let mut doc = toml::Table::new();
    doc.insert("plugins".into(), toml::Value::Array(vec![entry.into()]));
    format!("\n{}\n", toml::to_string(&doc).unwrap())
}
