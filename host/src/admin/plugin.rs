//! `plugin compile` and `plugin test`: tools for site administrators and plugin authors.
//! Neither calls AWS.

use std::path::Path;

use ecs_executor_plugin_host::testing::run_case_file;
use ecs_executor_plugin_host::{PluginSet, SettingsCheck};

use crate::config::Config;
use crate::failure::Failure;

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

/// `plugin test <plugin.wasm> <case files...>`: `Ok` when all cases pass; a failed case is a
/// build failure (exit 1), unusable input (missing plugin, bad case file) a system failure (2).
/// `verbose` also prints each case's answer and the plugin's log lines.
pub fn plugin_test(plugin: &Path, cases: &[std::path::PathBuf], verbose: bool) -> Result<(), Failure> {
    let (mut passed, mut failed, mut warnings) = (0, 0, 0);
    for file in cases {
        let report = run_case_file(plugin, file).map_err(|e| Failure::system(e.to_string()))?;
        println!("{}:", file.display());
        print!("{}", report.render_with(verbose));
        failed += report.failed();
        passed += report.results.len() - report.failed();
        warnings += report.warnings();
    }
    if warnings > 0 {
        println!("{passed} passed, {failed} failed, {warnings} warnings (expectations that match anything)");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::build(format!("{failed} of {} cases failed", passed + failed)))
    }
}
