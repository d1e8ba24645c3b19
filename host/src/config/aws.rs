//! The `[aws]` table and the ways a task is launched: credentials and retries, the launch type
//! or capacity provider strategy, and the `[awsvpc]` network configuration.

use serde::Deserialize;

use super::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// A named profile of the shared AWS config; unset: the default credential chain.
    #[serde(default)]
    pub profile: Option<String>,
    /// Static credentials, meant for local stand-ins; prefer roles on real AWS.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Read as a [`Secret`]: `Debug` and `Display` print `[MASKED]`.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Attempts per AWS call, including the first (standard retry mode with jitter).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The prepares waiting on this host share one DescribeTasks poller (about one call a
    /// second for all of them; `ecs::poller`). `false`: each job polls alone.
    #[serde(default = "yes")]
    pub shared_polling: bool,
    /// The share of the account's ECS rate limits (per throttling category) this runner host
    /// may use, shared by all its executor processes (`ecs::budget`): with several runner
    /// hosts on one account, about 0.5 / hosts leaves room for the console and other tools.
    #[serde(default = "default_rate_share")]
    pub rate_share: f64,
    /// While a stage runs longer than this, its task's status is looked at about this often
    /// (through the host's shared poller, within `rate_share`): a task ECS stopped under the
    /// stage (its instance drained or lost, a spot interruption) ends the stage within
    /// seconds as a system failure naming ECS's stop code and reason, instead of when a
    /// Docker connection to a vanished host finally times out. 0: stages do not watch.
    #[serde(default = "default_stage_watch_secs")]
    pub stage_watch_secs: u64,
    /// `false` (default): prepare goes on once Docker on the instance runs every container of
    /// the task, without waiting for ECS's RUNNING report (ECS stays the fallback for pulls that
    /// fail and tasks it stops): most jobs then cost no DescribeTasks at all. `true`: prepare
    /// waits until DescribeTasks says RUNNING.
    #[serde(default)]
    pub wait_for_ecs_running: bool,
}

fn default_stage_watch_secs() -> u64 {
    5
}

fn default_rate_share() -> f64 {
    0.5
}

fn yes() -> bool {
    true
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            profile: None,
            access_key_id: None,
            secret_access_key: None,
            max_attempts: default_max_attempts(),
            shared_polling: true,
            rate_share: default_rate_share(),
            stage_watch_secs: default_stage_watch_secs(),
            wait_for_ecs_running: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityProvider {
    pub capacity_provider: String,
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub base: i32,
}

fn default_max_attempts() -> u32 {
    5
}

/// How tasks are launched when no capacity provider strategy is given (only EC2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LaunchType {
    #[serde(rename = "EC2")]
    Ec2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsVpc {
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub assign_public_ip: bool,
}
