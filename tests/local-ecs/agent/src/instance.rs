//! The container instance's view of ECS, polled every `--poll-ms`: tasks newly placed here
//! (ListTasks desiredStatus RUNNING), what ECS wants of the tasks being run (DescribeTasks),
//! and tasks stopped before anyone picked them up (ListTasks desiredStatus STOPPED, less often).
//! Each task is run by its own `TaskRun`; this loop only tells it what ECS wants.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::DesiredStatus;
use bollard::query_parameters::{ListContainersOptions, StopContainerOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::action_log::say;
use crate::control_plane::{CallError, InstanceRow};
use crate::docker_events::ExitRoutes;
use crate::docker_listener::Listeners;
use crate::naming::{LABEL_TASK_ARN, own_label_filter, task_id};
use crate::settings::{Settings, StandinFile};
use crate::task_run::{Agent, Desired, TaskRun, TaskSignals};

/// Every this many polls, also look for tasks stopped while nobody ran them.
const STOPPED_SCAN_EVERY: u64 = 5;
/// Every this many polls, look for running containers of tasks ECS has forgotten or stopped.
const ORPHAN_SCAN_EVERY: u64 = 50;
/// `docker stop` timeout for an orphan (its task definition may be gone with the task).
const ORPHAN_STOP_TIMEOUT_SECS: i32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A task ECS stopped because its host was terminated is left alone this long first: on a
/// real host the containers and the host's Docker connections go at the same moment, so the
/// instance's listeners (closed or silenced within `INSTANCES_EVERY`) must go before the
/// containers stop, or a client would see its exec end as if the host had stopped it.
const HOST_GONE_GRACE: Duration = Duration::from_secs(3);

struct TaskHandle {
    desired: watch::Sender<Desired>,
    join: JoinHandle<()>,
}

pub struct InstanceLoop {
    agent: Arc<Agent>,
    settings: Settings,
    routes: ExitRoutes,
    tracked: HashMap<String, TaskHandle>,
    /// Tasks finished here or found already STOPPED: never picked up again.
    done: HashSet<String>,
    /// Tracked tasks stopped by their host's termination, and when that was first seen.
    host_gone: HashMap<String, tokio::time::Instant>,
}

impl InstanceLoop {
    pub fn new(agent: Arc<Agent>, settings: Settings, routes: ExitRoutes) -> InstanceLoop {
        InstanceLoop {
            agent,
            settings,
            routes,
            tracked: HashMap::new(),
            done: HashSet::new(),
            host_gone: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        for n in 0u64.. {
            match self.poll(n).await {
                Ok(()) => {
                    if failures > 0 {
                        say!("ECS answers again after {failures} failed poll(s)");
                    }
                    failures = 0;
                    last_error.clear();
                    tokio::time::sleep(self.settings.poll).await;
                }
                Err(e) => {
                    failures += 1;
                    if e.code.as_deref() == Some("ClusterNotFoundException") {
                        // moto was reset or restarted: the cluster's tasks are gone with it.
                        for handle in self.tracked.values() {
                            handle
                                .desired
                                .send_if_modified(|d| std::mem::replace(d, Desired::Vanished) != Desired::Vanished);
                        }
                    }
                    let text = e.to_string();
                    if text != last_error || failures.is_multiple_of(50) {
                        say!("{text} (failure {failures}); retrying with back-off");
                        last_error = text;
                    }
                    if failures.is_multiple_of(10) {
                        self.reload_standin();
                    }
                    let backoff = self.settings.poll.saturating_mul(1 << failures.min(5)).min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    async fn poll(&mut self, n: u64) -> Result<(), CallError> {
        self.reap();
        if n.is_multiple_of(ORPHAN_SCAN_EVERY) {
            self.stop_orphans().await;
        }
        let ecs = &self.agent.ecs;
        let instance = &self.settings.container_instance_arn;
        let mut new: Vec<String> = ecs
            .list_tasks(instance, DesiredStatus::Running)
            .await?
            .into_iter()
            .filter(|arn| !self.tracked.contains_key(arn) && !self.done.contains(arn))
            .collect();
        if n.is_multiple_of(STOPPED_SCAN_EVERY) {
            for arn in ecs.list_tasks(instance, DesiredStatus::Stopped).await? {
                if !self.tracked.contains_key(&arn) && !self.done.contains(&arn) && !new.contains(&arn) {
                    new.push(arn);
                }
            }
        }
        let mut asked: Vec<String> = self.tracked.keys().cloned().collect();
        asked.extend(new.iter().cloned());
        if asked.is_empty() {
            return Ok(());
        }
        let described = ecs.describe_tasks(&asked).await?;
        for task in described.tasks {
            let Some(arn) = task.task_arn().map(String::from) else {
                continue;
            };
            let desired = if task.desired_status() == Some("STOPPED") {
                Desired::Stopped
            } else {
                Desired::Running
            };
            if let Some(handle) = self.tracked.get(&arn) {
                if desired == Desired::Stopped && stopped_by_host_termination(&task) {
                    let first = *self
                        .host_gone
                        .entry(arn.clone())
                        .or_insert_with(tokio::time::Instant::now);
                    if first.elapsed() < HOST_GONE_GRACE {
                        continue;
                    }
                }
                handle.desired.send_if_modified(|d| {
                    let changed = *d == Desired::Running && desired == Desired::Stopped;
                    if changed {
                        *d = desired;
                    }
                    changed
                });
            } else if new.contains(&arn) {
                if task.last_status() == Some("STOPPED") {
                    self.done.insert(arn);
                } else {
                    self.start(task, desired);
                }
            }
        }
        for arn in described.missing {
            match self.tracked.get(&arn) {
                Some(handle) => {
                    handle.desired.send_replace(Desired::Vanished);
                }
                None => {
                    self.done.insert(arn);
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, task: aws_sdk_ecs::types::Task, desired: Desired) {
        let arn = task.task_arn().unwrap_or_default().to_string();
        if desired == Desired::Stopped {
            say!(
                "task {}: found stopped while {}; finishing it",
                task_id(&arn),
                task.last_status().unwrap_or("PENDING")
            );
        }
        let (desired_tx, desired_rx) = watch::channel(desired);
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        self.routes.lock().unwrap().insert(arn.clone(), exits_tx);
        let run = TaskRun::new(
            self.agent.clone(),
            task,
            TaskSignals {
                desired: desired_rx,
                exits: exits_rx,
            },
        );
        let join = tokio::spawn(run.run());
        self.tracked.insert(
            arn,
            TaskHandle {
                desired: desired_tx,
                join,
            },
        );
    }

    /// Forgets tasks whose run has ended.
    fn reap(&mut self) {
        let finished: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, h)| h.join.is_finished())
            .map(|(a, _)| a.clone())
            .collect();
        for arn in finished {
            self.tracked.remove(&arn);
            self.host_gone.remove(&arn);
            self.routes.lock().unwrap().remove(&arn);
            self.done.insert(arn);
        }
    }

    /// Stops running containers this agent created (its cluster and ECS endpoint labels) whose
    /// task none of its instance loops runs and which ECS does not know (moto was reset or
    /// restarted) or knows as STOPPED. Tasks ECS still wants running are left to the next
    /// ListTasks, which adopts their containers. Another stand-in's containers on the same
    /// dockerd are never touched, as a real agent never touches what it did not create.
    async fn stop_orphans(&mut self) {
        let docker = &self.agent.docker;
        // Only containers this agent (through this ECS endpoint) created: the machine's other
        // stand-ins share the dockerd, perhaps with the same cluster name, and their tasks are
        // unknown to our ECS without being orphans.
        let mut filters = own_label_filter(&self.agent.cluster, &self.agent.endpoint);
        filters.insert("status".to_string(), vec!["running".to_string()]);
        let Ok(running) = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        else {
            return;
        };
        let mut by_task: HashMap<String, Vec<String>> = HashMap::new();
        for c in running {
            let (Some(id), Some(arn)) = (c.id, c.labels.as_ref().and_then(|l| l.get(LABEL_TASK_ARN)).cloned()) else {
                continue;
            };
            // Run by any instance loop of this agent (not only this one's): not an orphan.
            if !self.routes.lock().unwrap().contains_key(&arn) {
                by_task.entry(arn).or_default().push(id);
            }
        }
        if by_task.is_empty() {
            return;
        }
        let arns: Vec<String> = by_task.keys().cloned().collect();
        let Ok(described) = self.agent.ecs.describe_tasks(&arns).await else {
            return;
        };
        let mut orphans: Vec<(String, &str)> = described
            .missing
            .into_iter()
            .map(|a| (a, "is unknown to ECS"))
            .collect();
        for task in &described.tasks {
            if task.last_status() == Some("STOPPED") {
                orphans.push((task.task_arn().unwrap_or_default().to_string(), "is STOPPED in ECS"));
            }
        }
        for (arn, why) in orphans {
            let Some(ids) = by_task.remove(&arn) else { continue };
            say!(
                "task {}: {why} but {} container(s) of it run here; stopping them",
                task_id(&arn),
                ids.len()
            );
            let docker = docker.clone();
            tokio::spawn(async move {
                for id in ids {
                    let options = StopContainerOptions {
                        t: Some(ORPHAN_STOP_TIMEOUT_SECS),
                        signal: None,
                    };
                    let _ = docker.stop_container(&id, Some(options)).await;
                }
            });
        }
    }

    /// After moto restarts, `up` may seed a new container instance; follow standin.json.
    fn reload_standin(&mut self) {
        let Some(path) = &self.settings.source else { return };
        match StandinFile::read(path) {
            Ok(file) => {
                if let Some(arn) = file.container_instance_arn
                    && arn != self.settings.container_instance_arn
                {
                    say!("{} names a new container instance {arn}; following it", path.display());
                    self.settings.container_instance_arn = arn;
                }
            }
            Err(e) => say!("re-reading {}: {e:#}", path.display()),
        }
    }
}

/// How often the cluster's container instances are listed in `--all-instances` mode.
const INSTANCES_EVERY: Duration = Duration::from_secs(1);
/// An instance gone from ListContainerInstances this long has its loop ended (its tasks were
/// stopped by ECS when it was drained or lost; the loop had time to stop their containers).
const GONE_FOR: Duration = Duration::from_secs(30);

/// Serves every ACTIVE or DRAINING container instance of the cluster, one `InstanceLoop` each,
/// as ListContainerInstances shows them: a scale-out's new instance is served within a
/// second; a drained or lost instance's tasks are stopped by its loop when ECS marks them
/// STOPPED (with ECS's stop code and reason, set by the stand-in's moto). With `listeners`,
/// each served instance also gets its own mutual-TLS Docker listener on its private and public
/// address (`docker_listener`), closed — connections cut — as soon as the instance is no
/// longer listed (terminated, deregistered).
/// ECS's reason for a task whose instance was terminated under it: "Host EC2 (instance
/// i-…) terminated." (stop code `TerminationNotice`).
fn stopped_by_host_termination(task: &aws_sdk_ecs::types::Task) -> bool {
    let reason = task.stopped_reason().unwrap_or_default();
    reason.starts_with("Host EC2 (instance ") && reason.ends_with(") terminated.")
}

pub async fn serve_all(agent: Arc<Agent>, settings: Settings, routes: ExitRoutes, mut listeners: Option<Listeners>) {
    let mut loops: HashMap<String, (JoinHandle<()>, Option<tokio::time::Instant>)> = HashMap::new();
    // EC2 addresses of the instances, looked up once each.
    let mut addresses: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut last_error = String::new();
    loop {
        match agent.ecs.container_instances().await {
            Ok(instances) => {
                last_error.clear();
                let now = tokio::time::Instant::now();
                let serving = |row: &InstanceRow| row.status == "ACTIVE" || row.status == "DRAINING";
                // Gone first: a lost instance's addresses may be a new instance's already.
                if let Some(l) = listeners.as_mut() {
                    for arn in l.instances() {
                        if !instances.iter().any(|r| r.arn == arn && serving(r)) {
                            l.close(&arn);
                            addresses.remove(&arn);
                        }
                    }
                }
                for row in instances.iter().filter(|r| serving(r)) {
                    let (arn, status) = (&row.arn, &row.status);
                    let entry = loops.entry(arn.clone()).or_insert_with(|| {
                        say!("serving container instance {arn} ({status})");
                        let mut s = settings.clone();
                        s.container_instance_arn = arn.clone();
                        s.source = None;
                        let run = InstanceLoop::new(agent.clone(), s, routes.clone()).run();
                        (tokio::spawn(run), None)
                    });
                    entry.1 = None;
                    let (Some(l), Some(ec2_id)) = (listeners.as_mut(), row.ec2_instance_id.as_deref()) else {
                        continue;
                    };
                    if !addresses.contains_key(arn) {
                        match agent.ecs.instance_addresses(ec2_id).await {
                            Ok(found) if !found.is_empty() => {
                                addresses.insert(arn.clone(), found);
                            }
                            Ok(_) => {}
                            Err(e) => say!("container instance {arn}: {e}; trying again"),
                        }
                    }
                    if let Some(ips) = addresses.get(arn) {
                        l.serve(arn, ips).await;
                    }
                }
                loops.retain(|arn, (join, gone)| {
                    if instances.iter().any(|r| &r.arn == arn && serving(r)) {
                        return true;
                    }
                    let since = *gone.get_or_insert(now);
                    if now.duration_since(since) >= GONE_FOR {
                        say!("container instance {arn} is gone; no longer serving it");
                        join.abort();
                        return false;
                    }
                    true
                });
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    say!("{text}; retrying");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(INSTANCES_EVERY).await;
    }
}
