//! `gc`'s part of the warm pools: stop warm tasks idle past their pool's `idle_timeout_secs`
//! (or of a pool no longer configured), forget entries whose task is gone, stop this host's
//! pool-tagged tasks that no entry names (a cleanup or gc killed between RunTask and writing
//! the entry), stop the oldest idle tasks beyond a shape's target (a schedule lowered it), a
//! pool's `max` or the host's `max_idle_total`, then top every shape up to its target.

use std::collections::BTreeSet;

use std::collections::BTreeMap;

use super::{PoolStore, TAG_POOL, now_secs, policy, refill};
use crate::config::Config;
use crate::ecs::tasks::TaskSummary;
use crate::ecs::{self, Ecs};
use crate::state::StateStore;

/// What the sweep did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Swept {
    pub evicted: usize,
    /// Idle tasks stopped because a target (schedule, eager) or a cap is below what is idle.
    pub excess: usize,
    pub forgotten: usize,
    pub orphans: usize,
    pub started: usize,
    pub problems: Vec<String>,
}

/// Sweep this host's pools. `tasks`: the cluster's tasks meant to run (with tags).
pub async fn sweep(config: &Config, ecs: &Ecs, store: &StateStore, tasks: &[TaskSummary], dry_run: bool) -> Swept {
    let mut swept = Swept::default();
    if config.pool.is_empty() && !store.dir().join("pool").is_dir() {
        return swept;
    }
    let pools = match PoolStore::open(store) {
        Ok(p) => p,
        Err(e) => {
            swept.problems.push(format!("warm pools: {e}"));
            return swept;
        }
    };
    let Ok(host) = pools.host_id() else {
        return swept;
    };
    let mine = |t: &&TaskSummary| {
        t.tag(ecs::TAG_MANAGED_BY) == Some(config.family_prefix.as_str())
            && t.tag(TAG_POOL).is_some_and(|v| v.starts_with(&format!("{host}/")))
    };
    let running: BTreeSet<&str> = tasks.iter().filter(mine).map(|t| t.arn.as_str()).collect();
    let verb = if dry_run { "would stop" } else { "stop" };
    let now = now_secs();
    let mut named = BTreeSet::new();
    let mut evicted_arns = BTreeSet::new();
    for shape in pools.shapes() {
        let key = shape.key();
        let pool = config.pool.iter().find(|p| p.name == shape.pool);
        for (path, entry) in pools.idle(&key) {
            let idle = entry.idle_secs(now).round() as u64;
            named.insert(entry.task_arn.clone());
            // An entry younger than this may name a task started after the cluster was listed.
            if !running.contains(entry.task_arn.as_str()) && entry.idle_secs(now) > 30.0 {
                // Stopped by ECS, an instance lost, or a StopTask of ours whose entry outlived it.
                println!("forget warm task {}: no longer meant to run", entry.task_arn);
                swept.forgotten += 1;
                if !dry_run {
                    pools.remove(&path);
                }
                continue;
            }
            let why = match pool {
                None => Some(format!("pool {} is no longer configured", shape.pool)),
                Some(p) if idle > policy::effective(p, chrono::Utc::now()).idle_timeout_secs => Some(format!(
                    "idle for {idle} s, more than idle_timeout_secs = {} of pool {}",
                    policy::effective(p, chrono::Utc::now()).idle_timeout_secs,
                    p.name
                )),
                Some(_) => None,
            };
            let Some(why) = why else {
                continue;
            };
            println!("{verb} warm task {}: {why}", entry.task_arn);
            swept.evicted += 1;
            evicted_arns.insert(entry.task_arn.clone());
            if dry_run {
                continue;
            }
            // Removed first: no prepare may claim a task being stopped.
            pools.remove(&path);
            crate::metrics::pool_idle_seconds(&shape.pool, entry.idle_secs(now));
            if let Err(e) = ecs
                .stop_task(&entry.task_arn, &format!("ecs-executor gc: warm task {why}"))
                .await
            {
                swept
                    .problems
                    .push(format!("stopping warm task {}: {e}", entry.task_arn));
            }
        }
        for (path, entry, age) in pools.claimed(&key) {
            // A claim takes well under a second; an older one was left by a prepare that died.
            if age > config.gc.start_grace_secs as f64 {
                if !dry_run {
                    pools.remove(&path);
                }
            } else {
                named.insert(entry.task_arn.clone());
            }
        }
    }
    for task in tasks.iter().filter(mine) {
        // A claimed task carries the job's tags: an ordinary job task to gc from then on.
        if named.contains(&task.arn) || task.tag(ecs::TAG_JOB).is_some() {
            continue;
        }
        let age = task.created_at.map_or(0.0, |c| (now - c).max(0.0));
        if age < config.gc.start_grace_secs as f64 {
            continue;
        }
        println!("{verb} warm task {}: no pool entry on this host names it", task.arn);
        swept.orphans += 1;
        if !dry_run && let Err(e) = ecs.stop_task(&task.arn, "ecs-executor gc: orphaned warm task").await {
            swept.problems.push(format!("stopping {}: {e}", task.arn));
        }
    }
    // Targets now (schedules, eager): the oldest idle tasks beyond them, a pool's max or the
    // host's cap are stopped. A dry run counts the tasks it would have evicted above as gone.
    let mut targets = BTreeMap::new();
    let mut pool_targets = BTreeMap::new();
    let mut maxes = BTreeMap::new();
    let mut idle = Vec::new();
    for shape in pools.shapes() {
        if let Some(pool) = config.pool.iter().find(|p| p.name == shape.pool) {
            let t = refill::target_now(pool, store, &shape);
            *pool_targets.entry(pool.name.clone()).or_insert(0usize) += t;
            targets.insert(shape.key(), t);
            maxes.insert(pool.name.clone(), pool.max as usize);
        }
        for (_, entry) in pools.idle(&shape.key()) {
            if !(dry_run && evicted_arns.contains(&entry.task_arn)) {
                idle.push(policy::Idle {
                    shape: shape.key(),
                    pool: shape.pool.clone(),
                    task_arn: entry.task_arn,
                    started_unix: entry.started_unix,
                });
            }
        }
    }
    for (pool, t) in &pool_targets {
        crate::metrics::pool_target(pool, *t as f64);
    }
    for t in policy::excess(&idle, &targets, &maxes, config.pool_limits.max_idle_total) {
        if !targets.contains_key(&t.shape) {
            continue; // a pool no longer configured: evicted above (or not yet, dry)
        }
        println!(
            "{verb} warm task {}: beyond the target of pool {} now (schedule, eager mode, max or [pool_limits])",
            t.task_arn, t.pool
        );
        swept.excess += 1;
        if dry_run {
            continue;
        }
        // Removed first: no prepare may claim a task being stopped (a claim that won the
        // rename first keeps it: then it is no longer idle and not stopped).
        let path = pools.idle_path(&t.shape, &t.task_arn);
        if std::fs::remove_file(&path).is_err() {
            continue;
        }
        crate::metrics::pool_idle_seconds(&t.pool, (now - t.started_unix).max(0.0));
        if let Err(e) = ecs
            .stop_task(&t.task_arn, "ecs-executor gc: warm task beyond the pool's target")
            .await
        {
            swept.problems.push(format!("stopping warm task {}: {e}", t.task_arn));
        }
    }
    for shape in pools.shapes() {
        if dry_run {
            if let Some(pool) = config.pool.iter().find(|p| p.name == shape.pool) {
                let target = targets.get(&shape.key()).copied().unwrap_or(0);
                let n = refill::missing(pool, &config.pool_limits, &pools, &shape, target);
                if n > 0 {
                    println!("would start {n} warm task(s) of {}", shape.task_definition_arn);
                }
                swept.started += n;
            }
            continue;
        }
        match refill::top_up(config, ecs, store, &shape).await {
            Ok(0) => {}
            Ok(n) => {
                println!(
                    "started {n} warm task(s) of {} (pool {})",
                    shape.task_definition_arn, shape.pool
                );
                swept.started += n;
            }
            Err(f) => swept.problems.push(f.message),
        }
    }
    swept
}

/// `unregister`: stop every warm task of this host and forget its pools.
pub async fn stop_all(config: &Config, ecs: &Ecs, store: &StateStore, tasks: &[TaskSummary], dry_run: bool) -> Swept {
    let mut swept = Swept::default();
    if !store.dir().join("pool").is_dir() {
        return swept;
    }
    let Ok(pools) = PoolStore::open(store) else {
        return swept;
    };
    let Ok(host) = pools.host_id() else {
        return swept;
    };
    for task in tasks.iter().filter(|t| {
        t.tag(ecs::TAG_MANAGED_BY) == Some(config.family_prefix.as_str())
            && t.tag(ecs::TAG_JOB).is_none()
            && t.tag(TAG_POOL).is_some_and(|v| v.starts_with(&format!("{host}/")))
    }) {
        println!(
            "{} warm task {}: the runner is being unregistered",
            if dry_run { "would stop" } else { "stop" },
            task.arn
        );
        swept.evicted += 1;
        if !dry_run && let Err(e) = ecs.stop_task(&task.arn, "ecs-executor unregister").await {
            swept.problems.push(format!("stopping {}: {e}", task.arn));
        }
    }
    if !dry_run {
        for shape in pools.shapes() {
            for (path, _) in pools.idle(&shape.key()) {
                pools.remove(&path);
            }
        }
    }
    swept
}
