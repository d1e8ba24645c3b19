//! Stage runner selection by the instance's CPU architecture, end to end: a cluster of the
//! test's own whose one container instance registers as `arm64` (`ecs.cpu-architecture`,
//! through the stand-in's control API; its Docker is this machine's x86_64 one). Prepare
//! must ship the arm64 runner there, and with no arm64 runner use Docker exec at once with a
//! note, rather than start the x86_64 one and wait `connect_timeout_ms` for it.
//!
//! Needs the stand-in and the arm64 build (`stage-runner/build-static --arch arm64`, which
//! `stage-runner/test-arm64` in tests/run makes) in this test binary's target directory, or
//! `$ARM64_STAGE_RUNNER_BIN`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ecs_executor_tests::runner::stages;
use support::standin_agent::{Instance, OwnCluster};
use support::{E2e, admin, assert_ok, show};

/// The static aarch64 runner of this target directory.
fn arm64_stage_runner() -> PathBuf {
    if let Some(p) = std::env::var_os("ARM64_STAGE_RUNNER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/debug/deps/arm64_e2e-<hash>
    let target = exe.ancestors().nth(3).expect("the target directory");
    let bin = target.join("aarch64-unknown-linux-gnu/release/ecs-executor-stage-runner");
    assert!(
        bin.is_file(),
        "build it first: CARGO_TARGET_DIR={} stage-runner/build-static --arch arm64 ({} is missing)",
        target.display(),
        bin.display()
    );
    bin
}

/// `own` with one more container instance, registered as `arm64`; returns once its Docker
/// listener answers.
fn add_arm64_instance(own: &mut OwnCluster) -> Instance {
    for next in (200u8..252).step_by(2) {
        let (private, public) = (format!("127.0.0.{next}"), format!("127.0.0.{}", next + 1));
        let body =
            serde_json::json!({"cluster": own.name, "private_ip": private, "public_ip": public, "arch": "arm64"});
        match own.control("POST", "/_standin/instances", Some(body)) {
            (200, answer) => {
                assert_eq!(answer["cpu_architecture"], "arm64", "{answer}");
                let instance: Instance = serde_json::from_value(answer).expect("an instance");
                own.instances.push(instance.clone());
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Err(e) = own.docker_answers(&instance.private_ip) {
                    assert!(
                        Instant::now() < deadline,
                        "no Docker listener on {private}: {e}\n{}",
                        own.agent_log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                return instance;
            }
            (400, answer) if answer.to_string().contains("in use") => {}
            (status, answer) => panic!("POST /_standin/instances: {status} {answer}"),
        }
    }
    panic!("no free loopback address pair for the arm64 instance");
}

/// The config's `[stage_runner]` table (the stand-in's config ends with it) with `lines`.
fn stage_runner_with(text: String, lines: &str) -> String {
    assert!(text.contains("[stage_runner]"), "{text}");
    text.replace("[stage_runner]", &format!("[stage_runner]\n{lines}"))
}

#[test]
fn an_arm64_instance_gets_the_arm64_runner_or_docker_exec_at_once_without_one() {
    let mut own = OwnCluster::start("arm64", 0);
    let instance = add_arm64_instance(&mut own);

    // No arm64 runner: Docker exec, said in the log, without starting the x86_64 runner and
    // waiting a minute for it to answer.
    let missing = "/nonexistent/ecs-executor-stage-runner-arm64";
    let edit = own.config_edit();
    let without = E2e::with_config_edit("arm64-none", |t| {
        stage_runner_with(
            edit(t),
            &format!("binary_arm64 = \"{missing}\"\nconnect_timeout_ms = 60000"),
        )
    });
    let started = Instant::now();
    let mut live = without.start(without.job());
    let took = started.elapsed();
    let prepare = live.prepare.stderr_text();
    assert!(
        prepare.contains(&format!(
            "stages use Docker exec: the instance is arm64 and the stage runner binary for arm64 instances, \
             {missing}, is missing (build it with stage-runner/build-static --arch arm64; \
             stage_runner.binary_arm64 names it)"
        )),
        "{}",
        show(&live.prepare)
    );
    assert!(!prepare.contains("does not answer"), "{}", show(&live.prepare));
    assert!(
        took < Duration::from_secs(55),
        "prepare took {took:?}: it waited for a runner"
    );
    assert_eq!(
        live.task().container_instance_arn(),
        Some(instance.container_instance_arn.as_str())
    );
    let stage = live.stage(stages::BUILD_SCRIPT, "echo ran-on-arm64-by-exec\n");
    assert_ok(&stage);
    assert!(stage.stdout_text().contains("ran-on-arm64-by-exec"), "{}", show(&stage));
    live.finish();

    // `check` says so before any job does: a warning naming the instance, not a failure.
    let out = admin(&without.config, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let warning = format!(
        "warn instance {}: stages will use Docker exec: the instance is arm64 and the stage runner binary for arm64 \
         instances, {missing}, is missing",
        instance.instance_id
    );
    assert!(
        stdout.lines().any(|l| l.starts_with(&warning)),
        "{warning:?} in:\n{stdout}"
    );
    assert!(stdout.contains("checks passed, 1 with a warning"), "{stdout}");

    // With one: prepare ships the arm64 binary (ELF machine 0xb7, aarch64) into the job's
    // containers. This Docker is x86_64 and has no qemu, so it cannot start there and the
    // job goes on with Docker exec; on a Graviton instance it would serve the stages.
    let arm64 = arm64_stage_runner();
    let edit = own.config_edit();
    let with = E2e::with_config_edit("arm64-shipped", |t| {
        stage_runner_with(
            edit(t),
            &format!("binary_arm64 = \"{}\"\nconnect_timeout_ms = 1000", arm64.display()),
        )
    });
    let mut live = with.start(with.job());
    let prepare = live.prepare.stderr_text();
    assert!(prepare.contains("stages use Docker exec: "), "{}", show(&live.prepare));
    assert!(!prepare.contains("is missing"), "{}", show(&live.prepare));
    let stage = live.stage(
        stages::BUILD_SCRIPT,
        "od -An -tx1 -j18 -N2 /.ecs-executor-runner/ecs-executor-stage-runner | tr -d ' \\n'; echo ' <- e_machine'\n",
    );
    assert_ok(&stage);
    assert!(
        stage.stdout_text().contains("b700 <- e_machine"),
        "not the aarch64 runner: {}",
        show(&stage)
    );
    live.finish();

    let out = admin(&with.config, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let found = format!(
        "ok   stage runner for instance {}: {}",
        instance.instance_id,
        arm64.display()
    );
    assert!(stdout.lines().any(|l| l == found), "{found:?} in:\n{stdout}");
    assert!(!stdout.contains("warn "), "{stdout}");
}
