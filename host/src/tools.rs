//! Commands for site administrators and plugin authors (not called by gitlab-runner):
//! `plugin compile`, `plugin test` and `plan`. None of them calls AWS.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ecs_executor_plugin_host::testing::run_case_file;
use ecs_executor_plugin_host::{Hook, PluginSet, SettingsCheck};

use crate::config::{Config, TaskDefinitionMode};
use crate::failure::{Blame, Failure};
use crate::job::JobContext;
use crate::protocol::JobResponse;

/// `plugin compile`: compile every configured plugin into the cache and check its settings,
/// so no job's `prepare` has to compile.
pub fn plugin_compile(config: &Config) -> Result<(), Failure> {
    if config.plugins.is_empty() {
        println!("no [[plugins]] in the config: nothing to compile");
        return Ok(());
    }
    let cache = crate::plugins::cache(config);
    let set = PluginSet::load(&cache, &crate::plugins::specs(config)?, SettingsCheck::Always)?;
    for p in set.plugins() {
        let hooks: Vec<&str> = p.hooks().iter().map(|h| h.name()).collect();
        println!(
            "{} {} ({}): hooks {}; settings accepted",
            if p.was_compiled() {
                "compiled"
            } else {
                "already compiled"
            },
            p.name(),
            p.path().display(),
            hooks.join(", ")
        );
    }
    println!("cache: {}", cache.dir().display());
    Ok(())
}

/// `plugin test <plugin.wasm> <case files...>`: 0 all cases pass, 1 a case failed, 2 the
/// input is unusable (missing plugin, bad case file).
pub fn plugin_test(plugin: &Path, cases: &[std::path::PathBuf]) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    for file in cases {
        match run_case_file(plugin, file) {
            Ok(report) => {
                println!("{}:", file.display());
                print!("{}", report.render());
                failed += report.failed();
                passed += report.results.len() - report.failed();
            }
            Err(e) => {
                eprintln!("ecs-executor plugin test: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `plan --job-response <file>`: the task definition exactly as RegisterTaskDefinition would
/// get it after every plugin, and the address rule, as JSON on stdout. No AWS call.
pub fn plan(config: &Config, job_response: &Path) -> Result<(), Failure> {
    let response = JobResponse::from_file(job_response)?;
    let job = JobContext::from_response(config, &response)?;
    let plugins = crate::plugins::load(config)?;
    let (spec, _) = crate::steps::prepare::task_spec_for_job(config, &job, &response, &plugins)?;
    let family = match (&spec.family, config.task_definition_mode) {
        (Some(f), _) => f.clone(),
        (None, TaskDefinitionMode::PerJob) => format!("{}-job-{}", config.family_prefix, job.key.job_id),
        (None, TaskDefinitionMode::Reuse) => spec.reuse_family(&config.family_prefix),
    };
    let request = crate::ecs::register_request_json(&spec, &family, &spec.content_hash(), &config.family_prefix);
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
        "register_task_definition": request,
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

/// Exit code of the admin commands: 1 when a plugin refused the job, 2 otherwise.
pub fn exit_code(failure: &Failure) -> ExitCode {
    ExitCode::from(if failure.blame == Blame::Build { 1 } else { 2 })
}
