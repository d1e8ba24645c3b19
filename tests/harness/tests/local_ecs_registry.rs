//! The agent stand-in pulls as the ECS agent pulls (issue 13), against the stand-in's private
//! registry (`tests/local-ecs/up`: docker-registry with htpasswd auth on loopback): a
//! container's `repositoryCredentials` read from Secrets Manager (moto), the instance-wide
//! `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA`, the agent's error words, and the four
//! `ECS_IMAGE_PULL_BEHAVIOR`s.
//!
//! Each test runs agent stand-ins of its own, each on a cluster of its own (the agent reads its
//! settings from its environment, as from `/etc/ecs/ecs.config`), so nothing here depends on
//! how the shared agent is configured. Fails, never skips, without the registry.

use std::time::{Duration, Instant};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode, RepositoryCredentials, Task};
use bollard::query_parameters::{RemoveContainerOptions, RemoveImageOptions, TagImageOptions};
use ecs_executor_tests::standin::{AgentProcess, Registry, Standin, cluster_with_instance, unique_name};

const KEEP_ALIVE: &str = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done";
const EXECUTION_ROLE: &str = "arn:aws:iam::123456789012:role/ecs-executor-task-execution";
/// A generous bound: a loaded 2-core machine (load 20+) took 10 s for one pull.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A cluster with one container instance and an agent stand-in of its own.
struct OwnCluster {
    standin: Standin,
    ecs: Client,
    instance_arn: String,
    agent: AgentProcess,
}

impl OwnCluster {
    async fn start(name: &str, env: &[(&str, &str)]) -> OwnCluster {
        let base = Standin::require();
        let ecs = base.ecs(3).await;
        let cluster = unique_name(name);
        let instance_arn = cluster_with_instance(&ecs, &cluster, &base.instance_id).await;
        let agent = AgentProcess::start(&base, &cluster, &instance_arn, env);
        let standin = Standin { cluster, ..base };
        OwnCluster {
            standin,
            ecs,
            instance_arn,
            agent,
        }
    }

    /// Registers a one-container definition of `image` and runs it.
    async fn run(&self, image: &str, credentials: Option<&str>, execution_role: bool) -> String {
        let mut c = ContainerDefinition::builder()
            .name("main")
            .image(image)
            .memory(32)
            .set_command(Some(vec!["sh".into(), "-c".into(), KEEP_ALIVE.into()]));
        if let Some(secret) = credentials {
            c = c.repository_credentials(
                RepositoryCredentials::builder()
                    .credentials_parameter(secret)
                    .build()
                    .unwrap(),
            );
        }
        let family = unique_name("pull");
        let mut req = self
            .ecs
            .register_task_definition()
            .family(&family)
            .network_mode(NetworkMode::Bridge)
            .container_definitions(c.build());
        if execution_role {
            req = req.execution_role_arn(EXECUTION_ROLE);
        }
        let td = req.send().await.expect("RegisterTaskDefinition");
        let arn = td.task_definition().unwrap().task_definition_arn().unwrap().to_string();
        let out = self
            .ecs
            .run_task()
            .cluster(&self.standin.cluster)
            .task_definition(&arn)
            .send()
            .await
            .expect("RunTask");
        out.tasks()[0].task_arn().unwrap().to_string()
    }

    async fn describe(&self, arn: &str) -> Task {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.standin.cluster)
            .tasks(arn)
            .send()
            .await
            .expect("DescribeTasks");
        out.tasks()[0].clone()
    }

    /// Waits until the task is RUNNING or STOPPED and returns it.
    async fn settle(&self, arn: &str) -> Task {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let t = self.describe(arn).await;
            if matches!(t.last_status(), Some("RUNNING" | "STOPPED")) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {arn} still {:?}; agent log:\n{}",
                t.last_status(),
                self.agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&self, arn: &str) {
        let _ = self
            .ecs
            .stop_task()
            .cluster(&self.standin.cluster)
            .task(arn)
            .send()
            .await;
        let deadline = Instant::now() + TIMEOUT;
        while self.describe(arn).await.last_status() != Some("STOPPED") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes what the agent left on this cluster, then the cluster (also when the test
    /// failed: `Drop`).
    async fn finish(self) {
        drop(self);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let (standin, ecs, instance) = (self.standin.clone(), self.ecs.clone(), self.instance_arn.clone());
        // Drop may run inside the test's runtime: a thread with a runtime of its own.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let docker = standin.docker();
                let filters = std::collections::HashMap::from([(
                    "label".to_string(),
                    vec![format!("com.amazonaws.ecs.cluster={}", standin.cluster)],
                )]);
                let list = docker
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        all: true,
                        filters: Some(filters),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_or_default();
                for c in list {
                    let _ = docker
                        .remove_container(
                            &c.id.unwrap_or_default(),
                            Some(RemoveContainerOptions {
                                force: true,
                                v: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
                let _ = ecs
                    .deregister_container_instance()
                    .cluster(&standin.cluster)
                    .container_instance(&instance)
                    .force(true)
                    .send()
                    .await;
                let _ = ecs.delete_cluster().cluster(&standin.cluster).send().await;
            });
        });
        let _ = cleaned.join();
    }
}

fn login_json(r: &Registry, password: &str) -> String {
    serde_json::json!({"username": r.username, "password": password}).to_string()
}

fn reason(t: &Task) -> String {
    t.stopped_reason().unwrap_or_default().to_string()
}

#[tokio::test]
async fn repository_credentials_are_read_from_secrets_manager_and_their_failures_worded_as_the_agent_words_them() {
    let c = OwnCluster::start("asm", &[("ECS_IMAGE_PULL_BEHAVIOR", "always")]).await;
    let r = c.standin.registry();
    let secret = unique_name("ecs-executor-test/registry/login");
    c.standin.put_secret(&secret, &login_json(&r, &r.password));

    let ok = c.run(&r.images.build, Some(&secret), true).await;
    let t = c.settle(&ok).await;
    assert_eq!(t.last_status(), Some("RUNNING"), "{t:#?}\n{}", c.agent.log_text());
    let log = c.agent.log_text();
    assert!(
        log.contains(&format!(
            "registry credentials for {} read from secret {secret}",
            r.images.build
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "pulled {} for container main as {}",
            r.images.build, r.username
        )),
        "{log}"
    );
    c.stop(&ok).await;

    // A wrong password: the registry's refusal, as Docker words it, in ECS's reason.
    c.standin.put_secret(&secret, &login_json(&r, "wrong-password"));
    let t = c.settle(&c.run(&r.images.build, Some(&secret), true).await).await;
    assert_eq!(t.last_status(), Some("STOPPED"));
    assert_eq!(t.stop_code().map(|s| s.as_str()), Some("TaskFailedToStart"));
    assert!(
        reason(&t).starts_with("CannotPullContainerError: Error response from daemon: ")
            && reason(&t).contains("unauthorized"),
        "{t:#?}"
    );

    // No such secret, a value of the wrong shape, no execution role: the agent's words.
    let missing = unique_name("ecs-executor-test/registry/none");
    let t = c.settle(&c.run(&r.images.build, Some(&missing), true).await).await;
    assert!(
        reason(&t).starts_with(&format!(
            "asm fetching secret from the service for {missing}: ResourceNotFoundException"
        )),
        "{t:#?}"
    );
    c.standin.put_secret(&secret, "user:password");
    let t = c.settle(&c.run(&r.images.build, Some(&secret), true).await).await;
    assert_eq!(
        reason(&t),
        "asm fetching authorization data: unable to unmarshal secret value, invalid schema"
    );
    let t = c.settle(&c.run(&r.images.build, Some(&secret), false).await).await;
    assert_eq!(reason(&t), "asm resource: unable to find execution role credentials");
    c.standin.delete_secret(&secret);
    c.finish().await;
}

#[tokio::test]
async fn engine_auth_data_lets_the_agent_pull_and_without_any_login_the_registry_asks_for_one() {
    let base = Standin::require();
    let r = base.registry();
    let auth = {
        // dockercfg: {"<registry>": {"auth": base64("user:password")}}
        let plain = format!("{}:{}", r.username, r.password);
        let b = plain.as_bytes();
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    A[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    };
    let data = format!(r#"{{"http://{}": {{"auth": "{auth}", "email": ""}}}}"#, r.address);
    let with = OwnCluster::start(
        "engine-auth",
        &[
            ("ECS_IMAGE_PULL_BEHAVIOR", "always"),
            ("ECS_ENGINE_AUTH_TYPE", "dockercfg"),
            ("ECS_ENGINE_AUTH_DATA", &data),
        ],
    )
    .await;
    let arn = with.run(&r.images.service, None, false).await;
    let t = with.settle(&arn).await;
    assert_eq!(t.last_status(), Some("RUNNING"), "{t:#?}\n{}", with.agent.log_text());
    assert!(with.agent.log_text().contains("engine auth data set"));
    with.stop(&arn).await;
    with.finish().await;

    let without = OwnCluster::start("no-auth", &[("ECS_IMAGE_PULL_BEHAVIOR", "always")]).await;
    let t = without.settle(&without.run(&r.images.service, None, false).await).await;
    assert_eq!(t.last_status(), Some("STOPPED"));
    let why = reason(&t);
    assert!(
        why.starts_with("CannotPullContainerError: Error response from daemon: ")
            && why.contains("no basic auth credentials"),
        "{why}"
    );
    without.finish().await;

    // Malformed auth data stops the agent at start, saying why.
    let mut bad = AgentProcess::start(
        &base,
        &unique_name("bad-auth"),
        "arn:none",
        &[
            ("ECS_ENGINE_AUTH_TYPE", "dockercfg"),
            ("ECS_ENGINE_AUTH_DATA", "{not json"),
        ],
    );
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = bad.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent runs with malformed auth data");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    assert!(
        bad.log_text().contains("ECS_ENGINE_AUTH_DATA (dockercfg)"),
        "{}",
        bad.log_text()
    );
}

/// `ECS_IMAGE_PULL_BEHAVIOR`: an image that is on the host but whose registry cannot be
/// reached, and an image of the private registry pulled twice.
#[tokio::test]
async fn the_four_pull_behaviours_use_the_cache_as_the_agent_documents() {
    let base = Standin::require();
    let r = base.registry();
    let docker = base.docker();
    // The build image, also under a name whose registry nobody serves (this test's own tag).
    let repo = format!("{}/{}", r.unreachable, unique_name("cached"));
    let cached = format!("{repo}:1");
    docker
        .tag_image(
            &base.images.build,
            Some(TagImageOptions {
                repo: Some(repo.clone()),
                tag: Some("1".into()),
            }),
        )
        .await
        .expect("docker tag");

    // default: the pull fails, the cached image is used.
    let c = OwnCluster::start("pull-default", &[]).await;
    let t = c.settle(&c.run(&cached, None, false).await).await;
    assert_eq!(t.last_status(), Some("RUNNING"), "{t:#?}\n{}", c.agent.log_text());
    assert!(
        c.agent.log_text().contains(&format!("pull of {cached} failed"))
            && c.agent.log_text().contains("using the cached image"),
        "{}",
        c.agent.log_text()
    );
    c.finish().await;

    // always: the failed pull fails the task, even with the image on the host.
    let c = OwnCluster::start("pull-always", &[("ECS_IMAGE_PULL_BEHAVIOR", "always")]).await;
    let t = c.settle(&c.run(&cached, None, false).await).await;
    assert_eq!(t.last_status(), Some("STOPPED"));
    assert!(
        reason(&t).starts_with("CannotPullContainerError: Error response from daemon: ")
            && reason(&t).contains("connection refused"),
        "{t:#?}"
    );
    c.finish().await;

    // prefer-cached: no pull at all for an image on the host.
    let c = OwnCluster::start("pull-cached", &[("ECS_IMAGE_PULL_BEHAVIOR", "prefer-cached")]).await;
    let t = c.settle(&c.run(&cached, None, false).await).await;
    assert_eq!(t.last_status(), Some("RUNNING"), "{t:#?}\n{}", c.agent.log_text());
    assert!(
        !c.agent.log_text().contains(&format!("pull of {cached}")),
        "{}",
        c.agent.log_text()
    );
    c.finish().await;

    // once: the first task pulls (with the login), the second uses what the first pulled.
    let secret = unique_name("ecs-executor-test/registry/once");
    base.put_secret(&secret, &login_json(&r, &r.password));
    let c = OwnCluster::start("pull-once", &[("ECS_IMAGE_PULL_BEHAVIOR", "once")]).await;
    for _ in 0..2 {
        let arn = c.run(&r.images.build, Some(&secret), true).await;
        let t = c.settle(&arn).await;
        assert_eq!(t.last_status(), Some("RUNNING"), "{t:#?}\n{}", c.agent.log_text());
        c.stop(&arn).await;
    }
    let pulls = c
        .agent
        .log_text()
        .matches(&format!("pulled {} for container", r.images.build))
        .count();
    assert_eq!(pulls, 1, "{}", c.agent.log_text());
    c.finish().await;
    base.delete_secret(&secret);
    let _ = docker.remove_image(&cached, None::<RemoveImageOptions>, None).await;
}
