//! The pool policy (`docs/warm-pools.md`, "Policy"): which values of a `[[pool]]` entry apply
//! now (its `[[pool.schedule]]` entries, the last matching one wins), how many idle warm tasks
//! a shape should have (lazy: `min_idle`; eager: plus `scale_factor` per job in flight,
//! within `scale_factor_limit`), and which idle tasks are beyond the pool's `max` and the
//! host's `[pool_limits] max_idle_total` (the oldest go first).

use std::collections::BTreeMap;

use chrono::{DateTime, Timelike, Utc};

use crate::config::PoolConfig;

/// The values of a pool in effect at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    pub min_idle: u32,
    pub idle_timeout_secs: u64,
    pub scale_factor: f64,
    pub scale_factor_limit: u32,
    /// Which `[[pool.schedule]]` entry (1-based) applies; `None`: the pool's own values.
    pub schedule: Option<usize>,
}

/// The values of `pool` in effect at `now`: the last schedule entry one of whose periods
/// matches the minute `now` falls in (in the entry's time zone), else the pool's own.
pub fn effective(pool: &PoolConfig, now: DateTime<Utc>) -> Effective {
    let mut e = Effective {
        min_idle: pool.min_idle,
        idle_timeout_secs: pool.idle_timeout_secs,
        scale_factor: pool.scale_factor,
        scale_factor_limit: pool.scale_factor_limit,
        schedule: None,
    };
    let minute = now.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(now);
    for (i, s) in pool.schedule.iter().enumerate() {
        // Validated with the config: an entry that does not parse never reaches here.
        let Ok((crons, tz)) = s.parsed() else {
            continue;
        };
        let local = minute.with_timezone(&tz);
        if crons.iter().any(|c| c.is_time_matching(&local).unwrap_or(false)) {
            e = Effective {
                min_idle: s.min_idle.unwrap_or(pool.min_idle),
                idle_timeout_secs: s.idle_timeout_secs.unwrap_or(pool.idle_timeout_secs),
                scale_factor: s.scale_factor.unwrap_or(pool.scale_factor),
                scale_factor_limit: s.scale_factor_limit.unwrap_or(pool.scale_factor_limit),
                schedule: Some(i + 1),
            };
        }
    }
    e
}

/// Idle warm tasks a shape should have with `in_flight` jobs of it running on this host:
/// `min_idle`, plus (eager) `ceil(in_flight × scale_factor)` capped by `scale_factor_limit`
/// (when not 0), all within the pool's `max`.
pub fn target(e: &Effective, max: u32, in_flight: usize) -> usize {
    let mut extra = (in_flight as f64 * e.scale_factor).ceil() as usize;
    if e.scale_factor_limit > 0 {
        extra = extra.min(e.scale_factor_limit as usize);
    }
    (e.min_idle as usize + extra).min(max as usize)
}

/// One idle warm task, as the excess computation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    pub shape: String,
    pub pool: String,
    pub task_arn: String,
    pub started_unix: f64,
}

/// The idle warm tasks to stop: per shape those beyond its target, per pool those beyond its
/// `max`, on the host those beyond `max_idle_total` — always the oldest, so the newest (the
/// longest left before their idle timeout) are kept.
pub fn excess(
    idle: &[Idle],
    shape_target: &BTreeMap<String, usize>,
    pool_max: &BTreeMap<String, usize>,
    max_idle_total: Option<u32>,
) -> Vec<Idle> {
    let mut newest_first: Vec<&Idle> = idle.iter().collect();
    newest_first.sort_by(|a, b| b.started_unix.total_cmp(&a.started_unix));
    let mut per_shape: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_pool: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0usize;
    let mut stop = Vec::new();
    for t in newest_first {
        let s = per_shape.entry(&t.shape).or_default();
        let p = per_pool.entry(&t.pool).or_default();
        let keep = *s < shape_target.get(&t.shape).copied().unwrap_or(0)
            && *p < pool_max.get(&t.pool).copied().unwrap_or(0)
            && max_idle_total.is_none_or(|cap| total < cap as usize);
        if keep {
            *s += 1;
            *p += 1;
            total += 1;
        } else {
            stop.push(t.clone());
        }
    }
    stop.reverse();
    stop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScheduleConfig;
    use chrono::TimeZone;

    fn pool(schedule: Vec<ScheduleConfig>) -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            image: "alpine".into(),
            min_idle: 0,
            max: 10,
            idle_timeout_secs: 600,
            scale_factor: 0.0,
            scale_factor_limit: 0,
            schedule,
        }
    }

    fn entry(periods: &[&str], tz: &str, min_idle: u32) -> ScheduleConfig {
        ScheduleConfig {
            periods: periods.iter().map(|p| p.to_string()).collect(),
            timezone: tz.into(),
            min_idle: Some(min_idle),
            idle_timeout_secs: None,
            scale_factor: None,
            scale_factor_limit: None,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn working_hours_in_berlin_and_zero_at_night_and_at_the_weekend() {
        let p = pool(vec![entry(&["* 8-18 * * mon-fri"], "Europe/Berlin", 5)]);
        // Thursday 2026-12-03: Berlin is UTC+1 in winter.
        let at = |h, m, s| effective(&p, utc(2026, 12, 3, h, m, s));
        assert_eq!(at(7, 0, 0).min_idle, 5, "08:00 Berlin");
        assert_eq!(at(6, 59, 59).min_idle, 0, "07:59:59 Berlin");
        assert_eq!(at(17, 59, 30).min_idle, 5, "18:59:30 Berlin (seconds do not matter)");
        assert_eq!(at(18, 0, 0).min_idle, 0, "19:00 Berlin");
        assert_eq!(at(12, 0, 0).schedule, Some(1));
        assert_eq!(at(3, 0, 0).schedule, None);
        // Saturday.
        assert_eq!(effective(&p, utc(2026, 12, 5, 12, 0, 0)).min_idle, 0);
        // The same instant in UTC is outside 8-18 when read in UTC: the time zone is used.
        let in_utc = pool(vec![entry(&["* 8-18 * * mon-fri"], "UTC", 5)]);
        assert_eq!(effective(&in_utc, utc(2026, 12, 3, 7, 30, 0)).min_idle, 0);
    }

    #[test]
    fn daylight_saving_time_moves_the_period_in_utc() {
        let p = pool(vec![entry(&["* 8-18 * * *"], "Europe/Berlin", 3)]);
        // Summer (CEST, UTC+2): 06:30 UTC is 08:30 in Berlin.
        assert_eq!(effective(&p, utc(2026, 7, 1, 6, 30, 0)).min_idle, 3);
        // Winter (CET, UTC+1): 06:30 UTC is 07:30 in Berlin.
        assert_eq!(effective(&p, utc(2026, 12, 1, 6, 30, 0)).min_idle, 0);
        // The night of the change (2026-03-29, 02:00 CET -> 03:00 CEST): 01:30 UTC is 03:30.
        let night = pool(vec![entry(&["* 3 * * *"], "Europe/Berlin", 1)]);
        assert_eq!(effective(&night, utc(2026, 3, 29, 1, 30, 0)).min_idle, 1);
        assert_eq!(
            effective(&night, utc(2026, 3, 28, 1, 30, 0)).min_idle,
            0,
            "02:30 CET the day before"
        );
    }

    #[test]
    fn the_last_matching_entry_wins_and_left_out_values_are_the_pools() {
        let mut late = entry(&["* 17-18 * * *"], "UTC", 1);
        late.idle_timeout_secs = Some(60);
        let p = pool(vec![entry(&["* 8-18 * * *"], "UTC", 5), late]);
        let noon = effective(&p, utc(2026, 12, 3, 12, 0, 0));
        assert_eq!(
            (noon.min_idle, noon.idle_timeout_secs, noon.schedule),
            (5, 600, Some(1))
        );
        let evening = effective(&p, utc(2026, 12, 3, 17, 10, 0));
        assert_eq!(
            (evening.min_idle, evening.idle_timeout_secs, evening.schedule),
            (1, 60, Some(2))
        );
        // Any of an entry's periods matches.
        let two = pool(vec![entry(&["0-29 * * * *", "* 23 * * *"], "UTC", 2)]);
        assert_eq!(effective(&two, utc(2026, 12, 3, 5, 10, 0)).min_idle, 2);
        assert_eq!(effective(&two, utc(2026, 12, 3, 23, 45, 0)).min_idle, 2);
        assert_eq!(effective(&two, utc(2026, 12, 3, 5, 45, 0)).min_idle, 0);
    }

    #[test]
    fn eager_keeps_min_idle_plus_a_factor_of_the_jobs_in_flight_within_the_limits() {
        let lazy = effective(&pool(vec![]), utc(2026, 1, 1, 0, 0, 0));
        let lazy = Effective { min_idle: 2, ..lazy };
        assert_eq!(target(&lazy, 10, 7), 2);
        let eager = Effective {
            scale_factor: 0.5,
            ..lazy
        };
        assert_eq!(target(&eager, 10, 0), 2);
        assert_eq!(target(&eager, 10, 3), 4, "2 + ceil(1.5)");
        assert_eq!(target(&eager, 5, 30), 5, "the pool's max");
        let limited = Effective {
            scale_factor_limit: 1,
            ..eager
        };
        assert_eq!(target(&limited, 10, 30), 3);
    }

    #[test]
    fn the_oldest_beyond_a_shape_target_a_pool_max_or_the_host_cap_are_stopped() {
        let idle = |shape: &str, pool: &str, n: u32| Idle {
            shape: shape.into(),
            pool: pool.into(),
            task_arn: format!("{shape}{n}"),
            started_unix: n as f64,
        };
        let all = vec![
            idle("a", "p", 1),
            idle("a", "p", 4),
            idle("a", "p", 3),
            idle("b", "q", 2),
            idle("b", "q", 5),
        ];
        let map = |kv: &[(&str, usize)]| kv.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        let arns = |v: Vec<Idle>| v.into_iter().map(|i| i.task_arn).collect::<Vec<_>>();
        let (targets, maxes) = (map(&[("a", 3), ("b", 2)]), map(&[("p", 10), ("q", 10)]));
        assert!(excess(&all, &targets, &maxes, None).is_empty());
        // Shape a down to 1: its two oldest go.
        assert_eq!(
            arns(excess(&all, &map(&[("a", 1), ("b", 2)]), &maxes, None)),
            ["a1", "a3"]
        );
        // Pool q's max 1.
        assert_eq!(arns(excess(&all, &targets, &map(&[("p", 10), ("q", 1)]), None)), ["b2"]);
        // Host cap 2 over both pools: the three oldest of all go.
        assert_eq!(arns(excess(&all, &targets, &maxes, Some(2))), ["a1", "b2", "a3"]);
        // A shape without a target (its pool gone) keeps nothing.
        assert_eq!(arns(excess(&all, &map(&[("a", 3)]), &maxes, None)), ["b2", "b5"]);
    }
}
