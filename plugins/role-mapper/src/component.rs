//! The component side: bindings, the two exports and the host calls. Built for wasm32 only:
//! a native build (for the unit tests) cannot export component-model symbols.

ecs_executor_plugin_sdk::plugin!("task-definition-plugin", "../../wit");

use ecs_executor_plugin_sdk::types::{JobContext, TaskDefinition};
use ecs_executor_plugin_sdk::{accept, log, settings_json};
use exports::ecs_executor::plugin::{settings, task_definition};

use crate::mapping::RoleMapper;

struct RoleMapperPlugin;

impl settings::Guest for RoleMapperPlugin {
    fn validate_settings(json: String) -> Result<(), String> {
        RoleMapper::from_settings(&json).map(|_| ())
    }
}

impl task_definition::Guest for RoleMapperPlugin {
    fn customize(job: JobContext, mut task: TaskDefinition) -> Result<TaskDefinition, task_definition::Error> {
        // The host validated these at load; failing here means the host broke that promise.
        let mapper = RoleMapper::from_settings(&settings_json()).map_err(task_definition::Error::Other)?;
        let outcome = mapper.apply(&job.project_path, &mut task);
        log::debug(&outcome.describe(&job.project_path));
        accept(task)
    }
}

export!(RoleMapperPlugin);
