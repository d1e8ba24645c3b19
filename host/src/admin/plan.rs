//! `plan --job-response FILE [--env FILE]`: what a job would get, without calling AWS — the
//! RegisterTaskDefinition request exactly as `prepare` sends it (both come from
//! `task::request::RegisterRequest`), and how the Docker address would be chosen. Warnings
//! (stderr, and `warnings` in the JSON) name what plugins will not see and why.

use std::io::Write;
use std::path::Path;

use ecs_executor_plugin_host::Hook;

use crate::config::Config;
use crate::failure::Failure;
use crate::job::JobContext;
use crate::protocol::JobResponse;
use crate::task::build::JobTask;

/// `plan --job-response <file>`: the task definition exactly as RegisterTaskDefinition would
/// get it after every plugin, and the address rule, as JSON on stdout. No AWS call.
pub fn plan(config: &Config, job_response: &Path) -> Result<(), Failure> {
    let response = JobResponse::from_file(job_response)?;
    let job = JobContext::from_response(config, &response)?;
    let warnings = warnings(config, &response);
    for w in &warnings {
        eprintln!("ecs-executor plan: warning: {w}");
    }
    let plugins = crate::plugins::load(config)?;
    let task = JobTask::build(config, &job, &response, &plugins)?;
    let deciders: Vec<&str> = plugins
        .plugins()
        .iter()
        .filter(|p| p.has(Hook::PickAddress))
        .map(|p| p.name())
        .collect();
    let builtin = if config.use_private_ip {
        "use_private_ip = true: the instance's private IPv4"
    } else {
        "use_private_ip = false: the instance's public IPv4"
    };
    let out = serde_json::json!({
        "register_task_definition": task.request.to_json(),
        // What removes isolation between the job and the instance: review before deploying.
        "elevated": task.request.elevations(&config.cache_host_path),
        "address": {
            "plugins_in_order": deciders,
            "then": builtin,
            "port": config.docker.port,
        },
        "warnings": warnings,
        "plugins": plugins.plugins().iter().map(|p| serde_json::json!({
            "name": p.name(),
            "hooks": p.hooks().iter().map(|h| h.name()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    // `plan | head` closes the pipe early: that is the reader's choice, not an error.
    let text = serde_json::to_string_pretty(&out).expect("JSON");
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(Failure::system(format!("cannot write the plan to stdout: {e}")));
        }
        _ => {}
    }
    Ok(())
}

/// `plan --env FILE`: replace this process's `CUSTOM_ENV_*` variables with the file's, as
/// gitlab-runner would export them for the job. Lines are `CUSTOM_ENV_NAME=value`; blank
/// lines and lines starting with `#` are skipped. Must run before any thread starts.
pub fn simulate_env(path: &Path) -> Result<(), Failure> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::system(format!("--env {shown}: cannot read: {e}")))?;
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, _)| k.starts_with("CUSTOM_ENV_") && k.len() > 11 && !k.contains(char::is_whitespace))
            .ok_or_else(|| {
                Failure::system(format!(
                    "--env {shown}:{}: expected CUSTOM_ENV_NAME=value (as gitlab-runner exports job variables), got {line:?}",
                    n + 1
                ))
            })?;
        vars.push((key.to_string(), value.to_string()));
    }
    let old: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CUSTOM_ENV_"))
        .collect();
    // SAFETY: called from main before the plugin thread or any other thread exists, so nothing
    // reads the environment concurrently.
    unsafe {
        for k in old {
            std::env::remove_var(k);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

/// What a plugin author should know about this job response and environment: trusted values
/// plugins will not get, variables hidden from plugins, job variables that reuse a predefined
/// name, and `CUSTOM_ENV_*` values that change nothing plugins see.
fn warnings(config: &Config, response: &JobResponse) -> Vec<String> {
    let mut out = Vec::new();
    let (mut absent, mut not_public) = (vec![], vec![]);
    for key in crate::plugins::TRUSTED {
        if response.predefined(key).is_none() {
            if response.sets(key) {
                not_public.push(*key)
            } else {
                absent.push(*key)
            }
        }
    }
    if !not_public.is_empty() {
        out.push(format!(
            "{}: the first entry lacks \"public\": true (or is masked or a file), so it is not GitLab's \
             predefined value; plugins get no trusted value for it{}",
            not_public.join(", "),
            if not_public.contains(&"CI_PROJECT_PATH") {
                " and project-path is empty"
            } else {
                ""
            }
        ));
    }
    if !absent.is_empty() {
        out.push(format!(
            "not in the job response, so plugins get no trusted value for: {}{}",
            absent.join(", "),
            if absent.contains(&"CI_PROJECT_PATH") {
                " (project-path is empty)"
            } else {
                ""
            }
        ));
    }
    let hidden: Vec<&str> = response
        .variables
        .iter()
        .filter(|v| !v.public && !v.masked && !v.file)
        .map(|v| v.key.as_str())
        .collect();
    if !hidden.is_empty() {
        out.push(format!(
            "variables without \"public\": true are treated as secrets and hidden from plugins: {}",
            hidden.join(", ")
        ));
    }
    let mut repeated: Vec<&str> = vec![];
    for (i, v) in response.variables.iter().enumerate() {
        if response.variables[..i].iter().any(|w| w.key == v.key) && !repeated.contains(&v.key.as_str()) {
            repeated.push(&v.key);
        }
    }
    for key in repeated {
        let trusted = crate::plugins::TRUSTED.contains(&key);
        out.push(format!(
            "`{key}` appears more than once (a job variable reusing the name): {}; `variables` \
             (job-controlled) lists every entry and the last one wins in the job's environment",
            if trusted {
                "`trusted` and the typed fields keep the first (GitLab's) value"
            } else {
                "it is not a trusted value, so a plugin must not base a decision on it"
            }
        ));
    }
    for (key, value) in std::env::vars() {
        let Some(name) = key.strip_prefix("CUSTOM_ENV_") else {
            continue;
        };
        if let Some(v) = response.variables.iter().rev().find(|v| v.key == name) {
            if v.value != value {
                out.push(format!(
                    "{key} differs from the job response; plugins see the job response's values, not the environment"
                ));
            }
        } else if !crate::protocol::RUNNER_INTERNAL_VARIABLES.contains(&name) && name != "CI_JOB_SERVICES" {
            out.push(format!(
                "{key} is neither in the job response nor a runner variable: treated as a secret \
                 (the job's `secrets:`), redacted and never shown to plugins"
            ));
        }
    }
    if response.image.as_ref().is_none_or(|i| i.name.trim().is_empty())
        && let Some(image) = &config.default_image
    {
        out.push(format!(
            "the job names no image: the build container runs default_image {image}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = include_str!("../../../examples/config.toml");
        Config::parse(text, Path::new("examples/config.toml")).unwrap()
    }

    fn response(variables: serde_json::Value) -> JobResponse {
        serde_json::from_value(serde_json::json!({"id": 1, "variables": variables, "image": {"name": "alpine:3"}}))
            .unwrap()
    }

    #[test]
    fn the_example_job_response_gives_every_trusted_value() {
        let response: JobResponse = serde_json::from_str(include_str!("../../../examples/job-response.json")).unwrap();
        for key in crate::plugins::TRUSTED {
            assert!(response.predefined(key).is_some(), "{key}");
        }
        let warnings = warnings(&config(), &response);
        assert!(!warnings.iter().any(|w| w.contains("trusted value")), "{warnings:?}");
    }

    #[test]
    fn warnings_name_missing_non_public_hidden_and_repeated_values() {
        let r = response(serde_json::json!([
            {"key": "CI_PROJECT_PATH", "value": "team/app"},
            {"key": "CI_PIPELINE_SOURCE", "value": "push", "public": true},
            {"key": "TOKEN", "value": "s3cret", "masked": true},
            {"key": "CI_PIPELINE_SOURCE", "value": "schedule", "public": true},
            {"key": "SIZE", "value": "s", "public": true},
            {"key": "SIZE", "value": "xl", "public": true},
        ]));
        let w = warnings(&config(), &r);
        let find = |text: &str| {
            w.iter()
                .find(|w| w.contains(text))
                .unwrap_or_else(|| panic!("{text:?} in {w:?}"))
        };
        assert!(find("CI_PROJECT_PATH: the first entry lacks").contains("project-path is empty"));
        assert!(find("not in the job response").contains("GITLAB_USER_LOGIN"));
        // The non-public CI_PROJECT_PATH is hidden; the masked TOKEN is a secret, not news.
        assert!(find("hidden from plugins").ends_with(": CI_PROJECT_PATH"));
        assert!(find("`CI_PIPELINE_SOURCE` appears more than once").contains("keep the first (GitLab's) value"));
        assert!(find("`SIZE` appears more than once").contains("not a trusted value"));
    }

    #[test]
    fn a_bad_env_file_is_refused_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("plan-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("env");
        std::fs::write(&file, "# comment\n\nCUSTOM_ENV_A=1\nCI_PROJECT_PATH=x\n").unwrap();
        let err = simulate_env(&file).unwrap_err().to_string();
        assert!(err.contains(":4: expected CUSTOM_ENV_NAME=value"), "{err}");
        let err = simulate_env(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
