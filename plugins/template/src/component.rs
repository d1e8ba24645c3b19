//! The component side: bindings, the two exports and the host calls. Built for wasm32 only:
//! a native build (for the unit tests) cannot export component-model symbols.

// The world names the hooks this plugin exports (the WIT package comes with the SDK).
ecs_executor_plugin_sdk::plugin!("task-definition-plugin");

use ecs_executor_plugin_sdk::types::{JobContext, TaskDefinition};
use ecs_executor_plugin_sdk::{accept, log, reject, settings_json};
use exports::ecs_executor::plugin::{settings, task_definition};

use crate::decision::Settings;

struct Plugin;

impl settings::Guest for Plugin {
    fn validate_settings(json: String) -> Result<(), String> {
        Settings::parse(&json).map(|_| ())
    }
}

impl task_definition::Guest for Plugin {
    fn customize(job: JobContext, mut task: TaskDefinition) -> Result<TaskDefinition, task_definition::Error> {
        // The host validated these at load; failing here means the host broke that promise.
        let settings = Settings::parse(&settings_json()).map_err(task_definition::Error::Other)?;
        // A refusal is the job's fault (a build failure), shown to its author.
        settings.check_image(&job).map_err(reject)?;
        settings.apply(&job, &mut task);
        log::info(&format!("containers labelled {}={}", settings.label, job.project_path));
        accept(task)
    }
}

export!(Plugin);
