//! `cleanup`: stop the job's task and forget the job (a job of a warm pool's shape then tops
//! that shape's pool up: `crate::pool::refill`). Idempotent; copes with no state (prepare
//! failed early) and with leftovers of an earlier prepare attempt. A job that forges the
//! runner's identity was refused by `prepare` before anything started: cleanup ends OK with a
//! note (it has no trusted name to look anything up by, and nothing to look up).

use std::time::Instant;

use crate::aws::AwsClients;
use crate::config::Config;
use crate::ecs::Ecs;
use crate::ecs::budget::Budget;
use crate::failure::Failure;
use crate::protocol::{JobKey, ProtocolError};
use crate::state::StateStore;

use crate::joblog::{log_note, log_phase};

pub async fn run(config: &Config) -> Result<(), Failure> {
    let started = Instant::now();
    let key = match JobKey::load(config.runner_short_token.as_deref()) {
        Ok(key) => key,
        Err(ProtocolError::ForgedIdentity(name)) => {
            log_phase(
                started,
                format_args!(
                    "cleanup: nothing to stop: the job sets {name}, so prepare refused it before \
                     starting anything"
                ),
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let store = StateStore::open(&config.state_dir)?;
    // A corrupt state file must not keep the task alive: fall back to finding it by startedBy.
    let state = match store.load(&key) {
        Ok(state) => state,
        Err(e) => {
            log_note(format!("{e}; looking the task up by its startedBy instead"));
            None
        }
    };
    let clients = AwsClients::load(config).await;
    let ecs =
        Ecs::new(clients.ecs.clone(), &config.cluster).with_budget(Budget::new(store.dir(), config.aws.rate_share));

    let mut stopped = Vec::new();
    if let Some(state) = &state {
        ecs.stop_task(&state.task_arn, "ecs-executor: job cleanup").await?;
        stopped.push(state.task_arn.clone());
    }
    // Without a state file, prepare may have been killed between RunTask and writing it: find
    // the task by its startedBy. With one, its task is known (a leftover of an earlier prepare
    // attempt was stopped by the next attempt, and `gc` sweeps the rest), which saves a read
    // of the account's DescribeTasks/ListTasks budget per job.
    if state.is_none() {
        for arn in ecs.running_tasks_started_by(&key.started_by()).await? {
            if !stopped.contains(&arn) {
                ecs.stop_task(&arn, "ecs-executor: job cleanup").await?;
                stopped.push(arn);
            }
        }
    }
    if let Some(state) = &state
        && state.deregister_task_definition
    {
        ecs.deregister(&state.task_definition_arn).await?;
    }
    // The job's registry logins: ECS read them when the task started; the job token in them
    // expires with the job anyway, but nothing of a job outlives its cleanup.
    let secrets = state.as_ref().map(|s| s.registry_secrets.clone()).unwrap_or_default();
    for name in &secrets {
        crate::registry_secrets::delete(&clients.secrets, name).await?;
    }
    store.remove(&key)?;
    let mut what = if stopped.is_empty() {
        "nothing to stop".to_string()
    } else {
        format!("stopped {}", stopped.join(", "))
    };
    if !secrets.is_empty() {
        what.push_str(&format!("; deleted {} registry secret(s)", secrets.len()));
    }
    log_phase(started, format_args!("cleanup: {what}"));
    if let Some(state) = &state
        && state.pool.is_some()
    {
        refill(config, &ecs, &store, &state.task_definition_arn).await;
    }
    Ok(())
}

/// The job's task had a warm pool's shape: start the warm tasks the shape is missing (the
/// job's own task is stopped, never returned). A refill that fails is a note: the job is done,
/// and `gc` tops the pool up later.
async fn refill(config: &Config, ecs: &Ecs, store: &StateStore, task_definition_arn: &str) {
    let started = Instant::now();
    let shape = crate::pool::PoolStore::open(store)
        .ok()
        .and_then(|pools| pools.shape(&crate::pool::shape_key(task_definition_arn)));
    let Some(shape) = shape else {
        return;
    };
    match crate::pool::refill::top_up(config, ecs, store, &shape).await {
        Ok(0) => {}
        Ok(n) => log_phase(
            started,
            format_args!("warm pool {}: started {n} warm task(s) for the next jobs", shape.pool),
        ),
        Err(f) => log_note(format!("{}; `ecs-executor gc` tops the pool up later", f.message)),
    }
}
