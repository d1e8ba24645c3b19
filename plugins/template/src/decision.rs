//! The decision, free of bindings and host calls so it unit-tests natively.
//!
//! Every decision here reads only values a job cannot forge (`job::project_path`,
//! `job::in_group`; see the SDK's `job` module): the image is the job's choice, so it is
//! what the policy judges, never evidence of who the job is.

use std::collections::BTreeMap;

use ecs_executor_plugin_sdk::job;
use ecs_executor_plugin_sdk::settings::SettingsObject;
use ecs_executor_plugin_sdk::types::{JobContext, KeyValue, TaskDefinition};

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Docker label key set on every container to the project's path.
    pub label: String,
    /// `Some(groups)`: refuse an untagged or `:latest` build image, except in projects under
    /// one of these groups. `None`: no image check.
    pub floating_images_allowed_in: Option<Vec<String>>,
    /// Group → cost centre: projects under the group get the task-definition tag
    /// `cost-centre` (the longest matching group wins).
    pub cost_centres: BTreeMap<String, String>,
}

const KNOWN: &[&str] = &["label", "floating_images_allowed_in", "cost_centres"];

impl Settings {
    /// Parse and validate the settings; the error names the setting at fault.
    pub fn parse(json: &str) -> Result<Settings, String> {
        let settings = SettingsObject::parse(json, KNOWN)?;
        let label = settings
            .get::<String>("label")?
            .unwrap_or_else(|| "gitlab.project".into());
        if label.is_empty() || label.starts_with("ecs-executor.") {
            return Err(format!(
                "label: {label:?} must be non-empty and not start with `ecs-executor.`"
            ));
        }
        let floating_images_allowed_in = settings.get::<Vec<String>>("floating_images_allowed_in")?;
        let cost_centres = settings
            .get::<BTreeMap<String, String>>("cost_centres")?
            .unwrap_or_default();
        let groups = floating_images_allowed_in
            .iter()
            .flatten()
            .map(|g| ("floating_images_allowed_in", g));
        for (setting, group) in groups.chain(cost_centres.keys().map(|g| ("cost_centres", g))) {
            if group.trim_matches('/').is_empty() {
                return Err(format!("{setting}: group {group:?} is empty"));
            }
        }
        if let Some((group, _)) = cost_centres.iter().find(|(_, cc)| cc.is_empty()) {
            return Err(format!("cost_centres: {group:?} has an empty cost centre"));
        }
        Ok(Settings {
            label,
            floating_images_allowed_in,
            cost_centres,
        })
    }

    /// `Err(why)` when the job's build image must be refused.
    pub fn check_image(&self, job: &JobContext) -> Result<(), String> {
        let Some(allowed) = &self.floating_images_allowed_in else {
            return Ok(());
        };
        let Some(image) = job::image(job) else {
            return Err(format!("image {:?} is not a valid image reference", job.image));
        };
        if !image.is_floating() || allowed.iter().any(|g| job::in_group(job, g)) {
            return Ok(());
        }
        Err(format!(
            "image {} has no fixed version (untagged or :latest): pin a tag such as {}:1.2.3 or a digest",
            job.image, image.name
        ))
    }

    /// Label every container with the project path, and tag the task definition with the
    /// project's cost centre if it has one.
    pub fn apply(&self, job: &JobContext, task: &mut TaskDefinition) {
        let project = job::project_path(job).to_string();
        for container in &mut task.containers {
            set(&mut container.docker_labels, &self.label, &project);
        }
        let centre = self
            .cost_centres
            .iter()
            .filter(|(group, _)| job::in_group(job, group))
            .max_by_key(|(group, _)| group.len());
        if let Some((_, centre)) = centre {
            set(&mut task.tags, "cost-centre", centre);
        }
    }
}

/// Set `key` to `value` in a key-value list whose keys do not repeat.
fn set(list: &mut Vec<KeyValue>, key: &str, value: &str) {
    list.retain(|kv| kv.key != key);
    list.push(KeyValue {
        key: key.into(),
        value: value.into(),
    });
}

#[cfg(test)]
mod tests {
    use ecs_executor_plugin_sdk::fixtures;

    use super::*;

    fn settings() -> Settings {
        Settings::parse(
            r#"{"label": "com.example.project", "floating_images_allowed_in": ["platform"],
                "cost_centres": {"platform": "cc-100", "platform/ml": "cc-200"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn every_container_is_labelled_and_platform_jobs_are_tagged() {
        let mut job = fixtures::job();
        job.project_path = "platform/ml/trainer".into();
        let mut task = fixtures::task(&job);
        settings().apply(&job, &mut task);
        for container in &task.containers {
            let role = fixtures::kv("ecs-executor.role", &container.name);
            assert_eq!(
                container.docker_labels,
                [role, fixtures::kv("com.example.project", "platform/ml/trainer")]
            );
        }
        assert!(task.tags.contains(&fixtures::kv("cost-centre", "cc-200")));
        job.project_path = "team/app".into();
        let mut task = fixtures::task(&job);
        let before = task.tags.clone();
        settings().apply(&job, &mut task);
        assert_eq!(task.tags, before);
    }

    #[test]
    fn floating_images_are_refused_outside_the_allowed_groups() {
        let mut job = fixtures::job();
        job.project_path = "team/app".into();
        for (image, ok) in [
            ("alpine", false),
            ("alpine:latest", false),
            ("alpine:3.20", true),
            ("alpine@sha256:ab", true),
        ] {
            job.image = image.into();
            assert_eq!(settings().check_image(&job).is_ok(), ok, "{image}");
        }
        job.image = "alpine:latest".into();
        assert!(
            settings()
                .check_image(&job)
                .unwrap_err()
                .contains("docker.io/library/alpine:1.2.3")
        );
        job.project_path = "platform/tools".into();
        assert!(settings().check_image(&job).is_ok());
        // Without the setting there is no image check.
        job.project_path = "team/app".into();
        assert!(Settings::parse("{}").unwrap().check_image(&job).is_ok());
    }

    #[test]
    fn bad_settings_name_the_setting() {
        assert!(Settings::parse(r#"{"label": ""}"#).unwrap_err().starts_with("label: "));
        assert!(
            Settings::parse(r#"{"cost_centres": {"": "x"}}"#)
                .unwrap_err()
                .starts_with("cost_centres: ")
        );
        assert!(
            Settings::parse(r#"{"floating_images_allowed_in": "platform"}"#)
                .unwrap_err()
                .starts_with("floating_images_allowed_in: ")
        );
    }
}
