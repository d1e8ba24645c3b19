//! How every job's task is shaped: network mode, task-definition reuse, log configuration,
//! and the shell gitlab-runner writes scripts for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Awsvpc,
    Host,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Awsvpc => "awsvpc",
            NetworkMode::Host => "host",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfiguration {
    pub driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TaskDefinitionMode {
    /// One task definition per distinct content, found again by a hash of that content.
    #[default]
    Reuse,
    /// Registered for each job and deregistered at cleanup.
    PerJob,
}

/// The shell gitlab-runner generates scripts for (`config` tells it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    #[default]
    Bash,
    Sh,
}
