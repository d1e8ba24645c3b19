//! The `[[pool]]` entries: warm pools of idle tasks for common job shapes (`docs/warm-pools.md`).

use serde::Deserialize;

/// One `[[pool]]` entry: which jobs it serves and how many warm tasks it keeps.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// 1-64 letters, digits, '-' or '_'; unique among the entries (in tags and metrics).
    pub name: String,
    /// The job `image:` (after `default_image`) whose jobs this pool serves.
    pub image: String,
    /// Warm tasks kept idle per shape (task definition) of this pool.
    #[serde(default = "default_min_idle")]
    pub min_idle: u32,
    /// At most this many idle warm tasks of this pool, all its shapes together.
    #[serde(default = "default_max")]
    pub max: u32,
    /// `gc` stops a warm task idle for longer than this (and starts a fresh one).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
}

fn default_min_idle() -> u32 {
    1
}
fn default_max() -> u32 {
    4
}
fn default_idle_timeout() -> u64 {
    1800
}

impl PoolConfig {
    /// What is wrong with this entry on its own, if anything.
    pub fn problem(&self) -> Option<String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Some("`name` must be 1-64 letters, digits, '-' or '_'".into());
        }
        if self.image.trim().is_empty() {
            return Some("`image` must name the job image the pool serves".into());
        }
        if !(1..=100).contains(&self.max) {
            return Some(format!("`max` = {} must be 1..=100", self.max));
        }
        if self.min_idle > self.max {
            return Some(format!(
                "`min_idle` = {} is more than `max` = {}",
                self.min_idle, self.max
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.idle_timeout_secs) {
            return Some("`idle_timeout_secs` must be 1..=604800".into());
        }
        None
    }
}
