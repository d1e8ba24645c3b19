//! The `[services]` table: admin limits on CI services and how long prepare waits for them.

use serde::Deserialize;

/// The `[services]` table: admin limits on CI services and how long prepare waits for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Most services one job may have; a job with more is refused (build failure). 0: none.
    #[serde(default = "default_max_services")]
    pub max_per_job: usize,
    /// Image patterns a service may use (`*` within a path segment, `**` across); empty: any.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// How long prepare waits for each service's TCP ports before it warns and goes on.
    #[serde(default = "default_wait_for_services")]
    pub wait_timeout_secs: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            max_per_job: default_max_services(),
            allowed_images: Vec::new(),
            wait_timeout_secs: default_wait_for_services(),
        }
    }
}

fn default_max_services() -> usize {
    10
}
fn default_wait_for_services() -> u64 {
    30
}
