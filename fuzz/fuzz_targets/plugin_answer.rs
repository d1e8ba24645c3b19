//! A plugin's answers as the plugin host checks them: the task definition a `customize`
//! hook returns and the containers a `map-services` hook adds (`validate`), the grants they
//! need, and the WIT JSON form they travel in for case files and `plan` (`json`).
//! Input: `{"job": <job-context>, "after": <task-definition>, "services": [<container>],
//! "grants": [..]}` (each part optional; `before` is the executor's default task for the job).
//! Properties: never panics; the JSON form round-trips (what `task_to_json` writes,
//! `task_from_json` reads back to the same JSON) — but for non-integer numbers inside `extra`:
//! serde_json (without its `float_roundtrip` feature) may re-read a float as the neighbouring
//! f64, which this target's first run found (docs/reliability.md, "Fuzzing"). No `extra` key
//! the executor applies takes a float, so such numbers are compared as "some float".
#![no_main]

use ecs_executor_fuzz::json;
use ecs_executor_fuzz::validate::{self, Grants};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// `v` with every number that is not an integer replaced by the same marker.
fn floats_as_one(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => Value::String("<float>".into()),
        Value::Array(items) => Value::Array(items.into_iter().map(floats_as_one).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, floats_as_one(v))).collect()),
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(job) = json::job_from_json(v.get("job").unwrap_or(&json!({})), "job") else {
        return;
    };
    let before = json::default_task(&job);
    let redact = |s: &str| s.replace("s3cr3t-value", "[MASKED]");
    let grants = v
        .get("grants")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect::<Vec<_>>()
        })
        .and_then(|names| Grants::from_names(&names).ok())
        .unwrap_or(Grants::NONE);
    if let Some(after) = v.get("after")
        && let Ok(after) = json::task_from_json(after, "after")
    {
        let _ = validate::task_definition(&before, &after, &redact);
        let _ = validate::ungranted(Some(&before), &after, grants);
        let written = json::task_to_json(&after);
        let back = json::task_from_json(&written, "again").expect("task_to_json output reads back");
        assert_eq!(floats_as_one(json::task_to_json(&back)), floats_as_one(written), "task JSON round trip");
    }
    if let Some(list) = v.get("services").and_then(Value::as_array) {
        let containers: Vec<_> = list
            .iter()
            .filter_map(|c| json::container_from_json(c, "services[]").ok())
            .collect();
        let _ = validate::service_containers(&containers, &redact);
        let _ = validate::ungranted_service_containers(&containers, grants);
        for c in &containers {
            let written = json::container_to_json(c);
            let back = json::container_from_json(&written, "again").expect("container JSON reads back");
            assert_eq!(
                floats_as_one(json::container_to_json(&back)),
                floats_as_one(written),
                "container JSON round trip"
            );
        }
    }
});
