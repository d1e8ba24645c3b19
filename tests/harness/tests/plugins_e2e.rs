//! End-to-end site plugins: the built executor with `[[plugins]]` in its config, driven as
//! gitlab-runner drives it, against the local ECS stand-in. The guest plugins come built from
//! `tests/test-components` (its build.rs compiles `plugins/` for wasm32-wasip2).
//!
//! Each test has its own config copy (support::E2e), so AWS calls are told apart by its
//! family prefix and its jobs' `startedBy`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionField;
use ecs_executor_test_components::plugin as plugin_wasm;
use ecs_executor_tests::runner::{Image, JobSpec, JobStatus, stages};
use support::{E2e, assert_ok, assert_system_failure_saying, executor_bin, show, stage_script};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A `[[plugins]]` table for the config (`extra`: more keys of the entry, as TOML). The
/// whole entry is serialised as one document so nested settings (arrays of tables) land
/// under `plugins.settings`, not at the root.
fn plugin_entry(name: &str, wasm: &Path, settings_json: &str, extra: &str) -> String {
    let settings: toml::Table = serde_json::from_str(settings_json).expect("settings JSON");
    let mut entry: toml::Table = toml::from_str(extra).expect("extra TOML");
    entry.insert("name".into(), name.into());
    entry.insert("path".into(), wasm.display().to_string().into());
    entry.insert("settings".into(), settings.into());
    let mut doc = toml::Table::new();
    doc.insert("plugins".into(), toml::Value::Array(vec![entry.into()]));
    format!("\n{}\n", toml::to_string(&doc).expect("plugin entry TOML"))
}

fn with_plugins(test: &str, entries: &[String]) -> E2e {
    let entries = entries.concat();
    E2e::with_config_edit(test, move |text| format!("{text}\n{entries}"))
}

/// The image-allowlist plugin, named `allowlist`, allowing the test images' registry only.
fn test_images_allowlist(wasm: &Path) -> String {
    plugin_entry(
        "allowlist",
        wasm,
        r#"{"allowed_registries": ["docker.io/ecs-executor-test"]}"#,
        "",
    )
}

/// A test-misbehave plugin, `plugin`, whose task-definition.customize hook misbehaves as `mode`.
fn with_misbehaving_plugin(test: &str, plugin: &str, mode: &str, extra: &str) -> E2e {
    let wasm = plugin_wasm("test-misbehave");
    let settings = format!(r#"{{"customize": "{mode}"}}"#);
    with_plugins(test, &[plugin_entry(plugin, &wasm, &settings, extra)])
}

/// AWS calls that name this test's families or this job since `mark`: `(action, body)`.
fn calls_for(e: &E2e, job: &JobSpec, mark: u64) -> Vec<(String, String)> {
    let started_by = e.started_by(job);
    e.standin
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.body.contains(&e.family_prefix) || r.body.contains(&started_by))
        .map(|r| (r.action.unwrap_or_default(), r.body))
        .collect()
}

/// A failed prepare: a system failure whose message names the plugin, the hook and `cause`;
/// no RegisterTaskDefinition, no RunTask, no task; cleanup succeeds.
fn assert_broken_plugin_fails_closed(e: &E2e, job: &JobSpec, plugin: &str, cause: &str) {
    let mark = e.standin.request_mark();
    let (mut r, prepare) = e.prepare(job);
    assert!(prepare.is_system_failure(), "{}", show(&prepare));
    let said = prepare.stderr_text();
    for part in [&format!("plugin `{plugin}`"), "task-definition.customize", cause] {
        assert!(said.contains(part), "the message names {part:?}:\n{}", show(&prepare));
    }
    let calls = calls_for(e, job, mark);
    assert!(
        !calls
            .iter()
            .any(|(a, _)| a == "RegisterTaskDefinition" || a == "RunTask"),
        "no task definition and no task for a broken plugin: {calls:#?}"
    );
    assert!(e.tasks_of(job).is_empty());
    assert_ok(&r.cleanup());
}

#[test]
fn an_image_the_allowlist_refuses_fails_the_job_as_a_build_failure_before_anything_is_registered() {
    let wasm = plugin_wasm("image-allowlist");
    let e = with_plugins(
        "allowlist-refuses",
        &[plugin_entry(
            "allowlist",
            &wasm,
            r#"{"allowed_registries": ["registry.example.com"]}"#,
            "",
        )],
    );
    let job = e.job().script(["echo never-runs"]);
    let mark = e.standin.request_mark();
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Failed { exit_code: 1 }, "{log}");
    assert_eq!(outcome.call_sequence(), ["config", "prepare", "cleanup"], "{log}");
    let prepare = &outcome.calls[1];
    assert_eq!(
        prepare.exit_code(),
        Some(1),
        "BUILD_FAILURE_EXIT_CODE: {}",
        show(prepare)
    );
    let said = prepare.stderr_text();
    assert!(
        said.contains("plugin `allowlist` refused the job")
            && said.contains(&format!(
                "image `{}` of container `build` is not from an allowed registry",
                e.standin.images.build
            )),
        "the plugin's own message:\n{}",
        show(prepare)
    );
    assert!(log.contains("is not from an allowed registry"), "{log}");
    assert!(!log.contains("never-runs\n"), "{log}");
    let calls = calls_for(&e, &job, mark);
    assert!(
        !calls
            .iter()
            .any(|(a, _)| a == "RegisterTaskDefinition" || a == "RunTask"),
        "a refused job registers nothing and runs nothing: {calls:#?}"
    );
    assert!(e.tasks_of(&job).is_empty());
}

#[test]
fn an_allowed_image_runs_with_the_plugin_in_the_chain() {
    let wasm = plugin_wasm("image-allowlist");
    let e = with_plugins("allowlist-accepts", &[test_images_allowlist(&wasm)]);
    let job = e.job().script(["echo plugin-approved-job-ran"]);
    let outcome = e.runner(&job).run_job();
    let log = outcome.log_text();
    assert_eq!(outcome.status, JobStatus::Success, "{log}");
    assert!(log.contains("plugin-approved-job-ran"), "{log}");
    e.assert_tasks_stopped(&job, 1);
}

/// Each way test-misbehave's task-definition.customize hook can misbehave (looping past its
/// deadline, allocating past its memory cap, breaking the task definition, failing) fails
/// the job closed, naming the plugin and the cause.
#[test]
fn a_misbehaving_customize_hook_fails_the_job_closed_naming_the_plugin_and_the_cause() {
    for (mode, plugin, extra, cause) in [
        ("loop", "looper", "deadline_ms = 300", "timed out after 300 ms"),
        (
            "allocate",
            "hoarder",
            "memory_mib = 16",
            "exceeded its memory limit of 16 MiB",
        ),
        (
            "remove-build",
            "breaker",
            "",
            "container `build` must be present exactly once",
        ),
        ("oversize", "bloater", "", "bytes of JSON (ECS allows 65536)"),
        ("other-error", "failer", "", "broken on purpose"),
    ] {
        let e = with_misbehaving_plugin(&format!("misbehave-{mode}"), plugin, mode, extra);
        assert_broken_plugin_fails_closed(&e, &e.job(), plugin, cause);
    }
}

#[test]
fn a_plugin_that_panics_fails_the_job_closed_with_its_panic_message() {
    let e = with_misbehaving_plugin("misbehave-panic", "panicker", "panic", "");
    let job = e.job();
    assert_broken_plugin_fails_closed(&e, &job, "panicker", "panicked: ");
    // The guest's own panic message reached the error (captured stderr).
    let (mut r, prepare) = e.prepare(&job);
    assert!(
        prepare.stderr_text().contains("test-misbehave panicked on purpose"),
        "{}",
        show(&prepare)
    );
    assert_ok(&r.cleanup());
}

#[test]
fn a_bad_plugin_path_or_bad_settings_fail_prepare_naming_the_plugin() {
    let wasm = plugin_wasm("image-allowlist");
    for (case, entry, expected) in [
        (
            "missing-file",
            plugin_entry("ghost", Path::new("/nonexistent/ghost.wasm"), "{}", ""),
            vec!["plugin `ghost`", "/nonexistent/ghost.wasm", "cannot read the file"],
        ),
        (
            "bad-settings",
            plugin_entry("allowlist", &wasm, r#"{"allowed_registries": []}"#, ""),
            vec![
                "plugin `allowlist`",
                "settings are not valid",
                "allowed_registries is empty",
            ],
        ),
    ] {
        let e = with_plugins(&format!("badplugin-{case}"), &[entry]);
        let job = e.job();
        let mark = e.standin.request_mark();
        let (mut r, prepare) = e.prepare(&job);
        assert!(prepare.is_system_failure(), "{case}: {}", show(&prepare));
        for part in &expected {
            assert!(
                prepare.stderr_text().contains(part),
                "{case}: names {part:?}: {}",
                show(&prepare)
            );
        }
        let calls = calls_for(&e, &job, mark);
        assert!(
            calls
                .iter()
                .all(|(a, _)| a != "RunTask" && a != "RegisterTaskDefinition"),
            "{case}: {calls:#?}"
        );
        assert_ok(&r.cleanup());
    }
}

#[test]
fn an_unknown_grant_is_a_config_error_naming_the_plugin() {
    let wasm = plugin_wasm("image-allowlist");
    let e = with_plugins(
        "badgrant",
        &[plugin_entry(
            "allowlist",
            &wasm,
            r#"{"allowed_registries": ["docker.io"]}"#,
            "grants = [\"network\"]",
        )],
    );
    let job = e.job();
    let config = e.runner(&job).config();
    assert_system_failure_saying(&config, &["entry `allowlist`", "unknown grant `network`"]);
}

// ---- Tests of the other example plugins (plugins/role-mapper, plugins/address-picker).

#[test]
fn the_role_mappers_role_and_tags_are_in_the_registered_task_definition() {
    let wasm = plugin_wasm("role-mapper");
    let role = "arn:aws:iam::123456789012:role/ci-x";
    // The harness job's project path (E2e::job): `e2e/<test name>`.
    let project = "e2e/role-mapper";
    let settings =
        format!(r#"{{"roles":[{{"project":"{project}","task_role_arn":"{role}"}}],"tags":{{"team":"ci"}}}}"#);
    let e = with_plugins("role_mapper", &[plugin_entry("roles", &wasm, &settings, "")]);
    let job = e.job();
    assert_eq!(job.project_path(), project);
    let mut r = e.prepared(&job);
    let task = e.running_task(&job);
    let td_arn = task.task_definition_arn().expect("task definition arn").to_string();
    let described = e.block_on(
        e.ecs
            .describe_task_definition()
            .task_definition(&td_arn)
            .include(TaskDefinitionField::Tags)
            .send(),
    );
    let described = described.expect("DescribeTaskDefinition");
    let td = described.task_definition().expect("task definition");
    assert_eq!(td.task_role_arn(), Some(role), "{td:#?}");
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some("team") && t.value() == Some("ci")),
        "{:#?}",
        described.tags()
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

/// The stand-in instance's subnet, from EC2.
fn standin_subnet(e: &E2e) -> String {
    let instance_id = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(e.standin.state_dir.join("standin.json")).expect("standin.json"),
    )
    .expect("standin.json is JSON")["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();
    let ec2 = e.block_on(e.standin.ec2(3));
    let out = e
        .block_on(ec2.describe_instances().instance_ids(&instance_id).send())
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.subnet_id().map(String::from))
        .expect("the stand-in instance has a subnet")
}

/// Established TCP connections to `127.0.0.2:2376` held by a process whose command line
/// names `config` (the executor of this test), from the kernel's socket table.
fn executor_connections_to_public_listener(config: &Path) -> usize {
    // /proc/net/tcp: remote address as little-endian hex IP : hex port; state 01 = established,
    // 05 = FIN_WAIT2: a run stage half-closes its side once the script is sent (stdin EOF)
    // while the output still streams back.
    // 127.0.0.2, any port: Docker's (2376) or the stage runner's, published on that address.
    let wanted_remote_ip = "0200007F:";
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() > 9 && cols[2].starts_with(wanted_remote_ip) && matches!(cols[3], "01" | "05"))
                .then(|| cols[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return 0;
    }
    let config = config.display().to_string();
    let mut found = 0;
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&config) {
            continue;
        }
        for fd in std::fs::read_dir(proc_dir.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.display().to_string();
                if inodes.iter().any(|i| link == format!("socket:[{i}]")) {
                    found += 1;
                }
            }
        }
    }
    found
}

#[test]
fn the_address_picker_makes_the_executor_connect_to_the_public_listener() {
    let wasm = plugin_wasm("address-picker");
    let probe = E2e::new("address-picker-probe");
    let subnet = standin_subnet(&probe);
    drop(probe);
    let e = with_plugins(
        "address_picker",
        &[plugin_entry(
            "address",
            &wasm,
            &format!(r#"{{"public_subnets":["{subnet}"]}}"#),
            "",
        )],
    );
    let job = e.job();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);
    // Signal 1: what prepare recorded for the later stages.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.state_file(&job)).expect("state file")).expect("state JSON");
    assert_eq!(state["docker"]["host"], "127.0.0.2", "{state:#}");
    // The stage runners are reached at the same address.
    let build_runner = state["stage_runner"]["addresses"]["build"].as_str().unwrap_or_default();
    assert!(build_runner.starts_with("127.0.0.2:"), "{state:#}");
    // Signal 2: the kernel sees the executor's own connection to 127.0.0.2 (the stage runner)
    // while a stage streams from it.
    let seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, config) = (seen.clone(), stop.clone(), e.config.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if executor_connections_to_public_listener(&config) > 0 {
                    seen.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let run = r.run_script(
        stages::BUILD_SCRIPT,
        &stage_script(&r, "sleep 2; echo via-public-listener"),
    );
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    assert_ok(&run);
    assert!(run.stdout_text().contains("via-public-listener"), "{}", show(&run));
    assert!(
        seen.load(Ordering::Relaxed),
        "no established connection from the executor to 127.0.0.2 was seen during the stage"
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}

// ---- The admin commands (no gitlab-runner, no AWS).

fn command(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(executor_bin())
        .args(args)
        .output()
        .expect("run ecs-executor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_test_exits_0_1_or_2_and_prints_a_diff() {
    let wasm = plugin_wasm("image-allowlist");
    let cases = repo_root().join("plugin-host/tests/cases");
    let wasm_s = wasm.display().to_string();
    let good = cases.join("image-allowlist.json").display().to_string();
    let wrong = cases.join("wrong-expectations.json").display().to_string();
    let (code, out, err) = command(&["plugin", "test", &wasm_s, &good]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok      an image from another registry is refused") && out.contains("7 passed, 0 failed"),
        "{out}"
    );
    let (code, out, err) = command(&["plugin", "test", &wasm_s, &good, &wrong]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAILED  expects the wrong image") && out.contains("$.containers[0].image: differs"),
        "{out}"
    );
    assert!(out.contains("7 passed, 2 failed"), "{out}");
    let (code, _, err) = command(&["plugin", "test", &wasm_s, "/nonexistent/cases.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/cases.json"), "{err}");
    let (code, _, err) = command(&["plugin", "test", "/nonexistent/p.wasm", &good]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/p.wasm"), "{err}");
}

#[test]
fn plan_and_compile_show_the_task_definition_after_the_plugins_without_calling_aws() {
    let allowlist = plugin_wasm("image-allowlist");
    let misbehave = plugin_wasm("test-misbehave");
    let e = with_plugins(
        "plan",
        &[
            test_images_allowlist(&allowlist),
            plugin_entry("tagger", &misbehave, r#"{"customize": "add-tag"}"#, ""),
        ],
    );
    let mark = e.standin.request_mark();
    let config = e.config.display().to_string();
    let (code, out, err) = command(&["--config", &config, "plugin", "compile"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("allowlist") && out.contains("tagger") && out.contains("settings accepted"),
        "{out}"
    );
    let (_, again, _) = command(&["--config", &config, "plugin", "compile"]);
    assert!(
        again.contains("already compiled allowlist"),
        "the second run uses the cache: {again}"
    );

    let response = e.dir.join("response.json");
    let write = |image: &str| {
        std::fs::write(
            &response,
            format!(r#"{{"id": 7, "image": {{"name": "{image}"}}, "variables": [{{"key": "CI_PROJECT_PATH", "value": "g/p", "public": true}}]}}"#),
        )
        .unwrap()
    };
    write(&e.standin.images.build);
    let response_s = response.display().to_string();
    let (code, out, err) = command(&["--config", &config, "plan", "--job-response", &response_s]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan prints JSON");
    let td = &plan["register_task_definition"];
    assert_eq!(td["pidMode"], "task", "{td:#}");
    assert!(
        td["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "misbehave" && t["value"] == "1"),
        "{td:#}"
    );
    assert!(td["family"].as_str().unwrap().starts_with(&e.family_prefix), "{td:#}");
    assert_eq!(td["containerDefinitions"][0]["image"], e.standin.images.build.as_str());
    assert_eq!(plan["address"]["plugins_in_order"], serde_json::json!(["tagger"]));

    write("evil.io/x:1");
    let (code, _, err) = command(&["--config", &config, "plan", "--job-response", &response_s]);
    assert_eq!(code, 1, "a refused job: {err}");
    assert!(
        err.contains("plugin `allowlist` refused the job") && err.contains("evil.io/x:1"),
        "{err}"
    );

    let calls: Vec<_> = e
        .standin
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.body.contains(&e.family_prefix))
        .collect();
    assert!(calls.is_empty(), "plan and compile call no AWS API: {calls:#?}");
}

#[test]
fn check_reports_each_plugin_with_its_hooks_or_what_is_wrong() {
    let allowlist = plugin_wasm("image-allowlist");
    let picker = plugin_wasm("address-picker");
    let e = with_plugins(
        "check-plugins",
        &[
            plugin_entry("allow", &allowlist, r#"{"allowed_registries": ["docker.io"]}"#, ""),
            plugin_entry("picker", &picker, r#"{"public_subnets": 5}"#, ""),
        ],
    );
    let config = e.config.display().to_string();
    let (code, stdout, stderr) = command(&["--config", &config, "check"]);
    assert_eq!(code, 2, "one plugin is broken, so check fails:\n{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   plugin `allow`") && l.contains("hooks: task-definition.customize")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL plugin `picker`") && l.contains("public_subnets")),
        "{stdout}"
    );
    // The rest is still checked.
    assert!(stdout.contains("ok   AWS credentials and cluster local"), "{stdout}");
}

/// `check` reaches each instance's Docker as prepare does: through the address plugin, with
/// its `tls_server_name` as the name the server certificate must carry. The stand-in's fleet
/// certificate names `localhost` (and 127.0.0.0/24): with that name check passes at the
/// plugin's public address, with another name the same daemon fails NotValidForName.
#[test]
fn check_uses_the_address_plugins_address_and_tls_server_name() {
    let wasm = plugin_wasm("address-picker");
    let probe = E2e::new("check-picker-probe");
    let subnet = standin_subnet(&probe);
    drop(probe);
    let picker = |test: &str, name: &str| {
        with_plugins(
            test,
            &[plugin_entry(
                "address",
                &wasm,
                &format!(r#"{{"public_subnets":["{subnet}"], "tls_server_name": "{name}"}}"#),
                "",
            )],
        )
    };
    let e = picker("check-picker", "localhost");
    let config = e.config.display().to_string();
    let (code, stdout, stderr) = command(&["--config", &config, "check"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let docker = format!(
        "ok   Docker at 127.0.0.2:2376 on {} (mutual TLS, address from plugin `address`, certificate for localhost): Docker",
        e.standin.instance_id
    );
    assert!(
        stdout.lines().any(|l| l.starts_with(&docker)),
        "{docker:?} in:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   Docker at 127.0.0.2:2376")
                && l.ends_with("refuses a client without a certificate")),
        "{stdout}"
    );

    let e = picker("check-picker-badname", "docker.other.internal");
    let config = e.config.display().to_string();
    let (code, stdout, stderr) = command(&["--config", &config, "check"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL Docker at 127.0.0.2:2376")
            && l.contains("certificate for docker.other.internal")
            && l.contains("does not name this address")),
        "{stdout}"
    );
}

/// The services hook, as prepare applies it (`plan` runs the same code, without AWS): the
/// dind-services plugin maps `docker:*-dind` to a privileged container of its own, the
/// job's other service keeps the built-in mapping (the launcher), and `build` links to both
/// by alias. (Through prepare the task cannot start here: this sandbox's Docker refuses
/// privileged containers — "unable to apply caps" — which prepare reports as ECS's reason.)
#[test]
fn the_dind_plugin_maps_its_service_and_the_other_keeps_the_built_in_mapping() {
    const ECHO: &str = "ecs-executor-test/svc-echo:1";
    let wasm = plugin_wasm("dind-services");
    let e = with_plugins(
        "dind",
        &[plugin_entry("dind", &wasm, "{}", "grants = [\"privileged\"]")],
    );
    let response = e.dir.join("response.json");
    std::fs::write(
        &response,
        format!(
            r#"{{"id": 8, "image": {{"name": "{}"}},
                "services": [{{"name": "docker:27-dind", "alias": "docker"}}, {{"name": "{ECHO}", "alias": "echo"}}],
                "variables": [{{"key": "CI_PROJECT_PATH", "value": "g/p", "public": true}}]}}"#,
            e.standin.images.build
        ),
    )
    .unwrap();
    let mark = e.standin.request_mark();
    let config = e.config.display().to_string();
    let response_s = response.display().to_string();
    let (code, out, err) = command(&["--config", &config, "plan", "--job-response", &response_s]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan prints JSON");
    // plan marks what removes isolation from the job.
    assert!(
        plan["elevated"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x.as_str().is_some_and(|x| x.contains("privileged")))),
        "{plan:#}"
    );
    let containers = plan["register_task_definition"]["containerDefinitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan:#}"))
        .clone();
    let by_image = |image: &str| {
        containers
            .iter()
            .find(|c| c["image"] == image)
            .unwrap_or_else(|| panic!("no container of {image}: {plan:#}"))
            .clone()
    };
    let dind = by_image("docker:27-dind");
    assert_eq!(dind["privileged"], true, "{dind:#}");
    assert_eq!(dind["essential"], false, "{dind:#}");
    assert!(
        dind["environment"]
            .as_array()
            .is_some_and(|env| env.iter().any(|kv| kv["name"] == "DOCKER_TLS_CERTDIR")),
        "{dind:#}"
    );
    assert!(
        !dind.to_string().contains(".ecs-executor-launch"),
        "the plugin's container is no launcher: {dind:#}"
    );
    let echo = by_image(ECHO);
    assert!(
        echo.to_string().contains(".ecs-executor-launch"),
        "the declined service keeps the launcher: {echo:#}"
    );
    let build = containers
        .iter()
        .find(|c| c["name"] == "build")
        .expect("build container");
    let links = build["links"].to_string();
    assert!(
        links.contains(":docker\"") && links.contains(":echo\""),
        "build links to both: {build:#}"
    );
    assert!(
        e.standin
            .requests_since(mark)
            .iter()
            .all(|r| !r.body.contains(&e.family_prefix)),
        "plan calls no AWS API"
    );
}

/// The services hook through prepare: a rejection is the job's failure with the plugin's
/// message, a wrong-length answer is a broken plugin; neither registers or runs anything.
#[test]
fn the_services_hook_refuses_or_breaks_a_job_before_anything_is_registered() {
    const ECHO: &str = "ecs-executor-test/svc-echo:1";
    let wasm = plugin_wasm("test-misbehave");
    for (mode, build_failure, said) in [
        ("reject", true, "services refused on purpose"),
        ("remove-build", false, "services.map-services"),
    ] {
        let e = with_plugins(
            &format!("svc-hook-{mode}"),
            &[plugin_entry(
                "svc",
                &wasm,
                &format!(r#"{{"map_services": "{mode}"}}"#),
                "",
            )],
        );
        let job = e.job().service(Image::new(ECHO).alias("echo"));
        let mark = e.standin.request_mark();
        let (mut r, prepare) = e.prepare(&job);
        if build_failure {
            assert_eq!(
                prepare.exit_code(),
                Some(1),
                "{mode}: BUILD_FAILURE_EXIT_CODE: {}",
                show(&prepare)
            );
        } else {
            assert!(prepare.is_system_failure(), "{mode}: {}", show(&prepare));
        }
        let text = prepare.stderr_text();
        assert!(
            text.contains("plugin `svc`") && text.contains(said),
            "{mode}: {}",
            show(&prepare)
        );
        let calls = calls_for(&e, &job, mark);
        assert!(
            !calls
                .iter()
                .any(|(a, _)| a == "RegisterTaskDefinition" || a == "RunTask"),
            "{mode}: {calls:#?}"
        );
        assert!(e.tasks_of(&job).is_empty());
        assert_ok(&r.cleanup());
    }
}

#[test]
fn a_plugin_without_the_privileged_grant_cannot_make_a_privileged_container() {
    let wasm = plugin_wasm("dind-services");
    let e = with_plugins("dind-nogrant", &[plugin_entry("dind", &wasm, "{}", "")]);
    let response = e.dir.join("response.json");
    std::fs::write(
        &response,
        format!(
            r#"{{"id": 7, "image": {{"name": "{}"}},
                "services": [{{"name": "docker:27-dind", "alias": "docker"}}],
                "variables": [{{"key": "CI_PROJECT_PATH", "value": "g/p", "public": true}}]}}"#,
            e.standin.images.build
        ),
    )
    .unwrap();
    let config = e.config.display().to_string();
    let response_s = response.display().to_string();
    let (code, out, err) = command(&["--config", &config, "plan", "--job-response", &response_s]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("plugin `dind`") && err.contains("needs the `privileged` grant"),
        "{err}"
    );
}

/// Where two JSON values differ: one line per differing path (`$.a[0].b: plan X, sent Y`).
fn json_differences(path: &str, plan: &serde_json::Value, sent: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (plan, sent) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_differences(&format!("{path}.{k}"), x, y, out),
                    (Some(x), None) => out.push(format!("{path}.{k}: plan says {x}, the request lacks it")),
                    (None, Some(y)) => out.push(format!("{path}.{k}: the request sends {y}, plan lacks it")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                json_differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: plan says {a}, the request sends {b}")),
        _ => {}
    }
}

/// `plan` never lies: for one job (a CI service, a plugin that adds a tag, an environment
/// variable, a Docker label and every task and container `extra` key, and a validating
/// plugin), what `plan` prints as the RegisterTaskDefinition request is, as JSON, exactly the
/// request moto recorded when `prepare` registered the task definition.
#[test]
fn plan_prints_exactly_the_register_task_definition_request_prepare_sends() {
    const ECHO: &str = "ecs-executor-test/svc-echo:1";
    let allowlist = plugin_wasm("image-allowlist");
    let misbehave = plugin_wasm("test-misbehave");
    let e = with_plugins(
        "plan-vs-request",
        &[
            test_images_allowlist(&allowlist),
            plugin_entry("adder", &misbehave, r#"{"customize": "add-all"}"#, ""),
        ],
    );
    let job = e
        .job()
        .service(Image::new(ECHO).alias("echo").variable("ECHO_SAYS", "hi"))
        .variable("PLAIN_VAR", "plain")
        .script(["true"]);
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let response = r.temp_dir().expect("config ran").join("response.json");
    let config = e.config.display().to_string();
    let (code, out, err) = command(&[
        "--config",
        &config,
        "plan",
        "--job-response",
        &response.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan prints JSON");
    let planned = plan["register_task_definition"].clone();
    // The comparison covers what the plugins and the service added.
    let text = planned.to_string();
    for part in [
        r#""key":"misbehave","value":"all""#,
        r#""ipcMode":"task""#,
        r#""ulimits""#,
        r#""workingDirectory":"/""#,
        r#""misbehave.added":"1""#,
        ECHO,
    ] {
        assert!(text.contains(part), "plan shows {part}: {planned:#}");
    }

    let mark = e.standin.request_mark();
    assert_ok(&r.prepare());
    let sent: Vec<serde_json::Value> = e
        .own_calls_since(mark, "RegisterTaskDefinition")
        .into_iter()
        .map(|q| serde_json::from_str(&q.body).expect("moto recorded the request's JSON"))
        .collect();
    assert_eq!(sent.len(), 1, "prepare registers once: {sent:#?}");
    let mut differences = Vec::new();
    json_differences("$", &planned, &sent[0], &mut differences);
    assert!(
        differences.is_empty(),
        "plan's request and the one prepare sent differ:\n{}\n--- plan ---\n{planned:#}\n--- sent ---\n{:#}",
        differences.join("\n"),
        sent[0]
    );
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
}
