//! Warm images (issue 16, `docs/warm-pools.md` "Warm images") through the real binary: `gc`
//! pulls a `[warm_images]` image missing on an instance (over the executor's mutual TLS, with
//! the runner host's own Docker login), then a cold job of that image on an agent stand-in
//! with `ECS_IMAGE_PULL_BEHAVIOR=prefer-cached` pulls nothing; an image nobody serves is one
//! clear line on stderr while gc exits 0 and still does its other work; a bad entry is a
//! config error naming the key and the entry.
//!
//! Each test runs on a cluster of its own (the shared EC2 instance registered into it) with an
//! agent stand-in of its own (`prefer-cached`). The image is the tests' build image pushed to
//! the loopback registry under a name of this test's own, then untagged on the shared
//! dockerd; only that tag is ever removed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, RemoveImageOptions, TagImageOptions};
use ecs_executor_tests::runner::{Image, JobStatus};
use ecs_executor_tests::standin::{AgentProcess, Registry, Standin, cluster_with_instance, unique_name};
use futures_util::StreamExt;
use support::standin_agent::OwnCluster;
use support::{E2e, assert_ok, executor_bin, text};

/// One test's cluster, agent stand-in (prefer-cached) and executor setup.
struct Warm {
    e: E2e,
    registry: Registry,
    instance_arn: String,
    agent: AgentProcess,
    /// The image this test pushed (its tag is removed from the shared dockerd on drop).
    image: Option<String>,
}

/// `tail` is appended to the executor config (tables of the test's own); the agent pulls
/// `prefer-cached`.
fn warm(name: &str, tail: &str) -> Warm {
    warm_with(name, tail, &[("ECS_IMAGE_PULL_BEHAVIOR", "prefer-cached")])
}

/// As [`warm`], the agent stand-in started with `agent_env`.
fn warm_with(name: &str, tail: &str, agent_env: &[(&str, &str)]) -> Warm {
    let standin = Standin::require();
    let registry = standin.registry();
    let cluster = unique_name(&format!("wimg-{name}"));
    let mut e = E2e::with_config_edit(name, |text| {
        let text = text.replace("cluster = \"local\"", &format!("cluster = \"{cluster}\""));
        format!("{text}\n{tail}\n")
    });
    e.standin.cluster = cluster.clone();
    let ecs = e.ecs.clone();
    let instance_arn = e.block_on(cluster_with_instance(&ecs, &cluster, &standin.instance_id));
    let agent = AgentProcess::start(&standin, &cluster, &instance_arn, agent_env);
    Warm {
        e,
        registry,
        instance_arn,
        agent,
        image: None,
    }
}

impl Warm {
    /// The build image pushed under a name of this test's own, untagged here ([`push_own_image`]).
    fn push_own_image(&mut self) -> String {
        let image = push_own_image(&self.e.standin, &self.registry);
        self.image = Some(image.clone());
        assert!(!self.has_image(&image), "{image} is still tagged on the dockerd");
        image
    }

    fn has_image(&self, image: &str) -> bool {
        let docker = self.e.standin.docker();
        self.e.block_on(docker.inspect_image(image)).is_ok()
    }

    /// A HOME whose Docker config logs in to the loopback registry: the runner host's own
    /// credentials, the only ones warm images use.
    fn runner_home(&self) -> PathBuf {
        let home = self.e.dir.join("home");
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        let auth = base64(&format!("{}:{}", self.registry.username, self.registry.password));
        std::fs::write(
            home.join(".docker/config.json"),
            serde_json::json!({"auths": {self.registry.address.clone(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        home
    }

    /// The config gets its `[warm_images]` table (the image name is only known after the push).
    fn warm_images(&self, image: &str) {
        self.append(&format!(
            "[warm_images]\nimages = [\"{image}\"]\npull_timeout_secs = 120"
        ));
    }

    /// Tables appended to the executor config.
    fn append(&self, tables: &str) {
        let config = std::fs::read_to_string(&self.e.config).unwrap();
        std::fs::write(&self.e.config, format!("{config}\n{tables}\n")).unwrap();
    }

    /// `[metrics]` into the test's dir; the textfile's value of `series` (0 when absent).
    fn metrics_on(&self) {
        let dir = self.e.dir.join("metrics");
        std::fs::create_dir_all(&dir).unwrap();
        self.append(&format!("[metrics]\ntextfile_dir = \"{}\"", dir.display()));
    }

    fn metric(&self, series: &str) -> f64 {
        let text = std::fs::read_to_string(self.e.dir.join("metrics/ecs_executor.prom")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `ecs-executor gc` as its systemd unit runs it, with `home` as HOME.
    fn gc(&self, home: &Path) -> Output {
        gc_with(&self.e.config, home)
    }
}

/// The build image pushed to the loopback registry as `<registry>/<unique>/build:1`, then
/// untagged on the shared dockerd: it has no image by that reference afterwards.
fn push_own_image(standin: &Standin, registry: &Registry) -> String {
    let repo = format!("{}/{}/build", registry.address, unique_name("warmimages"));
    let image = format!("{repo}:1");
    let docker = standin.docker();
    let credentials = DockerCredentials {
        username: Some(registry.username.clone()),
        password: Some(registry.password.clone()),
        serveraddress: Some(registry.address.clone()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        docker
            .tag_image(
                &standin.images.build,
                Some(TagImageOptions {
                    repo: Some(repo.clone()),
                    tag: Some("1".into()),
                }),
            )
            .await
            .expect("docker tag");
        let mut push = docker.push_image(
            &repo,
            Some(PushImageOptions {
                tag: Some("1".into()),
                ..Default::default()
            }),
            Some(credentials),
        );
        while let Some(item) = push.next().await {
            let info = item.expect("docker push");
            assert!(info.error_detail.is_none(), "docker push {image}: {info:?}");
        }
        untag(&docker, &image).await;
    });
    image
}

/// Our own tag removed from the shared dockerd (the layers stay: the build image holds them).
async fn untag(docker: &bollard::Docker, image: &str) {
    let _ = docker.remove_image(image, None::<RemoveImageOptions>, None).await;
}

fn gc_with(config: &Path, home: &Path) -> Output {
    admin_with(config, home, &["gc"])
}

/// `ecs-executor --config <config> <args...>` with `home` as HOME.
fn admin_with(config: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(executor_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ECS_EXECUTOR_CONFIG")
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run ecs-executor gc")
}

impl Drop for Warm {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            delete_from_registry(&self.registry, image);
        }
        let docker = self.e.standin.docker();
        let cluster = self.e.standin.cluster.clone();
        let ecs = self.e.ecs.clone();
        let instance = self.instance_arn.clone();
        let image = self.image.clone();
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
                for id in list.into_iter().filter_map(|c| c.id) {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            }
            if let Some(image) = &image {
                untag(&docker, image).await;
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

/// The registry's manifest of `image` (pushed by this test) deleted, best effort: the
/// registry runs with `storage.delete.enabled`; the shared layers stay.
fn delete_from_registry(registry: &Registry, image: &str) {
    let Some(path) = image.strip_prefix(&format!("{}/", registry.address)) else {
        return;
    };
    let Some((name, tag)) = path.rsplit_once(':') else {
        return;
    };
    let auth = format!(
        "Basic {}",
        base64(&format!("{}:{}", registry.username, registry.password))
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let head = agent
        .head(format!("http://{}/v2/{name}/manifests/{tag}", registry.address))
        .header("Authorization", &auth)
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .call();
    let Some(digest) = head.ok().and_then(|r| {
        r.headers()
            .get("Docker-Content-Digest")
            .and_then(|d| d.to_str().ok())
            .map(String::from)
    }) else {
        return;
    };
    let _ = agent
        .delete(format!("http://{}/v2/{name}/manifests/{digest}", registry.address))
        .header("Authorization", &auth)
        .call();
}

fn base64(text: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// gc pulls the missing image (with the runner host's login), a second gc finds it present,
/// and a cold job of it on a prefer-cached agent runs without any pull: without the warm pull
/// the agent would have to pull it, and with no credentials (the job has none) it could not.
#[test]
fn gc_pulls_a_missing_warm_image_and_a_cold_job_of_it_pulls_nothing() {
    let mut w = warm("pull", "");
    let image = w.push_own_image();
    w.warm_images(&image);
    w.metrics_on();
    let home = w.runner_home();

    // `warm-images --dry-run` inspects and pulls nothing.
    let dry = admin_with(&w.e.config, &home, &["warm-images", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        stdout(&dry).contains(&format!("would pull warm image {image} on instance "))
            && stdout(&dry).contains("warm images: 1 instance(s), 0 present, 1 would pull, 0 failed"),
        "{}",
        text(&dry)
    );
    assert!(!w.has_image(&image), "--dry-run pulled {image}");

    let out = w.gc(&home);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("pulled warm image {image} on instance "))
            && stdout(&out).contains(&format!("as {} (the runner host's Docker config)", w.registry.username)),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("warm images: 1 instance(s), 0 present, 1 pulled, 0 failed"),
        "{}",
        text(&out)
    );
    assert!(w.has_image(&image), "gc did not leave {image} on the instance");
    assert!(!stdout(&out).contains(&w.registry.password) && !stderr(&out).contains(&w.registry.password));

    let again = w.gc(&home);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        stdout(&again).contains("warm images: 1 instance(s), 1 present, 0 pulled, 0 failed"),
        "{}",
        text(&again)
    );
    assert_eq!(w.metric("ecs_executor_warm_image_pulls_total{outcome=\"pulled\"}"), 1.0);
    assert_eq!(
        w.metric("ecs_executor_warm_image_pulls_total{outcome=\"present\"}"),
        1.0
    );
    assert_eq!(w.metric("ecs_executor_warm_image_pulls_total{outcome=\"failed\"}"), 0.0);

    // A cold job of the image: no login in the job, none in the executor's HOME either.
    let job = w.e.job().image(Image::new(&image)).script(["echo warm-image-ran"]);
    let outcome = w.e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(
        outcome.status,
        JobStatus::Success,
        "{log}\nagent:\n{}",
        w.agent.log_text()
    );
    assert!(log.contains("warm-image-ran"), "{log}");
    let agent = w.agent.log_text();
    assert!(
        !agent.contains(&format!("pulled {image}")) && !agent.contains(&format!("pull of {image}")),
        "the agent pulled the warm image:\n{agent}"
    );
    w.e.assert_tasks_stopped(&job, 1);
}

/// Every ACTIVE instance is reached over its own Docker listener; a DRAINING one is skipped,
/// and once it is ACTIVE again (as a new instance joining) the next gc covers it. The
/// instances share this host's one dockerd, so with one pull at a time the second instance
/// finds the image the first pulled.
#[test]
fn every_active_instance_is_covered_and_one_that_joins_at_the_next_gc() {
    let own = OwnCluster::start("wimg-all", 2);
    let standin = Standin::require();
    let registry = standin.registry();
    let image = push_own_image(&standin, &registry);
    let e = E2e::with_config_edit("wimg-all", own.config_edit());
    let config = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(
        &e.config,
        format!("{config}\n[warm_images]\nimages = [\"{image}\"]\nconcurrency = 1\n"),
    )
    .unwrap();
    let home = e.dir.join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let auth = base64(&format!("{}:{}", registry.username, registry.password));
    std::fs::write(
        home.join(".docker/config.json"),
        serde_json::json!({"auths": {registry.address.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let cleanup = |what: &str| {
        own.block_on(untag(&standin.docker(), &image));
        if what == "end" {
            delete_from_registry(&registry, &image);
        }
    };

    own.instance_control(&own.instances[1], serde_json::json!({"state": "DRAINING"}));
    let out = gc_with(&e.config, &home);
    let first = format!("Docker at {}:{}", own.instances[0].private_ip, standin.docker_port);
    let ok = out.status.success()
        && stdout(&out).contains("warm images: 1 instance(s), 0 present, 1 pulled, 0 failed")
        && stdout(&out).contains(&first);
    if !ok {
        cleanup("end");
        panic!("the ACTIVE instance ({first}) only: {}", text(&out));
    }

    cleanup("between");
    own.instance_control(&own.instances[1], serde_json::json!({"state": "ACTIVE"}));
    let out = gc_with(&e.config, &home);
    let present = stdout(&out).contains("warm images: 2 instance(s), 1 present, 1 pulled, 0 failed");
    let has = own.block_on(standin.docker().inspect_image(&image)).is_ok();
    cleanup("end");
    assert!(out.status.success() && present && has, "both instances: {}", text(&out));
}

/// The agent's `once` counts only its own pulls (the real agent's `imagePullRequired`: "regardless
/// whether the image exists or not"): the first task of a warm image on an instance still
/// pulls it, here with the instance's `ECS_ENGINE_AUTH_DATA`. Only `prefer-cached` makes warm
/// images pull nothing.
#[test]
fn with_pull_behaviour_once_the_first_task_of_a_warm_image_still_pulls() {
    let registry = Standin::require().registry();
    let auth =
        serde_json::json!({registry.address.clone(): {"username": registry.username, "password": registry.password}})
            .to_string();
    let mut w = warm_with(
        "once",
        "",
        &[
            ("ECS_IMAGE_PULL_BEHAVIOR", "once"),
            ("ECS_ENGINE_AUTH_TYPE", "docker"),
            ("ECS_ENGINE_AUTH_DATA", &auth),
        ],
    );
    let image = w.push_own_image();
    w.warm_images(&image);
    let out = w.gc(&w.runner_home());
    assert!(out.status.success(), "{}", text(&out));
    assert!(w.has_image(&image), "{}", text(&out));
    let job = w.e.job().image(Image::new(&image)).script(["echo once-ran"]);
    let outcome = w.e.runner(&job).run_job();
    assert_eq!(
        outcome.status,
        JobStatus::Success,
        "{}\nagent:\n{}",
        outcome.log_text(),
        w.agent.log_text()
    );
    assert!(
        w.agent
            .log_text()
            .contains(&format!("pulled {image} for container build")),
        "with `once` the first task pulls even a cached image:\n{}",
        w.agent.log_text()
    );
    w.e.assert_tasks_stopped(&job, 1);
}

/// An image whose registry nobody serves fails on its own, named with the instance, and gc
/// exits 0: it still stops an abandoned task and reports the present image.
#[test]
fn an_unreachable_warm_image_is_one_logged_problem_and_gc_still_does_its_work() {
    let standin = Standin::require();
    let unreachable = format!("{}/nothing/here:1", standin.registry().unreachable);
    let present = standin.images.build.clone();
    let w = warm(
        "unreach",
        &format!(
            "[gc]\nstart_grace_secs = 1\n\n[warm_images]\nimages = [\"{unreachable}\", \"{present}\"]\npull_timeout_secs = 30\n"
        ),
    );
    w.metrics_on();
    // An abandoned task: prepared, then its job state lost.
    let job = w.e.job();
    let (_r, prepare) = w.e.prepare(&job);
    assert_ok(&prepare);
    std::fs::remove_file(w.e.state_file(&job)).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));

    let out = w.gc(&w.e.dir);
    assert!(out.status.success(), "gc must not fail on a warm image: {}", text(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains(&format!("warm image {unreachable} on instance ")))
        .unwrap_or_else(|| panic!("no line about {unreachable}: {}", text(&out)));
    assert!(line.contains("the pull failed") && line.contains("Docker at"), "{line}");
    assert!(
        stdout(&out).contains("warm images: 1 instance(s), 1 present, 0 pulled, 1 failed"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("no state on this host") && stdout(&out).contains("stopped 1 task(s)"),
        "gc did not do its other work: {}",
        text(&out)
    );
    assert_eq!(w.metric("ecs_executor_warm_image_pulls_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(
        w.metric("ecs_executor_warm_image_pulls_total{outcome=\"present\"}"),
        1.0
    );
    w.e.assert_tasks_stopped(&job, 1);
}

/// A bad entry or setting is a config error naming the key and the entry: gc exits 2
/// (system failure for admin commands) before any AWS call.
#[test]
fn bad_warm_images_settings_are_config_errors_naming_key_and_entry() {
    let e = E2e::new("wimg-config");
    let config = std::fs::read_to_string(&e.config).unwrap();
    for (table, says) in [
        (
            "images = [\"alpine:3.20\", \"Not/An Image\"]",
            "`warm_images.images` entry \"Not/An Image\": contains whitespace",
        ),
        (
            "images = [\"alpine:3.20\", \"alpine:3.20\"]",
            "entry \"alpine:3.20\" is listed twice",
        ),
        (
            "images = [\"alpine\"]\nconcurrency = 0",
            "`warm_images.concurrency` = 0 must be 1..=32",
        ),
        (
            "images = [\"alpine\"]\npull_timeout = 5",
            "unknown field `pull_timeout`",
        ),
    ] {
        let path = e.dir.join("bad.toml");
        std::fs::write(&path, format!("{config}\n[warm_images]\n{table}\n")).unwrap();
        let out = gc_with(&path, &e.dir);
        assert_eq!(out.status.code(), Some(2), "{table}: {}", text(&out));
        assert!(
            stderr(&out).contains(says),
            "{table}: expected {says:?}: {}",
            text(&out)
        );
    }
}
