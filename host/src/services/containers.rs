//! How a service becomes containers of the job's task: one non-essential container whose
//! only command is the launcher (no variable reaches ECS), linked from the build and helper
//! containers under each of its host names.

use std::collections::BTreeMap;

use super::spec::{JobServices, Service, link_name};
use crate::config::{Config, NetworkMode};
use crate::task::{ContainerSpec, TaskSpec};

/// A service container's command in the task definition: wait for the launch file, run it.
/// Exits at once on SIGTERM while it waits.
pub const LAUNCHER: &str = "trap 'exit 0' TERM INT; f=/tmp/.ecs-executor-launch; \
     while [ ! -s \"$f\" ]; do sleep 0.1; done; exec sh \"$f\"";

/// The built-in mapping of one service to task containers (what a plugin's `map-services`
/// falls back to): one non-essential container whose only command is the launcher.
pub fn builtin_containers(config: &Config, service: &Service) -> Vec<ContainerSpec> {
    vec![ContainerSpec {
        name: service.container.clone(),
        image: service.image.clone(),
        // A service that exits does not fail the job (GitLab warns and goes on).
        essential: false,
        cpu: None,
        memory: None,
        memory_reservation: None,
        entry_point: Some(vec!["sh".into(), "-c".into(), LAUNCHER.into()]),
        command: vec![],
        environment: BTreeMap::new(),
        mount_points: vec![],
        links: vec![],
        extra_hosts: vec![],
        docker_labels: BTreeMap::from([
            ("ecs-executor.role".to_string(), "service".to_string()),
            ("ecs-executor.service".to_string(), service.index.to_string()),
        ]),
        log_configuration: config.log_configuration.clone(),
        privileged: false,
        port_mappings: vec![],
        // `services: docker: user:` (the launcher and the service then run as that user).
        extra: crate::task::user_extra(service.user.as_deref()),
        repository_credentials: None,
    }]
}

/// Add a service's containers to the task: in `bridge` mode the build and helper containers
/// link to its first container under each of its host names that ECS accepts in a link (the
/// others, and every name in `awsvpc` mode, go into `/etc/hosts` once the task runs).
pub fn add_to_spec(spec: &mut TaskSpec, service: &Service, containers: Vec<ContainerSpec>) {
    let Some(first) = containers.first().map(|c| c.name.clone()) else {
        return;
    };
    if spec.network_mode == NetworkMode::Bridge {
        for c in spec
            .containers
            .iter_mut()
            .filter(|c| c.name == "build" || c.name == "helper")
        {
            for name in service.hostnames.iter().filter(|n| link_name(n)) {
                c.links.push(format!("{first}:{name}"));
            }
        }
    }
    spec.containers.extend(containers);
}

/// Host names that links cannot carry: `(name, container)` pairs for `/etc/hosts`.
pub fn hosts_file_names(mode: NetworkMode, services: &JobServices) -> Vec<(String, String)> {
    services
        .services
        .iter()
        .flat_map(|s| {
            s.hostnames
                .iter()
                .filter(move |n| mode != NetworkMode::Bridge || !link_name(n))
                .map(move |n| (n.clone(), s.container.clone()))
        })
        .collect()
}
