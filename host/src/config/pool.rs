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
    /// Eager mode (GitLab docker-autoscaler's `scale_factor`): keep `min_idle` plus this many
    /// idle tasks per job of the shape in flight on this host. 0 (the default): lazy, `min_idle`.
    #[serde(default)]
    pub scale_factor: f64,
    /// At most this many idle tasks come from `scale_factor` (0: no limit but `max`).
    #[serde(default)]
    pub scale_factor_limit: u32,
    /// `[[pool.schedule]]`: periods with other values; the last entry whose period matches
    /// now wins, outside all of them the values above apply.
    #[serde(default)]
    pub schedule: Vec<ScheduleConfig>,
}

/// One `[[pool.schedule]]` entry (GitLab docker-autoscaler's `[[runners.autoscaler.policy]]`):
/// while one of its cron `periods` matches the current minute in `timezone`, its values
/// replace the pool's own (a value left out keeps the pool's).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expressions (minute hour day-of-month month day-of-week), e.g. `"* 8-18 * * mon-fri"`.
    pub periods: Vec<String>,
    /// IANA time zone the periods are read in (default `UTC`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Replaces the pool's `min_idle` during the periods (0: scale to zero).
    pub min_idle: Option<u32>,
    /// Replaces the pool's `idle_timeout_secs` during the periods.
    pub idle_timeout_secs: Option<u64>,
    /// Replaces the pool's `scale_factor` during the periods.
    pub scale_factor: Option<f64>,
    /// Replaces the pool's `scale_factor_limit` during the periods.
    pub scale_factor_limit: Option<u32>,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// `[pool_limits]`: limits over all the pools of this runner host.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolLimits {
    /// At most this many idle warm tasks on this host, all pools together (none: no cap).
    pub max_idle_total: Option<u32>,
}

impl ScheduleConfig {
    /// The entry's parsed periods and time zone, or what is wrong (naming the key).
    pub fn parsed(&self) -> Result<(Vec<croner::Cron>, chrono_tz::Tz), String> {
        let tz: chrono_tz::Tz = self.timezone.parse().map_err(|_| {
            format!(
                "`timezone` = {:?} is not an IANA time zone (e.g. \"Europe/Berlin\")",
                self.timezone
            )
        })?;
        if self.periods.is_empty() {
            return Err("`periods` must name at least one cron expression".into());
        }
        let crons = self
            .periods
            .iter()
            .map(|p| {
                if p.split_whitespace().count() != 5 {
                    return Err(format!(
                        "`periods`: {p:?} must have 5 fields (minute hour day-of-month month day-of-week)"
                    ));
                }
                p.parse::<croner::Cron>()
                    .map_err(|e| format!("`periods`: {p:?} is not a cron expression: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((crons, tz))
    }

    fn problem(&self, max: u32) -> Option<String> {
        if let Err(e) = self.parsed() {
            return Some(e);
        }
        if let Some(m) = self.min_idle
            && m > max
        {
            return Some(format!("`min_idle` = {m} is more than the pool's `max` = {max}"));
        }
        if let Some(t) = self.idle_timeout_secs
            && !(1..=7 * 24 * 3600).contains(&t)
        {
            return Some("`idle_timeout_secs` must be 1..=604800".into());
        }
        if let Some(f) = self.scale_factor
            && !(0.0..=100.0).contains(&f)
        {
            return Some(format!("`scale_factor` = {f} must be 0..=100"));
        }
        None
    }
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
        if !(0.0..=100.0).contains(&self.scale_factor) {
            return Some(format!("`scale_factor` = {} must be 0..=100", self.scale_factor));
        }
        for (i, s) in self.schedule.iter().enumerate() {
            if let Some(problem) = s.problem(self.max) {
                return Some(format!("schedule entry {}: {problem}", i + 1));
            }
        }
        None
    }
}
