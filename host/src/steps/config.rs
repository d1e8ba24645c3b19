//! `config`: tell gitlab-runner where builds live and who we are. Stdout is ONLY the JSON.

use crate::config::Config;

pub fn run(config: &Config) -> serde_json::Value {
    serde_json::json!({
        "builds_dir": config.builds_dir,
        "cache_dir": config.cache_dir,
        "builds_dir_is_shared": false,
        "hostname": format!("ecs/{}", config.cluster),
        "driver": { "name": "ecs-executor", "version": env!("CARGO_PKG_VERSION") },
        "shell": config.shell,
    })
}
