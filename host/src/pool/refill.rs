//! Starting warm tasks: a shape below its pool's `min_idle` gets the missing ones (within the
//! pool's `max`). Called by `cleanup` (the job's shape) and `gc` (every shape). RunTask only —
//! nobody waits for a warm task to run; a claim puts one that is still starting back.

use super::{Entry, PoolStore, Shape, TAG_POOL, now_secs};
use crate::config::{Config, PoolConfig};
use crate::ecs::{self, Ecs};
use crate::failure::Failure;
use crate::state::{StateStore, random_hex};

/// How many warm tasks shape `shape` is missing now: below `min_idle`, within the pool's
/// `max` (idle tasks of all its shapes).
pub fn missing(pool: &PoolConfig, pools: &PoolStore, shape: &Shape) -> usize {
    let idle = pools.idle(&shape.key()).len();
    let pool_idle: usize = pools
        .shapes()
        .iter()
        .filter(|s| s.pool == pool.name)
        .map(|s| pools.idle(&s.key()).len())
        .sum();
    (pool.min_idle as usize)
        .saturating_sub(idle)
        .min((pool.max as usize).saturating_sub(pool_idle))
}

/// Start the warm tasks `shape` is missing (none when its pool is no longer configured).
/// Returns how many were started. Serialized per shape on this host, so two cleanups of the
/// same shape never start more than `min_idle` between them.
pub async fn top_up(config: &Config, ecs: &Ecs, store: &StateStore, shape: &Shape) -> Result<usize, Failure> {
    let Some(pool) = config.pool.iter().find(|p| p.name == shape.pool) else {
        return Ok(0);
    };
    let pools = PoolStore::open(store)?;
    let _lock = store.lock(&format!("pool-{}", shape.key()))?;
    let want = missing(pool, &pools, shape);
    let started_by = pools.started_by()?;
    let tags = [
        (ecs::TAG_MANAGED_BY, config.family_prefix.clone()),
        (TAG_POOL, pools.tag_value(&pool.name)?),
    ];
    for n in 0..want {
        let placed = ecs
            .run_task(config, &shape.task_definition_arn, &started_by, &tags, &random_hex())
            .await
            .map_err(|e| {
                Failure::system(format!(
                    "warm pool {}: started {n} of {want} warm task(s), then: {e}",
                    pool.name
                ))
            })?;
        pools.add_idle(
            &shape.key(),
            &Entry {
                task_arn: placed.arn,
                started_unix: now_secs(),
            },
        )?;
        crate::metrics::pool_started(&pool.name);
    }
    Ok(want)
}
