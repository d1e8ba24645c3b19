//! The runner policy (deploy/runner.yaml) is exactly enough, with whole jobs: a job (config,
//! prepare, a stage, cleanup), `gc` and `check` run with AWS credentials that carry nothing
//! but that policy, against a moto with IAM enforcement on — and pass; then, with each Allow
//! statement removed in turn, the step that needs it fails as a SYSTEM_FAILURE with a message
//! naming the denied action, the statement that allows it and deploy/runner.yaml.
//!
//! A moto of this test's own (tests/local-ecs/moto/standin_moto.py on a free port; IAM
//! enforcement cannot be switched on for the shared one), its own cluster and its own agent
//! stand-in process (with admin credentials) driving the shared dockerd, so the jobs really
//! run. moto checks actions only: the policy is reduced to its actions, as deploy/tests/iam.py
//! does (support/iam_moto.py). A step that fails under a reduced policy is done again with the
//! whole policy, so that the next step finds what it expects (gitlab-runner would retry a
//! failed prepare; an admin would fix the policy and rerun gc).
//!
//! Lines starting `FIGURE` are the numbers docs/deploy.md and docs/reliability.md quote.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_executor_tests::runner::stages;
use ecs_executor_tests::standin::{Standin, agent_binary};
use serde_json::Value;
use support::{E2e, admin, show, stage_script, text};

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name}: {value}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A process of this test, killed (and waited for) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Our moto, our cluster, our agent; on drop the agent goes first, then the containers it
/// started (label `com.amazonaws.ecs.cluster=<ours>`), then moto.
struct OwnEcs {
    endpoint: String,
    cluster: String,
    setup: Value,
    agent: Option<Proc>,
    moto: Option<Proc>,
    standin: Standin,
}

impl OwnEcs {
    fn start(standin: &Standin, dir: &Path) -> OwnEcs {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let python = standin.state_dir.join("venv/bin/python");
        let moto_log = dir.join("moto.log");
        let child = Command::new(&python)
            .arg(repo_root().join("tests/local-ecs/moto/standin_moto.py"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", &standin.region)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&moto_log).expect("moto log"))
            .stderr(std::fs::File::create(dir.join("moto.err")).expect("moto log"))
            .spawn()
            .expect("start standin_moto.py");
        let moto = Proc {
            child,
            log: dir.join("moto.err"),
        };
        let health = format!("{endpoint}/_standin/health");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&health).call().is_err() {
            assert!(Instant::now() < deadline, "own moto did not answer:\n{}", moto.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let cluster = ecs_executor_tests::standin::unique_name("iam-e2e");
        let out = Command::new(&python)
            .arg(repo_root().join("tests/harness/tests/support/iam_moto.py"))
            .args([&endpoint, &standin.region, &cluster])
            .arg(repo_root().join("deploy/runner.yaml"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run iam_moto.py");
        assert!(
            out.status.success(),
            "iam_moto.py: {}\nmoto:\n{}",
            String::from_utf8_lossy(&out.stderr),
            moto.log()
        );
        let setup: Value = serde_json::from_slice(&out.stdout).expect("iam_moto.py prints JSON");
        let mut own = OwnEcs {
            endpoint,
            cluster,
            setup,
            agent: None,
            moto: Some(moto),
            standin: standin.clone(),
        };
        let (id, secret) = own.keys("admin");
        let agent_log = dir.join("agent.log");
        let child = Command::new(agent_binary())
            .args(["--standin", &standin.state_dir.join("standin.json").to_string_lossy()])
            .args(["--endpoint", &own.endpoint, "--cluster", &own.cluster])
            .args([
                "--container-instance",
                own.setup["seed"]["container_instance_arn"].as_str().unwrap(),
            ])
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).expect("agent log"))
            .spawn()
            .expect("start ecs-agent-standin");
        own.agent = Some(Proc { child, log: agent_log });
        own
    }

    fn keys(&self, user: &str) -> (String, String) {
        let u = &self.setup["users"][user];
        assert!(u.is_object(), "no user {user} in {}", self.setup["users"]);
        (
            u["id"].as_str().unwrap().to_string(),
            u["secret"].as_str().unwrap().to_string(),
        )
    }

    /// The Allow statements: (Sid, actions).
    fn allows(&self) -> Vec<(String, Vec<String>)> {
        self.setup["statements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["effect"] == "Allow")
            .map(|s| {
                (
                    s["sid"].as_str().unwrap().to_string(),
                    s["actions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// `service:Action` of every call the executor made (its user agent) that moto answered 200.
    fn executor_calls_ok(&self) -> BTreeSet<String> {
        let body: Value = ureq::get(&format!("{}/_standin/requests", self.endpoint))
            .call()
            .expect("GET /_standin/requests")
            .body_mut()
            .read_json()
            .expect("requests JSON");
        body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == 200)
            .filter(|r| r["user_agent"].as_str().is_some_and(|u| u.contains("app/ecs-executor")))
            .map(|r| {
                format!(
                    "{}:{}",
                    r["service"].as_str().unwrap_or_default(),
                    r["action"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for OwnEcs {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            if std::thread::panicking() {
                let log = agent.log();
                eprintln!("agent stand-in log (last lines):\n{}", tail_lines(&log, 40));
            }
            drop(agent);
        }
        // The containers our agent started (it shares the shared dockerd).
        let docker = self.standin.docker();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                vec![format!("com.amazonaws.ecs.cluster={}", self.cluster)],
            )]);
            let list = docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .unwrap_or_default();
            for c in list {
                if let Some(id) = c.id {
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(bollard::query_parameters::RemoveContainerOptions {
                                force: true,
                                v: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            }
        });
        if let Some(moto) = self.moto.take()
            && std::thread::panicking()
        {
            eprintln!("own moto log (last lines):\n{}", tail_lines(&moto.log(), 40));
        }
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A test config on our moto and cluster with the credentials of `user`; `[gc]` collects a
/// task definition as soon as no job uses it, so one `gc` reaches every call it can make.
/// The base config (the stand-in's executor.toml) has an `[aws]` table.
fn config_text(base: &str, own: &OwnEcs, user: &str) -> String {
    let (id, secret) = own.keys(user);
    let mut out: Vec<String> = Vec::new();
    for line in base.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        out.push(match key {
            "cluster" => format!("cluster = \"{}\"", own.cluster),
            "endpoint_url" => format!("endpoint_url = \"{}\"", own.endpoint),
            "access_key_id" => format!("access_key_id = \"{id}\""),
            "secret_access_key" => format!("secret_access_key = \"{secret}\""),
            // prepare then asks ECS for RUNNING instead of taking Docker's word first, so
            // the one job makes DescribeTasks (the fallback and the stage watch need it too).
            "[aws]" => "[aws]\nwait_for_ecs_running = true".to_string(),
            _ => line.to_string(),
        });
    }
    out.push("\n[gc]\ntask_definition_idle_secs = 0\n".to_string());
    out.join("\n")
}

/// One step's end under a reduced policy: what failed, and the output.
struct Refusal {
    step: &'static str,
    output: String,
}

/// Every step of a whole job plus `gc` and `check` with the credentials of `user`; a step that
/// fails is checked to be a system failure and done again with the whole policy. Returns the
/// refusals.
fn run_everything(e: &E2e, own: &OwnEcs, user: &str) -> Vec<Refusal> {
    let base = std::fs::read_to_string(&e.config).expect("read the test config");
    let as_user = config_text(&base, own, user);
    let as_whole = config_text(&base, own, "whole");
    let ours = e.dir.join("iam.toml");
    let set = |text: &str| std::fs::write(&ours, text).expect("write the config");
    set(&as_user);
    let mut refusals = Vec::new();

    let job = e.job();
    let mut r = e.runner(&job).config_file(&ours);
    assert!(r.config().is_success(), "config never calls AWS");
    let prepare = r.prepare();
    if !prepare.is_success() {
        assert!(prepare.is_system_failure(), "{user}: prepare: {}", show(&prepare));
        refusals.push(Refusal {
            step: "prepare",
            output: prepare.stderr_text(),
        });
        // gitlab-runner's next attempt, now with the whole policy.
        set(&as_whole);
        r.new_attempt();
        assert!(r.config().is_success());
        let again = r.prepare();
        assert!(
            again.is_success(),
            "{user}: prepare with the whole policy: {}",
            show(&again)
        );
        set(&as_user);
    }
    let build = r.run_script(stages::BUILD_SCRIPT, &stage_script(&r, "echo iam-e2e-ran\n"));
    assert!(
        build.is_success() && build.stdout_text().contains("iam-e2e-ran"),
        "{user}: the stage runs in the job's container: {}",
        show(&build)
    );
    let cleanup = r.cleanup();
    if !cleanup.is_success() {
        assert!(cleanup.is_system_failure(), "{user}: cleanup: {}", show(&cleanup));
        refusals.push(Refusal {
            step: "cleanup",
            output: cleanup.stderr_text(),
        });
        set(&as_whole);
        let again = r.cleanup();
        assert!(
            again.is_success(),
            "{user}: cleanup with the whole policy: {}",
            show(&again)
        );
        set(&as_user);
    }
    for step in ["gc", "check"] {
        let out = admin(&ours, &[step]);
        if !out.status.success() {
            // Admin commands: 2 when the command could not do its work (SYSTEM_FAILURE's).
            assert_eq!(out.status.code(), Some(2), "{user}: {step}: {}", text(&out));
            refusals.push(Refusal {
                step: if step == "gc" { "gc" } else { "check" },
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
            set(&as_whole);
            let again = admin(&ours, &[step]);
            assert!(
                again.status.success(),
                "{user}: {step} with the whole policy: {}",
                text(&again)
            );
            set(&as_user);
        }
    }
    refusals
}

/// A warm pool's job under the whole policy: the first job of the shape starts cold and its
/// cleanup starts a warm task; a later job claims it, which tags the task (ecs:TagResource
/// outside RunTask, the kit's TagClaimedWarmTasks) — a refused tag would discard the task and
/// start cold. Returns the claiming prepare's output.
fn pooled_claim(e: &E2e, own: &OwnEcs) -> String {
    let base = std::fs::read_to_string(&e.config).expect("read the test config");
    let image = &e.standin.images.build;
    let pool = |min_idle: u32| {
        format!(
            "{}\n[[pool]]\nname = \"iam\"\nimage = \"{image}\"\nmin_idle = {min_idle}\nmax = 1\n",
            config_text(&base, own, "whole")
        )
    };
    let ours = e.dir.join("iam-pool.toml");
    std::fs::write(&ours, pool(1)).expect("write the config");
    let cold = e.job();
    let mut r = e.runner(&cold).config_file(&ours);
    assert!(r.config().is_success());
    let prepare = r.prepare();
    assert!(prepare.is_success(), "pooled job, cold: {}", show(&prepare));
    assert!(r.cleanup().is_success(), "pooled job's cleanup (starts a warm task)");
    // The warm task may still be starting: its claim is then put back and the job starts cold.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = e.job();
        let mut r = e.runner(&job).config_file(&ours);
        assert!(r.config().is_success());
        let prepare = r.prepare();
        let out = format!("{}\n{}", prepare.stdout_text(), prepare.stderr_text());
        assert!(prepare.is_success(), "pooled job: {}", show(&prepare));
        assert!(
            !out.contains("discarded"),
            "the claim of a warm task is allowed by the kit's policy: {out}"
        );
        if out.contains("claimed (idle ") {
            // No refill after this job: nothing of the pool outlives this part.
            std::fs::write(&ours, pool(0)).expect("write the config");
            assert!(r.cleanup().is_success(), "the claimed job's cleanup");
            return out;
        }
        assert!(r.cleanup().is_success());
        assert!(Instant::now() < deadline, "no warm task claimed in 120 s: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The actions a refusal names as denied (`access denied to ecs:RunTask`) with the statement
/// it names (`statement `RunTask``).
fn denied_in(output: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for part in output.split("[access denied to ").skip(1) {
        let action = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string();
        let sid = part
            .split("statement `")
            .nth(1)
            .and_then(|s| s.split('`').next())
            .unwrap_or_default()
            .to_string();
        assert!(
            part.contains("deploy/runner.yaml"),
            "the refusal points at deploy/runner.yaml: {output}"
        );
        found.push((action, sid));
    }
    found
}

/// Dependent actions: ECS authorizes them inside RunTask / RegisterTaskDefinition on real AWS,
/// moto never asks for them, so a job without them passes here (asserted, so that the test
/// notices when moto learns them). ecs:TagResource is also a call of its own (a warm task's
/// claim, asserted allowed above); its two statements each allow what the other does once
/// moto reduces them to actions, so removing one refuses nothing (their resources and
/// conditions: deploy/tests/iam.py).
const NOT_ASKED_BY_MOTO: &[&str] = &["ecs:TagResource", "iam:PassRole"];

/// Only a job with a private image (and a login for its registry) writes and deletes a
/// registry secret; this test's job has a public one. Those actions are proven by
/// `registry_e2e` (whole private-image jobs) and `deploy/tests/iam.py` (moto's IAM, each
/// action); `gc` lists the secrets for every job, so ListSecrets is proven here.
const PRIVATE_IMAGES_ONLY: &[&str] = &[
    "secretsmanager:CreateSecret",
    "secretsmanager:PutSecretValue",
    "secretsmanager:RestoreSecret",
    "secretsmanager:DeleteSecret",
];

/// Whether this test's steps can show that `action` is needed.
fn reached_here(action: &str) -> bool {
    !NOT_ASKED_BY_MOTO.contains(&action) && !PRIVATE_IMAGES_ONLY.contains(&action)
}

#[test]
fn the_runner_policy_is_exactly_enough_for_whole_jobs_gc_and_check() {
    let started = Instant::now();
    let standin = Standin::require();
    let e = E2e::new("iam");
    let own = OwnEcs::start(&standin, &e.dir);
    let setup_secs = started.elapsed().as_secs_f64();
    let allows = own.allows();
    assert!(allows.len() >= 10, "the runner policy's Allow statements: {allows:?}");

    // 1. The whole policy: everything passes, and the executor called every action the policy
    //    allows that moto checks (so every statement below is reached by some step).
    let refusals = run_everything(&e, &own, "whole");
    assert!(
        refusals.is_empty(),
        "with the whole runner policy nothing is refused: {}",
        refusals
            .iter()
            .map(|r| format!("{}: {}", r.step, r.output))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A warm pool's claim tags an existing task: a real ecs:TagResource call moto checks.
    let claim = pooled_claim(&e, &own);
    let called = own.executor_calls_ok();
    assert!(
        called.contains("ecs:TagResource"),
        "the warm task's claim called TagResource (allowed): {called:?}\n{claim}"
    );
    let allowed: BTreeSet<String> = allows.iter().flat_map(|(_, a)| a.clone()).collect();
    let checkable: BTreeSet<String> = allowed.iter().filter(|a| reached_here(a)).cloned().collect();
    let not_called: Vec<&String> = checkable.difference(&called).collect();
    assert!(
        not_called.is_empty(),
        "a whole job, gc and check call every action of the policy moto can check; not called: {not_called:?} (called: {called:?})"
    );
    figure(
        "iam_e2e actions called by a whole job + gc + check under the whole policy",
        format!("{} of {} allowed", checkable.len(), allowed.len()),
    );

    // 2. Each Allow statement removed: the step that needs it fails naming an action of it.
    let mut proven = Vec::new();
    let mut unproven = Vec::new();
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    for (sid, actions) in &allows {
        let variant = E2e::new(&format!("iam-{}", sid.to_lowercase()));
        let refusals = run_everything(&variant, &own, &format!("without:{sid}"));
        let testable = actions.iter().any(|a| reached_here(a));
        if !testable {
            assert!(
                refusals.is_empty(),
                "without {sid} ({actions:?}, which moto never asks for or only private-image jobs need) everything passes here: {}",
                refusals.iter().map(|r| r.output.clone()).collect::<Vec<_>>().join("\n")
            );
            unproven.push(sid.clone());
            let shared = actions
                .iter()
                .all(|a| allows.iter().any(|(other, acts)| other != sid && acts.contains(a)));
            let why = if actions.iter().all(|a| PRIVATE_IMAGES_ONLY.contains(&a.as_str())) {
                "passes (only private-image jobs need it: registry_e2e, deploy/tests/iam.py)"
            } else if shared {
                "passes (reduced to actions another statement allows them too; resources and conditions: deploy/tests/iam.py)"
            } else {
                "passes (moto never asks for it)"
            };
            table.insert(sid.clone(), why.into());
            continue;
        }
        assert!(
            !refusals.is_empty(),
            "without {sid} ({actions:?}) some step of a job, gc or check must fail"
        );
        let mut named = BTreeSet::new();
        let mut steps = Vec::new();
        for refusal in &refusals {
            let denied = denied_in(&refusal.output);
            assert!(
                !denied.is_empty(),
                "without {sid}: {} fails naming the denied action:\n{}",
                refusal.step,
                refusal.output
            );
            for (action, named_sid) in denied {
                assert!(
                    actions.contains(&action),
                    "without {sid}: {} names {action}, not an action of {sid} {actions:?}:\n{}",
                    refusal.step,
                    refusal.output
                );
                assert_eq!(
                    &named_sid, sid,
                    "without {sid}: the message names the statement that allows {action}:\n{}",
                    refusal.output
                );
                steps.push(format!("{} ({action})", refusal.step));
                named.insert(action);
            }
        }
        steps.dedup();
        table.insert(sid.clone(), steps.join(", "));
        proven.push(sid.clone());
    }
    for (sid, steps) in &table {
        figure(&format!("iam_e2e without {sid}"), steps);
    }
    figure(
        "iam_e2e Allow statements proven necessary by whole jobs",
        format!(
            "{} of {} ({} not: {})",
            proven.len(),
            allows.len(),
            unproven.len(),
            unproven.join(", ")
        ),
    );
    figure(
        "iam_e2e duration",
        format!(
            "{:.0} s ({:.0} s own moto + IAM users + agent)",
            started.elapsed().as_secs_f64(),
            setup_secs
        ),
    );
    drop(own);
}
