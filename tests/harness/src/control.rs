//! The patched moto's control API (`/_standin/...`, tests/local-ecs/CONTRACT.md): throttling,
//! scaling settings, scale events, container instances. Plain JSON over HTTP; every call
//! panics with the endpoint's answer when it fails, since a test cannot go on without it.

use std::time::Duration;

use serde_json::Value;

fn http() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build();
    ureq::Agent::new_with_config(config)
}

fn answer(method: &str, url: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Value {
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: {status}, {e}"));
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"))
}

/// `GET <endpoint><path>` (path from `/_standin/...`, query included): the JSON answer.
pub fn control_get(endpoint: &str, path: &str) -> Value {
    let url = format!("{endpoint}{path}");
    answer("GET", &url, http().get(&url).call())
}

/// `POST <endpoint><path>` with a JSON body: the JSON answer.
pub fn control_post(endpoint: &str, path: &str, body: &Value) -> Value {
    let url = format!("{endpoint}{path}");
    answer("POST", &url, http().post(&url).send_json(body))
}

/// As [`control_post`], for clean-up paths: the HTTP status and body text, never a panic.
pub fn control_post_lenient(endpoint: &str, path: &str, body: &Value) -> Result<Value, String> {
    let url = format!("{endpoint}{path}");
    let mut response = http().post(&url).send_json(body).map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Changes to the global `/_standin/scaling` settings, undone when the guard drops: the keys
/// it set get their earlier values back. Tests sharing one moto must not run two of these at
/// once (the settings are global); hold a lock around them.
pub struct ScalingGuard {
    endpoint: String,
    before: serde_json::Map<String, Value>,
}

impl ScalingGuard {
    /// Sets `settings` (an object of `/_standin/scaling` keys); answers the new state.
    pub fn set(endpoint: &str, settings: Value) -> (ScalingGuard, Value) {
        let old = control_get(endpoint, "/_standin/scaling");
        let keys = settings.as_object().expect("scaling settings are an object");
        let before = keys
            .keys()
            .map(|k| (k.clone(), old.get(k).cloned().unwrap_or(Value::Null)))
            .collect();
        let state = control_post(endpoint, "/_standin/scaling", &settings);
        (
            ScalingGuard {
                endpoint: endpoint.to_string(),
                before,
            },
            state,
        )
    }
}

impl Drop for ScalingGuard {
    fn drop(&mut self) {
        if let Err(e) = control_post_lenient(&self.endpoint, "/_standin/scaling", &Value::Object(self.before.clone())) {
            eprintln!(
                "could not restore the stand-in's scaling settings {:?}: {e}",
                self.before
            );
        }
    }
}
