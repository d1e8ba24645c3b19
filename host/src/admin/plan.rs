//! `plan --job-response FILE`: what a job would get, without calling AWS — the
//! RegisterTaskDefinition request exactly as `prepare` sends it (both come from
//! `task::request::RegisterRequest`), and how the Docker address would be chosen.

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
