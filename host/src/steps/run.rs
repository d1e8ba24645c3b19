//! `run <script> <stage>`: one stage of the job, in the container the stage belongs to.
//! Uses the state file and the job's stage runner (or Docker exec where there is none), no
//! plugins; it starts ~10 times a job. AWS only for a stage that outlasts `[aws]
//! stage_watch_secs` (it watches its task) or ends abnormally. How the stage runs is
//! `stages`' business.

use std::path::Path;

use crate::config::Config;
use crate::failure::Failure;
use crate::protocol::{JobKey, validate_stage};
use crate::state::StateStore;

pub async fn run(
    config: &Config,
    script_path: &Path,
    stage: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    validate_stage(stage)?;
    let key = JobKey::load(config.runner_short_token.as_deref())?;
    let state = StateStore::open(&config.state_dir)?.require(&key)?;
    let script = std::fs::read(script_path)
        .map_err(|e| Failure::system(format!("cannot read the script file {}: {e}", script_path.display())))?;
    crate::stages::run(config, &state, &key, stage, script, shutdown).await
}
