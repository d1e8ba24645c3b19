//! The `[metrics]` table: where Prometheus metrics are written for node_exporter.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// node_exporter's textfile-collector directory; the executor writes
    /// `ecs_executor.prom` there (atomically). Unset: no metrics are written.
    #[serde(default)]
    pub textfile_dir: Option<PathBuf>,
}
