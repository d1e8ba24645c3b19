//! What can go wrong with a plugin, always naming the plugin, the hook and the cause. The
//! executor maps [`PluginError::is_rejection`] to a build failure (the job's fault) and every
//! other case to a system failure (the site's plugin or config is broken).

use std::fmt;
use std::time::Duration;

/// The plugin entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    ValidateSettings,
    Customize,
    PickAddress,
    MapServices,
}

impl Hook {
    /// The WIT name (`task-definition.customize`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Hook::ValidateSettings => "settings.validate-settings",
            Hook::Customize => "task-definition.customize",
            Hook::PickAddress => "address.pick-address",
            Hook::MapServices => "services.map-services",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a broken plugin failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// The call ran past its deadline (epoch interruption).
    Timeout(Duration),
    /// The instance tried to grow its memory past the cap (bytes).
    Memory(u64),
    /// The guest panicked or aborted; its stderr (panic message) if it wrote any.
    Panic(String),
    /// Any other trap, with wasmtime's description.
    Trap(String),
    /// The answer cannot be used (build container removed, oversized, unknown extra key...).
    Malformed(String),
    /// The plugin returned `err(other(..))`.
    Other(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Timeout(d) => write!(f, "timed out after {} ms (deadline_ms)", d.as_millis()),
            Cause::Memory(bytes) => write!(f, "exceeded its memory limit of {} MiB (memory_mib)", bytes >> 20),
            Cause::Panic(msg) if msg.is_empty() => f.write_str("panicked (no message on its stderr)"),
            Cause::Panic(msg) => write!(f, "panicked: {msg}"),
            Cause::Trap(msg) => write!(f, "trapped: {msg}"),
            Cause::Malformed(msg) => write!(f, "returned an answer the executor cannot use: {msg}"),
            Cause::Other(msg) => write!(f, "returned an error: {msg}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Site policy refused the job (`err(rejected(msg))`): the job's fault.
    #[error("plugin `{plugin}` refused the job: {message}")]
    Rejected {
        plugin: String,
        hook: Hook,
        message: String,
    },
    /// The plugin is broken: trap, timeout, memory, panic, malformed answer, `err(other)`.
    #[error("plugin `{plugin}` failed in {hook}: {cause}")]
    Broken { plugin: String, hook: Hook, cause: Cause },
    /// The plugin cannot be loaded (file, compile, imports, exports).
    #[error("plugin `{plugin}` ({path}) cannot be loaded: {message}")]
    Load {
        plugin: String,
        path: String,
        message: String,
    },
    /// `validate-settings` refused the configured settings.
    #[error("plugin `{plugin}`: its settings are not valid: {message}")]
    Settings { plugin: String, message: String },
    /// The executor config's `[[plugins]]` entry is wrong.
    #[error("plugin `{plugin}`: {message}")]
    Config { plugin: String, message: String },
}

impl PluginError {
    /// A policy rejection (build failure); everything else is a system failure.
    pub fn is_rejection(&self) -> bool {
        matches!(self, PluginError::Rejected { .. })
    }

    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Rejected { plugin, .. }
            | PluginError::Broken { plugin, .. }
            | PluginError::Load { plugin, .. }
            | PluginError::Settings { plugin, .. }
            | PluginError::Config { plugin, .. } => plugin,
        }
    }
}
