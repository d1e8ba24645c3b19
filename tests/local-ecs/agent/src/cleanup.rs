//! Removal of stopped tasks' containers and task-scoped volumes once they have been stopped
//! for `--cleanup-after` (the real agent's `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`, 3 h).
//! Works from what Docker holds, so it also covers tasks of an earlier run of the stand-in
//! against the same ECS endpoint; never another stand-in's (`naming::LABEL_ECS_ENDPOINT`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};

use crate::action_log::{parse_rfc3339, say, unix_now};
use crate::docker_events::ExitRoutes;
use crate::naming::{LABEL_TASK_ARN, own_label_filter, task_id};
use crate::task_run::Agent;

pub async fn sweep_forever(agent: Arc<Agent>, routes: ExitRoutes, after: Duration) {
    let every = (after / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sweep(&agent, &routes, after.as_secs() as i64).await {
            say!("cleanup: Docker: {e}");
        }
    }
}

async fn sweep(agent: &Agent, routes: &ExitRoutes, after: i64) -> Result<(), bollard::errors::Error> {
    let docker = &agent.docker;
    // Only what this agent created: other stand-ins share the dockerd, maybe the cluster name.
    let cluster_filter = own_label_filter(&agent.cluster, &agent.endpoint);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(cluster_filter.clone()),
            ..Default::default()
        }))
        .await?;
    let mut by_task: HashMap<String, Vec<ContainerSummary>> = HashMap::new();
    for c in containers {
        if let Some(arn) = c.labels.as_ref().and_then(|l| l.get(LABEL_TASK_ARN)) {
            by_task.entry(arn.clone()).or_default().push(c);
        }
    }
    let now = unix_now();
    for (arn, members) in &by_task {
        if routes.lock().unwrap().contains_key(arn) {
            continue;
        }
        let active = |c: &ContainerSummary| {
            matches!(
                c.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::REMOVING
                        | ContainerSummaryStateEnum::STOPPING
                )
            )
        };
        if members.iter().any(active) {
            continue;
        }
        let mut last_stop = None;
        for c in members {
            let Some(id) = &c.id else { continue };
            let info = docker.inspect_container(id, None::<InspectContainerOptions>).await?;
            let finished = info.state.and_then(|s| s.finished_at).and_then(|t| parse_rfc3339(&t));
            let stopped = finished.or(info.created.and_then(|t| parse_rfc3339(&t)));
            last_stop = last_stop.max(stopped);
        }
        let Some(last_stop) = last_stop else { continue };
        if now - last_stop < after {
            continue;
        }
        for c in members {
            let Some(id) = &c.id else { continue };
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            if let Err(e) = docker.remove_container(id, Some(options)).await {
                say!("cleanup: removing container {id} of task {}: {e}", task_id(arn));
            }
        }
        let removed = remove_task_volumes(agent, arn).await;
        say!(
            "cleanup: removed {} container(s) and {removed} volume(s) of task {} (stopped {} s ago)",
            members.len(),
            task_id(arn),
            now - last_stop
        );
    }
    // Task volumes whose containers are gone (e.g. the task failed before creating any).
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(cluster_filter),
        }))
        .await?;
    for v in volumes.volumes.unwrap_or_default() {
        let Some(arn) = v.labels.get(LABEL_TASK_ARN) else {
            continue;
        };
        if by_task.contains_key(arn) || routes.lock().unwrap().contains_key(arn) {
            continue;
        }
        let created = v.created_at.as_deref().and_then(parse_rfc3339);
        if created.is_some_and(|t| now - t >= after) {
            match docker.remove_volume(&v.name, None::<RemoveVolumeOptions>).await {
                Ok(()) => say!("cleanup: removed volume {} of task {}", v.name, task_id(arn)),
                Err(e) => say!("cleanup: removing volume {}: {e}", v.name),
            }
        }
    }
    Ok(())
}

async fn remove_task_volumes(agent: &Agent, arn: &str) -> usize {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_TASK_ARN}={arn}")])]);
    let Ok(list) = agent
        .docker
        .list_volumes(Some(ListVolumesOptions { filters: Some(filters) }))
        .await
    else {
        return 0;
    };
    let mut removed = 0;
    for v in list.volumes.unwrap_or_default() {
        match agent.docker.remove_volume(&v.name, None::<RemoveVolumeOptions>).await {
            Ok(()) => removed += 1,
            Err(e) => say!("cleanup: removing volume {}: {e}", v.name),
        }
    }
    removed
}
