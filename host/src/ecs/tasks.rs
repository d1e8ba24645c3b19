//! The job's task: run it (waiting while the cluster is full), watch it until RUNNING, stop
//! it, and find tasks again (`cleanup`, `gc`).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use aws_sdk_ecs::types::{AwsVpcConfiguration, CapacityProviderStrategyItem, LaunchType, NetworkConfiguration};

use super::budget::Category;
use super::poller::TaskWatch;
use super::{Ecs, EcsError, api, tag, tag_pairs};
use crate::config::Config;
use crate::failure::Failure;

/// The job's task as RunTask placed it.
#[derive(Debug, Clone)]
pub struct PlacedTask {
    pub arn: String,
    pub container_instance_arn: Option<String>,
}

/// What DescribeTasks says of the job's task.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskStatus {
    pub last_status: String,
    pub desired_status: String,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub container_instance_arn: Option<String>,
    /// The capacity provider ECS placed (or is provisioning) the task with.
    pub capacity_provider: Option<String>,
    pub containers: Vec<ContainerStatus>,
    /// DescribeTasks reported the task MISSING.
    pub missing: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub reason: Option<String>,
}

/// A task of the cluster as `gc` judges it.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    pub arn: String,
    pub started_by: String,
    /// Seconds since the epoch (ECS `createdAt`).
    pub created_at: Option<f64>,
    pub tags: Vec<(String, String)>,
}

impl TaskSummary {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Ecs {
    /// Run one task of `task_definition_arn`, identified by `started_by` and `tags`.
    /// Job variables never go into overrides: DescribeTasks shows overrides to anyone.
    pub async fn run_task(
        &self,
        config: &Config,
        task_definition_arn: &str,
        started_by: &str,
        tags: &[(&str, String)],
        client_token: &str,
    ) -> Result<PlacedTask, EcsError> {
        self.spend(Category::ClusterModify, "RunTask").await;
        let mut req = self
            .client
            .run_task()
            .cluster(&self.cluster)
            .task_definition(task_definition_arn)
            .count(1)
            // The SDK's own retries of this call resend the same token: ECS starts at most one
            // task for it, however often a lost answer makes the SDK try again.
            .client_token(client_token)
            .started_by(started_by)
            .enable_ecs_managed_tags(true);
        for (k, v) in tags {
            req = req.tags(tag(k, v));
        }
        if config.capacity_provider_strategy.is_empty() {
            req = req.launch_type(LaunchType::Ec2);
        } else {
            for cp in &config.capacity_provider_strategy {
                req = req.capacity_provider_strategy(
                    CapacityProviderStrategyItem::builder()
                        .capacity_provider(&cp.capacity_provider)
                        .weight(cp.weight)
                        .base(cp.base)
                        .build()
                        .expect("capacity_provider is set"),
                );
            }
        }
        if let Some(vpc) = &config.awsvpc {
            let awsvpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(vpc.subnets.clone()))
                // Unset (not empty) lets ECS use the VPC's default security group.
                .set_security_groups(Some(vpc.security_groups.clone()).filter(|g| !g.is_empty()))
                .assign_public_ip(if vpc.assign_public_ip {
                    aws_sdk_ecs::types::AssignPublicIp::Enabled
                } else {
                    aws_sdk_ecs::types::AssignPublicIp::Disabled
                })
                .build()
                .expect("subnets are set");
            req = req.network_configuration(NetworkConfiguration::builder().awsvpc_configuration(awsvpc).build());
        }
        let out = req.send().await.map_err(api("RunTask"))?;
        if let Some(task) = out.tasks().first() {
            return Ok(PlacedTask {
                arn: task.task_arn().unwrap_or_default().to_string(),
                container_instance_arn: task.container_instance_arn().map(String::from),
            });
        }
        let reasons: Vec<String> = out
            .failures()
            .iter()
            .map(|f| match (f.reason(), f.detail()) {
                (Some(r), Some(d)) => format!("{r} ({d})"),
                (Some(r), None) => r.to_string(),
                _ => "unknown reason".to_string(),
            })
            .collect();
        Err(EcsError::Placement {
            cluster: self.cluster.clone(),
            reasons: if reasons.is_empty() {
                "no task and no failure returned".into()
            } else {
                reasons.join(", ")
            },
        })
    }

    pub async fn describe_task(&self, task_arn: &str) -> Result<TaskStatus, EcsError> {
        self.describe_tasks(&[task_arn.to_string()])
            .await?
            .remove(task_arn)
            .ok_or(EcsError::Incomplete {
                action: "DescribeTasks",
                what: "task",
            })
    }

    /// DescribeTasks for up to 100 tasks in one call: each ARN's status (MISSING ones marked
    /// `missing`); an ARN ECS says nothing about is left out.
    pub async fn describe_tasks(&self, task_arns: &[String]) -> Result<BTreeMap<String, TaskStatus>, EcsError> {
        self.spend(Category::ClusterResourceRead, "DescribeTasks").await;
        let out = self
            .client
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(task_arns.to_vec()))
            .send()
            .await
            .map_err(api("DescribeTasks"))?;
        let mut statuses = BTreeMap::new();
        for f in out.failures() {
            if f.reason() == Some("MISSING")
                && let Some(arn) = f.arn()
            {
                statuses.insert(
                    arn.to_string(),
                    TaskStatus {
                        missing: true,
                        ..Default::default()
                    },
                );
            }
        }
        for task in out.tasks() {
            statuses.insert(task.task_arn().unwrap_or_default().to_string(), task_status(task));
        }
        Ok(statuses)
    }

    /// Stop a task; a task that is gone or already stopped is not an error.
    pub async fn stop_task(&self, task_arn: &str, reason: &str) -> Result<(), EcsError> {
        self.spend(Category::ClusterModify, "StopTask").await;
        let out = self
            .client
            .stop_task()
            .cluster(&self.cluster)
            .task(task_arn)
            .reason(reason)
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_parameter_exception() || s.is_client_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(api("StopTask")(e)),
        }
    }

    /// Add `tags` to a task (a claimed warm task gets its job's tags).
    pub async fn tag_task(&self, task_arn: &str, tags: &[(&str, String)]) -> Result<(), EcsError> {
        self.spend(Category::ClusterModify, "TagResource").await;
        let mut req = self.client.tag_resource().resource_arn(task_arn);
        for (k, v) in tags {
            req = req.tags(tag(k, v));
        }
        req.send().await.map_err(api("TagResource"))?;
        Ok(())
    }

    /// Tasks of this cluster that are meant to run and were started with `started_by`.
    pub async fn running_tasks_started_by(&self, started_by: &str) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        self.spend(Category::ClusterResourceRead, "ListTasks").await;
        let mut pages = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .started_by(started_by)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTasks"))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        Ok(arns)
    }

    /// Every task of the cluster that is meant to run, with tags and creation time.
    pub async fn tasks_meant_to_run(&self) -> Result<Vec<TaskSummary>, EcsError> {
        let mut arns = Vec::new();
        self.spend(Category::ClusterResourceRead, "ListTasks").await;
        let mut pages = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTasks"))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        let mut tasks = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(100) {
            self.spend(Category::ClusterResourceRead, "DescribeTasks").await;
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .map_err(api("DescribeTasks"))?;
            tasks.extend(out.tasks().iter().map(|t| TaskSummary {
                arn: t.task_arn().unwrap_or_default().to_string(),
                started_by: t.started_by().unwrap_or_default().to_string(),
                created_at: t.created_at().map(|d| d.as_secs_f64()),
                tags: tag_pairs(t.tags()),
            }));
        }
        Ok(tasks)
    }

    /// Tasks of `family` meant to run (any startedBy).
    pub async fn running_tasks_of_family(&self, family: &str) -> Result<Vec<String>, EcsError> {
        self.spend(Category::ClusterResourceRead, "ListTasks").await;
        let out = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .family(family)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .map_err(api("ListTasks"))?;
        Ok(out.task_arns().to_vec())
    }
}

fn task_status(task: &aws_sdk_ecs::types::Task) -> TaskStatus {
    TaskStatus {
        last_status: task.last_status().unwrap_or_default().to_string(),
        desired_status: task.desired_status().unwrap_or_default().to_string(),
        stop_code: task.stop_code().map(|c| c.as_str().to_string()),
        stopped_reason: task.stopped_reason().map(String::from),
        container_instance_arn: task.container_instance_arn().map(String::from),
        capacity_provider: task.capacity_provider_name().map(String::from),
        containers: task
            .containers()
            .iter()
            .map(|c| ContainerStatus {
                name: c.name().unwrap_or_default().to_string(),
                reason: c.reason().map(String::from),
            })
            .collect(),
        missing: false,
    }
}

/// Why a task did not reach RUNNING.
pub enum WaitError {
    /// ECS stopped it (its reason is in the status).
    Stopped(TaskStatus),
    Other(Failure),
}

impl From<EcsError> for WaitError {
    fn from(e: EcsError) -> Self {
        WaitError::Other(e.into())
    }
}

/// How prepare learned that the task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// ECS reported RUNNING, after this many DescribeTasks looks.
    Ecs(u32),
    /// Docker on the instance runs every container of the task (ECS's report not awaited),
    /// after this many DescribeTasks looks.
    Docker(u32),
}

impl Ecs {
    /// Wait until the task runs. Docker on the instance tells first: its start events for the
    /// task's containers. With `[aws] wait_for_ecs_running = false` (the default) that is the
    /// answer once `docker_all_running` confirms every container runs — checked on each start
    /// event and once a second (an event may come before the subscription) — and ECS is not
    /// asked; ECS is then only a slow fallback (a look every 10 s, after 30 s every 30 s, on a
    /// host-wide clock grid, through the host's shared poller) for what Docker cannot show: a
    /// pull that fails, a task ECS stops before it starts. With `wait_for_ecs_running` (or when a container stopped again), DescribeTasks
    /// once a second, and once more 100 ms after the last container started, until ECS says
    /// RUNNING.
    pub async fn wait_until_running(
        &self,
        config: &Config,
        watch: &mut TaskWatch<'_>,
        container_count: usize,
        (already_started, starts): (usize, impl Stream<Item = ()>),
        mut docker_all_running: impl AsyncFnMut() -> bool,
    ) -> Result<Running, WaitError> {
        use tokio::time::{Instant, sleep_until};
        let task_arn = watch.arn().to_string();
        let mut urgent = false;
        const STEADY: Duration = Duration::from_millis(1000);
        // ECS's fallback looks fall on a host-wide grid (wall-clock multiples of 10 s, the first
        // at least 5 s in): all the host's waiting jobs ask at the same moment, so the shared
        // poller answers them with one DescribeTasks per 100 tasks, however many wait. After
        // 30 s of waiting (slow pulls, a busy instance) the grid widens to 30 s.
        let waiting_since = Instant::now();
        let fallback_after = |at_least: Duration| -> Instant {
            let grid_ms: u128 = if waiting_since.elapsed() < Duration::from_secs(30) {
                10_000
            } else {
                30_000
            };
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let earliest = now_ms + at_least.as_millis();
            let next = earliest.div_ceil(grid_ms) * grid_ms;
            Instant::now() + Duration::from_millis((next - now_ms) as u64)
        };
        const AFTER_START: Duration = Duration::from_millis(100);
        let mut docker_suffices = !config.aws.wait_for_ecs_running;
        let deadline = Instant::now() + Duration::from_secs(config.start_timeout_secs);
        let mut events = std::pin::pin!(starts);
        // Containers that started before we subscribed.
        let mut started_containers = already_started;
        let mut events_open = true;
        let mut polls = 0u32;
        let mut next_docker_check = Instant::now();
        // With the event stream open, the start events usually tell first: the first look at
        // ECS comes a little later so a quick start costs one DescribeTasks (or none), not two.
        let mut next_poll = Instant::now()
            + if docker_suffices {
                fallback_after(Duration::from_secs(5)).saturating_duration_since(Instant::now())
            } else if started_containers >= container_count {
                Duration::ZERO
            } else {
                2 * STEADY
            };
        loop {
            if docker_suffices && Instant::now() >= next_docker_check {
                if docker_all_running().await {
                    return Ok(Running::Docker(polls));
                }
                next_docker_check = Instant::now() + STEADY;
            }
            let wake = if docker_suffices {
                next_poll.min(next_docker_check)
            } else {
                next_poll
            };
            tokio::select! {
                () = sleep_until(wake) => {}
                event = events.next(), if events_open => {
                    match event {
                        Some(()) => {
                            started_containers += 1;
                            if started_containers < container_count {
                                continue;
                            }
                            if docker_suffices {
                                if docker_all_running().await {
                                    return Ok(Running::Docker(polls));
                                }
                                // Counted twice, or one stopped again (then ECS will say why):
                                // ECS's word from here on.
                                docker_suffices = false;
                            }
                            // All started: the agent reports RUNNING shortly after. One look a
                            // little later (not at once, which would usually be too early and cost
                            // a second call), then back to the steady pace.
                            next_poll = Instant::now() + AFTER_START;
                            continue;
                        }
                        // The event stream is only a hint; polling goes on without it.
                        _ => { events_open = false; continue; }
                    }
                }
            }
            if Instant::now() < next_poll {
                continue; // a Docker check is due, not a look at ECS
            }
            if Instant::now() >= deadline {
                let last = watch.status(false).await?;
                return Err(WaitError::Other(Failure::system(format!(
                    "task {task_arn} did not reach RUNNING within {} s (last status {}); the limit is \
                     `start_timeout_secs` in the executor's config: raise it where instances take \
                     longer to pull and start a task",
                    config.start_timeout_secs, last.last_status
                ))));
            }
            polls += 1;
            let status = if docker_suffices && !urgent {
                watch.status_on_grid().await?
            } else {
                watch.status(std::mem::take(&mut urgent)).await?
            };
            if status.missing {
                return Err(WaitError::Other(Failure::system(format!(
                    "task {task_arn} disappeared from ECS (MISSING)"
                ))));
            }
            match status.last_status.as_str() {
                "RUNNING" => return Ok(Running::Ecs(polls)),
                "STOPPED" | "DEPROVISIONING" | "STOPPING" => return Err(WaitError::Stopped(status)),
                _ if status.desired_status == "STOPPED" => return Err(WaitError::Stopped(status)),
                _ => {}
            }
            next_poll = if docker_suffices {
                fallback_after(Duration::from_secs(1))
            } else {
                Instant::now() + STEADY
            };
        }
    }
}
