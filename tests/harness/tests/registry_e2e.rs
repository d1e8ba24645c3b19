//! Private images with the job's own registry credentials (issue 13), end to end: the built
//! `ecs-executor` driven as gitlab-runner drives it, against the stand-in's private registry
//! (Debian's docker-registry with htpasswd auth on loopback, started and filled by
//! `tests/local-ecs/up`) and an agent stand-in that pulls as the ECS agent pulls: it reads the
//! task's `repositoryCredentials` secret from Secrets Manager (moto) and pulls with it.
//!
//! Each test runs its own cluster and agent stand-in with `ECS_IMAGE_PULL_BEHAVIOR=always`, so
//! that an image another test pulled (and the instance has cached) can never hide a refused
//! login, and its own executor config (with an execution role: ECS reads the secret with it).

mod support;

use ecs_executor_tests::runner::{Image, JobStatus, Variable};
use ecs_executor_tests::standin::{AgentProcess, Registry, Standin, cluster_with_instance, unique_name};
use support::{E2e, admin, assert_ok, show, text};

const EXECUTION_ROLE: &str = "arn:aws:iam::123456789012:role/ecs-executor-task-execution";

/// One test's cluster, agent stand-in and executor setup.
struct Private {
    e: E2e,
    registry: Registry,
    instance_arn: String,
    agent: AgentProcess,
}

fn private(name: &str) -> Private {
    private_with(name, "")
}

/// As `private`, with `tail` appended to the executor config (a table of its own).
fn private_with(name: &str, tail: &str) -> Private {
    let standin = Standin::require();
    let registry = standin.registry();
    let cluster = unique_name(&format!("reg-{name}"));
    let mut e = E2e::with_config_edit(name, |text| {
        let text = text.replace("cluster = \"local\"", &format!("cluster = \"{cluster}\""));
        format!("execution_role_arn = \"{EXECUTION_ROLE}\"\n{text}\n{tail}")
    });
    e.standin.cluster = cluster.clone();
    let ecs = e.ecs.clone();
    let instance_arn = e.block_on(cluster_with_instance(&ecs, &cluster, &standin.instance_id));
    let agent = AgentProcess::start(
        &standin,
        &cluster,
        &instance_arn,
        &[("ECS_IMAGE_PULL_BEHAVIOR", "always")],
    );
    Private {
        e,
        registry,
        instance_arn,
        agent,
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // Containers a failed test left on our cluster (the agent is killed right after).
        let docker = self.e.standin.docker();
        let cluster = self.e.standin.cluster.clone();
        let ecs = self.e.ecs.clone();
        let instance = self.instance_arn.clone();
        self.e.block_on(async {
            use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                vec![format!("com.amazonaws.ecs.cluster={cluster}")],
            )]);
            if let Ok(list) = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
            {
                for c in list {
                    if let Some(id) = c.id {
                        let _ = docker
                            .remove_container(
                                &id,
                                Some(RemoveContainerOptions {
                                    force: true,
                                    v: true,
                                    ..Default::default()
                                }),
                            )
                            .await;
                    }
                }
            }
            let _ = ecs
                .deregister_container_instance()
                .cluster(&cluster)
                .container_instance(&instance)
                .force(true)
                .send()
                .await;
            let _ = ecs.delete_cluster().cluster(&cluster).send().await;
        });
    }
}

fn base64(text: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = text.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `repositoryCredentials` secret names of a task's definition, by container.
fn repository_secrets(e: &E2e, task_definition_arn: &str) -> Vec<(String, Option<String>)> {
    let out = e
        .block_on(
            e.ecs
                .describe_task_definition()
                .task_definition(task_definition_arn)
                .send(),
        )
        .expect("DescribeTaskDefinition");
    out.task_definition()
        .expect("a task definition")
        .container_definitions()
        .iter()
        .map(|c| {
            (
                c.name().unwrap_or_default().to_string(),
                c.repository_credentials()
                    .map(|r| r.credentials_parameter().to_string()),
            )
        })
        .collect()
}

#[test]
fn a_private_image_and_a_private_service_pull_with_only_the_jobs_credentials() {
    let p = private("regok");
    let reg = &p.registry;
    let mark = p.e.standin.request_mark();
    let job =
        p.e.job()
            .image(Image::new(&reg.images.build))
            .service(Image::new(&reg.images.service).alias("svc"))
            .registry_credentials(&reg.address, &reg.username, &reg.password)
            .script(["echo private-build-ran"]);
    let outcome = p.e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(
        outcome.status,
        JobStatus::Success,
        "{log}\nagent:\n{}",
        p.agent.log_text()
    );
    assert!(log.contains("private-build-ran"), "{log}");
    assert!(
        log.contains(&format!(
            "registry credentials for {} ({} from job payload (GitLab Registry) as {})",
            reg.images.build, reg.address, reg.username
        )),
        "the job log says which login is used (never the password):\n{log}"
    );
    // The agent pulled both images from the registry, with the job's login.
    let agent = p.agent.log_text();
    for image in [&reg.images.build, &reg.images.service] {
        assert!(
            agent.contains(&format!("pulled {image} for container")) && agent.contains(&format!("as {}", reg.username)),
            "{image} not pulled with the login:\n{agent}"
        );
    }
    let tasks = p.e.assert_no_task_left(&job);
    let td = tasks[0].task_definition_arn().unwrap().to_string();
    let secrets = repository_secrets(&p.e, &td);
    let build_secret = secrets
        .iter()
        .find(|(n, _)| n == "build")
        .and_then(|(_, s)| s.clone())
        .expect("the build container names a secret");
    assert!(
        secrets
            .iter()
            .any(|(n, s)| n != "build" && n != "helper" && s.as_ref() == Some(&build_secret)),
        "the service container uses the same registry's secret: {secrets:?}"
    );
    assert_eq!(
        secrets.iter().find(|(n, _)| n == "helper").map(|(_, s)| s.clone()),
        Some(None),
        "the helper image is pulled without the job's login"
    );
    // The password never reached the ECS API (task definition, RunTask), the job log, the
    // executor's output or the agent's log; cleanup deleted the secret.
    let requests = p.e.standin.requests_since(mark);
    for r in requests.iter().filter(|r| r.service != "secretsmanager") {
        assert!(
            !r.body.contains(&reg.password),
            "{} {:?} carries the password",
            r.service,
            r.action
        );
    }
    // The extra AWS calls of a job with private images from one registry: the executor's
    // CreateSecret and DeleteSecret, the agent's one GetSecretValue (two containers, one secret).
    let mut secret_calls: Vec<String> = requests
        .iter()
        .filter(|r| r.service == "secretsmanager" && r.body.contains(&build_secret))
        .filter_map(|r| r.action.clone())
        .collect();
    secret_calls.sort();
    eprintln!("Secrets Manager calls of the job: {secret_calls:?}");
    assert_eq!(secret_calls, ["CreateSecret", "DeleteSecret", "GetSecretValue"]);
    assert!(!log.contains(&reg.password));
    for call in &outcome.calls {
        assert!(!call.stderr_text().contains(&reg.password), "{}", show(call));
    }
    assert!(!agent.contains(&reg.password));
    assert_eq!(
        p.e.standin.secret_string(&build_secret),
        None,
        "cleanup deletes the secret"
    );
}

#[test]
fn a_wrong_password_is_a_build_failure_naming_image_and_registry_and_the_next_job_reuses_the_definition() {
    let p = private("regbad");
    let reg = &p.registry;
    let wrong = format!("not-{}", reg.password);
    let bad =
        p.e.job()
            .image(Image::new(&reg.images.build))
            .registry_credentials(&reg.address, &reg.username, &wrong)
            .script(["echo never-runs"]);
    let outcome = p.e.runner(&bad).run_job();
    let log = outcome.log_text();
    // BUILD_FAILURE: the job's login is wrong; gitlab-runner does not retry prepare.
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 1 }, "{log}");
    assert_eq!(outcome.prepare_attempts, 1, "{log}");
    let prepare = &outcome.calls[1];
    let said = prepare.stderr_text();
    assert!(
        said.contains(&format!("\"{}\"", reg.images.build))
            && said.contains(&format!("registry {} refused the credentials", reg.address))
            && said.contains(&format!("{:?}", reg.username)),
        "{}",
        show(prepare)
    );
    assert!(
        said.contains("CannotPullContainerError"),
        "ECS's reason is quoted:\n{}",
        show(prepare)
    );
    assert!(
        !said.contains(&wrong) && !log.contains(&wrong),
        "no password printed:\n{}",
        show(prepare)
    );
    let failed = p.e.assert_tasks_stopped(&bad, 1);

    // The next job of the project, in the same concurrency slot, with the right login: the
    // same task definition revision (the secret's name is the same), and it runs.
    let good =
        p.e.job()
            .image(Image::new(&reg.images.build))
            .registry_credentials(&reg.address, &reg.username, &reg.password)
            .script(["echo second-job-ran"]);
    let outcome = p.e.runner(&good).run_job();
    assert_eq!(outcome.status, JobStatus::Success, "{}", outcome.log_text());
    let ran = p.e.assert_no_task_left(&good);
    assert_eq!(ran[0].task_definition_arn(), failed[0].task_definition_arn());
}

#[test]
fn an_unreachable_registry_is_a_system_failure() {
    let p = private("regdown");
    let reg = &p.registry;
    let image = format!("{}/private/build:1", reg.unreachable);
    let job =
        p.e.job()
            .image(Image::new(&image))
            .registry_credentials(&reg.unreachable, &reg.username, &reg.password)
            .script(["echo never-runs"]);
    let mut r = p.e.runner(&job);
    assert!(r.config().exit_code() == Some(0));
    let prepare = r.prepare();
    assert!(
        prepare.is_system_failure(),
        "a registry that cannot be reached may come back: SYSTEM_FAILURE, retried\n{}",
        show(&prepare)
    );
    let said = prepare.stderr_text();
    assert!(
        said.contains(&format!("\"{image}\""))
            && said.contains(&format!("registry {} could not be reached", reg.unreachable)),
        "{}",
        show(&prepare)
    );
    assert!(!said.contains(&reg.password));
    assert_eq!(r.cleanup().exit_code(), Some(0));
    p.e.assert_tasks_stopped(&job, 1);
}

#[test]
fn docker_auth_config_wins_over_the_job_payloads_login() {
    let p = private("regdac");
    let reg = &p.registry;
    let auth = base64(&format!("{}:{}", reg.username, reg.password));
    let docker_auth_config = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.address);
    let job =
        p.e.job()
            .image(Image::new(&reg.images.build))
            // GitLab's login for the registry is wrong here; the job's own DOCKER_AUTH_CONFIG is
            // right, and gitlab-runner takes DOCKER_AUTH_CONFIG first.
            .registry_credentials(&reg.address, "gitlab-ci-token", "expired-job-token")
            .add_variable(Variable::new("DOCKER_AUTH_CONFIG", &docker_auth_config).masked())
            .script(["echo dac-job-ran"]);
    let outcome = p.e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(
        outcome.status,
        JobStatus::Success,
        "{log}\nagent:\n{}",
        p.agent.log_text()
    );
    assert!(
        log.contains(&format!("{} from $DOCKER_AUTH_CONFIG as {}", reg.address, reg.username)),
        "{log}"
    );
    assert!(!log.contains(&reg.password) && !log.contains(&auth), "{log}");
    p.e.assert_no_task_left(&job);
}

#[test]
fn gc_deletes_the_secret_of_a_job_whose_cleanup_never_ran_and_keeps_a_running_jobs() {
    let p = private_with("reggc", "[gc]\nstart_grace_secs = 0\n");
    let reg = &p.registry;
    let job = |slot: u32| {
        p.e.job()
            .image(Image::new(&reg.images.build))
            .registry_credentials(&reg.address, &reg.username, &reg.password)
            .concurrency_slot(slot, slot)
            .script(["true"])
    };
    let secret_of = |job: &ecs_executor_tests::runner::JobSpec| -> String {
        let state = std::fs::read_to_string(p.e.state_file(job)).expect("the job's state file");
        assert!(!state.contains(&reg.password), "the state file holds no password");
        let v: serde_json::Value = serde_json::from_str(&state).unwrap();
        v["registry_secrets"][0]
            .as_str()
            .expect("the state names the secret")
            .to_string()
    };
    // Two jobs of the project in two slots: two secrets.
    let live = job(0);
    let mut live_runner = p.e.prepared(&live);
    let dead = job(1);
    let mut dead_runner = p.e.prepared(&dead);
    let (live_secret, dead_secret) = (secret_of(&live), secret_of(&dead));
    assert_ne!(live_secret, dead_secret);
    assert!(dead_secret.contains("/slot-1/"), "{dead_secret}");
    // The dead job's runner went away: its task ended, its cleanup never ran.
    let dead_task = p.e.running_task(&dead).task_arn().unwrap().to_string();
    p.e.standin.stop_task_blocking(&dead_task, "e2e: the runner host died");

    let out = admin(&p.e.config, &["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("delete registry secret {dead_secret}")),
        "{}",
        text(&out)
    );
    assert!(!said.contains(&live_secret), "{}", text(&out));
    assert_eq!(p.e.standin.secret_string(&dead_secret), None);
    assert!(
        p.e.standin.secret_string(&live_secret).is_some(),
        "a running job keeps its secret"
    );

    assert_ok(&live_runner.cleanup());
    assert_eq!(p.e.standin.secret_string(&live_secret), None);
    assert_ok(&dead_runner.cleanup());
    p.e.assert_no_task_left(&live);
}
