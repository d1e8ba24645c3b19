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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_gets_what_it_misses_below_min_idle_within_the_pools_max() {
        let dir = std::env::temp_dir().join(format!("ecs-executor-refill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pools = PoolStore::open(&StateStore::new(&dir)).unwrap();
        let pool = PoolConfig {
            name: "p".into(),
            image: "busybox".into(),
            min_idle: 3,
            max: 4,
            idle_timeout_secs: 60,
        };
        let shape = |td: &str| Shape {
            pool: "p".into(),
            task_definition_arn: format!("arn:aws:ecs:r:1:task-definition/{td}:1"),
            containers: 2,
        };
        let (a, b) = (shape("a"), shape("b"));
        assert_eq!(missing(&pool, &pools, &a), 3);
        for (s, n) in [(&a, 2), (&b, 1)] {
            pools.save_shape(s).unwrap();
            for i in 0..n {
                let entry = Entry {
                    task_arn: format!("arn:aws:ecs:r:1:task/c/{}{i}", s.key()),
                    started_unix: 0.0,
                };
                pools.add_idle(&s.key(), &entry).unwrap();
            }
        }
        // a misses 1 of its 3 and b 2, but the pool has room for 1 more in all.
        assert_eq!((missing(&pool, &pools, &a), missing(&pool, &pools, &b)), (1, 1));
        let off = PoolConfig { min_idle: 0, ..pool };
        assert_eq!(missing(&off, &pools, &a), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
