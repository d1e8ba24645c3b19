//! Prometheus metrics in node_exporter's textfile-collector format. gitlab-runner cannot
//! export a driver's metrics and every step is a short process, so each process adds what it
//! counted to `<state_dir>/metrics.json` (under `flock`) when it ends and renders the totals
//! to `<[metrics] textfile_dir>/ecs_executor.prom` (written to a temp file and renamed, as the
//! collector requires). Nothing is written unless `textfile_dir` is set.
//!
//! Series: `ecs_executor_steps_total{step,outcome}`, `ecs_executor_prepare_phase_seconds`
//! (histogram by `phase`), `ecs_executor_aws_calls_total{action}`,
//! `ecs_executor_aws_throttles_total{action}`, `ecs_executor_stages_total{path}` (stage runner
//! or Docker exec), the warm pools' `ecs_executor_pool_claims_total{pool,outcome}`,
//! `ecs_executor_pool_discarded_total{pool,reason}`, `ecs_executor_pool_started_total{pool}`
//! and `ecs_executor_pool_idle_task_seconds_total{pool}`, the gauge `ecs_executor_pool_target{pool}`
//! (idle warm tasks a pool should have now), `gc`'s warm images
//! `ecs_executor_warm_image_pulls_total{outcome}`, and the gauge `ecs_executor_tasks_provisioning` (tasks this host's
//! prepares wait for in PROVISIONING). `docs/metrics.md` lists queries for them.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// Upper bounds of the prepare phase histogram, in seconds.
const BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default, Serialize, Deserialize)]
struct Totals {
    /// `name{labels}` -> value.
    counters: BTreeMap<String, f64>,
    /// phase -> (bucket counts, sum, count).
    phases: BTreeMap<String, (Vec<u64>, f64, u64)>,
    /// `name{labels}` -> the last value set (gauges: not summed across processes).
    #[serde(default)]
    gauges: BTreeMap<String, f64>,
}

struct Sink {
    state: PathBuf,
    textfile_dir: PathBuf,
    /// Poll dirs whose PROVISIONING statuses make the gauge.
    poll_dir: PathBuf,
    pending: Totals,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Start counting for this process (only when the config names a textfile directory).
pub fn init(config: &crate::config::Config) {
    if let Some(dir) = &config.metrics.textfile_dir {
        let _ = SINK.set(Mutex::new(Sink {
            state: config.state_dir.join("metrics.json"),
            textfile_dir: dir.clone(),
            poll_dir: config.state_dir.join("poll"),
            pending: Totals::default(),
        }));
    }
}

fn with(f: impl FnOnce(&mut Totals)) {
    if let Some(sink) = SINK.get()
        && let Ok(mut sink) = sink.lock()
    {
        f(&mut sink.pending);
    }
}

fn label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', " ")
}

fn count(name: &str, labels: &[(&str, &str)], by: f64) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
    let key = format!("{name}{{{}}}", labels.join(","));
    with(|t| *t.counters.entry(key).or_default() += by);
}

/// An ECS call was made.
pub fn aws_call(action: &str) {
    count("ecs_executor_aws_calls_total", &[("action", action)], 1.0);
}

/// ECS answered an action with throttling.
pub fn aws_throttle(action: &str) {
    count("ecs_executor_aws_throttles_total", &[("action", action)], 1.0);
}

/// A stage ran on `path` (`stage_runner` or `exec`).
pub fn stage(path: &str) {
    count("ecs_executor_stages_total", &[("path", path)], 1.0);
}

/// A prepare of a pool's job claimed a warm task (`hit`) or started cold (`miss`).
pub fn pool_claim(pool: &str, outcome: &str) {
    count(
        "ecs_executor_pool_claims_total",
        &[("pool", pool), ("outcome", outcome)],
        1.0,
    );
}

/// A claimed warm task failed its checks and was stopped instead of handed out.
pub fn pool_discarded(pool: &str, reason: &str) {
    count(
        "ecs_executor_pool_discarded_total",
        &[("pool", pool), ("reason", reason)],
        1.0,
    );
}

/// A warm task was started for a pool.
pub fn pool_started(pool: &str) {
    count("ecs_executor_pool_started_total", &[("pool", pool)], 1.0);
}

/// A warm task stood idle for `seconds` before it was claimed or evicted (the pool's cost).
pub fn pool_idle_seconds(pool: &str, seconds: f64) {
    count("ecs_executor_pool_idle_task_seconds_total", &[("pool", pool)], seconds);
}

/// `gc` found a warm image on an instance (`present`), pulled it (`pulled`) or could not
/// (`failed`) (`crate::warm_images`).
pub fn warm_image_pull(outcome: &str) {
    count("ecs_executor_warm_image_pulls_total", &[("outcome", outcome)], 1.0);
}

/// `gc` worked out the idle warm tasks pool `pool` should have now (all its shapes; after
/// schedules and eager mode, before the host cap).
pub fn pool_target(pool: &str, target: f64) {
    let key = format!("ecs_executor_pool_target{{pool=\"{}\"}}", label(pool));
    with(|t| {
        t.gauges.insert(key, target);
    });
}

/// A prepare phase took `seconds`.
pub fn phase(phase: &str, seconds: f64) {
    with(|t| {
        let entry = t
            .phases
            .entry(phase.to_string())
            .or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                entry.0[i] += 1;
            }
        }
        entry.1 += seconds;
        entry.2 += 1;
    });
}

/// The step ended: count its outcome, add this process's counts to the host's totals and
/// write the textfile. Best effort: metrics never fail a step.
pub fn finish(step: &str, outcome: &str) {
    count("ecs_executor_steps_total", &[("step", step), ("outcome", outcome)], 1.0);
    let Some(sink) = SINK.get() else {
        return;
    };
    let Ok(mut sink) = sink.lock() else {
        return;
    };
    let _ = flush(&mut sink);
}

fn flush(sink: &mut Sink) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&sink.state)?;
    file.lock()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut totals: Totals = serde_json::from_str(&text).unwrap_or_default();
    for (k, v) in std::mem::take(&mut sink.pending.counters) {
        *totals.counters.entry(k).or_default() += v;
    }
    for (phase, (buckets, sum, n)) in std::mem::take(&mut sink.pending.phases) {
        let entry = totals
            .phases
            .entry(phase)
            .or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (a, b) in entry.0.iter_mut().zip(buckets) {
            *a += b;
        }
        entry.1 += sum;
        entry.2 += n;
    }
    for (k, v) in std::mem::take(&mut sink.pending.gauges) {
        totals.gauges.insert(k, v);
    }
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(&serde_json::to_vec(&totals).expect("totals serialize"))?;
    let rendered = render(&totals, provisioning(&sink.poll_dir));
    let target = sink.textfile_dir.join("ecs_executor.prom");
    let tmp = sink
        .textfile_dir
        .join(format!(".ecs_executor.prom.{}", crate::state::random_hex()));
    fs::write(&tmp, rendered)?;
    fs::rename(&tmp, &target).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Tasks this host's prepares wait for that the last shared round saw PROVISIONING.
fn provisioning(poll_dir: &std::path::Path) -> usize {
    let Ok(clusters) = fs::read_dir(poll_dir) else {
        return 0;
    };
    clusters
        .flatten()
        .flat_map(|c| fs::read_dir(c.path().join("status")).into_iter().flatten().flatten())
        .filter(|f| fs::read_to_string(f.path()).is_ok_and(|t| t.contains("\"last_status\":\"PROVISIONING\"")))
        .count()
}

fn render(totals: &Totals, provisioning: usize) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (k, v) in totals
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
        {
            out.push_str(&format!("{k} {v}\n"));
        }
    };
    family("ecs_executor_steps_total", "counter", "gitlab-runner steps by outcome.");
    family("ecs_executor_aws_calls_total", "counter", "ECS API calls by action.");
    family(
        "ecs_executor_aws_throttles_total",
        "counter",
        "ECS calls answered with throttling, by action.",
    );
    family(
        "ecs_executor_stages_total",
        "counter",
        "Stages by path: stage_runner or exec.",
    );
    family(
        "ecs_executor_pool_claims_total",
        "counter",
        "Prepares of a warm pool's jobs: hit (a warm task claimed) or miss (cold start).",
    );
    family(
        "ecs_executor_pool_discarded_total",
        "counter",
        "Claimed warm tasks stopped instead of handed out, by reason.",
    );
    family(
        "ecs_executor_pool_started_total",
        "counter",
        "Warm tasks started, by pool.",
    );
    family(
        "ecs_executor_pool_idle_task_seconds_total",
        "counter",
        "Seconds warm tasks stood idle before they were claimed or evicted, by pool.",
    );
    family(
        "ecs_executor_warm_image_pulls_total",
        "counter",
        "Warm images per instance at gc: present, pulled or failed.",
    );
    out.push_str(
        "# HELP ecs_executor_prepare_phase_seconds Duration of each prepare phase.\n\
         # TYPE ecs_executor_prepare_phase_seconds histogram\n",
    );
    for (phase, (buckets, sum, n)) in &totals.phases {
        let phase = label(phase);
        for (bound, c) in BUCKETS.iter().zip(buckets) {
            out.push_str(&format!(
                "ecs_executor_prepare_phase_seconds_bucket{{phase=\"{phase}\",le=\"{bound}\"}} {c}\n"
            ));
        }
        out.push_str(&format!(
            "ecs_executor_prepare_phase_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {n}\n\
             ecs_executor_prepare_phase_seconds_sum{{phase=\"{phase}\"}} {sum}\n\
             ecs_executor_prepare_phase_seconds_count{{phase=\"{phase}\"}} {n}\n"
        ));
    }
    out.push_str(
        "# HELP ecs_executor_pool_target Idle warm tasks a pool should have now (schedules, eager mode), as gc last saw it.\n\
         # TYPE ecs_executor_pool_target gauge\n",
    );
    for (k, v) in &totals.gauges {
        out.push_str(&format!("{k} {v}\n"));
    }
    out.push_str(&format!(
        "# HELP ecs_executor_tasks_provisioning Tasks this host's prepares wait for in PROVISIONING.\n\
         # TYPE ecs_executor_tasks_provisioning gauge\n\
         ecs_executor_tasks_provisioning {provisioning}\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_is_prometheus_text_with_cumulative_buckets() {
        let mut t = Totals::default();
        t.counters
            .insert("ecs_executor_steps_total{step=\"prepare\",outcome=\"ok\"}".into(), 3.0);
        t.phases
            .insert("run_task".into(), (vec![0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2], 0.3, 2));
        let text = render(&t, 1);
        assert!(
            text.contains(
                "# TYPE ecs_executor_steps_total counter\necs_executor_steps_total{step=\"prepare\",outcome=\"ok\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("ecs_executor_prepare_phase_seconds_bucket{phase=\"run_task\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ecs_executor_prepare_phase_seconds_bucket{phase=\"run_task\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ecs_executor_tasks_provisioning 1\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                value.parse::<f64>().is_ok() && series.starts_with("ecs_executor_"),
                "{line}"
            );
        }
    }
}
