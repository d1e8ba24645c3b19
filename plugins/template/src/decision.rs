//! The decision, free of bindings and host calls so it unit-tests natively.

use ecs_executor_plugin_sdk::settings::SettingsObject;
use ecs_executor_plugin_sdk::types::{JobContext, KeyValue, TaskDefinition};

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Docker label key to set on every container.
    pub label: String,
}

impl Settings {
    /// Parse and validate the settings; the error names the setting at fault.
    pub fn parse(json: &str) -> Result<Settings, String> {
        let settings = SettingsObject::parse(json, &["label"])?;
        let label = settings
            .get::<String>("label")?
            .unwrap_or_else(|| "gitlab.project".into());
        if label.is_empty() || label.starts_with("ecs-executor.") {
            return Err(format!(
                "label: {label:?} must be non-empty and not start with `ecs-executor.`"
            ));
        }
        Ok(Settings { label })
    }

    /// Label every container of `task` with `job`'s project path (replacing the label).
    pub fn label(&self, job: &JobContext, task: &mut TaskDefinition) {
        for container in &mut task.containers {
            container.docker_labels.retain(|label| label.key != self.label);
            container.docker_labels.push(KeyValue {
                key: self.label.clone(),
                value: job.project_path.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use ecs_executor_plugin_sdk::fixtures;

    use super::*;

    #[test]
    fn every_container_is_labelled_with_the_project() {
        let settings = Settings::parse(r#"{"label": "com.example.project"}"#).unwrap();
        let mut job = fixtures::job();
        job.project_path = "team/app".into();
        let mut task = fixtures::task(&job);
        settings.label(&job, &mut task);
        for container in &task.containers {
            let role = fixtures::kv("ecs-executor.role", &container.name);
            assert_eq!(
                container.docker_labels,
                [role, fixtures::kv("com.example.project", "team/app")]
            );
        }
        assert!(Settings::parse(r#"{"label": ""}"#).unwrap_err().starts_with("label: "));
    }
}
