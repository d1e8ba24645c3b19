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
    /// What the plugin's answers may ask for beyond ordinary containers (`PLUGIN_GRANTS`):
    /// without a grant, a plugin that makes a container privileged, uses the instance's
    /// namespaces or binds the instance's paths fails the job (a system failure naming it).
    /// Plugins never get a filesystem, network or environment.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// Capabilities a `[[plugins]]` entry may grant: what its answers may ask for beyond ordinary
/// containers (`privileged`, `host-namespaces` for pidMode/ipcMode/network mode `host`,
/// `host-paths` for volumes bound to the instance's paths). Plugins get no filesystem,
/// network or environment in any case.
pub const PLUGIN_GRANTS: &[&str] = ecs_executor_plugin_host::validate::Grants::NAMES;
