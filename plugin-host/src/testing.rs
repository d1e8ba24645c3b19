//! Test support for plugin authors and for `ecs-executor plugin test`: load a plugin with
//! settings, call its hooks on fixtures, and run the JSON case files described in
//! `docs/plugins.md` ("Case files").
//!
//! ```ignore
//! use ecs_executor_plugin_host::testing::{PluginUnderTest, run_case_file};
//! let plugin = PluginUnderTest::load("target/wasm32-wasip2/release/my_plugin.wasm", r#"{"x": 1}"#)?;
//! let task = plugin.customize(&job, &task)?;
//! assert!(run_case_file("my_plugin.wasm", "cases/policy.json")?.all_passed());
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::json::{
    address_to_json, default_task, instance_from_json, job_from_json, mapping_to_json, service_from_json,
    task_from_json, task_to_json,
};
use crate::types::{CiService, Instance, JobContext, TaskDefinition};
use crate::{
    CompiledCache, DockerAddress, JobLog, Level, Limits, Plugin, PluginEngine, PluginError, PluginSpec, ServiceMapping,
};

/// Log lines a plugin wrote during the calls of a test.
#[derive(Default)]
pub struct CapturedLog {
    pub lines: RefCell<Vec<(Level, String)>>,
}

impl JobLog for CapturedLog {
    fn write(&self, _plugin: &str, level: Level, message: &str) {
        self.lines.borrow_mut().push((level, message.to_string()));
    }
}

/// The compiled-plugin cache tests use: `$ECS_EXECUTOR_PLUGIN_CACHE`, else
/// `<tmp>/ecs-executor-plugin-cache-<uid>` (created 0700, refused if anyone else may write it).
pub fn test_cache() -> CompiledCache {
    match std::env::var_os("ECS_EXECUTOR_PLUGIN_CACHE") {
        Some(dir) if !dir.is_empty() => CompiledCache::new(dir),
        _ => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            CompiledCache::new(std::env::temp_dir().join(format!("ecs-executor-plugin-cache-{uid}")))
        }
    }
}

/// A plugin loaded for a test, with the default limits.
pub struct PluginUnderTest {
    pub plugin: Plugin,
    pub log: CapturedLog,
}

impl PluginUnderTest {
    /// Load `path` with `settings_json` (checked by its `validate-settings`).
    pub fn load(path: impl AsRef<Path>, settings_json: &str) -> Result<PluginUnderTest, PluginError> {
        Self::load_with(path, settings_json, Limits::default())
    }

    pub fn load_with(
        path: impl AsRef<Path>,
        settings_json: &str,
        limits: Limits,
    ) -> Result<PluginUnderTest, PluginError> {
        let path = path.as_ref();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_string();
        let engine = shared_engine().map_err(|message| PluginError::Load {
            plugin: name.clone(),
            path: path.display().to_string(),
            message,
        })?;
        let spec = PluginSpec {
            name,
            path: path.to_path_buf(),
            settings_json: settings_json.to_string(),
            limits,
        };
        Ok(PluginUnderTest {
            plugin: Plugin::load(&engine, &test_cache(), &spec)?,
            log: CapturedLog::default(),
        })
    }

    pub fn customize(&self, job: &JobContext, task: &TaskDefinition) -> Result<TaskDefinition, PluginError> {
        self.plugin.customize(job, task, &self.log)
    }

    pub fn pick_address(&self, job: &JobContext, instance: &Instance) -> Result<Option<DockerAddress>, PluginError> {
        self.plugin.pick_address(job, instance, &self.log)
    }

    pub fn map_services(&self, job: &JobContext, services: &[CiService]) -> Result<Vec<ServiceMapping>, PluginError> {
        self.plugin.map_services(job, services, &self.log)
    }
}

fn shared_engine() -> Result<PluginEngine, String> {
    static ENGINE: std::sync::OnceLock<Result<PluginEngine, String>> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| PluginEngine::new().map_err(|e| format!("cannot create the WebAssembly engine: {e:#}")))
        .clone()
}

/// A job context from the JSON form (missing fields get the fixture defaults).
pub fn job(v: Value) -> JobContext {
    job_from_json(&v, "job").expect("a valid job JSON")
}

/// The built-in task definition fixture for `job`.
pub fn task(job: &JobContext) -> TaskDefinition {
    default_task(job)
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// Why it failed: the path of the first differing field, expected vs got.
    pub detail: String,
    /// Expectations in this case that cannot fail (e.g. `"tags": {}`), each with its path.
    pub warnings: Vec<String>,
    /// What the hook answered (`ok: {...}`, `rejected: ...`), for `plugin test -v`.
    pub answer: String,
    /// The plugin's log lines during the case (`info: ...`), for `plugin test -v`.
    pub log: Vec<String>,
}

/// The results of one case file.
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    pub file: PathBuf,
    pub results: Vec<CaseResult>,
}

impl CaseReport {
    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }

    /// Warnings of every case: expectations that match any answer.
    pub fn warnings(&self) -> usize {
        self.results.iter().map(|r| r.warnings.len()).sum()
    }

    /// One line per case (`ok` / `FAILED`, with the diff under it, and any warning).
    pub fn render(&self) -> String {
        self.render_with(false)
    }

    /// [`render`](Self::render); `verbose` adds each case's answer and the plugin's log lines.
    pub fn render_with(&self, verbose: bool) -> String {
        let mut out = String::new();
        for r in &self.results {
            if r.passed {
                out.push_str(&format!("ok      {}\n", r.name));
            } else {
                out.push_str(&format!("FAILED  {}\n", r.name));
                for line in r.detail.lines() {
                    out.push_str(&format!("        {line}\n"));
                }
            }
            for w in &r.warnings {
                out.push_str(&format!("        warning: {w}\n"));
            }
            if verbose {
                for line in &r.log {
                    out.push_str(&format!("        log {line}\n"));
                }
                for (i, line) in r.answer.lines().enumerate() {
                    out.push_str(&format!(
                        "        {} {line}\n",
                        if i == 0 { "answer" } else { "      " }
                    ));
                }
            }
        }
        out
    }
}

/// What a hook did, in the terms of `expect`.
enum Outcome {
    Ok(Value),
    Rejected(String),
    Error(String),
    /// pick-address returned none, or every service mapping was `decline` (with the list).
    Declined(Option<Value>),
    SettingsError(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Ok(v) => format!("ok: {}", short(v)),
            Outcome::Rejected(m) => format!("rejected: {m}"),
            Outcome::Error(m) => format!("error: {m}"),
            Outcome::Declined(_) => "declined".into(),
            Outcome::SettingsError(m) => format!("settings-error: {m}"),
        }
    }

    /// Like `describe`, with the whole answer (pretty JSON), for `plugin test -v`.
    fn full(&self) -> String {
        match self {
            Outcome::Ok(v) | Outcome::Declined(Some(v)) => format!(
                "{}: {}",
                if matches!(self, Outcome::Ok(_)) {
                    "ok"
                } else {
                    "declined"
                },
                serde_json::to_string_pretty(v).unwrap_or_default()
            ),
            other => other.describe(),
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        format!("{}…", &s[..s.floor_char_boundary(600)])
    } else {
        s
    }
}

/// Run every case of `case_file` against the plugin at `plugin`. `Err` means unusable
/// input (unreadable or invalid case file, a plugin that cannot be loaded at all).
pub fn run_case_file(plugin: impl AsRef<Path>, case_file: impl AsRef<Path>) -> Result<CaseReport, String> {
    let (plugin, case_file) = (plugin.as_ref(), case_file.as_ref());
    let shown = case_file.display();
    let text = std::fs::read_to_string(case_file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{shown}: not JSON: {e}"))?;
    let top = doc
        .as_object()
        .ok_or_else(|| format!("{shown}: expected a JSON object"))?;
    for key in top.keys() {
        if !["settings", "job", "cases"].contains(&key.as_str()) {
            return Err(format!("{shown}: unknown top-level key `{key}` (settings, job, cases)"));
        }
    }
    let settings = top.get("settings").cloned().unwrap_or_else(|| json!({}));
    let job = top.get("job").cloned().unwrap_or_else(|| json!({}));
    let cases = top
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{shown}: `cases` must be a list"))?;
    if cases.is_empty() {
        return Err(format!("{shown}: `cases` is empty"));
    }
    let engine = shared_engine()?;
    let mut report = CaseReport {
        file: case_file.to_path_buf(),
        results: vec![],
    };
    for (i, case) in cases.iter().enumerate() {
        let result = run_case(&engine, plugin, &settings, &job, case, i).map_err(|e| format!("{shown}: {e}"))?;
        report.results.push(result);
    }
    Ok(report)
}

fn run_case(
    engine: &PluginEngine,
    plugin_path: &Path,
    settings: &Value,
    job: &Value,
    case: &Value,
    index: usize,
) -> Result<CaseResult, String> {
    let at = format!("cases[{index}]");
    let c = case.as_object().ok_or_else(|| format!("{at}: expected an object"))?;
    const KNOWN: &[&str] = &[
        "name", "hook", "settings", "job", "task", "instance", "services", "expect",
    ];
    for key in c.keys() {
        if !KNOWN.contains(&key.as_str()) {
            return Err(format!("{at}: unknown key `{key}` ({})", KNOWN.join(", ")));
        }
    }
    let name = c.get("name").and_then(Value::as_str).unwrap_or("(unnamed)").to_string();
    let at = format!("{at} ({name})");
    let hook = c
        .get("hook")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}: `hook` is required"))?;
    if !["customize", "pick-address", "map-services", "validate-settings"].contains(&hook) {
        return Err(format!(
            "{at}: unknown hook {hook:?} (customize, pick-address, map-services, validate-settings)"
        ));
    }
    let settings = c.get("settings").unwrap_or(settings);
    if !settings.is_object() {
        return Err(format!("{at}: `settings` must be an object"));
    }
    let mut job_value = job.as_object().cloned().unwrap_or_default();
    if let Some(own) = c.get("job") {
        let own = own
            .as_object()
            .ok_or_else(|| format!("{at}: `job` must be an object"))?;
        for (k, v) in own {
            job_value.insert(k.clone(), v.clone());
        }
    }
    let job = job_from_json(&Value::Object(job_value), &format!("{at}.job"))?;
    let expect = c
        .get("expect")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{at}: `expect` is required"))?;
    if expect.len() != 1 {
        return Err(format!(
            "{at}: `expect` must have exactly one key (ok, rejected, error, declined, settings-error)"
        ));
    }
    let (expect_kind, expected) = expect.iter().next().expect("one key");

    // Inputs are read before the plugin runs: a bad case file is unusable input.
    let task_input = match c.get("task") {
        Some(t) => Some(task_from_json(t, &format!("{at}.task"))?),
        None => None,
    };
    let instance = instance_from_json(c.get("instance").unwrap_or(&json!({})), &format!("{at}.instance"))?;
    let services = match c.get("services") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| service_from_json(v, &format!("{at}.services[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(format!("{at}: `services` must be a list")),
        None => job.services.clone(),
    };
    let spec = PluginSpec {
        name: plugin_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_string(),
        path: plugin_path.to_path_buf(),
        settings_json: settings.to_string(),
        limits: Limits::default(),
    };
    let log = CapturedLog::default();
    let outcome = match Plugin::load(engine, &test_cache(), &spec) {
        Err(PluginError::Settings { message, .. }) => Outcome::SettingsError(message),
        Err(e @ (PluginError::Load { .. } | PluginError::Config { .. })) => return Err(e.to_string()),
        Err(e) => Outcome::Error(e.to_string()),
        Ok(plugin) => match hook {
            "validate-settings" => Outcome::Ok(Value::Null),
            "customize" => {
                let task = task_input.unwrap_or_else(|| default_task(&job));
                outcome_of(plugin.customize(&job, &task, &log).map(|t| task_to_json(&t)))
            }
            "pick-address" => match plugin.pick_address(&job, &instance, &log) {
                Ok(None) => Outcome::Declined(None),
                other => outcome_of(other.map(|a| address_to_json(&a.expect("some")))),
            },
            "map-services" => match plugin.map_services(&job, &services, &log) {
                Ok(list) if list.iter().all(|m| matches!(m, ServiceMapping::Decline)) => {
                    Outcome::Declined(Some(Value::Array(list.iter().map(mapping_to_json).collect())))
                }
                other => outcome_of(other.map(|l| Value::Array(l.iter().map(mapping_to_json).collect()))),
            },
            other => {
                return Err(format!(
                    "{at}: unknown hook {other:?} (customize, pick-address, map-services, validate-settings)"
                ));
            }
        },
    };
    let mut warnings = Vec::new();
    if expect_kind == "ok" {
        vacuous(expected, "expect.ok", &mut warnings);
    }
    let verdict: Result<(), String> = match (expect_kind.as_str(), &outcome) {
        ("ok", Outcome::Ok(got)) => contains(expected, got, "$"),
        ("ok", Outcome::Declined(Some(got))) => contains(expected, got, "$"),
        ("ok", Outcome::Declined(None)) if expected.is_null() => Ok(()),
        ("rejected" | "error" | "settings-error", _) if !expected.is_string() => {
            return Err(format!(
                "{at}: `expect.{expect_kind}` must be a string (a substring of the message)"
            ));
        }
        ("rejected", Outcome::Rejected(msg))
        | ("error", Outcome::Error(msg))
        | ("settings-error", Outcome::SettingsError(msg)) => {
            let want = expected.as_str().unwrap_or_default();
            if msg.contains(want) {
                Ok(())
            } else {
                Err(format!(
                    "message does not contain the expected text\n  expected: …{want}…\n  got:      {msg}"
                ))
            }
        }
        ("declined", Outcome::Declined(_)) if expected == &Value::Bool(true) => Ok(()),
        ("declined", _) if expected != &Value::Bool(true) => {
            return Err(format!("{at}: `expect.declined` must be true"));
        }
        ("ok" | "rejected" | "error" | "declined" | "settings-error", got) => {
            Err(format!("expected {expect_kind}\n  got: {}", got.describe()))
        }
        (other, _) => return Err(format!("{at}: unknown expectation `{other}`")),
    };
    let log = log
        .lines
        .into_inner()
        .into_iter()
        .map(|(level, line)| format!("{}: {line}", level_name(level)))
        .collect();
    Ok(CaseResult {
        name,
        passed: verdict.is_ok(),
        detail: verdict.err().unwrap_or_default(),
        warnings,
        answer: outcome.full(),
        log,
    })
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Record every part of an `ok` expectation that matches any answer: an empty object under a
/// key (`"tags": {}`, `"ok": {}`) checks nothing, since objects match as subsets. An empty
/// object as an array element is the documented "any element" placeholder and is left alone.
fn vacuous(expected: &Value, path: &str, warnings: &mut Vec<String>) {
    match expected {
        Value::Object(map) if map.is_empty() => warnings.push(format!(
            "{path} is {{}}, which matches anything; to require an empty value write {{\"$exact\": {{}}}}"
        )),
        Value::Object(map) if map.contains_key(EXACT) => {}
        Value::Object(map) => {
            for (k, v) in map {
                vacuous(v, &format!("{path}.{k}"), warnings);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                if !v.as_object().is_some_and(Map::is_empty) {
                    vacuous(v, &format!("{path}[{i}]"), warnings);
                }
            }
        }
        _ => {}
    }
}

/// `{"$exact": V}` in an expectation: the answer there must equal `V` exactly (no extra keys).
const EXACT: &str = "$exact";

fn outcome_of(r: Result<Value, PluginError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(PluginError::Rejected { message, .. }) => Outcome::Rejected(message),
        Err(PluginError::Settings { message, .. }) => Outcome::SettingsError(message),
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// `got` contains `expected`: objects key by key (keys not in `expected` ignored; `"k": null`
/// also matches a missing key), arrays of the same length element by element, scalars equal;
/// `{"$exact": V}` matches only a value equal to `V`. The error names the first differing
/// path with both values.
pub fn contains(expected: &Value, got: &Value, path: &str) -> Result<(), String> {
    if let Some(want) = expected.as_object().and_then(|m| m.get(EXACT)) {
        if expected.as_object().is_some_and(|m| m.len() != 1) {
            return Err(format!("{path}: `$exact` must be the only key of its object"));
        }
        return if want == got {
            Ok(())
        } else {
            Err(format!(
                "{path}: differs ($exact)\n  expected: {}\n  got:      {}",
                short(want),
                short(got)
            ))
        };
    }
    match (expected, got) {
        (Value::Object(want), Value::Object(have)) => {
            for (k, w) in want {
                let here = format!("{path}.{k}");
                match have.get(k) {
                    Some(h) => contains(w, h, &here)?,
                    None if w.is_null() => {}
                    None => return Err(format!("{here}: missing\n  expected: {}", short(w))),
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => {
            if want.len() != have.len() {
                return Err(format!(
                    "{path}: {} elements, expected {}\n  expected: {}\n  got:      {}",
                    have.len(),
                    want.len(),
                    short(expected),
                    short(got)
                ));
            }
            want.iter()
                .zip(have)
                .enumerate()
                .try_for_each(|(i, (w, h))| contains(w, h, &format!("{path}[{i}]")))
        }
        (w, h) if w == h => Ok(()),
        (w, h) => Err(format!(
            "{path}: differs\n  expected: {}\n  got:      {}",
            short(w),
            short(h)
        )),
    }
}

/// Keep `Map` in the public signature stable for callers building case JSON by hand.
pub type JsonObject = Map<String, Value>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_matches_only_an_equal_value_and_null_means_absent() {
        let got = json!({"tags": {"a": "1"}, "name": "x"});
        assert!(contains(&json!({"tags": {}}), &got, "$").is_ok());
        assert!(contains(&json!({"tags": {"$exact": {"a": "1"}}}), &got, "$").is_ok());
        let err = contains(&json!({"tags": {"$exact": {}}}), &got, "$").unwrap_err();
        assert!(err.starts_with("$.tags: differs ($exact)"), "{err}");
        assert!(contains(&json!({"tags": {"b": null}}), &got, "$").is_ok());
        assert!(contains(&json!({"tags": {"a": null}}), &got, "$").is_err());
        assert!(
            contains(&json!({"$exact": 1, "x": 2}), &got, "$")
                .unwrap_err()
                .contains("only key")
        );
    }

    #[test]
    fn expectations_that_match_anything_are_warned_about() {
        let mut warnings = vec![];
        vacuous(
            &json!({"tags": {}, "containers": [{}, {"docker-labels": {}}], "extra": {"$exact": {}}}),
            "expect.ok",
            &mut warnings,
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("expect.ok.tags is {}"), "{warnings:?}");
        assert!(
            warnings[1].starts_with("expect.ok.containers[1].docker-labels is {}"),
            "{warnings:?}"
        );
        let mut none = vec![];
        vacuous(&json!({"containers": [{"name": "build"}, {}]}), "expect.ok", &mut none);
        assert!(none.is_empty(), "{none:?}");
    }
}
