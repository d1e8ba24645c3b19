//! The `[gc]` table: when `ecs-executor gc` stops a task or removes a task definition.

use serde::Deserialize;

/// `[gc]`: when `ecs-executor gc` stops a task or removes a task definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSettings {
    /// A task of this runner with no job state on this host is collected once it is older than
    /// this: prepare writes the state right after RunTask, so a younger task may be a prepare
    /// that has not written it yet.
    #[serde(default = "default_gc_start_grace")]
    pub start_grace_secs: u64,
    /// Any task of this runner older than this is stopped, even with live job state (a job
    /// that outlived every timeout). Unset: no age limit.
    #[serde(default)]
    pub max_task_age_secs: Option<u64>,
    /// A task definition no prepare on this host used for this long, with no task of its
    /// family meant to run, is deregistered and deleted.
    #[serde(default = "default_gc_task_definition_idle")]
    pub task_definition_idle_secs: u64,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            start_grace_secs: default_gc_start_grace(),
            max_task_age_secs: None,
            task_definition_idle_secs: default_gc_task_definition_idle(),
        }
    }
}

fn default_gc_start_grace() -> u64 {
    300
}
fn default_gc_task_definition_idle() -> u64 {
    7 * 24 * 3600
}
