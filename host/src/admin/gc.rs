//! `gc` and `unregister`: what a runner host leaves behind when jobs never got their cleanup
//! (the runner died, the host rebooted, `cleanup` was killed), and the removal of a runner.
//!
//! Not called by gitlab-runner: an admin runs them (`gc` from cron or a systemd timer).
//!
//! **Scope.** A task is this host's to judge when it carries our tags: `managed-by` equal to
//! this config's `family_prefix` AND a `runner` tag naming a runner this host served (prepare
//! records each runner short token under `<state_dir>/runners/`; `--runner` adds more). Another
//! host's runners are never touched, so two hosts can run `gc` at once, even with one
//! `family_prefix`. Task definitions are judged by family (`<family_prefix>-...`) and the
//! `managed-by` tag, which must equal `family_prefix` exactly (a prefix `ci` never touches the
//! families of a prefix `ci-x`).
//!
//! **Tasks.** `gc` stops a task when it is older than `[gc] start_grace_secs` (prepare writes
//! the job's state right after RunTask: a younger task may be a prepare that has not yet
//! written it) and either no job state on this host names it (the job is gone, or it is a
//! leftover of an earlier prepare attempt), or it is older than `[gc] max_task_age_secs`.
//! A job whose state names its task is live and never touched otherwise.
//!
//! **Task definitions.** ECS keeps no "last used" time, and tags on a task definition cannot
//! be updated cheaply per job, so this host keeps one: prepare writes the time into
//! `<state_dir>/taskdefs/<family>` under the same lock (`locks/taskdef-<hash>`) that `gc` holds
//! while it decides and deregisters. A family this host never recorded counts as used when
//! `gc` first sees it (it gets a record then). An ACTIVE revision is deregistered when its
//! family was not used for `[gc] task_definition_idle_secs` and no task of the family is meant
//! to run in the cluster; INACTIVE revisions of our families are deleted (DeleteTaskDefinitions).
//! Across hosts sharing a `family_prefix`, the check for running tasks is the guard; a prepare
//! on another host in the ~100 ms between finding the revision and RunTask can still lose the
//! race, and fails as a system failure that gitlab-runner retries.
//!
//! **Warm pools.** `pool::sweep` judges this host's warm tasks (tagged `ecs-executor:pool`
//! with this host's id, no runner tag until a job claims one): idle past the pool's
//! `idle_timeout_secs`, gone, or orphaned; then it tops every shape up (`docs/warm-pools.md`).
//!
//! **Warm images.** `warm_images` pulls the `[warm_images] images` on every ACTIVE container
//! instance that lacks one; its problems are logged and never fail `gc`.
//!
//! Stopping and deregistering are idempotent; "not found" answers (another host was faster)
//! count as done.

use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionStatus;

use crate::aws::AwsClients;
use crate::config::Config;
use crate::ecs::budget::Budget;
use crate::ecs::task_definitions::TaskDefinitionSummary;
use crate::ecs::tasks::TaskSummary;
use crate::ecs::{self, Ecs};
use crate::failure::Failure;
use crate::protocol::JobKey;
use crate::state::{StateStore, unix_now};

/// What `gc` and `unregister` did (or, with `--dry-run`, would do).
#[derive(Debug, Default)]
struct Tally {
    tasks_stopped: usize,
    deregistered: usize,
    deleted: usize,
    secrets_deleted: usize,
    problems: Vec<String>,
}

impl Tally {
    fn finish(self, what: &str, dry_run: bool) -> Result<(), Failure> {
        let verb = if dry_run { "would stop" } else { "stopped" };
        println!(
            "ecs-executor {what}: {verb} {} task(s), {} {} task definition(s), {} {} task definition(s), {} {} registry secret(s)",
            self.tasks_stopped,
            if dry_run { "would deregister" } else { "deregistered" },
            self.deregistered,
            if dry_run { "would delete" } else { "deleted" },
            self.deleted,
            if dry_run { "would delete" } else { "deleted" },
            self.secrets_deleted,
        );
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Failure::system(format!(
                "{what}: {} problem(s): {}",
                self.problems.len(),
                self.problems.join("; ")
            )))
        }
    }
}

/// `ecs-executor gc [--dry-run] [--runner TOKEN]...`
pub async fn gc(config: &Config, dry_run: bool, extra_tokens: &[String]) -> Result<(), Failure> {
    let store = StateStore::open(&config.state_dir)?;
    let runner_tokens = runner_tokens(&store, extra_tokens);
    let clients = AwsClients::load(config).await;
    let ecs =
        Ecs::new(clients.ecs.clone(), &config.cluster).with_budget(Budget::new(store.dir(), config.aws.rate_share));
    let mut tally = Tally::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());

    let all = ecs.tasks_meant_to_run().await?;
    let mut kept = Vec::new();
    for task in ours(&all, config, &runner_tokens) {
        let Some(why) = why_collect(config, &store, &task, now) else {
            kept.push(task.arn.clone());
            continue;
        };
        stop(&ecs, &task, &why, dry_run, &mut tally).await;
    }
    collect_registry_secrets(
        config,
        &store,
        &clients.secrets,
        (&runner_tokens, &kept),
        now,
        dry_run,
        &mut tally,
    )
    .await;

    // Warm pools: idle timeouts, gone and orphaned warm tasks, then the top-up.
    let swept = crate::pool::sweep::sweep(config, &ecs, &store, &all, dry_run).await;
    let pooled = !config.pool.is_empty() || swept.evicted + swept.excess + swept.forgotten + swept.orphans > 0;
    if pooled {
        println!(
            "ecs-executor gc: warm pools: {} {} idle warm task(s) and {} beyond the targets, forgot {} gone, {} {} orphan(s), {} {} warm task(s)",
            if dry_run { "would evict" } else { "evicted" },
            swept.evicted,
            swept.excess,
            swept.forgotten,
            if dry_run { "would stop" } else { "stopped" },
            swept.orphans,
            if dry_run { "would start" } else { "started" },
            swept.started,
        );
    }
    tally.problems.extend(swept.problems);

    // Warm images: pulled where missing; a problem is logged, never a gc failure.
    if !config.warm_images.images.is_empty() {
        let w = crate::warm_images::warm(config, &ecs, &clients.ec2, dry_run).await;
        println!("{}", super::warm_images::line("gc", &w, dry_run));
    }

    let idle = config.gc.task_definition_idle_secs;
    for family in ecs.families_with_prefix(&format!("{}-", config.family_prefix)).await? {
        let active = managed(
            config,
            ecs.task_definitions_of(&family, TaskDefinitionStatus::Active).await?,
        );
        let mut inactive = managed(
            config,
            ecs.task_definitions_of(&family, TaskDefinitionStatus::Inactive).await?,
        );
        if !active.is_empty() {
            // The lock prepare holds while it picks the revision and records its use.
            let _lock = match active[0].tag(ecs::TAG_CONTENT_HASH).filter(|h| h.len() >= 16) {
                Some(hash) => Some(store.lock(&format!("taskdef-{}", &hash[..16]))?),
                None => None,
            };
            let last_used = match store.task_definition_last_used(&family) {
                Some(t) => t,
                None => {
                    // First sight on this host: it may be in use elsewhere; start the clock.
                    if !dry_run {
                        store.touch_task_definition(&family, unix_now())?;
                    }
                    unix_now()
                }
            };
            let unused_for = unix_now().saturating_sub(last_used);
            if unused_for < idle {
                continue;
            }
            if !ecs.running_tasks_of_family(&family).await?.is_empty() {
                continue;
            }
            for td in active {
                let why = format!("unused for {unused_for} s (task_definition_idle_secs = {idle})");
                if deregister(&ecs, &td, &why, dry_run, &mut tally).await {
                    inactive.push(td);
                }
            }
        }
        if delete(&ecs, &inactive, dry_run, &mut tally).await && !dry_run {
            store.forget_task_definition(&family);
        }
    }
    tally.finish("gc", dry_run)
}

/// `ecs-executor unregister [--dry-run] [--runner TOKEN]...`: the runner is being removed.
/// Stops every task of this host's runners (and `--runner`s) tagged with this
/// `family_prefix`, and deregisters and deletes every task definition of this `family_prefix`
/// — shared by every runner using that prefix, so run it when the last of them goes.
pub async fn unregister(config: &Config, dry_run: bool, extra_tokens: &[String]) -> Result<(), Failure> {
    let store = StateStore::open(&config.state_dir)?;
    let runner_tokens = runner_tokens(&store, extra_tokens);
    let clients = AwsClients::load(config).await;
    let ecs =
        Ecs::new(clients.ecs.clone(), &config.cluster).with_budget(Budget::new(store.dir(), config.aws.rate_share));
    let mut tally = Tally::default();
    let all = ecs.tasks_meant_to_run().await?;
    for task in ours(&all, config, &runner_tokens) {
        stop(&ecs, &task, "the runner is being unregistered", dry_run, &mut tally).await;
    }
    let swept = crate::pool::sweep::stop_all(config, &ecs, &store, &all, dry_run).await;
    tally.tasks_stopped += swept.evicted;
    tally.problems.extend(swept.problems);
    // Every registry secret of these runners, whatever its age.
    collect_registry_secrets(
        config,
        &store,
        &clients.secrets,
        (&runner_tokens, &[]),
        f64::INFINITY,
        dry_run,
        &mut tally,
    )
    .await;
    for family in ecs.families_with_prefix(&format!("{}-", config.family_prefix)).await? {
        let active = managed(
            config,
            ecs.task_definitions_of(&family, TaskDefinitionStatus::Active).await?,
        );
        let mut inactive = managed(
            config,
            ecs.task_definitions_of(&family, TaskDefinitionStatus::Inactive).await?,
        );
        for td in active {
            if deregister(&ecs, &td, "the runner is being unregistered", dry_run, &mut tally).await {
                inactive.push(td);
            }
        }
        if delete(&ecs, &inactive, dry_run, &mut tally).await && !dry_run {
            store.forget_task_definition(&family);
        }
    }
    tally.finish("unregister", dry_run)
}

/// Deletes the registry secrets of `runner_tokens` that no job still running needs: a secret
/// is kept while a job state on this host names it and that job's task is in `kept` (running
/// and not being stopped by this gc), and while it is younger than `[gc] start_grace_secs` (a
/// prepare writes it just before RunTask and its state).
async fn collect_registry_secrets(
    config: &Config,
    store: &StateStore,
    client: &aws_sdk_secretsmanager::Client,
    (runner_tokens, kept): (&[String], &[String]),
    now: f64,
    dry_run: bool,
    tally: &mut Tally,
) {
    let live: Vec<String> = match store.registry_secrets_by_task() {
        Ok(by_task) => by_task
            .into_iter()
            .filter(|(arn, _)| kept.contains(arn))
            .flat_map(|(_, names)| names)
            .collect(),
        Err(e) => {
            tally.problems.push(format!("registry secrets: {e}"));
            return;
        }
    };
    for token in runner_tokens {
        let prefix = crate::registry_auth::secret_prefix(config, token);
        let secrets = match crate::registry_secrets::list(client, &prefix).await {
            Ok(s) => s,
            Err(e) => {
                tally.problems.push(e.message);
                continue;
            }
        };
        for s in secrets {
            if live.contains(&s.name) {
                continue;
            }
            // Without a time, assume it was just written: never delete on a guess.
            let age = s.changed_at.map_or(0.0, |c| (now - c).max(0.0));
            if age < config.gc.start_grace_secs as f64 {
                continue;
            }
            let verb = if dry_run { "would delete" } else { "delete" };
            println!(
                "{verb} registry secret {}: no running job of this host needs it",
                s.name
            );
            tally.secrets_deleted += 1;
            if !dry_run && let Err(e) = crate::registry_secrets::delete(client, &s.name).await {
                tally.problems.push(e.message);
            }
        }
    }
}

fn runner_tokens(store: &StateStore, extra: &[String]) -> Vec<String> {
    let mut runners = store.known_runner_tokens();
    // The same sanitising prepare applies to the short token.
    runners.extend(extra.iter().map(|r| JobKey::new(0, Some(r)).runner_token));
    runners.sort();
    runners.dedup();
    runners
}

/// Tasks meant to run that carry our `managed-by` tag and one of `runner_tokens`.
/// Warm tasks not yet claimed carry no runner tag: they are `pool::sweep`'s to judge.
fn ours(tasks: &[TaskSummary], config: &Config, runner_tokens: &[String]) -> Vec<TaskSummary> {
    tasks
        .iter()
        .filter(|t| t.tag(ecs::TAG_MANAGED_BY) == Some(config.family_prefix.as_str()))
        .filter(|t| {
            t.tag(ecs::TAG_RUNNER_TOKEN)
                .is_some_and(|r| runner_tokens.iter().any(|x| x == r))
        })
        .cloned()
        .collect()
}

fn managed(config: &Config, tds: Vec<TaskDefinitionSummary>) -> Vec<TaskDefinitionSummary> {
    tds.into_iter()
        .filter(|td| td.tag(ecs::TAG_MANAGED_BY) == Some(config.family_prefix.as_str()))
        .collect()
}

/// Why `gc` stops this task, or `None` to leave it alone.
fn why_collect(config: &Config, store: &StateStore, task: &TaskSummary, now: f64) -> Option<String> {
    // Without a creation time, assume it was just created: never collect on a guess.
    let age_secs = task.created_at.map_or(0.0, |c| (now - c).max(0.0));
    let age = age_secs.round() as u64;
    if let Some(max) = config.gc.max_task_age_secs
        && age_secs > max as f64
    {
        return Some(format!("running for {age} s, more than max_task_age_secs = {max}"));
    }
    if age_secs < config.gc.start_grace_secs as f64 {
        return None;
    }
    let runner_token = task.tag(ecs::TAG_RUNNER_TOKEN)?;
    let Some(job_id) = task.tag(ecs::TAG_JOB).and_then(|j| j.parse::<u64>().ok()) else {
        return Some(format!("no valid {} tag, {age} s old", ecs::TAG_JOB));
    };
    let key = JobKey {
        job_id,
        runner_token: runner_token.to_string(),
    };
    match store.load(&key) {
        Ok(Some(state)) if state.task_arn == task.arn => None,
        Ok(Some(state)) => Some(format!(
            "job {job_id} now runs {} (this one is left from an earlier prepare attempt)",
            state.task_arn
        )),
        Ok(None) => Some(format!(
            "job {job_id} has no state on this host ({}): its runner died or cleanup never ran; {age} s old",
            store.path(&key).display()
        )),
        Err(e) => Some(format!("job {job_id}: {e}")),
    }
}

async fn stop(ecs: &Ecs, task: &TaskSummary, why: &str, dry_run: bool, tally: &mut Tally) {
    let verb = if dry_run { "would stop" } else { "stop" };
    println!("{verb} task {} ({}): {why}", task.arn, task.started_by);
    tally.tasks_stopped += 1;
    if !dry_run && let Err(e) = ecs.stop_task(&task.arn, &format!("ecs-executor gc: {why}")).await {
        tally.problems.push(format!("stopping {}: {e}", task.arn));
    }
}

async fn deregister(ecs: &Ecs, td: &TaskDefinitionSummary, why: &str, dry_run: bool, tally: &mut Tally) -> bool {
    let verb = if dry_run { "would deregister" } else { "deregister" };
    println!("{verb} task definition {}: {why}", td.arn);
    tally.deregistered += 1;
    if dry_run {
        return true;
    }
    match ecs.deregister(&td.arn).await {
        Ok(()) => true,
        Err(e) => {
            tally.problems.push(format!("deregistering {}: {e}", td.arn));
            false
        }
    }
}

/// DeleteTaskDefinitions for INACTIVE revisions; true when nothing of them is left.
async fn delete(ecs: &Ecs, tds: &[TaskDefinitionSummary], dry_run: bool, tally: &mut Tally) -> bool {
    if tds.is_empty() {
        return true;
    }
    let verb = if dry_run { "would delete" } else { "delete" };
    for td in tds {
        println!("{verb} task definition {} (INACTIVE)", td.arn);
    }
    tally.deleted += tds.len();
    if dry_run {
        return true;
    }
    let arns: Vec<String> = tds.iter().map(|t| t.arn.clone()).collect();
    // Deregistration is eventually consistent: a revision deregistered a moment ago may still
    // read as ACTIVE to DeleteTaskDefinitions. Try again briefly before reporting it.
    let mut pending = arns;
    for attempt in 0..3 {
        match ecs.delete_task_definitions(&pending).await {
            Ok(problems) if problems.is_empty() => return true,
            Ok(problems) if attempt == 2 => {
                tally.problems.extend(problems);
                return false;
            }
            Ok(problems) => {
                pending.retain(|a| problems.iter().any(|p| p.starts_with(a.as_str())));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tally.problems.push(e.to_string());
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobState;

    fn config(gc: &str) -> Config {
        Config::parse(
            &format!(
                "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n[gc]\n{gc}\n"
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn store() -> StateStore {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ecs-executor-gc-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateStore::new(&dir)
    }

    fn task(arn: &str, job: Option<&str>, created_at: Option<f64>) -> TaskSummary {
        let mut tags = vec![(ecs::TAG_RUNNER_TOKEN.to_string(), "tok".to_string())];
        if let Some(job) = job {
            tags.push((ecs::TAG_JOB.to_string(), job.to_string()));
        }
        TaskSummary {
            arn: arn.into(),
            started_by: "gl/tok/1".into(),
            created_at,
            tags,
        }
    }

    const NOW: f64 = 1_000_000.0;

    #[test]
    fn a_young_task_without_state_is_left_alone_an_old_one_is_collected() {
        let (c, s) = (config("start_grace_secs = 300"), store());
        assert_eq!(why_collect(&c, &s, &task("t1", Some("1"), Some(NOW - 10.0)), NOW), None);
        let why = why_collect(&c, &s, &task("t1", Some("1"), Some(NOW - 301.0)), NOW).unwrap();
        assert!(why.contains("no state on this host"), "{why}");
    }

    #[test]
    fn a_task_without_a_creation_time_is_never_collected_on_a_guess() {
        let (c, s) = (config(""), store());
        assert_eq!(why_collect(&c, &s, &task("t1", Some("1"), None), NOW), None);
    }

    #[test]
    fn a_live_job_keeps_its_task_and_a_leftover_attempt_is_collected() {
        let (c, s) = (config("start_grace_secs = 1"), store());
        let key = JobKey::new(7, Some("tok"));
        s.save(&key, &JobState::new(7, "c", "live", "td", false)).unwrap();
        assert_eq!(
            why_collect(&c, &s, &task("live", Some("7"), Some(NOW - 3600.0)), NOW),
            None
        );
        let why = why_collect(&c, &s, &task("old", Some("7"), Some(NOW - 3600.0)), NOW).unwrap();
        assert!(why.contains("earlier prepare attempt") && why.contains("live"), "{why}");
    }

    #[test]
    fn max_age_stops_even_a_live_job_and_a_task_without_our_tags_is_not_judged() {
        let (c, s) = (config("start_grace_secs = 1\nmax_task_age_secs = 60"), store());
        let key = JobKey::new(8, Some("tok"));
        s.save(&key, &JobState::new(8, "c", "live", "td", false)).unwrap();
        let why = why_collect(&c, &s, &task("live", Some("8"), Some(NOW - 61.0)), NOW).unwrap();
        assert!(why.contains("max_task_age_secs = 60"), "{why}");
        let mut foreign = task("x", Some("8"), Some(NOW - 30.0));
        foreign.tags.retain(|(k, _)| k != ecs::TAG_RUNNER_TOKEN);
        assert_eq!(why_collect(&c, &s, &foreign, NOW), None);
        let why = why_collect(&c, &s, &task("y", None, Some(NOW - 30.0)), NOW).unwrap();
        assert!(why.contains(ecs::TAG_JOB), "{why}");
    }
}
