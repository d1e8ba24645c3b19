//! Starting warm tasks: a shape below its target (`policy`: `min_idle` now, eager's share of
//! the jobs in flight) gets the missing ones, within the pool's `max` and the host's
//! `[pool_limits] max_idle_total`. Called by `cleanup` (the job's shape) and `gc` (every shape). RunTask only —
//! nobody waits for a warm task to run; a claim puts one that is still starting back.

use super::{Entry, PoolStore, Shape, TAG_POOL, now_secs, policy};
use crate::config::{Config, PoolConfig, PoolLimits};
use crate::ecs::{self, Ecs};
use crate::failure::Failure;
use crate::state::{StateStore, random_hex};

/// How many warm tasks shape `shape` is missing: below `target` (`policy::target`), within
/// the pool's `max` (idle tasks of all its shapes) and the host's `max_idle_total` (idle tasks
/// of all pools).
pub fn missing(pool: &PoolConfig, limits: &PoolLimits, pools: &PoolStore, shape: &Shape, target: usize) -> usize {
    let idle = pools.idle(&shape.key()).len();
    let shapes = pools.shapes();
    let pool_idle: usize = shapes
        .iter()
        .filter(|s| s.pool == pool.name)
        .map(|s| pools.idle(&s.key()).len())
        .sum();
    let mut n = target
        .saturating_sub(idle)
        .min((pool.max as usize).saturating_sub(pool_idle));
    if let Some(cap) = limits.max_idle_total {
        let host_idle: usize = shapes.iter().map(|s| pools.idle(&s.key()).len()).sum();
        n = n.min((cap as usize).saturating_sub(host_idle));
    }
    n
}

/// The target of `shape` now: its pool's values in effect (schedules) and its jobs in flight.
pub fn target_now(pool: &PoolConfig, store: &StateStore, shape: &Shape) -> usize {
    let e = policy::effective(pool, chrono::Utc::now());
    let in_flight = if e.scale_factor > 0.0 {
        store.pool_jobs_in_flight(&pool.name, &shape.task_definition_arn)
    } else {
        0
    };
    policy::target(&e, pool.max, in_flight)
}

/// Start the warm tasks `shape` is missing (none when its pool is no longer configured).
/// Returns how many were started. Serialized on this host, so two cleanups never start more
/// than the target (or the caps allow) between them.
pub async fn top_up(config: &Config, ecs: &Ecs, store: &StateStore, shape: &Shape) -> Result<usize, Failure> {
    let Some(pool) = config.pool.iter().find(|p| p.name == shape.pool) else {
        return Ok(0);
    };
    let pools = PoolStore::open(store)?;
    // One lock for the host, not per shape: the host cap counts every shape's idle tasks.
    let _lock = store.lock("pool-refill")?;
    let want = missing(pool, &config.pool_limits, &pools, shape, target_now(pool, store, shape));
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
            scale_factor: 0.0,
            scale_factor_limit: 0,
            schedule: Vec::new(),
        };
        let none = PoolLimits::default();
        let shape = |td: &str| Shape {
            pool: "p".into(),
            task_definition_arn: format!("arn:aws:ecs:r:1:task-definition/{td}:1"),
            containers: 2,
        };
        let (a, b) = (shape("a"), shape("b"));
        assert_eq!(missing(&pool, &none, &pools, &a, 3), 3);
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
        assert_eq!(
            (
                missing(&pool, &none, &pools, &a, 3),
                missing(&pool, &none, &pools, &b, 3)
            ),
            (1, 1)
        );
        assert_eq!(missing(&pool, &none, &pools, &a, 0), 0, "target 0: scaled to zero");
        // The host cap counts every pool's idle tasks: 3 idle, cap 4, room for 1; cap 3, none.
        let cap = |n| PoolLimits {
            max_idle_total: Some(n),
        };
        let big = PoolConfig { max: 10, ..pool };
        assert_eq!(missing(&big, &cap(4), &pools, &a, 5), 1);
        assert_eq!(missing(&big, &cap(3), &pools, &a, 5), 0);
        assert_eq!(missing(&big, &none, &pools, &a, 5), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
