//! One task's life on this instance, driven the way the ECS agent drives it: fetch the task
//! definition, check the images (never pulled), create task volumes and containers, start them
//! in dependency order, report RUNNING; then watch for StopTask or container exits, stop the
//! containers (dependents first, SIGTERM then SIGKILL after `stopTimeout`) and report STOPPED.
//! Containers and volumes are left in place; `cleanup` removes them much later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::{NetworkBinding, Task, TaskDefinition, TransportProtocol};
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerStateStatusEnum, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListVolumesOptions, StartContainerOptions,
    StopContainerOptions,
};
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};

use crate::action_log::say;
use crate::container_config::{ContainerInputs, NetworkPlacement, VolumeSource, plan_container};
use crate::control_plane::{ContainerReport, ControlPlane, TaskReport, persist};
use crate::docker_events::ContainerExit;
use crate::host_ports::HostPorts;
use crate::naming::{LABEL_CONTAINER_NAME, LABEL_TASK_ARN, LABEL_VOLUME_NAME, TaskIdentity, task_id};
use crate::pull::{Credentials, ImageState, Outcome, PullBehavior, parse_asm_value};
use crate::start_order::{Progress, Readiness, StartOrder, declared_dependencies};

/// What ECS wants of a task, as the instance loop last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    /// StopTask was called (desiredStatus STOPPED).
    Stopped,
    /// ECS no longer knows the task (moto was reset or restarted): stop it, report nothing.
    Vanished,
}

/// What the stand-in shares with every task it runs.
pub struct Agent {
    pub ecs: ControlPlane,
    pub docker: Docker,
    /// The cluster as configured; it is also the value of the cluster label.
    pub cluster: String,
    /// The ECS endpoint as configured; the value of the stand-in's endpoint label. With the
    /// cluster label it marks what this agent created, apart from other stand-ins' containers
    /// on the same dockerd (`naming::own_label_filter`).
    pub endpoint: String,
    /// Delays the real agent spends (pull, start, state report), slept before each.
    pub latency: Latency,
    pub pull: PullSettings,
    /// `ECS_DYNAMIC_HOST_PORT_RANGE`, when set: the agent picks dynamic host ports itself.
    pub host_ports: Option<HostPorts>,
}

/// How images get onto the instance: the agent's pull settings and its image state.
pub struct PullSettings {
    /// `ECS_IMAGE_PULL_BEHAVIOR`.
    pub behavior: PullBehavior,
    /// `ECS_ENGINE_AUTH_TYPE` / `ECS_ENGINE_AUTH_DATA`.
    pub engine_auth: crate::pull::EngineAuth,
    pub images: ImageState,
}

/// The agent's latency profile. The real agent on EC2 takes seconds to pull a cached light
/// image (a manifest check against the registry), about a second to create and start a
/// container, and batches container state changes (`ECS_CONTAINER_STATE_CHANGE_...`); the
/// task-level RUNNING goes out at once but ECS shows it after its own processing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub pull: Duration,
    pub start: Duration,
    pub report: Duration,
}

/// How a task learns of StopTask and of its containers' exits.
pub struct TaskSignals {
    pub desired: watch::Receiver<Desired>,
    pub exits: mpsc::UnboundedReceiver<ContainerExit>,
}

/// Why a task stops.
#[derive(Debug, Clone)]
enum StopCause {
    User,
    Essential(String),
    /// The task could not start; the text is the reason ECS shows (`CannotPullContainerError: ...`).
    Failed(String),
    Vanished,
}

/// The real agent's default `ECS_CONTAINER_STOP_TIMEOUT`.
const DEFAULT_STOP_TIMEOUT_SECS: i32 = 30;
/// How often running containers are inspected in case a Docker exit event was missed.
const EXIT_POLL: Duration = Duration::from_secs(1);

struct ContainerRun {
    name: String,
    image: String,
    essential: bool,
    stop_timeout: i32,
    docker_name: String,
    docker_id: Option<String>,
    progress: Progress,
    reason: Option<String>,
    /// A STOPPED state change for this container has been sent (with the task's RUNNING or on
    /// its own); the final STOPPED report repeats it anyway.
    reported_stopped: bool,
    placement: Option<NetworkPlacement>,
    /// `(containerPort, hostPort, protocol)` from the definition, for host-mode bindings.
    port_mappings: Vec<(i32, i32, String)>,
    bindings: Vec<NetworkBinding>,
}

pub struct TaskRun {
    agent: Arc<Agent>,
    task: Task,
    arn: String,
    id: String,
    signals: TaskSignals,
    identity: Option<TaskIdentity>,
    containers: Vec<ContainerRun>,
    order: Option<StartOrder>,
    running_reported: bool,
    pull_started_at: Option<SystemTime>,
    pull_stopped_at: Option<SystemTime>,
}

impl TaskRun {
    pub fn new(agent: Arc<Agent>, task: Task, signals: TaskSignals) -> TaskRun {
        let arn = task.task_arn().unwrap_or_default().to_string();
        TaskRun {
            agent,
            id: task_id(&arn).to_string(),
            running_reported: task.last_status() == Some("RUNNING"),
            arn,
            task,
            signals,
            identity: None,
            containers: Vec::new(),
            order: None,
            pull_started_at: None,
            pull_stopped_at: None,
        }
    }

    /// Runs the task to its end: STOPPED reported (or the task vanished from ECS).
    pub async fn run(mut self) {
        let cause = match self.bring_up().await {
            Ok(()) => self.watch().await,
            Err(cause) => cause,
        };
        self.finish(cause).await;
    }

    fn check_desired(&self) -> Result<(), StopCause> {
        match *self.signals.desired.borrow() {
            Desired::Running => Ok(()),
            Desired::Stopped => Err(StopCause::User),
            Desired::Vanished => Err(StopCause::Vanished),
        }
    }

    async fn bring_up(&mut self) -> Result<(), StopCause> {
        self.check_desired()?;
        let def_arn = self.task.task_definition_arn().unwrap_or_default().to_string();
        let agent = self.agent.clone();
        let def = persist(&self.id, || agent.ecs.task_definition(&def_arn))
            .await
            .map_err(|e| StopCause::Failed(format!("CannotCreateContainerError: {e}")))?;
        self.check_desired()?;
        self.plan(&def)?;
        self.adopt().await;
        self.check_images(&def).await?;
        self.check_desired()?;
        let volumes = self.prepare_volumes(&def).await?;
        self.check_desired()?;
        self.create_containers(&def, &volumes).await?;
        self.start_containers().await?;
        self.report_running().await;
        Ok(())
    }

    fn plan(&mut self, def: &TaskDefinition) -> Result<(), StopCause> {
        let family = def.family().unwrap_or_default().to_string();
        let identity = TaskIdentity {
            cluster: self.agent.cluster.clone(),
            endpoint: self.agent.endpoint.clone(),
            task_arn: self.arn.clone(),
            family,
            revision: def.revision(),
        };
        say!(
            "task {}: placed here ({}:{}, {} container(s), network mode {})",
            self.id,
            identity.family,
            identity.revision,
            def.container_definitions().len(),
            network_mode(def)
        );
        self.containers = def
            .container_definitions()
            .iter()
            .map(|c| {
                let name = c.name().unwrap_or_default().to_string();
                ContainerRun {
                    docker_name: identity.container_name(&name),
                    image: c.image().unwrap_or_default().to_string(),
                    essential: c.essential().unwrap_or(true),
                    stop_timeout: c.stop_timeout().unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
                    docker_id: None,
                    progress: Progress::NotStarted,
                    reason: None,
                    reported_stopped: false,
                    placement: None,
                    port_mappings: c
                        .port_mappings()
                        .iter()
                        .filter_map(|p| {
                            let cp = p.container_port()?;
                            Some((
                                cp,
                                p.host_port().filter(|&h| h > 0).unwrap_or(cp),
                                p.protocol().map_or("tcp", |x| x.as_str()).to_string(),
                            ))
                        })
                        .collect(),
                    bindings: Vec::new(),
                    name,
                }
            })
            .collect();
        self.identity = Some(identity);
        let specs: Vec<_> = def
            .container_definitions()
            .iter()
            .map(|c| (c.name().unwrap_or_default().to_string(), declared_dependencies(c)))
            .collect();
        let mut order =
            StartOrder::new(&specs).map_err(|e| StopCause::Failed(format!("CannotCreateContainerError: {e}")))?;
        if network_mode(def) == "awsvpc"
            && let Some(&owner) = order.creation.first()
        {
            order.all_wait_for(owner);
        }
        self.order = Some(order);
        Ok(())
    }

    /// Takes over containers a previous run of the stand-in created for this task.
    async fn adopt(&mut self) {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_TASK_ARN}={}", self.arn)])]);
        let listed = self
            .agent
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await;
        let Ok(listed) = listed else { return };
        for summary in listed {
            let Some(id) = summary.id else { continue };
            let Some(ecs_name) = summary.labels.as_ref().and_then(|l| l.get(LABEL_CONTAINER_NAME)) else {
                continue;
            };
            let Some(c) = self.containers.iter_mut().find(|c| &c.name == ecs_name) else {
                continue;
            };
            let Ok(info) = self
                .agent
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let state = info.state.unwrap_or_default();
            c.progress = match state.status {
                Some(ContainerStateStatusEnum::CREATED) => Progress::NotStarted,
                Some(
                    ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::RESTARTING
                    | ContainerStateStatusEnum::PAUSED,
                ) => Progress::Running,
                _ => Progress::Exited(state.exit_code),
            };
            c.docker_name = info.name.unwrap_or_default().trim_start_matches('/').to_string();
            c.docker_id = Some(id.clone());
            say!(
                "task {}: adopted existing container {} ({}) for {}",
                self.id,
                c.docker_name,
                short(&id),
                c.name
            );
        }
    }

    /// The images, as the ECS agent gets them: registry credentials first (a container's
    /// `repositoryCredentials` secret, read with the task's execution role as the agent's
    /// `asm-auth` task resource does before any pull; else the instance's
    /// `ECS_ENGINE_AUTH_DATA`), then each image as `ECS_IMAGE_PULL_BEHAVIOR` says (`pull`).
    async fn check_images(&mut self, def: &TaskDefinition) -> Result<(), StopCause> {
        self.pull_started_at = Some(SystemTime::now());
        if self.containers.iter().any(|c| c.docker_id.is_none()) {
            tokio::time::sleep(self.agent.latency.pull).await;
        }
        let secrets = self.registry_secrets(def).await?;
        let mut failure = None;
        for (idx, c) in self.containers.iter_mut().enumerate() {
            if c.docker_id.is_some() {
                continue;
            }
            let cdef = &def.container_definitions()[idx];
            let credentials = match cdef.repository_credentials().map(|r| r.credentials_parameter()) {
                Some(secret) => secrets.get(secret),
                None => self.agent.pull.engine_auth.for_image(&c.image),
            };
            let behavior = self.agent.pull.behavior;
            match self
                .agent
                .pull
                .images
                .ensure(&self.agent.docker, behavior, &c.image, credentials)
                .await
            {
                Ok(Outcome::Pulled) => say!(
                    "task {}: pulled {} for container {}{}",
                    self.id,
                    c.image,
                    c.name,
                    credentials.map_or(String::new(), |cr| format!(" as {}", cr.username))
                ),
                Ok(Outcome::Cached) => {}
                Ok(Outcome::CachedAfterFailure(why)) => say!(
                    "task {}: pull of {} failed ({why}); using the cached image (pull behaviour default)",
                    self.id,
                    c.image
                ),
                Err(reason) => {
                    say!("task {}: container {}: {reason}", self.id, c.name);
                    c.reason = Some(reason.clone());
                    failure.get_or_insert(reason);
                }
            }
        }
        self.pull_stopped_at = Some(SystemTime::now());
        failure.map_or(Ok(()), |reason| Err(StopCause::Failed(reason)))
    }

    /// The `repositoryCredentials` secrets of the containers still to be created, read once
    /// each. A secret that cannot be read stops the task with the agent's words for it.
    async fn registry_secrets(&self, def: &TaskDefinition) -> Result<HashMap<String, Credentials>, StopCause> {
        let mut out = HashMap::new();
        for (idx, c) in self.containers.iter().enumerate() {
            let Some(secret) = def.container_definitions()[idx]
                .repository_credentials()
                .map(|r| r.credentials_parameter().to_string())
            else {
                continue;
            };
            if c.docker_id.is_some() || out.contains_key(&secret) {
                continue;
            }
            if def.execution_role_arn().is_none_or(str::is_empty) {
                return Err(StopCause::Failed(
                    "asm resource: unable to find execution role credentials".into(),
                ));
            }
            let value =
                self.agent.ecs.secret_string(&secret).await.map_err(|e| {
                    StopCause::Failed(format!("asm fetching secret from the service for {secret}: {e}"))
                })?;
            let credentials = parse_asm_value(value.as_deref()).map_err(StopCause::Failed)?;
            say!(
                "task {}: registry credentials for {} read from secret {secret}",
                self.id,
                c.image
            );
            out.insert(secret, credentials);
        }
        Ok(out)
    }

    /// Task-scoped volumes are created per task; shared ones are found or autoprovisioned;
    /// host paths become bind mounts.
    async fn prepare_volumes(&mut self, def: &TaskDefinition) -> Result<HashMap<String, VolumeSource>, StopCause> {
        let identity = self.identity.clone().expect("planned");
        let docker = &self.agent.docker;
        let fail = |what: String| StopCause::Failed(format!("CannotCreateContainerError: {what}"));
        let mut existing = HashMap::new();
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_TASK_ARN}={}", self.arn)])]);
        if let Ok(list) = docker
            .list_volumes(Some(ListVolumesOptions { filters: Some(filters) }))
            .await
        {
            for v in list.volumes.unwrap_or_default() {
                if let Some(name) = v.labels.get(LABEL_VOLUME_NAME) {
                    existing.insert(name.clone(), v.name.clone());
                }
            }
        }
        let mut sources = HashMap::new();
        for vol in def.volumes() {
            let Some(name) = vol.name() else { continue };
            if vol.efs_volume_configuration().is_some() || vol.fsx_windows_file_server_volume_configuration().is_some()
            {
                return Err(fail(format!("volume {name}: EFS and FSx volumes are not emulated")));
            }
            if let Some(path) = vol.host().and_then(|h| h.source_path()) {
                sources.insert(name.to_string(), VolumeSource::Bind(path.to_string()));
                continue;
            }
            let config = vol.docker_volume_configuration();
            let shared = config.and_then(|c| c.scope()).is_some_and(|s| s.as_str() == "shared");
            let mut request = VolumeCreateRequest {
                driver: config.and_then(|c| c.driver()).map(String::from),
                driver_opts: config.and_then(|c| c.driver_opts()).cloned(),
                labels: config.and_then(|c| c.labels()).cloned(),
                ..Default::default()
            };
            if shared {
                if docker.inspect_volume(name).await.is_err() {
                    if !config.and_then(|c| c.autoprovision()).unwrap_or(false) {
                        return Err(fail(format!(
                            "shared volume {name} does not exist and autoprovision is off"
                        )));
                    }
                    request.name = Some(name.to_string());
                    docker
                        .create_volume(request)
                        .await
                        .map_err(|e| fail(docker_message(&e)))?;
                    say!("task {}: created shared volume {name}", self.id);
                }
                sources.insert(name.to_string(), VolumeSource::Named(name.to_string()));
                continue;
            }
            if let Some(docker_name) = existing.get(name) {
                sources.insert(name.to_string(), VolumeSource::Named(docker_name.clone()));
                continue;
            }
            let docker_name = identity.volume_name(name);
            let mut labels = request.labels.take().unwrap_or_default();
            labels.extend(identity.volume_labels(name));
            request.labels = Some(labels);
            request.name = Some(docker_name.clone());
            docker
                .create_volume(request)
                .await
                .map_err(|e| fail(docker_message(&e)))?;
            say!("task {}: created task volume {docker_name} for {name}", self.id);
            sources.insert(name.to_string(), VolumeSource::Named(docker_name));
        }
        Ok(sources)
    }

    async fn create_containers(
        &mut self,
        def: &TaskDefinition,
        volumes: &HashMap<String, VolumeSource>,
    ) -> Result<(), StopCause> {
        let identity = self.identity.clone().expect("planned");
        let order = self.order.clone().expect("planned");
        let mode = network_mode(def);
        let docker_names: HashMap<String, String> = self
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.docker_name.clone()))
            .collect();
        let host_only = |m: Option<&str>| m.filter(|m| *m == "host").map(String::from);
        let pid_mode = host_only(def.pid_mode().map(|m| m.as_str()));
        let ipc_mode = host_only(def.ipc_mode().map(|m| m.as_str()));
        if def.pid_mode().is_some_and(|m| m.as_str() == "task") || def.ipc_mode().is_some_and(|m| m.as_str() == "task")
        {
            say!(
                "task {}: pidMode/ipcMode \"task\" is not emulated; each container keeps its own",
                self.id
            );
        }
        let owner = order.creation.first().copied();
        for &idx in &order.creation {
            let placement = if mode == "awsvpc" && Some(idx) != owner {
                let owner_id = owner
                    .and_then(|o| self.containers[o].docker_id.clone())
                    .unwrap_or_default();
                NetworkPlacement::Join(owner_id)
            } else if mode == "awsvpc" {
                NetworkPlacement::Mode("bridge".into())
            } else {
                NetworkPlacement::Mode(mode.clone())
            };
            self.containers[idx].placement = Some(placement.clone());
            if self.containers[idx].docker_id.is_some() {
                continue;
            }
            let cdef = &def.container_definitions()[idx];
            let overrides = self
                .task
                .overrides()
                .and_then(|o| o.container_overrides().iter().find(|co| co.name() == cdef.name()));
            let plan = plan_container(&ContainerInputs {
                task: &identity,
                def: cdef,
                overrides,
                network: &placement,
                docker_names: &docker_names,
                volumes,
                pid_mode: pid_mode.clone(),
                ipc_mode: ipc_mode.clone(),
                host_ports: self.agent.host_ports.as_ref(),
            })
            .map_err(|e| StopCause::Failed(format!("CannotCreateContainerError: {e}")))?;
            let c = &mut self.containers[idx];
            for note in plan.notes {
                say!("task {}: container {}: {note}", self.id, c.name);
            }
            let options = CreateContainerOptions {
                name: Some(c.docker_name.clone()),
                ..Default::default()
            };
            match self.agent.docker.create_container(Some(options), plan.body).await {
                Ok(created) => {
                    say!(
                        "task {}: created container {} ({}) for {}",
                        self.id,
                        c.docker_name,
                        short(&created.id),
                        c.name
                    );
                    c.docker_id = Some(created.id);
                }
                Err(e) => {
                    let reason = format!("CannotCreateContainerError: {}", docker_message(&e));
                    c.reason = Some(reason.clone());
                    return Err(StopCause::Failed(reason));
                }
            }
        }
        Ok(())
    }

    /// Starts containers as their dependencies allow, until all have been started.
    async fn start_containers(&mut self) -> Result<(), StopCause> {
        let order = self.order.clone().expect("planned");
        loop {
            self.drain_exits().await;
            self.check_desired()?;
            let waiting = self.containers.iter().any(|c| c.progress == Progress::NotStarted);
            if !waiting {
                return Ok(());
            }
            if let Some(name) = self.exited_essential() {
                return Err(StopCause::Essential(name));
            }
            let mut started_any = false;
            for &idx in &order.creation {
                if self.containers[idx].progress != Progress::NotStarted {
                    continue;
                }
                let progress: Vec<Progress> = self.containers.iter().map(|c| c.progress).collect();
                match order.readiness(idx, &progress) {
                    Readiness::Ready => {
                        self.start_one(idx).await?;
                        started_any = true;
                    }
                    Readiness::Wait => {}
                    Readiness::Never(why) => {
                        self.containers[idx].reason = Some(format!("CannotStartContainerError: {why}"));
                        return Err(StopCause::Failed(format!("CannotStartContainerError: {why}")));
                    }
                }
            }
            if !started_any {
                self.wait_for_news().await;
            }
        }
    }

    async fn start_one(&mut self, idx: usize) -> Result<(), StopCause> {
        let docker = self.agent.docker.clone();
        let c = &mut self.containers[idx];
        let id = c.docker_id.clone().expect("created");
        tokio::time::sleep(self.agent.latency.start).await;
        if let Err(e) = docker.start_container(&id, None::<StartContainerOptions>).await {
            let reason = format!("CannotStartContainerError: {}", docker_message(&e));
            c.reason = Some(reason.clone());
            return Err(StopCause::Failed(reason));
        }
        c.progress = Progress::Running;
        c.bindings = match &c.placement {
            Some(NetworkPlacement::Mode(m)) if m == "host" => c
                .port_mappings
                .iter()
                .map(|(cp, hp, proto)| binding("0.0.0.0", *cp, *hp, proto))
                .collect(),
            Some(NetworkPlacement::Mode(m)) if m == "bridge" => published_ports(&docker, &id).await,
            _ => Vec::new(),
        };
        say!("task {}: started container {} ({})", self.id, c.name, short(&id));
        Ok(())
    }

    async fn report_running(&mut self) {
        if self.running_reported {
            return;
        }
        let containers: Vec<ContainerReport> = self.containers.iter().map(|c| self.container_report(c)).collect();
        for c in self.containers.iter_mut() {
            c.reported_stopped |= matches!(c.progress, Progress::Exited(_));
        }
        let report = TaskReport {
            task_arn: self.arn.clone(),
            status: "RUNNING",
            reason: None,
            containers,
            pull_started_at: self.pull_started_at,
            pull_stopped_at: self.pull_stopped_at,
            execution_stopped_at: None,
        };
        let agent = self.agent.clone();
        tokio::time::sleep(agent.latency.report).await;
        if persist(&self.id, || agent.ecs.submit_task(&report)).await.is_ok() {
            say!("task {}: reported RUNNING", self.id);
        }
        self.running_reported = true;
    }

    /// Waits until StopTask, an essential container's exit, or ECS forgetting the task;
    /// reports non-essential exits on the way.
    async fn watch(&mut self) -> StopCause {
        loop {
            self.drain_exits().await;
            self.report_container_exits().await;
            if let Some(name) = self.exited_essential() {
                return StopCause::Essential(name);
            }
            if let Err(cause) = self.check_desired() {
                return cause;
            }
            self.wait_for_news().await;
        }
    }

    async fn report_container_exits(&mut self) {
        let agent = self.agent.clone();
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.reported_stopped || c.essential || !matches!(c.progress, Progress::Exited(_)) {
                continue;
            }
            let report = self.container_report(c);
            if persist(&self.id, || agent.ecs.submit_container(&self.arn, &report))
                .await
                .is_ok()
            {
                say!(
                    "task {}: reported container {} STOPPED (exit code {:?}); the task goes on",
                    self.id,
                    report.name,
                    report.exit_code
                );
            }
            self.containers[i].reported_stopped = true;
        }
    }

    /// Waits for a container exit, a change of what ECS wants, or the next exit poll.
    async fn wait_for_news(&mut self) {
        tokio::select! {
            changed = self.signals.desired.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(EXIT_POLL).await;
                }
            }
            Some(exit) = self.signals.exits.recv() => self.apply_exit(exit).await,
            _ = tokio::time::sleep(EXIT_POLL) => self.poll_exits().await,
        }
    }

    async fn drain_exits(&mut self) {
        while let Ok(exit) = self.signals.exits.try_recv() {
            self.apply_exit(exit).await;
        }
    }

    async fn apply_exit(&mut self, exit: ContainerExit) {
        let Some(c) = self
            .containers
            .iter_mut()
            .find(|c| c.docker_id.as_deref() == Some(exit.docker_id.as_str()))
        else {
            return;
        };
        if c.progress != Progress::Running {
            return;
        }
        let code = match exit.exit_code {
            Some(code) => Some(code),
            None => inspect_exit(&self.agent.docker, &exit.docker_id)
                .await
                .and_then(|(_, code)| code),
        };
        c.progress = Progress::Exited(code);
        say!(
            "task {}: container {} exited with code {}",
            self.id,
            c.name,
            code.map_or("?".into(), |c| c.to_string())
        );
    }

    /// The fallback for a missed Docker event: inspect every container believed running.
    async fn poll_exits(&mut self) {
        for i in 0..self.containers.len() {
            let (Progress::Running, Some(id)) = (self.containers[i].progress, self.containers[i].docker_id.clone())
            else {
                continue;
            };
            if let Some((false, code)) = inspect_exit(&self.agent.docker, &id).await {
                self.apply_exit(ContainerExit {
                    docker_id: id,
                    exit_code: code,
                })
                .await;
            }
        }
    }

    fn exited_essential(&self) -> Option<String> {
        self.containers
            .iter()
            .find(|c| c.essential && matches!(c.progress, Progress::Exited(_)))
            .map(|c| c.name.clone())
    }

    fn container_report(&self, c: &ContainerRun) -> ContainerReport {
        let (status, exit_code) = match c.progress {
            Progress::Running => ("RUNNING", None),
            Progress::Exited(code) => ("STOPPED", code.map(|c| c as i32)),
            Progress::NotStarted => (if self.running_reported { "STOPPED" } else { "PENDING" }, None),
        };
        ContainerReport {
            name: c.name.clone(),
            runtime_id: c.docker_id.clone(),
            status,
            exit_code,
            reason: c.reason.clone(),
            bindings: if status == "RUNNING" {
                c.bindings.clone()
            } else {
                Vec::new()
            },
        }
    }

    async fn finish(mut self, cause: StopCause) {
        let why = match &cause {
            StopCause::User => "StopTask".to_string(),
            StopCause::Essential(name) => format!("essential container {name} exited"),
            StopCause::Failed(reason) => reason.clone(),
            StopCause::Vanished => "ECS no longer knows the task".to_string(),
        };
        say!("task {}: stopping ({why})", self.id);
        self.stop_containers().await;
        if matches!(cause, StopCause::Vanished) {
            say!(
                "task {}: containers stopped; nothing reported (the task is gone from ECS)",
                self.id
            );
            return;
        }
        let reason = match cause {
            StopCause::User | StopCause::Vanished => None,
            StopCause::Essential(_) => Some("Essential container in task exited".to_string()),
            StopCause::Failed(reason) => Some(reason),
        };
        let containers = self
            .containers
            .iter()
            .map(|c| ContainerReport {
                status: "STOPPED",
                bindings: Vec::new(),
                ..self.container_report(c)
            })
            .collect();
        let report = TaskReport {
            task_arn: self.arn.clone(),
            status: "STOPPED",
            reason,
            containers,
            pull_started_at: self.pull_started_at,
            pull_stopped_at: self.pull_stopped_at,
            execution_stopped_at: Some(SystemTime::now()),
        };
        let agent = self.agent.clone();
        if persist(&self.id, || agent.ecs.submit_task(&report)).await.is_ok() {
            let codes: Vec<String> = report
                .containers
                .iter()
                .map(|c| format!("{}={}", c.name, c.exit_code.map_or("-".into(), |x| x.to_string())))
                .collect();
            say!("task {}: reported STOPPED (exit codes {})", self.id, codes.join(" "));
        }
    }

    /// Stops every running container, dependents first; each gets SIGTERM, then SIGKILL after
    /// its `stopTimeout`. Containers are kept (exited), as the real agent keeps them.
    async fn stop_containers(&mut self) {
        let Some(order) = self.order.clone() else { return };
        let docker = self.agent.docker.clone();
        for wave in order.stop_waves() {
            let stops = wave.iter().filter_map(|&i| {
                let c = &self.containers[i];
                let id = c.docker_id.clone()?;
                (c.progress == Progress::Running).then(|| {
                    let docker = docker.clone();
                    let timeout = c.stop_timeout;
                    async move {
                        let options = StopContainerOptions {
                            t: Some(timeout),
                            signal: None,
                        };
                        let stopped = docker.stop_container(&id, Some(options)).await;
                        let state = inspect_exit(&docker, &id).await;
                        (i, stopped, state)
                    }
                })
            });
            for (i, stopped, state) in join_all(stops).await {
                let c = &mut self.containers[i];
                if let Err(e) = stopped {
                    say!(
                        "task {}: docker stop of {} answered: {}",
                        self.id,
                        c.name,
                        docker_message(&e)
                    );
                }
                let code = state.and_then(|(_, code)| code);
                c.progress = Progress::Exited(code);
                say!(
                    "task {}: stopped container {} (exit code {})",
                    self.id,
                    c.name,
                    code.map_or("?".into(), |c| c.to_string())
                );
            }
        }
        // Exits seen by event without a code: ask Docker.
        for c in self.containers.iter_mut() {
            if let (Progress::Exited(None), Some(id)) = (c.progress, &c.docker_id) {
                c.progress = Progress::Exited(inspect_exit(&docker, id).await.and_then(|(_, code)| code));
            }
        }
    }
}

fn network_mode(def: &TaskDefinition) -> String {
    def.network_mode().map_or("bridge", |m| m.as_str()).to_string()
}

/// `(running, exit code)` of a container, `None` if Docker cannot say.
async fn inspect_exit(docker: &Docker, id: &str) -> Option<(bool, Option<i64>)> {
    match docker.inspect_container(id, None::<InspectContainerOptions>).await {
        Ok(info) => {
            let state = info.state.unwrap_or_default();
            Some((state.running.unwrap_or(false), state.exit_code))
        }
        // Removed behind our back: it is not running, and its code is lost.
        Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Some((false, None)),
        Err(_) => None,
    }
}

/// The host ports Docker published for a bridge-mode container.
async fn published_ports(docker: &Docker, id: &str) -> Vec<NetworkBinding> {
    let Ok(info) = docker.inspect_container(id, None::<InspectContainerOptions>).await else {
        return Vec::new();
    };
    let ports = info.network_settings.and_then(|n| n.ports).unwrap_or_default();
    let mut out = Vec::new();
    for (key, bindings) in ports {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<i32>() else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            out.push(binding(
                b.host_ip.as_deref().unwrap_or("0.0.0.0"),
                container_port,
                host_port,
                proto,
            ));
        }
    }
    out.sort_by_key(|b| (b.container_port(), b.bind_ip().map(String::from)));
    out
}

fn binding(ip: &str, container_port: i32, host_port: i32, proto: &str) -> NetworkBinding {
    NetworkBinding::builder()
        .bind_ip(ip)
        .container_port(container_port)
        .host_port(host_port)
        .protocol(TransportProtocol::from(proto))
        .build()
}

/// Docker's answer as the real agent quotes it in reasons.
fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => {
            format!("Error response from daemon: {}", message.trim())
        }
        other => other.to_string(),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
