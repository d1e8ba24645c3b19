//! The local ECS stand-in works the way the executor needs ECS to: tasks placed on the
//! container instance run as Docker containers named and labelled as the ECS agent does, reach
//! RUNNING and STOPPED with the codes and reasons ECS gives, moto's faults reach the SDK, and
//! Docker's mutual-TLS port admits only clients with the certificate.
//!
//! Runs against what `tests/local-ecs/up` started (fails, never skips, when it is not up).
//! Every test has its own task-definition family, so tests run in parallel; every task a test
//! starts is stopped when the test ends, also when it fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerDependency, HostEntry, KeyValuePair, LinuxParameters, MountPoint,
    NetworkMode, Task, Ulimit, UlimitName, Volume,
};
use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions, ListVolumesOptions};
use ecs_executor_tests::standin::{
    ClientCert, Fault, FaultGuard, Standin, TaskGuard, agent_binary, cluster_with_instance, docker_exec, unique_name,
};

/// Keeps a container alive and exits 0 at once on SIGTERM (a plain `sleep` as PID 1 would
/// ignore it and wait for SIGKILL).
const KEEP_ALIVE: &str = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done";

/// How long a wait goes on before the test gives up: bounds on waiting, not on speed (the agent
/// itself reacts within ~200 ms; a loaded 2-core machine has taken over 20 s to start a
/// container through the shared dockerd, which failed this suite under load).
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn container(name: &str, image: &str, script: &str) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    ContainerDefinition::builder()
        .name(name)
        .image(image)
        .memory(64)
        .set_command(Some(sh(script)))
}

/// Registers `family` (bridge networking) and returns its ARN and revision.
async fn register(
    ecs: &Client,
    family: &str,
    containers: Vec<ContainerDefinition>,
    volumes: Vec<Volume>,
) -> (String, i32) {
    let out = ecs
        .register_task_definition()
        .family(family)
        .network_mode(NetworkMode::Bridge)
        .set_container_definitions(Some(containers))
        .set_volumes((!volumes.is_empty()).then_some(volumes))
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let td = out.task_definition().expect("a task definition");
    (td.task_definition_arn().unwrap().to_string(), td.revision())
}

/// RunTask on the stand-in's cluster; the guard stops the task when the test ends.
async fn run_task(standin: &Standin, ecs: &Client, task_definition: &str) -> (Task, TaskGuard) {
    let out = ecs
        .run_task()
        .cluster(&standin.cluster)
        .task_definition(task_definition)
        .count(1)
        .send()
        .await
        .expect("RunTask");
    assert!(out.failures().is_empty(), "RunTask failures: {:?}", out.failures());
    let task = out.tasks().first().expect("RunTask returned a task").clone();
    let guard = TaskGuard::new(standin, task.task_arn().unwrap());
    (task, guard)
}

async fn describe(standin: &Standin, ecs: &Client, arn: &str) -> Task {
    let out = ecs
        .describe_tasks()
        .cluster(&standin.cluster)
        .tasks(arn)
        .send()
        .await
        .expect("DescribeTasks");
    out.tasks()
        .first()
        .unwrap_or_else(|| panic!("DescribeTasks does not know {arn}: {:?}", out.failures()))
        .clone()
}

/// Polls DescribeTasks every 20 ms until `done` holds; on timeout, panics with the task as last
/// seen and the agent stand-in's log lines about it.
async fn wait_for(
    standin: &Standin,
    ecs: &Client,
    arn: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Task) -> bool,
) -> Task {
    let start = Instant::now();
    loop {
        let task = describe(standin, ecs, arn).await;
        if done(&task) {
            return task;
        }
        if start.elapsed() > timeout {
            panic!(
                "task {arn} is not {what} after {timeout:?}; last seen: {task:#?}\nagent stand-in log about it:\n{}",
                agent_log_about(standin, arn)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent_log_about(standin: &Standin, arn: &str) -> String {
    let id = arn.rsplit('/').next().unwrap_or(arn);
    let log = std::fs::read_to_string(standin.state_dir.join("logs/agent.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn last_status(task: &Task) -> &str {
    task.last_status().unwrap_or_default()
}

fn container_of<'a>(task: &'a Task, name: &str) -> &'a aws_sdk_ecs::types::Container {
    task.containers()
        .iter()
        .find(|c| c.name() == Some(name))
        .unwrap_or_else(|| panic!("no container {name} in {task:#?}"))
}

/// The task's containers in Docker, found by the label the ECS agent puts on them.
async fn docker_containers(docker: &Docker, task_arn: &str) -> Vec<ContainerSummary> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("com.amazonaws.ecs.task-arn={task_arn}")],
    )]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("docker ps")
}

/// Runs `script` in a container: (exit code, stdout and stderr).
async fn exec(docker: &Docker, container: &str, script: &str) -> (i64, String) {
    docker_exec(docker, container, &["sh", "-c", script])
        .await
        .expect("docker exec")
}

/// `ecs-<family>-<revision>-<container>-<20 hex digits>`, as the real agent names containers.
fn has_agent_name(docker_name: &str, family: &str, revision: i32, container: &str) -> bool {
    let name = docker_name.trim_start_matches('/');
    name.strip_prefix(&format!("ecs-{family}-{revision}-{container}-"))
        .is_some_and(|hex| hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The stand-in, an ECS client, and a task-definition family of the test's own (`name` made
/// unique), so that tests run in parallel.
async fn setup(name: &str) -> (Standin, Client, String) {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    (standin, ecs, unique_name(name))
}

/// Registers `family` with one container, `main`, that runs until it is stopped.
async fn register_keep_alive(standin: &Standin, ecs: &Client, family: &str) -> String {
    let main = container("main", &standin.images.build, KEEP_ALIVE).build();
    register(ecs, family, vec![main], vec![]).await.0
}

async fn wait_running(standin: &Standin, ecs: &Client, arn: &str) -> Task {
    wait_for(standin, ecs, arn, "RUNNING", START_TIMEOUT, |t| {
        last_status(t) == "RUNNING"
    })
    .await
}

/// Waits for STOPPED within `timeout` (START_TIMEOUT where the task stops on its own).
async fn wait_stopped(standin: &Standin, ecs: &Client, arn: &str, timeout: Duration) -> Task {
    wait_for(standin, ecs, arn, "STOPPED", timeout, |t| last_status(t) == "STOPPED").await
}

/// StopTask (with `reason`, if any) and wait for STOPPED.
async fn stop(standin: &Standin, ecs: &Client, arn: &str, reason: Option<&str>) -> Task {
    ecs.stop_task()
        .cluster(&standin.cluster)
        .task(arn)
        .set_reason(reason.map(str::to_string))
        .send()
        .await
        .expect("StopTask");
    wait_stopped(standin, ecs, arn, STOP_TIMEOUT).await
}

/// Until `client` gets `pong` from `nc <address> 7777` (the server containers below answer so).
async fn wait_for_pong(docker: &Docker, client: &str, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = exec(docker, client, &format!("nc {address} 7777 </dev/null")).await;
        if code == 0 && out.contains("pong") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "client could not reach server as {address}: exit {code}, output {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server container answering `pong` on port 7777 until it is stopped.
fn pong_server(image: &str) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    container(
        "server",
        image,
        &format!("trap 'exit 0' TERM; nc -ll -p 7777 -e echo pong & wait $!; {KEEP_ALIVE}"),
    )
}

/// A family with one KEEP_ALIVE container whose first `times` RunTask calls are throttled;
/// returns the family, its task definition, the fault and the request mark before any call.
async fn throttled_family(
    standin: &Standin,
    ecs: &Client,
    name: &str,
    times: i64,
) -> (String, String, FaultGuard, u64) {
    let family = unique_name(name);
    let td = register_keep_alive(standin, ecs, &family).await;
    let fault = standin.inject(&Fault::ecs_throttle("RunTask", times).matching(&family));
    (family, td, fault, standin.request_mark())
}

#[tokio::test]
async fn a_linked_two_container_task_runs_resolves_its_link_and_stops_on_stop_task() {
    let (standin, ecs, family) = setup("linked").await;
    let docker = standin.docker();
    let image = &standin.images.build;
    let server = pong_server(image)
        .docker_labels("ecs-executor-test.family", &family)
        .build();
    let client = container("client", image, KEEP_ALIVE).links("server:backend").build();
    let (td, revision) = register(&ecs, &family, vec![server, client], vec![]).await;

    let started = Instant::now();
    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap().to_string();
    assert_eq!(last_status(&placed), "PENDING", "RunTask answers with a PENDING task");
    assert_eq!(placed.desired_status(), Some("RUNNING"));

    let running = wait_for(&standin, &ecs, &arn, "RUNNING", START_TIMEOUT, |t| {
        last_status(t) != "PENDING"
    })
    .await;
    eprintln!("RunTask -> RUNNING observed after {:?}", started.elapsed());
    assert_eq!(last_status(&running), "RUNNING", "{running:#?}");
    assert!(
        running.started_at().is_some(),
        "startedAt is set when the agent reports RUNNING"
    );
    let ids: HashMap<&str, &str> = running
        .containers()
        .iter()
        .map(|c| {
            assert_eq!(c.last_status(), Some("RUNNING"), "{c:#?}");
            (
                c.name().unwrap(),
                c.runtime_id().unwrap_or_else(|| panic!("no runtimeId: {c:#?}")),
            )
        })
        .collect();
    assert_eq!(ids.len(), 2, "{running:#?}");

    let in_docker = docker_containers(&docker, &arn).await;
    assert_eq!(in_docker.len(), 2, "{in_docker:#?}");
    for c in &in_docker {
        let labels = c.labels.as_ref().unwrap();
        let name = labels["com.amazonaws.ecs.container-name"].as_str();
        // Names also lists link aliases (`/<client>/backend`); the container's own has one '/'.
        let docker_name = c
            .names
            .iter()
            .flatten()
            .find(|n| n.matches('/').count() == 1)
            .expect("a name");
        assert!(
            has_agent_name(docker_name, &family, revision, name),
            "{docker_name} is not ecs-{family}-{revision}-{name}-<hex>"
        );
        assert_eq!(c.id.as_deref(), Some(ids[name]), "runtimeId of {name} is its Docker id");
        assert_eq!(labels["com.amazonaws.ecs.cluster"], standin.cluster);
        assert_eq!(labels["com.amazonaws.ecs.task-arn"], arn);
        assert_eq!(labels["com.amazonaws.ecs.task-definition-family"], family);
        assert_eq!(
            labels["com.amazonaws.ecs.task-definition-version"],
            revision.to_string()
        );
        if name == "server" {
            assert_eq!(labels["ecs-executor-test.family"], family, "dockerLabels are applied");
        }
    }

    // The link alias resolves to the server container of the same task.
    wait_for_pong(&docker, ids["client"], "backend").await;

    let stopping = Instant::now();
    let stopped = stop(&standin, &ecs, &arn, Some("done with it")).await;
    eprintln!("StopTask -> STOPPED observed after {:?}", stopping.elapsed());
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert_eq!(stopped.stopped_reason(), Some("done with it"));
    for name in ["server", "client"] {
        let c = container_of(&stopped, name);
        assert_eq!(
            (c.last_status(), c.exit_code()),
            (Some("STOPPED"), Some(0)),
            "SIGTERM ends {name} at once: {c:#?}"
        );
    }
    // As on a real instance, stopped containers stay (the agent removes them hours later).
    let kept = docker_containers(&docker, &arn).await;
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter()
            .all(|c| c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("exited")),
        "{kept:#?}"
    );
}

#[tokio::test]
async fn a_task_whose_image_is_missing_stops_with_cannot_pull_container_error() {
    let (standin, ecs, family) = setup("no-image").await;
    let image = format!("ecs-executor-test/{}:1", unique_name("absent").to_lowercase());
    let (td, _) = register(
        &ecs,
        &family,
        vec![container("main", &image, KEEP_ALIVE).build()],
        vec![],
    )
    .await;

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap();
    let stopped = wait_stopped(&standin, &ecs, arn, START_TIMEOUT).await;

    let reference = format!("docker.io/{image}");
    let expected = format!(
        "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref {reference}: {reference}: not found"
    );
    assert_eq!(stopped.stopped_reason(), Some(expected.as_str()));
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    let main = container_of(&stopped, "main");
    assert_eq!(main.reason(), Some(expected.as_str()));
    assert_eq!(main.runtime_id(), None, "no container was created");
    assert!(docker_containers(&standin.docker(), arn).await.is_empty());
}

#[tokio::test]
async fn an_essential_container_that_exits_stops_the_task_with_its_exit_code() {
    let (standin, ecs, family) = setup("essential-exit").await;
    let image = &standin.images.build;
    let main = container("main", image, "sleep 1; exit 3").build();
    let sidecar = container("sidecar", image, KEEP_ALIVE).essential(false).build();
    let (td, _) = register(&ecs, &family, vec![main, sidecar], vec![]).await;

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap();
    let stopped = wait_stopped(&standin, &ecs, arn, START_TIMEOUT).await;

    assert_eq!(
        stopped.stop_code().map(|c| c.as_str()),
        Some("EssentialContainerExited")
    );
    assert_eq!(stopped.stopped_reason(), Some("Essential container in task exited"));
    assert_eq!(container_of(&stopped, "main").exit_code(), Some(3));
    assert_eq!(
        container_of(&stopped, "sidecar").exit_code(),
        Some(0),
        "the agent stopped the sidecar with SIGTERM"
    );
    assert!(stopped.started_at().is_some(), "the task ran before it stopped");
}

#[tokio::test]
async fn a_non_essential_container_that_exits_is_reported_and_the_task_goes_on() {
    let (standin, ecs, family) = setup("non-essential-exit").await;
    let image = &standin.images.build;
    let worker = container("worker", image, KEEP_ALIVE).build();
    let setup = container("setup", image, "exit 5").essential(false).build();
    let (td, _) = register(&ecs, &family, vec![worker, setup], vec![]).await;

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap();
    let task = wait_for(&standin, &ecs, arn, "RUNNING with setup STOPPED", START_TIMEOUT, |t| {
        last_status(t) == "RUNNING" && container_of(t, "setup").last_status() == Some("STOPPED")
    })
    .await;
    assert_eq!(container_of(&task, "setup").exit_code(), Some(5));
    assert_eq!(container_of(&task, "worker").last_status(), Some("RUNNING"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        last_status(&describe(&standin, &ecs, arn).await),
        "RUNNING",
        "the task goes on"
    );

    let stopped = stop(&standin, &ecs, arn, None).await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert_eq!(stopped.stopped_reason(), Some("Task stopped by user"));
    assert_eq!(container_of(&stopped, "worker").exit_code(), Some(0));
    assert_eq!(container_of(&stopped, "setup").exit_code(), Some(5));
}

#[tokio::test]
async fn a_task_stopped_while_pending_stops_without_starting_containers() {
    let (standin, ecs, family) = setup("stop-pending").await;
    let td = register_keep_alive(&standin, &ecs, &family).await;
    // Hold the agent at its DescribeTaskDefinition for this family, so the task stays PENDING.
    let _slow = standin.inject(&Fault::ecs_delay("DescribeTaskDefinition", 2000, 1).matching(&family));

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(last_status(&describe(&standin, &ecs, arn).await), "PENDING");
    let stopped = stop(&standin, &ecs, arn, None).await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert!(stopped.started_at().is_none(), "it never ran: {stopped:#?}");
    assert!(
        docker_containers(&standin.docker(), arn).await.is_empty(),
        "no container was created"
    );
}

/// The task volume `data` at /data.
fn data_mount(read_only: bool) -> MountPoint {
    MountPoint::builder()
        .source_volume("data")
        .container_path("/data")
        .read_only(read_only)
        .build()
}

fn after(container: &str, condition: ContainerCondition) -> ContainerDependency {
    ContainerDependency::builder()
        .container_name(container)
        .condition(condition)
        .build()
        .unwrap()
}

#[tokio::test]
async fn definition_settings_volumes_and_depends_on_reach_docker() {
    let (standin, ecs, family) = setup("settings").await;
    let docker = standin.docker();
    let image = &standin.images.build;
    let init = container("init", image, "sleep 1; echo ready > /data/flag")
        .essential(false)
        .mount_points(data_mount(false))
        .build();
    let writer = container(
        "writer",
        image,
        &format!("cat /data/flag > seen; echo \"$GREETING\" > greeting; {KEEP_ALIVE}"),
    )
    .environment(KeyValuePair::builder().name("GREETING").value("hello").build())
    .working_directory("/data")
    .mount_points(data_mount(false))
    .extra_hosts(
        HostEntry::builder()
            .hostname("gitlab.local")
            .ip_address("10.1.2.3")
            .build()
            .unwrap(),
    )
    .ulimits(
        Ulimit::builder()
            .name(UlimitName::Nofile)
            .soft_limit(1024)
            .hard_limit(2048)
            .build()
            .unwrap(),
    )
    .linux_parameters(LinuxParameters::builder().init_process_enabled(true).build())
    .depends_on(after("init", ContainerCondition::Complete))
    .build();
    let reader = container("reader", image, KEEP_ALIVE)
        .user("1000")
        .mount_points(data_mount(true))
        .depends_on(after("writer", ContainerCondition::Start))
        .build();
    let (td, revision) = register(
        &ecs,
        &family,
        vec![init, writer, reader],
        vec![Volume::builder().name("data").build()],
    )
    .await;

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    let arn = placed.task_arn().unwrap();
    let running = wait_for(&standin, &ecs, arn, "RUNNING", START_TIMEOUT, |t| {
        last_status(t) != "PENDING"
    })
    .await;
    assert_eq!(last_status(&running), "RUNNING", "{running:#?}");
    assert_eq!(
        container_of(&running, "init").exit_code(),
        Some(0),
        "init ran to completion first"
    );
    let id = |name: &str| container_of(&running, name).runtime_id().unwrap().to_string();

    let writer = docker
        .inspect_container(&id("writer"), None::<InspectContainerOptions>)
        .await
        .unwrap();
    let config = writer.config.unwrap();
    let host = writer.host_config.unwrap();
    assert!(config.env.unwrap().contains(&"GREETING=hello".to_string()));
    assert_eq!(config.working_dir.as_deref(), Some("/data"));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.extra_hosts, Some(vec!["gitlab.local:10.1.2.3".to_string()]));
    let ulimit = &host.ulimits.unwrap()[0];
    assert_eq!(
        (ulimit.name.as_deref(), ulimit.soft, ulimit.hard),
        (Some("nofile"), Some(1024), Some(2048))
    );
    assert_eq!(host.memory, Some(64 << 20));

    // One task-scoped volume, named as the agent names it, shared by all three containers.
    let filters = HashMap::from([("label".to_string(), vec![format!("com.amazonaws.ecs.task-arn={arn}")])]);
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions { filters: Some(filters) }))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    assert_eq!(volumes.len(), 1, "{volumes:#?}");
    assert!(
        has_agent_name(&volumes[0].name, &family, revision, "data"),
        "{}",
        volumes[0].name
    );

    let reader_id = id("reader");
    let (_, uid) = exec(&docker, &reader_id, "id -u").await;
    assert_eq!(uid.trim(), "1000");
    let (_, seen) = exec(&docker, &reader_id, "cat /data/seen /data/greeting").await;
    assert_eq!(
        seen, "ready\nhello\n",
        "writer started after init completed and wrote to the shared volume"
    );
    let (code, _) = exec(&docker, &reader_id, "touch /data/x").await;
    assert_ne!(code, 0, "the reader's mount is read-only");

    let stopped = stop(&standin, &ecs, arn, None).await;
    assert_eq!(
        container_of(&stopped, "writer").exit_code(),
        Some(0),
        "docker --init passes SIGTERM on"
    );
    assert_eq!(container_of(&stopped, "reader").exit_code(), Some(0));
}

#[tokio::test]
async fn two_throttled_run_tasks_are_absorbed_by_the_sdk_standard_retry() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let (family, td, fault, mark) = throttled_family(&standin, &ecs, "throttle-absorbed", 2).await;

    let (placed, _guard) = run_task(&standin, &ecs, &td).await;
    assert_eq!(last_status(&placed), "PENDING");

    let calls = standin.calls_since(mark, "RunTask", &family);
    assert_eq!(
        calls.len(),
        3,
        "two throttled attempts and one that went through: {calls:#?}"
    );
    assert_eq!(
        calls.iter().map(|c| c.fault.is_some()).collect::<Vec<_>>(),
        vec![true, true, false]
    );
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![Some(400), Some(400), Some(200)]
    );
    let rule = standin
        .faults()
        .into_iter()
        .find(|f| f["id"] == fault.id.as_str())
        .expect("the rule is listed");
    assert_eq!(rule["remaining"], 0);
}

#[tokio::test]
async fn three_throttled_run_tasks_exhaust_three_attempts_and_surface_the_error() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let (family, td, _fault, mark) = throttled_family(&standin, &ecs, "throttle-surfaced", 3).await;

    let err = ecs
        .run_task()
        .cluster(&standin.cluster)
        .task_definition(&td)
        .count(1)
        .send()
        .await
        .expect_err("RunTask is throttled");
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    assert_eq!(err.message(), Some("Rate exceeded"));
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.meta().code() == Some("ThrottlingException"))
    );

    let calls = standin.calls_since(mark, "RunTask", &family).len();
    assert_eq!(calls, 3, "max_attempts = 3");
    let tasks = ecs
        .list_tasks()
        .cluster(&standin.cluster)
        .family(&family)
        .send()
        .await
        .unwrap();
    assert!(
        tasks.task_arns().is_empty(),
        "no task was started: {:?}",
        tasks.task_arns()
    );
}

/// A Docker TLS client (with or without the client certificate) for each of the instance's
/// addresses, with the address.
fn tls_clients(standin: &Standin, cert: ClientCert) -> Vec<(String, Docker)> {
    [&standin.private_ip, &standin.public_ip]
        .into_iter()
        .map(|ip| {
            let address = format!("{ip}:{}", standin.docker_port);
            let docker = standin.docker_tls(&address, cert).expect("TLS client");
            (address, docker)
        })
        .collect()
}

#[tokio::test]
async fn docker_tls_admits_clients_with_the_certificate_on_both_addresses() {
    for (address, docker) in tls_clients(&Standin::require(), ClientCert::Present) {
        let pong = docker
            .ping()
            .await
            .unwrap_or_else(|e| panic!("ping {address} with the client certificate: {e}"));
        assert_eq!(pong, "OK", "{address}");
        let version = docker
            .version()
            .await
            .unwrap_or_else(|e| panic!("version at {address}: {e}"));
        assert_eq!(version.api_version.as_deref(), Some("1.41"), "{address}");
    }
}

#[tokio::test]
async fn docker_tls_refuses_clients_without_a_certificate() {
    for (address, docker) in tls_clients(&Standin::require(), ClientCert::Absent) {
        let refused = docker.ping().await;
        assert!(
            refused.is_err(),
            "{address} answered a client without a certificate: {refused:?}"
        );
    }
}

/// The agent stand-in takes tasks to RUNNING and, after StopTask, to STOPPED, three times in a
/// row, and prints how long that took as a client of ECS sees it. Speed is not asserted here
/// (tests are not benchmarks: `tests/bench/` holds the timed runs).
#[tokio::test]
async fn the_agent_takes_tasks_through_run_task_and_stop_task_repeatedly() {
    let (standin, ecs, family) = setup("reaction").await;
    let td = register_keep_alive(&standin, &ecs, &family).await;
    let (mut to_running, mut to_stopped) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let started = Instant::now();
        let (placed, _guard) = run_task(&standin, &ecs, &td).await;
        let arn = placed.task_arn().unwrap();
        wait_running(&standin, &ecs, arn).await;
        to_running.push(started.elapsed());
        let stopping = Instant::now();
        stop(&standin, &ecs, arn, None).await;
        to_stopped.push(stopping.elapsed());
    }
    to_running.sort();
    to_stopped.sort();
    eprintln!("RunTask -> RUNNING: {to_running:?} (median {:?})", to_running[1]);
    eprintln!("StopTask -> STOPPED: {to_stopped:?} (median {:?})", to_stopped[1]);
}

/// An agent stand-in process this test starts; killed if the test ends early.
struct OwnAgent {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl OwnAgent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second agent stand-in, serving a cluster and container instance of its own (so nothing
/// it does touches other tests), rides out ECS errors, removes a stopped task's containers
/// after `--cleanup-after`, and exits at once on SIGTERM.
#[tokio::test]
async fn an_agent_of_its_own_rides_out_ecs_errors_cleans_up_and_exits_on_sigterm() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let docker = standin.docker();
    let cluster = unique_name("agent-check");
    let instance_arn = cluster_with_instance(&ecs, &cluster, &standin.instance_id).await;

    // Its first ListTasks calls fail; it must log, back off and carry on.
    let _errors = standin.inject(
        &Fault::ecs_error("ListTasks", "ServerException", 3)
            .status(500)
            .message("boom")
            .matching(&cluster),
    );
    let log = std::env::temp_dir().join(format!("{cluster}.log"));
    let child = std::process::Command::new(agent_binary())
        .args(["--standin", &standin.state_dir.join("standin.json").to_string_lossy()])
        .args([
            "--cluster",
            &cluster,
            "--container-instance",
            &instance_arn,
            "--cleanup-after",
            "2",
        ])
        .stderr(std::fs::File::create(&log).expect("agent log file"))
        .spawn()
        .expect("start ecs-agent-standin");
    let mut agent = OwnAgent { child, log };

    let family = unique_name("own-agent");
    let td = register_keep_alive(&standin, &ecs, &family).await;
    let out = ecs
        .run_task()
        .cluster(&cluster)
        .task_definition(&td)
        .send()
        .await
        .expect("RunTask");
    let arn = out.tasks()[0].task_arn().unwrap().to_string();
    let on_own_cluster = Standin {
        cluster: cluster.clone(),
        ..standin.clone()
    };
    let _guard = TaskGuard::new(&on_own_cluster, &arn);
    let running = wait_running(&on_own_cluster, &ecs, &arn).await;
    let labels = docker_containers(&docker, &arn).await[0].labels.clone().unwrap();
    assert_eq!(labels["com.amazonaws.ecs.cluster"], cluster);
    assert!(
        agent
            .log()
            .contains("ListTasks failed: ServerException (HTTP 500): boom"),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("ECS answers again"), "{}", agent.log());

    let stopped = stop(&on_own_cluster, &ecs, &arn, None).await;
    assert_eq!(
        container_of(&stopped, "main").runtime_id(),
        container_of(&running, "main").runtime_id()
    );

    // Kept for --cleanup-after 2 s, then removed (with the task's volumes).
    assert_eq!(
        docker_containers(&docker, &arn).await.len(),
        1,
        "stopped containers are kept at first"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !docker_containers(&docker, &arn).await.is_empty() {
        assert!(Instant::now() < deadline, "not cleaned up; agent log:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agent.log().contains("cleanup: removed 1 container(s)"),
        "{}",
        agent.log()
    );

    // SIGTERM: out at once, status 0.
    let pid = agent.child.id() as i32;
    let signalled = Instant::now();
    // SAFETY: sending a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("wait for the agent") {
            break status;
        }
        assert!(
            // Not a speed bound: an agent that ignores SIGTERM never exits (a loaded machine
            // has taken more than the 2 s this allowed before).
            signalled.elapsed() < Duration::from_secs(30),
            "the agent ignores SIGTERM; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("SIGTERM -> exit after {:?}", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(agent.log().contains("SIGTERM: exiting"), "{}", agent.log());

    let _ = ecs
        .deregister_container_instance()
        .cluster(&cluster)
        .container_instance(&instance_arn)
        .force(true)
        .send()
        .await;
    let _ = ecs.delete_cluster().cluster(&cluster).send().await;
    let _ = std::fs::remove_file(&agent.log);
}

/// A container the test creates on the shared dockerd as an agent stand-in labels a task's
/// container: `cluster`'s label, a task ARN moto does not know, and `endpoint`'s label.
/// Returns (container id, task id).
async fn standin_labelled_container(
    docker: &Docker,
    image: &str,
    cluster: &str,
    endpoint: &str,
    start: bool,
) -> (String, String) {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
    let task_id = unique_name("t");
    let task_arn = format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/{task_id}");
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), KEEP_ALIVE.into()]),
        labels: Some(HashMap::from([
            ("com.amazonaws.ecs.cluster".to_string(), cluster.to_string()),
            ("com.amazonaws.ecs.task-arn".to_string(), task_arn),
            ("com.amazonaws.ecs.container-name".to_string(), "main".to_string()),
            ("ecs-agent-standin.ecs-endpoint".to_string(), endpoint.to_string()),
        ])),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .expect("docker create")
        .id;
    if start {
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .expect("docker start");
    }
    (id, task_id)
}

/// Several stand-ins share the one dockerd (the shared one, tests' and benchmarks' own, each
/// with its own moto and maybe the same cluster name, e.g. two runs of tests/bench/scale): an
/// agent stops and cleans up only what it created through its own ECS endpoint, as a real
/// agent (one Docker per instance) never touches containers it does not manage. Before the
/// endpoint label, an agent's orphan scan took another stand-in's running containers (their
/// tasks unknown to its moto) for orphans and stopped them mid-job, and its cleanup removed
/// containers the other agent had created but not yet started (a 100-job burst beside a
/// second bench run: `run` met "409 container is not running", 8 of 100 jobs passed).
#[tokio::test]
async fn an_agent_leaves_containers_of_another_stand_in_on_the_shared_dockerd_alone() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let docker = standin.docker();
    let cluster = unique_name("foreign-check");
    let instance_arn = cluster_with_instance(&ecs, &cluster, &standin.instance_id).await;
    let image = &standin.images.build;
    // Another stand-in's: same cluster name, another moto. One running, one created and not
    // yet started (its agent is about to start it).
    let other = "http://127.0.0.1:1";
    let (foreign_running, foreign_task) = standin_labelled_container(&docker, image, &cluster, other, true).await;
    let (foreign_created, _) = standin_labelled_container(&docker, image, &cluster, other, false).await;
    // Ours (through this moto) and unknown to it: a true orphan (moto was reset), stopped.
    let (own_orphan, own_task) = standin_labelled_container(&docker, image, &cluster, &standin.endpoint, true).await;
    /// Removes the test's containers however the test ends.
    struct Remove(Vec<String>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for id in &self.0 {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v", id])
                    .output();
            }
        }
    }
    let _remove = Remove(vec![
        foreign_running.clone(),
        foreign_created.clone(),
        own_orphan.clone(),
    ]);

    let log = std::env::temp_dir().join(format!("{cluster}.log"));
    let child = std::process::Command::new(agent_binary())
        .args(["--standin", &standin.state_dir.join("standin.json").to_string_lossy()])
        .args(["--cluster", &cluster, "--container-instance", &instance_arn])
        // The orphan scan every 50 polls (~1 s at 20 ms), the cleanup sweep every second.
        .args(["--poll-ms", "20", "--cleanup-after", "1"])
        .stderr(std::fs::File::create(&log).expect("agent log file"))
        .spawn()
        .expect("start ecs-agent-standin");
    let agent = OwnAgent { child, log };

    let running = |id: String| {
        let docker = docker.clone();
        async move {
            match docker.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(info) => Some(info.state.and_then(|s| s.running).unwrap_or(false)),
                Err(_) => None, // removed
            }
        }
    };
    // The own orphan is stopped, then removed by the cleanup sweep: both passes have run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(own_orphan.clone()).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the agent's own orphan was not stopped and removed; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more scans and sweeps.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running(foreign_running.clone()).await,
        Some(true),
        "another stand-in's running container was stopped or removed; agent log:\n{}",
        agent.log()
    );
    assert_eq!(
        running(foreign_created.clone()).await,
        Some(false),
        "another stand-in's created container was removed; agent log:\n{}",
        agent.log()
    );
    let text = agent.log();
    assert!(
        text.contains(&format!(
            "task {own_task}: is unknown to ECS but 1 container(s) of it run here"
        )),
        "{text}"
    );
    assert!(!text.contains(&foreign_task), "{text}");

    drop(agent);
    let _ = ecs
        .deregister_container_instance()
        .cluster(&cluster)
        .container_instance(&instance_arn)
        .force(true)
        .send()
        .await;
    let _ = ecs.delete_cluster().cluster(&cluster).send().await;
}

/// Our awsvpc emulation: the task's first container owns a network namespace (on Docker's
/// bridge) and the others join it, so they reach each other on localhost as in an ENI.
#[tokio::test]
async fn awsvpc_containers_share_one_network_namespace() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let ec2 = standin.ec2(3).await;
    let docker = standin.docker();
    let family = unique_name("awsvpc");
    let image = &standin.images.build;
    let server = pong_server(image).build();
    let client = container("client", image, KEEP_ALIVE).build();
    let out = ecs
        .register_task_definition()
        .family(&family)
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(server)
        .container_definitions(client)
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let td = out
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_string();
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let group = ec2.describe_security_groups().send().await.unwrap().security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    let vpc = aws_sdk_ecs::types::AwsVpcConfiguration::builder()
        .subnets(subnet)
        .security_groups(group)
        .build()
        .unwrap();
    let out = ecs
        .run_task()
        .cluster(&standin.cluster)
        .task_definition(&td)
        .network_configuration(
            aws_sdk_ecs::types::NetworkConfiguration::builder()
                .awsvpc_configuration(vpc)
                .build(),
        )
        .send()
        .await
        .expect("RunTask");
    let arn = out.tasks()[0].task_arn().unwrap().to_string();
    let _guard = TaskGuard::new(&standin, &arn);

    let running = wait_running(&standin, &ecs, &arn).await;
    let server_id = container_of(&running, "server").runtime_id().unwrap();
    let client_id = container_of(&running, "client").runtime_id().unwrap();
    let client = docker
        .inspect_container(client_id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(
        client.host_config.unwrap().network_mode,
        Some(format!("container:{server_id}"))
    );
    wait_for_pong(&docker, client_id, "127.0.0.1").await;

    let stopped = stop(&standin, &ecs, &arn, None).await;
    assert_eq!(container_of(&stopped, "client").exit_code(), Some(0));
    assert_eq!(container_of(&stopped, "server").exit_code(), Some(0));
}

/// With `ECS_DYNAMIC_HOST_PORT_RANGE` the agent picks a dynamic host port (hostPort 0) from
/// the range itself, as the real agent does: the task's network binding is inside the range
/// and the container answers there. A malformed range stops the agent at startup, naming the
/// variable.
#[tokio::test]
async fn an_agent_with_a_dynamic_host_port_range_publishes_dynamic_ports_inside_it() {
    let standin = Standin::require();
    let ecs = standin.ecs(3).await;
    let standin_json = standin.state_dir.join("standin.json");

    let bad_log = std::env::temp_dir().join(format!("{}.log", unique_name("bad-range")));
    let child = std::process::Command::new(agent_binary())
        .env("ECS_DYNAMIC_HOST_PORT_RANGE", "47320")
        .args([
            "--standin",
            &standin_json.to_string_lossy(),
            "--cluster",
            "no-such-cluster",
        ])
        .args(["--container-instance", "arn:none"])
        .stderr(std::fs::File::create(&bad_log).expect("agent log file"))
        .spawn()
        .expect("start ecs-agent-standin");
    let mut bad = OwnAgent { child, log: bad_log };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = bad.child.try_wait().expect("wait for the agent") {
            break status;
        }
        assert!(Instant::now() < deadline, "a bad range was accepted: {}", bad.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "a bad range was accepted: {}", bad.log());
    assert!(bad.log().contains("ECS_DYNAMIC_HOST_PORT_RANGE"), "{}", bad.log());
    let _ = std::fs::remove_file(&bad.log);

    let cluster = unique_name("port-range");
    let instance_arn = cluster_with_instance(&ecs, &cluster, &standin.instance_id).await;
    // Ten ports far from Docker's own picks (the kernel's ephemeral range starts at 32768 and
    // Docker hands its ports out from the bottom) and from any other test's.
    let (start, end) = (47310u16, 47319u16);
    let log = std::env::temp_dir().join(format!("{cluster}.log"));
    let child = std::process::Command::new(agent_binary())
        .env("ECS_DYNAMIC_HOST_PORT_RANGE", format!("{start}-{end}"))
        .args(["--standin", &standin_json.to_string_lossy()])
        .args(["--cluster", &cluster, "--container-instance", &instance_arn])
        .stderr(std::fs::File::create(&log).expect("agent log file"))
        .spawn()
        .expect("start ecs-agent-standin");
    let agent = OwnAgent { child, log };

    let family = unique_name("dyn-port");
    let server = pong_server(&standin.images.build)
        .port_mappings(
            aws_sdk_ecs::types::PortMapping::builder()
                .container_port(7777)
                .host_port(0)
                .build(),
        )
        .build();
    let (td, _) = register(&ecs, &family, vec![server], vec![]).await;
    let out = ecs
        .run_task()
        .cluster(&cluster)
        .task_definition(&td)
        .send()
        .await
        .expect("RunTask");
    let arn = out.tasks()[0].task_arn().unwrap().to_string();
    let on_own_cluster = Standin {
        cluster: cluster.clone(),
        ..standin.clone()
    };
    let _guard = TaskGuard::new(&on_own_cluster, &arn);
    let running = wait_running(&on_own_cluster, &ecs, &arn).await;
    let bindings = container_of(&running, "server").network_bindings();
    // One binding per address family Docker publishes on (0.0.0.0 and ::), the same port.
    assert!(!bindings.is_empty(), "no network bindings; agent log:\n{}", agent.log());
    let host_port = bindings[0].host_port().expect("a host port") as u16;
    for b in bindings {
        assert_eq!(
            (b.container_port(), b.host_port()),
            (Some(7777), Some(host_port.into())),
            "{bindings:?}"
        );
    }
    assert!(
        (start..=end).contains(&host_port),
        "host port {host_port} is outside {start}-{end}; agent log:\n{}",
        agent.log()
    );

    // Reachable there from the host.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = (|| -> std::io::Result<String> {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", host_port))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match answer {
            Ok(out) if out.contains("pong") => break,
            other => assert!(Instant::now() < deadline, "no pong at 127.0.0.1:{host_port}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agent
            .log()
            .contains(&format!("ECS_DYNAMIC_HOST_PORT_RANGE {start}-{end}")),
        "{}",
        agent.log()
    );

    stop(&on_own_cluster, &ecs, &arn, None).await;
    drop(agent);
    let _ = ecs
        .deregister_container_instance()
        .cluster(&cluster)
        .container_instance(&instance_arn)
        .force(true)
        .send()
        .await;
    let _ = ecs.delete_cluster().cluster(&cluster).send().await;
}
