//! The `[stage_runner]` table: whether and how stages run through the per-job stage runner.

use std::path::PathBuf;

use serde::Deserialize;

/// Whether prepare starts the stage runner in the job's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageRunnerMode {
    /// Start it (bridge network mode); when it cannot be started or reached, the job's
    /// stages use Docker exec and prepare says why.
    Auto,
    /// Never: every stage is a Docker exec (no port is published on the instance).
    Off,
}

/// The `[stage_runner]` table. The runner is a small static binary that prepare copies into
/// the job's builds volume and starts in the build and helper containers; `run` reaches it
/// over TCP with mutual TLS (a CA, server and client certificate made for this job only),
/// which avoids dockerd's `runc exec` and stream copy for every stage. Its ports are
/// published on the instance's dynamic host ports: the runner host must be able to reach
/// them (security group) as it reaches Docker's port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRunnerSettings {
    #[serde(default = "default_stage_runner_mode")]
    pub mode: StageRunnerMode,
    /// The runner binary for x86_64 instances (static, linux x86_64). Default:
    /// `ecs-executor-stage-runner` next to the executor's own binary.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// The runner binary for arm64 (Graviton) instances (static, linux aarch64; `build-static
    /// --arch arm64`). Default: `ecs-executor-stage-runner-arm64` next to the executor's own
    /// binary. Prepare picks the binary by the instance's `ecs.cpu-architecture`; with none
    /// for it, the job's stages use Docker exec.
    #[serde(default)]
    pub binary_arm64: Option<PathBuf>,
    /// The container port of the build container's runner; the helper's is `port + 1`.
    #[serde(default = "default_stage_runner_port")]
    pub port: u16,
    /// How long prepare tries to reach a started runner before it falls back to exec.
    #[serde(default = "default_stage_runner_connect_timeout")]
    pub connect_timeout_ms: u64,
}

impl Default for StageRunnerSettings {
    fn default() -> Self {
        StageRunnerSettings {
            mode: default_stage_runner_mode(),
            binary: None,
            binary_arm64: None,
            port: default_stage_runner_port(),
            connect_timeout_ms: default_stage_runner_connect_timeout(),
        }
    }
}

fn default_stage_runner_mode() -> StageRunnerMode {
    StageRunnerMode::Auto
}

fn default_stage_runner_port() -> u16 {
    7777
}

fn default_stage_runner_connect_timeout() -> u64 {
    3000
}
