//! The plugin host against real components: the example image-allowlist (its case file) and
//! test-misbehave (every way a plugin can break). The guest plugins come built from
//! `tests/test-components` (its build.rs compiles `plugins/` for wasm32-wasip2).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ecs_executor_plugin_host::testing::{PluginUnderTest, job, run_case_file, task};
use ecs_executor_plugin_host::{Cause, CompiledCache, Hook, Level, Limits, PluginEngine, PluginError, PluginSpec};

use ecs_executor_test_components::{PLUGINS_TARGET_DIR, plugin as plugin_wasm};

fn cases(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases").join(name)
}

#[test]
fn the_image_allowlist_passes_its_case_file() {
    let report = run_case_file(plugin_wasm("image-allowlist"), cases("image-allowlist.json")).unwrap();
    assert_eq!(report.results.len(), 7);
    assert!(report.all_passed(), "{}", report.render());
}

#[test]
fn wrong_expectations_fail_with_a_readable_diff() {
    let report = run_case_file(plugin_wasm("image-allowlist"), cases("wrong-expectations.json")).unwrap();
    assert_eq!(report.failed(), 2, "{}", report.render());
    let text = report.render();
    assert!(text.contains("FAILED  expects the wrong image"), "{text}");
    assert!(text.contains("$.containers[0].image: differs"), "{text}");
    assert!(
        text.contains("registry.example.com/b:1") && text.contains("registry.example.com/a:1"),
        "{text}"
    );
    assert!(
        text.contains("expected rejected") && text.contains("got: ok:"),
        "{text}"
    );
}

#[test]
fn an_unusable_case_file_is_an_error_not_a_failure() {
    let dir = tempdir("badcase");
    let file = dir.join("bad.json");
    std::fs::write(
        &file,
        r#"{"cases": [{"name": "x", "hook": "customise", "expect": {"ok": {}}}]}"#,
    )
    .unwrap();
    let err = run_case_file(plugin_wasm("image-allowlist"), &file).unwrap_err();
    assert!(err.contains("unknown hook \"customise\""), "{err}");
    std::fs::write(&file, r#"{"cases": [{"name": "x", "hook": "customize", "task": {"containers": [{"name": "build", "cpus": 1}]}, "expect": {"ok": {}}}]}"#).unwrap();
    let err = run_case_file(plugin_wasm("image-allowlist"), &file).unwrap_err();
    assert!(err.contains("task.containers[0]") && err.contains("cpus"), "{err}");
}

fn misbehave(settings: &str, limits: Limits) -> PluginUnderTest {
    PluginUnderTest::load_with(plugin_wasm("test-misbehave"), settings, limits).expect("loads")
}

fn customize_cause(settings: &str, limits: Limits) -> Cause {
    let p = misbehave(settings, limits);
    let j = job(serde_json::json!({}));
    match p.customize(&j, &task(&j)) {
        Err(PluginError::Broken { plugin, hook, cause }) => {
            assert_eq!(plugin, "test_misbehave");
            assert_eq!(hook, Hook::Customize);
            cause
        }
        other => panic!("expected a broken plugin, got {:?}", other.map(|_| "a task definition")),
    }
}

#[test]
fn an_endless_loop_and_endless_work_time_out_at_the_deadline() {
    let limits = Limits {
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    for mode in ["loop", "busy"] {
        let cause = customize_cause(&format!(r#"{{"customize": "{mode}"}}"#), limits);
        assert_eq!(cause, Cause::Timeout(Duration::from_millis(200)), "{mode}");
        assert_eq!(cause.to_string(), "timed out after 200 ms (deadline_ms)");
    }
}

#[test]
fn calls_from_two_threads_on_one_engine_each_get_their_own_full_deadline() {
    // They queue on the engine's call thread; the one that times out first moves the engine's
    // epoch, and the other must still run until its own deadline, counted from its start.
    let dir = tempdir("deadlines");
    let cache = CompiledCache::new(dir.join("cache"));
    let engine = PluginEngine::new().unwrap();
    let load = |ms: u64| {
        let spec = PluginSpec {
            name: format!("loop-{ms}"),
            path: plugin_wasm("test-misbehave"),
            settings_json: r#"{"customize": "loop"}"#.into(),
            limits: Limits {
                deadline: Duration::from_millis(ms),
                ..Limits::default()
            },
        };
        ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec).unwrap()
    };
    let (short, long) = (load(150), load(900));
    let j = job(serde_json::json!({}));
    let timed = |p: &ecs_executor_plugin_host::Plugin| {
        let log = ecs_executor_plugin_host::testing::CapturedLog::default();
        let started = std::time::Instant::now();
        let err = p.customize(&j, &task(&j), &log).expect_err("an endless loop times out");
        (started.elapsed(), err)
    };
    let ((short_took, short_err), (long_took, long_err)) = std::thread::scope(|s| {
        let a = s.spawn(|| timed(&short));
        let b = s.spawn(|| timed(&long));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(short_err.to_string().contains("timed out after 150 ms"), "{short_err}");
    assert!(long_err.to_string().contains("timed out after 900 ms"), "{long_err}");
    assert!(short_took >= Duration::from_millis(150), "{short_took:?}");
    assert!(
        long_took >= Duration::from_millis(900),
        "stopped early, at {long_took:?}"
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let cause = customize_cause(r#"{"customize": "allocate"}"#, limits);
    assert_eq!(cause, Cause::Memory(8 << 20));
    assert!(cause.to_string().contains("memory limit of 8 MiB"));
}

#[test]
fn a_panic_carries_the_guests_message() {
    let cause = customize_cause(r#"{"customize": "panic"}"#, Limits::default());
    match cause {
        Cause::Panic(msg) => assert!(msg.contains("test-misbehave panicked on purpose"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unusable_answers_are_a_broken_plugin() {
    for (mode, expected) in [
        ("remove-build", "container `build` must be present exactly once"),
        ("oversize", "bytes of JSON (ECS allows 65536)"),
        ("other-error", "broken on purpose"),
    ] {
        let cause = customize_cause(&format!(r#"{{"customize": "{mode}"}}"#), Limits::default());
        assert!(cause.to_string().contains(expected), "{mode}: {cause}");
    }
    let p = misbehave(r#"{"map_services": "remove-build"}"#, Limits::default());
    let j = job(serde_json::json!({"services": [{"name": "redis:7"}]}));
    let err = p.map_services(&j, &j.services).expect_err("wrong length");
    assert!(err.to_string().contains("0 mappings for 1 services"), "{err}");
}

#[test]
fn a_rejection_is_not_a_broken_plugin() {
    let p = misbehave(r#"{"customize": "reject"}"#, Limits::default());
    let j = job(serde_json::json!({}));
    let err = p.customize(&j, &task(&j)).expect_err("rejected");
    assert!(err.is_rejection(), "{err}");
    assert_eq!(
        err.to_string(),
        "plugin `test_misbehave` refused the job: refused on purpose by test-misbehave"
    );
}

#[test]
fn log_output_is_capped_per_call() {
    let p = misbehave(r#"{"customize": "log-flood"}"#, Limits::default());
    let j = job(serde_json::json!({}));
    p.customize(&j, &task(&j)).expect("accepts after logging");
    let lines = p.log.lines.borrow();
    let total: usize = lines.iter().map(|(_, l)| l.len()).sum();
    assert!(total <= 64 * 1024 + 200, "{total}");
    assert!(
        lines
            .iter()
            .any(|(level, l)| *level == Level::Warn && l.contains("more log output dropped"))
    );
}

#[test]
fn bad_settings_are_refused_at_load_naming_the_plugin() {
    let err = PluginUnderTest::load(plugin_wasm("test-misbehave"), r#"{"validate": "refuse"}"#)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Settings { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("plugin `test_misbehave`: its settings are not valid: refused on purpose")
    );
    let err = PluginUnderTest::load("/nonexistent/x.wasm", "{}").err().unwrap();
    assert!(
        err.to_string()
            .contains("plugin `x` (/nonexistent/x.wasm) cannot be loaded"),
        "{err}"
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plugin-host-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_cache_compiles_once_recompiles_a_bad_file_and_refuses_a_shared_directory() {
    let engine = PluginEngine::new().unwrap();
    let dir = tempdir("cache");
    let cache = CompiledCache::new(dir.join("cache"));
    let spec = PluginSpec {
        name: "allowlist".into(),
        path: plugin_wasm("image-allowlist"),
        settings_json: r#"{"allowed_registries": ["docker.io"]}"#.into(),
        limits: Limits::default(),
    };
    let first = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec).unwrap();
    assert!(first.was_compiled());
    let mode = std::fs::metadata(dir.join("cache")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let second = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec).unwrap();
    assert!(!second.was_compiled(), "the second load deserializes the cached file");
    // A damaged cache file is compiled again, not trusted or fatal. (Replaced, not written in
    // place: the loaded plugins still map the old file.)
    drop((first, second));
    for entry in std::fs::read_dir(dir.join("cache")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::write(path.with_extension("bad"), b"not a compiled component").unwrap();
        std::fs::rename(path.with_extension("bad"), &path).unwrap();
    }
    let third = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec).unwrap();
    assert!(third.was_compiled());
    // A directory others may write is refused.
    std::fs::set_permissions(dir.join("cache"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec)
        .err()
        .unwrap();
    assert!(err.to_string().contains("writable by it only"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_plugin_set_runs_the_chain_in_order_and_leaves_declined_services_to_the_built_in_mapping() {
    let dir = tempdir("set");
    let spec = |name: &str, wasm: PathBuf, settings: &str| PluginSpec {
        name: name.into(),
        path: wasm,
        settings_json: settings.into(),
        limits: Limits::default(),
    };
    let set = ecs_executor_plugin_host::PluginSet::load(
        &CompiledCache::new(dir.join("cache")),
        &[
            spec(
                "passthrough",
                plugin_wasm("test-misbehave"),
                r#"{"customize": "accept"}"#,
            ),
            spec(
                "allowlist",
                plugin_wasm("image-allowlist"),
                r#"{"allowed_registries": ["registry.example.com"]}"#,
            ),
        ],
        ecs_executor_plugin_host::SettingsCheck::Always,
    )
    .unwrap();
    let log = ecs_executor_plugin_host::testing::CapturedLog::default();
    let j = job(
        serde_json::json!({"image": "evil.io/x:1", "services": [{"name": "redis:7"}, {"name": "docker:27-dind", "aliases": ["docker"]}]}),
    );
    // The second plugin of the chain refuses; the error names it.
    let err = set.customize(&j, task(&j), &log).err().unwrap();
    assert!(err.is_rejection() && err.plugin() == "allowlist", "{err}");
    // Only test-misbehave exports map-services, and it declines: built-in mapping for both.
    let mapped = set.map_services(&j, &j.services, &log).unwrap();
    assert_eq!(mapped.len(), 2);
    assert!(mapped.iter().all(Option::is_none));
    // Nobody picks an address: the built-in rule decides.
    let instance = ecs_executor_plugin_host::json::instance_from_json(&serde_json::json!({}), "i").unwrap();
    assert!(set.pick_address(&j, &instance, &log).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every example plugin passes every case file of its own (`plugins/<dir>/cases/*.json`).
#[test]
fn every_example_plugin_passes_its_own_case_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    for (dir, package) in [
        ("image-allowlist", "image-allowlist"),
        ("role-mapper", "role-mapper"),
        ("address-picker", "address-picker"),
        ("dind-services", "dind-services"),
        ("template", "plugin-template"),
    ] {
        let wasm = plugin_wasm(package);
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir).join("cases"))
            .unwrap_or_else(|e| panic!("plugins/{dir}/cases: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "plugins/{dir} has no case file");
        for file in files {
            let report = run_case_file(&wasm, &file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(!report.results.is_empty(), "{}: no cases", file.display());
            assert!(report.all_passed(), "{}:\n{}", file.display(), report.render());
        }
    }
}

/// The Python image allowlist (componentize-py) passes the Rust allowlist's case file: the
/// interfaces do not depend on the guest's language. `tests/run` builds it first
/// (`plugins/python/build`); compiling its 18 MB component takes about a minute once, then
/// it comes from the compiled cache.
#[test]
fn the_python_image_allowlist_passes_the_rust_ones_case_file() {
    let wasm = Path::new(PLUGINS_TARGET_DIR).join("python/image-allowlist-py.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: build it with plugins/python/build (tests/run does)",
        wasm.display()
    );
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/image-allowlist/cases/allowlist.json");
    let report = run_case_file(&wasm, &file).unwrap();
    assert_eq!(report.results.len(), 18, "{}", report.render());
    assert!(report.all_passed(), "{}", report.render());
}

/// A plugin file changed in place (same path, even the same size) is never served from the
/// compiled component of its old content: the remembered hash is keyed by the file's stat.
#[test]
fn a_plugin_file_rewritten_in_place_is_loaded_with_its_new_content() {
    let engine = PluginEngine::new().unwrap();
    let dir = tempdir("rewrite");
    let cache = CompiledCache::new(dir.join("cache"));
    let file = dir.join("plugin.wasm");
    std::fs::copy(plugin_wasm("image-allowlist"), &file).unwrap();
    let spec = |settings: &str| PluginSpec {
        name: "p".into(),
        path: file.clone(),
        settings_json: settings.into(),
        limits: Limits::default(),
    };
    let allowlist = spec(r#"{"allowed_registries": ["docker.io"]}"#);
    let first = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &allowlist).unwrap();
    assert!(first.was_compiled() && first.has(Hook::Customize));
    let again = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &allowlist).unwrap();
    assert!(!again.was_compiled(), "unchanged: from the cache, without hashing");
    drop((first, again));
    // Rewrite the same inode with other content.
    std::fs::write(&file, std::fs::read(plugin_wasm("address-picker")).unwrap()).unwrap();
    let picker = ecs_executor_plugin_host::Plugin::load(&engine, &cache, &spec(r#"{"public_subnets": []}"#)).unwrap();
    assert!(picker.was_compiled(), "new content: compiled");
    assert!(picker.has(Hook::PickAddress) && !picker.has(Hook::Customize));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_job_asks_validate_settings_only_for_settings_not_accepted_before() {
    use ecs_executor_plugin_host::{Plugin, SettingsCheck};
    let dir = tempdir("verdicts");
    let cache = CompiledCache::new(dir.join("cache"));
    let engine = PluginEngine::new().unwrap();
    let spec = |settings: &str, limits: Limits| PluginSpec {
        name: "misbehave".into(),
        path: plugin_wasm("test-misbehave"),
        settings_json: settings.into(),
        limits,
    };
    let load = |s: &PluginSpec, check| Plugin::load_with(&engine, &cache, s, check);
    let ok = spec(r#"{"validate": "ok"}"#, Limits::default());

    // First time: asked, and the verdict is remembered; the second job does not ask.
    assert!(load(&ok, SettingsCheck::Remembered).unwrap().settings_checked());
    assert!(!load(&ok, SettingsCheck::Remembered).unwrap().settings_checked());
    // `check` and `plugin compile` always ask.
    assert!(load(&ok, SettingsCheck::Always).unwrap().settings_checked());
    // Other settings text, or other limits, are other inputs: asked again.
    let other = spec(r#"{"validate": "ok", "customize": "accept"}"#, Limits::default());
    assert!(load(&other, SettingsCheck::Remembered).unwrap().settings_checked());
    let tighter = spec(
        r#"{"validate": "ok"}"#,
        Limits {
            memory_bytes: 32 << 20,
            ..Limits::default()
        },
    );
    assert!(load(&tighter, SettingsCheck::Remembered).unwrap().settings_checked());
    // A refusal is never remembered: every job gets the plugin's own message.
    let refused = spec(r#"{"validate": "refuse"}"#, Limits::default());
    for _ in 0..2 {
        let err = load(&refused, SettingsCheck::Remembered)
            .err()
            .expect("refused settings");
        assert!(matches!(err, PluginError::Settings { .. }), "{err}");
    }
    // The records are plain files in the cache: removing them makes the next job ask again.
    for entry in std::fs::read_dir(dir.join("cache")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("accepted-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(load(&ok, SettingsCheck::Remembered).unwrap().settings_checked());
}
