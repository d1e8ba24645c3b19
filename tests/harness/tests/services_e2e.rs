//! CI services and the helper container end to end: whole jobs through the built binary,
//! driven as gitlab-runner drives it, against the local ECS stand-in. The service images are
//! built by `tests/local-ecs/images/services.sh` (busybox, `docker import`):
//! `svc-echo` answers every TCP connection with its hostname, argv and environment;
//! `svc-silent` never opens its exposed port.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ecs_executor_tests::runner::{Image, JobOutcome, JobSpec, JobStatus, StageResult, Variable, stages};
use support::{E2e, assert_ok, show, top_level};

const ECHO: &str = "ecs-executor-test/svc-echo:1";
const SILENT: &str = "ecs-executor-test/svc-silent:1";
const HELPER_RUNNER: &str = "ecs-executor-test/helper-runner:1";

/// A config edit appending keys to the `[services]` table (the stand-in's config has none).
fn services_table(keys: &str) -> impl FnOnce(String) -> String {
    let keys = keys.to_string();
    move |text| format!("{text}\n[services]\n{keys}\n")
}

/// Runs `job` to success; its build script printed `<name>: hello from ...` (svc-echo's
/// answer) for every one of `names`. Returns the outcome and the build_script call.
fn run_reaching(e: &E2e, job: &ecs_executor_tests::runner::JobSpec, names: &[&str]) -> (JobOutcome, StageResult) {
    let outcome = e.runner(job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    let build = outcome.stage(stages::BUILD_SCRIPT).expect("build_script ran").clone();
    for name in names {
        assert!(
            build.stdout_text().contains(&format!("{name}: hello from ")),
            "{name} is reachable:\n{}",
            show(&build)
        );
    }
    (outcome, build)
}

#[test]
fn a_job_reaches_its_services_by_every_alias_and_derived_name_and_no_variable_reaches_ecs() {
    let e = E2e::new("svc-reach");
    let mark = e.standin.request_mark();
    let masked_public = format!("mp-{}", ecs_executor_tests::standin::unique_name("v"));
    let settings_secret = format!("ss-{}", ecs_executor_tests::standin::unique_name("v"));
    let service_secret = format!("sv-{}", ecs_executor_tests::standin::unique_name("v"));
    let job = e
        .job()
        .variable("JOB_PUBLIC", "job-public-value")
        // A masked variable the job exposes (public): services get it, ECS must never see it.
        .add_variable(Variable::new("MASKED_PUBLIC", &masked_public).masked().public(true))
        // A project-settings variable (not public): GitLab passes it to no service.
        .masked_variable("SETTINGS_SECRET", &settings_secret)
        .service(
            Image::new(ECHO)
                // A dotted alias cannot be an ECS link: it reaches /etc/hosts instead.
                .alias("db,pg db.svc.local")
                .variable("SERVICE_GREETING", "hi-from-db")
                .variable("SERVICE_TOKEN", &service_secret)
                .variable("FROM_JOB", "$JOB_PUBLIC-expanded"),
        )
        // The same image again under other names, on another port (command override too).
        .service(
            Image::new(ECHO)
                .alias("other")
                .command(["--second"])
                .variable("PORT", "7001")
                .variable("HEALTHCHECK_TCP_PORT", "7001"),
        )
        .script([
            "for h in db pg db.svc.local ecs-executor-test__svc-echo ecs-executor-test-svc-echo; do",
            // Whole replies to files: `nc | head` would end in SIGPIPE under pipefail.
            "  nc \"$h\" 6379 </dev/null > \"reply-$h.txt\"; printf '%s: ' \"$h\"; head -n 1 \"reply-$h.txt\"",
            "done",
            "nc db 6379 </dev/null > db.txt",
            "grep '^args: --from-image-cmd$' db.txt",
            "grep '^env: SERVICE_GREETING=hi-from-db$' db.txt",
            "grep '^env: FROM_JOB=job-public-value-expanded$' db.txt",
            "grep '^env: JOB_PUBLIC=job-public-value$' db.txt",
            "echo \"masked-public-seen=$(grep -c \"^env: MASKED_PUBLIC=$MASKED_PUBLIC\\$\" db.txt)\"",
            "echo \"settings-secret-seen=$(grep -c SETTINGS_SECRET db.txt)\"",
            "printf 'other: '; nc other 7001 </dev/null > other.txt; head -n 2 other.txt",
            "grep '^args: --second$' other.txt",
        ]);
    let (outcome, build) = run_reaching(
        &e,
        &job,
        &[
            "db",
            "pg",
            "db.svc.local",
            "ecs-executor-test__svc-echo",
            "ecs-executor-test-svc-echo",
            "other",
        ],
    );
    let out = build.stdout_text();
    assert!(out.contains("masked-public-seen=1"), "{}", show(&build));
    assert!(out.contains("settings-secret-seen=0"), "{}", show(&build));
    // The second service has its own container: another hostname answers there.
    let first_host = line_after(&out, "db: hello from ");
    let other_host = line_after(&out, "other: hello from ");
    assert_ne!(first_host, other_host, "two containers:\n{}", show(&build));
    let prepare = &outcome.calls[1];
    assert!(
        prepare.stderr_text().contains("already belongs to an earlier service"),
        "the duplicate derived names are skipped with a note:\n{}",
        show(prepare)
    );
    assert!(
        prepare.stdout_text().contains("services: 2 of 2 up"),
        "{}",
        show(prepare)
    );

    // Nothing secret, and no variable at all, went to ECS (every call since the test began,
    // the task definition included).
    for r in e.standin.requests_since(mark) {
        for value in [
            &masked_public,
            &settings_secret,
            &service_secret,
            &"hi-from-db".to_string(),
        ] {
            assert!(
                !r.body.contains(value.as_str()),
                "{value} reached ECS in {:?}: {}",
                r.action,
                r.body
            );
        }
    }
    let tasks = e.assert_tasks_stopped(&job, 1);
    let td_arn = tasks[0].task_definition_arn().unwrap().to_string();
    let td = e.block_on(e.ecs.describe_task_definition().task_definition(&td_arn).send());
    let td = format!("{:?}", td.expect("DescribeTaskDefinition").task_definition());
    for value in [&masked_public, &settings_secret, &service_secret] {
        assert!(!td.contains(value.as_str()), "{value} is in the task definition: {td}");
    }
    assert!(!td.contains("SERVICE_GREETING") && !td.contains("JOB_PUBLIC"), "{td}");
}

fn line_after(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {text}"))
        .to_string()
}

#[test]
fn a_service_that_never_opens_its_port_is_a_warning_with_its_logs_and_the_job_runs() {
    let e = E2e::with_config_edit("svc-silent", services_table("wait_timeout_secs = 3"));
    let job = e
        .job()
        .service(
            Image::new(SILENT)
                .alias("quiet")
                .variable("SILENT_SECRET", "not-secret-at-all"),
        )
        .masked_variable("MY_TOKEN", "tok-abcdef-123456")
        .script(["echo the-job-ran"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    let prepare = &outcome.calls[1];
    let said = prepare.stderr_text();
    assert!(
        said.contains(&format!(
            "*** WARNING: Service {SILENT} (container svc-0, alias quiet) probably didn't start properly"
        )),
        "{}",
        show(prepare)
    );
    assert!(said.contains("port 7777/tcp of "), "{}", show(prepare));
    assert!(
        said.contains("did not accept a connection within 3 s"),
        "{}",
        show(prepare)
    );
    // Its own logs, as the service wrote them.
    assert!(
        said.contains("svc-silent: starting but never listening on 7777"),
        "{}",
        show(prepare)
    );
    assert!(
        said.contains("svc-silent: secret is not-secret-at-all"),
        "{}",
        show(prepare)
    );
    assert!(
        prepare.stdout_text().contains("services: 0 of 1 up"),
        "{}",
        show(prepare)
    );
    assert!(log.contains("the-job-ran"), "{log}");
    e.assert_tasks_stopped(&job, 1);
}

#[test]
fn too_many_services_are_refused_before_any_task_runs() {
    let e = E2e::with_config_edit("svc-max", services_table("max_per_job = 1"));
    let job = e
        .job()
        .service(Image::new(ECHO).alias("a"))
        .service(Image::new(ECHO).alias("b"))
        .script(["echo never-runs"]);
    refused_before_any_task(&e, &job, &["the job has 2 services; this runner allows at most 1"]);
}

#[test]
fn a_service_image_outside_the_allowlist_is_refused() {
    let e = E2e::with_config_edit(
        "svc-allow",
        services_table("allowed_images = [\"ecs-executor-test/svc-echo:*\"]"),
    );
    let job = e
        .job()
        .service(Image::new(ECHO).alias("fine"))
        .service(Image::new(SILENT).alias("refused"))
        .script(["echo never-runs"]);
    refused_before_any_task(
        &e,
        &job,
        &[&format!(
            "service image \"{SILENT}\" is not allowed on this runner (allowed: ecs-executor-test/svc-echo:*)"
        )],
    );
}

/// Runs `job`, which prepare refuses (once: a build failure, not retried) saying every one
/// of `said`, before any task runs: no task definition of this test's family registered and
/// no task run for it while the job ran.
fn refused_before_any_task(e: &E2e, job: &JobSpec, said: &[&str]) {
    let mark = e.standin.request_mark();
    let outcome = e.runner(job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 1 }, "{log}");
    assert_eq!(outcome.prepare_attempts, 1, "a build failure is not retried: {log}");
    let prepare = &outcome.calls[1];
    for part in said {
        assert!(prepare.stderr_text().contains(part), "{part:?}: {}", show(prepare));
    }
    assert!(e.tasks_of(job).is_empty(), "no task ran");
    for r in e.standin.requests_since(mark) {
        let write = matches!(r.action.as_deref(), Some("RegisterTaskDefinition" | "RunTask"));
        assert!(
            !(write && r.body.contains(&e.family_prefix)),
            "{:?} for this test: {}",
            r.action,
            r.body
        );
    }
}

/// `git daemon` serving one bare repository on the host's Docker bridge address (as the
/// task's containers reach the host); killed on drop.
struct GitServer {
    child: Child,
    url: String,
    sha: String,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = support::run_ok(
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The host's address on the Docker bridge the task's containers are attached to: the IPv4
/// address of the bridge network's interface (`com.docker.network.bridge.name`, `docker0` by
/// default). Not the network's IPAM gateway: on a daemon's first start its IPAM config need
/// not list one, while the interface always has its address.
fn bridge_host_address(e: &E2e) -> String {
    let docker = e.standin.docker();
    let net = e
        .block_on(docker.inspect_network("bridge", None::<bollard::query_parameters::InspectNetworkOptions>))
        .expect("inspect the bridge network");
    let interface = net
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned()
        .unwrap_or_else(|| "docker0".to_string());
    support::interface_ipv4(&interface)
        .unwrap_or_else(|| panic!("the bridge network's interface {interface} has no IPv4 address"))
        .to_string()
}

fn serve_repository(e: &E2e) -> GitServer {
    let root = e.dir.join("git");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.txt"), "checked out through the helper\n").unwrap();
    git(&work, &["add", "README.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&root, &["clone", "-q", "--bare", "work", "repo.git"]);
    let host = bridge_host_address(e);
    let port = TcpListener::bind((host.as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            &format!("--listen={host}"),
            &format!("--port={port}"),
            &format!("--base-path={}", root.display()),
            &root.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    // Ready when it accepts connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect((host.as_str(), port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    GitServer {
        child,
        url: format!("git://{host}:{port}/repo.git"),
        sha,
    }
}

#[test]
fn a_build_image_without_git_gets_a_checkout_through_the_helper_writable_by_a_non_root_user() {
    let cache_host = std::env::temp_dir().join(ecs_executor_tests::standin::unique_name("svc-cache"));
    let cache_host_s = cache_host.display().to_string();
    let e = E2e::with_config_edit("svc-checkout", move |text| {
        let text = top_level(&text, &format!("cache_host_path = \"{cache_host_s}\""));
        text.replace(
            "helper_image = \"ecs-executor-test/helper:1\"",
            &format!("helper_image = \"{HELPER_RUNNER}\""),
        )
    });
    let server = serve_repository(&e);
    let job = e
        .job()
        .git(&server.url, &server.sha, "main")
        .script([
            "if command -v git; then echo build-image-has-git; exit 9; fi",
            "cat README.txt",
            // The build image's non-root user (uid 1000) changes what the helper wrote.
            "su build -s /bin/sh -c 'id -u && echo changed-by-build >> README.txt && mkdir made-by-build && rm -rf .git/hooks'",
            "tail -n 1 README.txt",
            "test -d /cache && echo cache-dir-mounted",
        ]);
    let mut r = e.prepared(&job);
    let get_sources = r.run(stages::GET_SOURCES).expect("get_sources runs");
    assert_ok(&get_sources);
    let build = r.run(stages::BUILD_SCRIPT).expect("the job has a script");
    assert_ok(&build);
    let out = build.stdout_text();
    assert!(out.contains("checked out through the helper"), "{}", show(&build));
    assert!(out.contains("1000\n"), "{}", show(&build));
    assert!(out.contains("changed-by-build"), "{}", show(&build));
    assert!(out.contains("cache-dir-mounted"), "{}", show(&build));
    // Cache and artifact stages find `gitlab-runner` (the helper image ships only
    // gitlab-runner-helper), and what they write to the cache dir outlives the task.
    let archive = r.run_script(
        "archive_cache",
        &support::stage_script(
            &r,
            "gitlab-runner cache-archiver --file /cache/p/cache.zip\necho kept > /cache/kept.txt\n",
        ),
    );
    assert_ok(&archive);
    assert!(
        archive
            .stdout_text()
            .contains("gitlab-runner-helper stand-in: cache-archiver --file /cache/p/cache.zip"),
        "{}",
        show(&archive)
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
    // One cache dir per project and protection level (the job is project 1, unprotected).
    let project_cache = cache_host.join("project-1").join("unprotected");
    assert_eq!(
        std::fs::read_to_string(project_cache.join("kept.txt")).ok().as_deref(),
        Some("kept\n"),
        "the cache dir is {} on the instance",
        project_cache.display()
    );
    let _ = std::fs::remove_dir_all(&cache_host);
}

#[test]
fn every_cache_and_artifact_stage_runs_in_the_helper_with_umask_0000_and_finds_gitlab_runner() {
    // gitlab-runner writes these stages as calls of `gitlab-runner cache-extractor`,
    // `artifacts-downloader`, `cache-archiver`, `artifacts-uploader`: each must run in the
    // helper container (as with the Docker executor), where the helper image ships only
    // `gitlab-runner-helper`.
    let e = E2e::with_config_edit("svc-helper-stages", |text| {
        text.replace(
            "helper_image = \"ecs-executor-test/helper:1\"",
            &format!("helper_image = \"{HELPER_RUNNER}\""),
        )
    });
    let mut live = e.start(e.job().script(["true"]));
    let helper_id = live.container_id("helper");
    for (stage, command) in [
        (stages::RESTORE_CACHE, "cache-extractor"),
        (stages::DOWNLOAD_ARTIFACTS, "artifacts-downloader"),
        (stages::ARCHIVE_CACHE, "cache-archiver"),
        (stages::ARCHIVE_CACHE_ON_FAILURE, "cache-archiver"),
        (stages::UPLOAD_ARTIFACTS_ON_SUCCESS, "artifacts-uploader"),
        (stages::UPLOAD_ARTIFACTS_ON_FAILURE, "artifacts-uploader"),
    ] {
        let call = live.stage(
            stage,
            &format!("echo \"{stage} in $(hostname) with umask $(umask)\"\ngitlab-runner {command} --id 7\n"),
        );
        assert_ok(&call);
        let out = call.stdout_text();
        assert!(
            out.contains(&format!("{stage} in {} with umask 0000", &helper_id[..12])),
            "{stage} runs in the helper container, umask 0000:\n{}",
            show(&call)
        );
        assert!(
            out.contains(&format!("gitlab-runner-helper stand-in: {command} --id 7")),
            "{stage} finds gitlab-runner:\n{}",
            show(&call)
        );
    }
    live.finish();
}

/// `awsvpc` mode: the agent stand-in puts all of the task's containers in one network
/// namespace (as ECS does with one ENI); every name resolves to 127.0.0.1 through /etc/hosts.
#[test]
fn in_awsvpc_mode_services_are_reached_by_every_name_on_localhost() {
    // A subnet and security group moto knows (the first ones: moto's default VPC, which has
    // DNS host names on, as moto's awsvpc RunTask needs).
    let standin = ecs_executor_tests::standin::Standin::require();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ec2 = rt.block_on(standin.ec2(3));
    let subnets = rt.block_on(ec2.describe_subnets().send()).expect("DescribeSubnets");
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    let groups = rt
        .block_on(ec2.describe_security_groups().send())
        .expect("DescribeSecurityGroups");
    let group = groups.security_groups()[0].group_id().unwrap().to_string();
    let e = E2e::with_config_edit("svc-awsvpc", move |text| {
        let text = top_level(&text, "network_mode = \"awsvpc\"");
        format!("{text}\n[awsvpc]\nsubnets = [\"{subnet}\"]\nsecurity_groups = [\"{group}\"]\n")
    });
    let job = e
        .job()
        .service(
            Image::new(ECHO)
                .alias("db db.svc.local")
                .variable("SERVICE_GREETING", "hi-awsvpc"),
        )
        // One namespace: the second service needs a port of its own.
        .service(
            Image::new(ECHO)
                .alias("other")
                .variable("PORT", "7001")
                .variable("HEALTHCHECK_TCP_PORT", "7001"),
        )
        .script([
            "for h in db db.svc.local ecs-executor-test__svc-echo ecs-executor-test-svc-echo; do",
            "  nc \"$h\" 6379 </dev/null > \"reply-$h.txt\"; printf '%s: ' \"$h\"; head -n 1 \"reply-$h.txt\"",
            "done",
            "grep '^env: SERVICE_GREETING=hi-awsvpc$' reply-db.txt",
            "nc other 7001 </dev/null > other.txt; printf 'other: '; head -n 1 other.txt",
            "grep '^127.0.0.1' /etc/hosts",
        ]);
    let (outcome, _) = run_reaching(
        &e,
        &job,
        &[
            "db",
            "db.svc.local",
            "ecs-executor-test__svc-echo",
            "ecs-executor-test-svc-echo",
            "other",
        ],
    );
    let log = outcome.log_text();
    assert!(outcome.calls[1].stdout_text().contains("services: 2 of 2 up"), "{log}");
    let tasks = e.assert_tasks_stopped(&job, 1);
    let td = e
        .block_on(
            e.ecs
                .describe_task_definition()
                .task_definition(tasks[0].task_definition_arn().unwrap())
                .send(),
        )
        .expect("DescribeTaskDefinition");
    let td = td.task_definition().unwrap();
    assert_eq!(td.network_mode().map(|m| m.as_str()), Some("awsvpc"));
    for c in td.container_definitions() {
        assert!(
            c.links().is_empty() && c.extra_hosts().is_empty(),
            "awsvpc takes neither: {c:?}"
        );
    }
}

#[test]
fn service_aliases_that_are_not_host_names_are_refused_before_any_task_runs() {
    // (Whitespace separates aliases, as in GitLab: `alias: db pg` is two.)
    for (name, alias) in [
        ("slash", "../etc"),
        ("shell", "db;rm"),
        ("long", &"a".repeat(64)[..]),
        ("ctl", "db\u{7}"),
    ] {
        let e = E2e::new(&format!("svc-alias-{name}"));
        let job = e
            .job()
            .service(Image::new(ECHO).alias(alias))
            .script(["echo never-runs"]);
        refused_before_any_task(&e, &job, &["is not a valid host name", &format!("{alias:?}")]);
    }
}
