//! Everything the executor asks of ECS — and nothing about Docker. One client (`Ecs`) for one
//! cluster; what it does is split by what it owns:
//!
//! - `task_definitions`: registering (from `task::request`), finding by content, listing,
//!   deregistering and deleting task definitions;
//! - `tasks`: running, describing, stopping and listing tasks, and waiting for one to run;
//! - `poller`: one DescribeTasks poller per runner host for every prepare that waits;
//! - `budget`: a host-wide token bucket per ECS throttling category;
//! - `capacity`: waiting, visibly and within a limit, while the cluster has no room;
//! - `cluster`: the cluster and its container instances;
//! - `stop_reason`: ECS's words on why a task stopped, as the job log tells them.

pub mod budget;
pub mod capacity;
pub mod cluster;
pub mod poller;
pub mod stop_reason;
pub mod task_definitions;
pub mod tasks;

use aws_sdk_ecs::types::Tag;

use crate::aws::describe_sdk_error;
use crate::failure::{Blame, Classify};

pub use crate::task::request::{TAG_CONTENT_HASH, TAG_MANAGED_BY};
/// Tag on tasks: the gitlab-runner short token of the runner that ran the job (`gc` scope).
pub const TAG_RUNNER_TOKEN: &str = "ecs-executor:runner";
pub const TAG_JOB: &str = "ecs-executor:job-id";
pub const TAG_PROJECT: &str = "ecs-executor:project";

#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error("ECS {action} failed: {message}")]
    Api { action: &'static str, message: String },
    #[error("ECS could not place the task on cluster {cluster}: {reasons}")]
    Placement { cluster: String, reasons: String },
    #[error("ECS {action} returned no {what}")]
    Incomplete { action: &'static str, what: &'static str },
}

impl Classify for EcsError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

fn api<E, R>(action: &'static str) -> impl FnOnce(aws_sdk_ecs::error::SdkError<E, R>) -> EcsError
where
    E: std::error::Error + aws_sdk_ecs::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    move |e| {
        let message = describe_sdk_error(&format!("ecs:{action}"), &e);
        if message.contains("ThrottlingException") || message.contains("Rate exceeded") {
            crate::metrics::aws_throttle(action);
        }
        EcsError::Api { action, message }
    }
}

pub struct Ecs {
    client: aws_sdk_ecs::Client,
    cluster: String,
    /// The host-wide rate budget; `None`: calls are not paced (only the SDK's retries).
    budget: Option<budget::Budget>,
}

impl Ecs {
    pub fn new(client: aws_sdk_ecs::Client, cluster: &str) -> Ecs {
        Ecs {
            client,
            cluster: cluster.to_string(),
            budget: None,
        }
    }

    /// Pace every call through this host's budget (`ecs::budget`).
    pub fn with_budget(mut self, budget: budget::Budget) -> Ecs {
        self.budget = Some(budget);
        self
    }

    /// Before each call: pace it through the host's budget and count it.
    async fn spend(&self, category: budget::Category, action: &str) {
        if let Some(b) = &self.budget {
            b.spend(category).await;
        }
        crate::metrics::aws_call(action);
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

/// ECS tags as (key, value) pairs.
fn tag_pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Is this AWS error "it is not there (any more)"? Two hosts running gc race on the same
/// resources: the loser's answer is one of these, and that is success.
fn already_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("does not exist") || m.contains("unable to describe")
}
