//! The agent's side of the ECS API: which tasks are placed on this instance and what they
//! should be (ListTasks, DescribeTasks, DescribeTaskDefinition), and what they are
//! (SubmitTaskStateChange, SubmitContainerStateChange — the calls the real agent makes over its
//! own channel, which the patched moto serves).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::primitives::DateTime;
use aws_sdk_ecs::types::{ContainerStateChange, DesiredStatus, NetworkBinding, Task, TaskDefinition};

use crate::action_log::say;

/// A failed ECS call. `transient` failures (throttling, 5xx, no connection) are worth retrying
/// without limit; the others (the task is unknown, the request is invalid) only a few times.
#[derive(Debug, Clone)]
pub struct CallError {
    pub action: &'static str,
    /// The AWS error code (`ClusterNotFoundException`), when ECS answered with one.
    pub code: Option<String>,
    pub transient: bool,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let service = if self.action.starts_with("EC2 ") { "" } else { "ECS " };
        write!(f, "{service}{} failed: {}", self.action, self.message)
    }
}

fn call_error<E>(action: &'static str) -> impl FnOnce(SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| {
        let code = e.code().map(String::from);
        let (transient, message) = match &e {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = code.as_deref().unwrap_or("Unknown");
                let throttled = code.contains("Throttl") || code == "RequestLimitExceeded";
                (
                    status >= 500 || throttled,
                    format!("{code} (HTTP {status}): {}", se.err().message().unwrap_or_default()),
                )
            }
            other => (true, DisplayErrorContext(other).to_string().replace('\n', " ")),
        };
        CallError {
            action,
            code,
            transient,
            message,
        }
    }
}

/// A container's state as the agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerReport {
    pub name: String,
    pub runtime_id: Option<String>,
    /// `RUNNING` or `STOPPED`.
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub bindings: Vec<NetworkBinding>,
}

impl ContainerReport {
    fn to_change(&self) -> ContainerStateChange {
        ContainerStateChange::builder()
            .container_name(&self.name)
            .set_runtime_id(self.runtime_id.clone())
            .status(self.status)
            .set_exit_code(self.exit_code)
            .set_reason(self.reason.clone())
            .set_network_bindings((!self.bindings.is_empty()).then(|| self.bindings.clone()))
            .build()
    }
}

/// A task's state as the agent reports it.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task_arn: String,
    /// `RUNNING` or `STOPPED`.
    pub status: &'static str,
    pub reason: Option<String>,
    pub containers: Vec<ContainerReport>,
    pub pull_started_at: Option<SystemTime>,
    pub pull_stopped_at: Option<SystemTime>,
    pub execution_stopped_at: Option<SystemTime>,
}

/// DescribeTasks' answer: the tasks, and the ARNs ECS no longer knows.
pub struct Described {
    pub tasks: Vec<Task>,
    pub missing: Vec<String>,
}

/// A container instance of the cluster as DescribeContainerInstances shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub arn: String,
    /// `ACTIVE`, `DRAINING`, ...
    pub status: String,
    pub ec2_instance_id: Option<String>,
}

/// The ECS client, bound to the cluster, with a cache of task definitions (immutable per ARN),
/// and EC2 for the instances' addresses.
pub struct ControlPlane {
    client: aws_sdk_ecs::Client,
    ec2: aws_sdk_ec2::Client,
    /// Secrets Manager (the same moto), for `repositoryCredentials`.
    secrets: aws_sdk_secretsmanager::Client,
    cluster: String,
    definitions: Mutex<HashMap<String, TaskDefinition>>,
}

impl ControlPlane {
    /// The agent retries on its own terms (it polls anyway), so the SDK does not retry.
    pub async fn connect(endpoint: &str, region: &str, cluster: &str) -> ControlPlane {
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into());
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into());
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                key,
                secret,
                None,
                None,
                "ecs-agent-standin",
            ))
            .retry_config(RetryConfig::disabled())
            // The request records (and CloudTrail) tell the agent's calls from the executor's.
            .app_name(aws_config::AppName::new("ecs-agent-standin").expect("a valid app name"))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(15))
                    .build(),
            )
            .load()
            .await;
        ControlPlane {
            client: aws_sdk_ecs::Client::new(&shared),
            ec2: aws_sdk_ec2::Client::new(&shared),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            cluster: cluster.to_string(),
            definitions: Mutex::default(),
        }
    }

    pub async fn list_tasks(&self, container_instance: &str, desired: DesiredStatus) -> Result<Vec<String>, CallError> {
        let out = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .container_instance(container_instance)
            .desired_status(desired)
            .send()
            .await
            .map_err(call_error("ListTasks"))?;
        Ok(out.task_arns().to_vec())
    }

    /// The cluster's container instances as ListContainerInstances lists them (not INACTIVE
    /// ones), with their status and EC2 instance.
    pub async fn container_instances(&self) -> Result<Vec<InstanceRow>, CallError> {
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .list_container_instances()
                .cluster(&self.cluster)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(call_error("ListContainerInstances"))?;
            let arns = out.container_instance_arns().to_vec();
            if !arns.is_empty() {
                for chunk in arns.chunks(100) {
                    let d = self
                        .client
                        .describe_container_instances()
                        .cluster(&self.cluster)
                        .set_container_instances(Some(chunk.to_vec()))
                        .send()
                        .await
                        .map_err(call_error("DescribeContainerInstances"))?;
                    for ci in d.container_instances() {
                        if let (Some(arn), Some(status)) = (ci.container_instance_arn(), ci.status()) {
                            found.push(InstanceRow {
                                arn: arn.to_string(),
                                status: status.to_string(),
                                ec2_instance_id: ci.ec2_instance_id().map(String::from),
                            });
                        }
                    }
                }
            }
            match out.next_token() {
                Some(t) => next = Some(t.to_string()),
                None => return Ok(found),
            }
        }
    }

    /// The EC2 instance's private and public IPv4 addresses (EC2 DescribeInstances, as the
    /// executor finds them): where its Docker listens.
    pub async fn instance_addresses(&self, instance_id: &str) -> Result<Vec<std::net::IpAddr>, CallError> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(call_error("EC2 DescribeInstances"))?;
        let mut found = Vec::new();
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            for ip in [i.private_ip_address(), i.public_ip_address()].into_iter().flatten() {
                if let Ok(ip) = ip.parse() {
                    found.push(ip);
                }
            }
        }
        Ok(found)
    }

    pub async fn describe_tasks(&self, arns: &[String]) -> Result<Described, CallError> {
        let mut described = Described {
            tasks: Vec::new(),
            missing: Vec::new(),
        };
        for chunk in arns.chunks(100) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(call_error("DescribeTasks"))?;
            described.tasks.extend(out.tasks().iter().cloned());
            for f in out.failures() {
                if f.reason() == Some("MISSING") {
                    described.missing.extend(f.arn().map(String::from));
                }
            }
        }
        Ok(described)
    }

    pub async fn task_definition(&self, arn: &str) -> Result<TaskDefinition, CallError> {
        if let Some(def) = self.definitions.lock().unwrap().get(arn) {
            return Ok(def.clone());
        }
        let out = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(call_error("DescribeTaskDefinition"))?;
        let def = out.task_definition().cloned().ok_or_else(|| CallError {
            action: "DescribeTaskDefinition",
            code: None,
            transient: false,
            message: format!("no task definition in the answer for {arn}"),
        })?;
        self.definitions.lock().unwrap().insert(arn.to_string(), def.clone());
        Ok(def)
    }

    /// A secret's `SecretString` (GetSecretValue, AWSCURRENT), as the agent reads a
    /// `repositoryCredentials` secret. The error text is `<code>: <message>` as AWS SDKs print it.
    pub async fn secret_string(&self, secret_id: &str) -> Result<Option<String>, String> {
        match self.secrets.get_secret_value().secret_id(secret_id).send().await {
            Ok(out) => Ok(out.secret_string().map(String::from)),
            Err(e) => Err(match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => DisplayErrorContext(&e).to_string().replace('\n', " "),
            }),
        }
    }

    pub async fn submit_task(&self, report: &TaskReport) -> Result<(), CallError> {
        self.client
            .submit_task_state_change()
            .cluster(&self.cluster)
            .task(&report.task_arn)
            .status(report.status)
            .set_reason(report.reason.clone())
            .set_containers(Some(report.containers.iter().map(ContainerReport::to_change).collect()))
            .set_pull_started_at(report.pull_started_at.map(DateTime::from))
            .set_pull_stopped_at(report.pull_stopped_at.map(DateTime::from))
            .set_execution_stopped_at(report.execution_stopped_at.map(DateTime::from))
            .send()
            .await
            .map_err(call_error("SubmitTaskStateChange"))?;
        Ok(())
    }

    pub async fn submit_container(&self, task_arn: &str, c: &ContainerReport) -> Result<(), CallError> {
        self.client
            .submit_container_state_change()
            .cluster(&self.cluster)
            .task(task_arn)
            .container_name(&c.name)
            .set_runtime_id(c.runtime_id.clone())
            .status(c.status)
            .set_exit_code(c.exit_code)
            .set_reason(c.reason.clone())
            .set_network_bindings((!c.bindings.is_empty()).then(|| c.bindings.clone()))
            .send()
            .await
            .map_err(call_error("SubmitContainerStateChange"))?;
        Ok(())
    }
}

/// Calls `call` until it succeeds: transient failures are retried with back-off (100 ms
/// doubling to 2 s) for as long as it takes (moto may be restarting); other failures three
/// times, then given up.
pub async fn persist<T, F, Fut>(task: &str, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut refusals = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if !e.transient {
                    refusals += 1;
                    if refusals >= 3 {
                        say!("task {task}: {e}; giving up");
                        return Err(e);
                    }
                }
                say!("task {task}: {e}; retrying in {} ms", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
