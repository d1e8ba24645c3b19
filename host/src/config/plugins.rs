//! The `[[plugins]]` entries: site plugins, in the order their hooks run.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Names the plugin in logs and errors: letters, digits, '-' and '_'.
    pub name: String,
    /// The component (`.wasm`), an absolute path.
    pub path: PathBuf,
    /// Handed to the plugin as JSON (checked by its `validate-settings` at load).
    #[serde(default)]
    pub settings: toml::Table,
    /// Deadline of one hook call in milliseconds (default 1000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Memory cap of one hook call in MiB (default 64).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Extra capabilities for the plugin. None exist yet: plugins get only the job log,
    /// their settings and captured stdio; any name here is refused.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// Capabilities a `[[plugins]]` entry may grant (none yet).
pub const PLUGIN_GRANTS: &[&str] = &[];
