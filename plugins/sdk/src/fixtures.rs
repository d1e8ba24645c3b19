//! Inputs for plugins' native unit tests, shaped like the executor's and like the fixtures of
//! `ecs-executor plugin test` (see the case-file format): a job, the built-in task
//! definition, a private-IP-only instance and a CI service. Tests change what they need:
//!
//! ```
//! use ecs_executor_plugin_sdk::fixtures;
//! let mut job = fixtures::job();
//! job.project_path = "team/app".into();
//! let task = fixtures::task(&job);
//! assert_eq!(task.containers[0].image, "alpine:3");
//! ```

use crate::types::{
    CiService, ContainerDefinition, Instance, JobContext, KeyValue, MountPoint, NetworkMode, TaskDefinition, Volume,
};

/// The helper image the fixtures use (GitLab's, as the executor picks by default).
pub const HELPER_IMAGE: &str = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:alpine-x86_64-latest";

/// The keep-alive command of `build` and `helper` (after `sh -c`); the job's script is
/// executed into them later.
pub const KEEP_ALIVE: &str = "while :; do sleep 3600; done";

/// A `key-value` pair.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// Job 1 of `group/project` on `main`, image `alpine:3`, nothing else set.
pub fn job() -> JobContext {
    JobContext {
        job_id: 1,
        pipeline_id: 0,
        project_id: 0,
        project_path: "group/project".into(),
        ref_name: "main".into(),
        ref_protected: false,
        commit_sha: String::new(),
        image: "alpine:3".into(),
        image_entrypoint: None,
        services: Vec::new(),
        runner_tags: Vec::new(),
        variables: Vec::new(),
        trusted: Vec::new(),
    }
}

/// A container with `name` and `image` and every other field empty or off.
pub fn container(name: &str, image: &str) -> ContainerDefinition {
    ContainerDefinition {
        name: name.into(),
        image: image.into(),
        cpu: None,
        memory: None,
        memory_reservation: None,
        essential: false,
        entry_point: None,
        command: Vec::new(),
        environment: Vec::new(),
        mount_points: Vec::new(),
        links: Vec::new(),
        docker_labels: Vec::new(),
        log_configuration: None,
        privileged: false,
        extra: None,
    }
}

/// The built-in shape for `job`, field for field the `task` fixture of `ecs-executor plugin
/// test` (`plugin-host/src/json.rs`, `default_task`); the executor's real one differs in
/// detail (its keep-alive command, the helper tag of the runner's version, the family hash): essential containers `build` (the job's image) and `helper`, each running
/// a keep-alive loop, labelled `ecs-executor.role` = its name and mounting volume `builds` at
/// `/builds`; bridge mode, 1024 CPU units, 2048 MiB.
pub fn task(job: &JobContext) -> TaskDefinition {
    let builds = MountPoint {
        source_volume: "builds".into(),
        container_path: "/builds".into(),
        read_only: false,
    };
    let essential = |mut container: ContainerDefinition| {
        container.essential = true;
        container.command = vec!["sh".into(), "-c".into(), KEEP_ALIVE.into()];
        container.mount_points = vec![builds.clone()];
        container.docker_labels = vec![kv("ecs-executor.role", &container.name)];
        container
    };
    let mut build = essential(container("build", &job.image));
    build.entry_point = job.image_entrypoint.clone();
    TaskDefinition {
        family: "ecs-executor-0000000000000000".into(),
        task_role_arn: None,
        execution_role_arn: None,
        network_mode: NetworkMode::Bridge,
        cpu: Some(1024),
        memory: Some(2048),
        containers: vec![build, essential(container("helper", HELPER_IMAGE))],
        volumes: vec![Volume {
            name: "builds".into(),
            host_path: None,
            extra: None,
        }],
        placement_constraints: Vec::new(),
        tags: Vec::new(),
        extra: None,
    }
}

/// A private-IP-only container instance: private IPv4 `10.0.0.5` in `subnet-private`.
pub fn instance() -> Instance {
    Instance {
        container_instance_arn: "arn:aws:ecs:eu-west-1:123456789012:container-instance/ci/0123456789abcdef".into(),
        ec2_instance_id: "i-0123456789abcdef0".into(),
        private_ipv4: Some("10.0.0.5".into()),
        public_ipv4: None,
        ipv6: Vec::new(),
        subnet_id: Some("subnet-private".into()),
        vpc_id: None,
        availability_zone: None,
        instance_type: None,
        tags: Vec::new(),
        attributes: Vec::new(),
    }
}

/// A CI service running `image` under `aliases`, with no overrides and no variables.
pub fn service(image: &str, aliases: &[&str]) -> CiService {
    CiService {
        name: image.into(),
        aliases: aliases.iter().map(|alias| (*alias).into()).collect(),
        entrypoint: None,
        command: None,
        variables: Vec::new(),
    }
}
