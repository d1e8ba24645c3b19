//! The component side: bindings, the two exports and the host calls. Built for wasm32 only:
//! a native build (for the unit tests) cannot export component-model symbols.

ecs_executor_plugin_sdk::plugin!("task-definition-plugin", "../../wit");

use ecs_executor_plugin_sdk::types::{JobContext, TaskDefinition};
use ecs_executor_plugin_sdk::{accept, log, reject, settings_json};
use exports::ecs_executor::plugin::{settings, task_definition};

use crate::allowlist::{self, Allowlist};

struct ImageAllowlist;

impl settings::Guest for ImageAllowlist {
    fn validate_settings(json: String) -> Result<(), String> {
        Allowlist::from_settings(&json).map(|_| ())
    }
}

impl task_definition::Guest for ImageAllowlist {
    fn customize(
        _job: JobContext,
        task: TaskDefinition,
    ) -> Result<TaskDefinition, task_definition::Error> {
        // The host validated these at load; failing here means the host broke that promise.
        let allowlist =
            Allowlist::from_settings(&settings_json()).map_err(task_definition::Error::Other)?;
        let images = task
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_str()));
        if let Some(message) = allowlist::first_refusal(&allowlist, images) {
            return Err(reject(message))?;
        }
        log::debug(&format!(
            "all {} images come from allowed registries",
            task.containers.len()
        ));
        accept(task)
    }
}

export!(ImageAllowlist);
