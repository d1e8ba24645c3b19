//! The component side: every hook does what its mode says.

ecs_executor_plugin_sdk::plugin!("full-plugin", "../../wit");

use ecs_executor_plugin_sdk::types::{CiService, Instance, JobContext, KeyValue, TaskDefinition};
use ecs_executor_plugin_sdk::{log, reject, settings_json};
use exports::ecs_executor::plugin::{address, services, settings, task_definition};

use crate::modes::{Settings, busy};

struct Misbehave;

fn settings_now() -> Settings {
    Settings::parse(&settings_json()).unwrap_or_default()
}

/// Shared misbehaviour; returns only for modes that answer normally.
fn misbehave(mode: &str) {
    match mode {
        "loop" =>
        {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        "allocate" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("test-misbehave panicked on purpose"),
        "busy" => {
            std::hint::black_box(busy());
        }
        "log-flood" => {
            let line = "x".repeat(1024);
            for _ in 0..200 {
                log::info(&line);
            }
        }
        _ => {}
    }
}

impl settings::Guest for Misbehave {
    fn validate_settings(json: String) -> Result<(), String> {
        Settings::parse(&json).map(|_| ())
    }
}

impl task_definition::Guest for Misbehave {
    fn customize(_job: JobContext, mut task: TaskDefinition) -> Result<TaskDefinition, task_definition::Error> {
        let mode = settings_now().customize.unwrap_or_else(|| "accept".into());
        misbehave(&mode);
        match mode.as_str() {
            "remove-build" => task.containers.retain(|c| c.name != "build"),
            "oversize" => task.containers[0].environment.push(KeyValue {
                key: "HUGE".into(),
                value: "x".repeat(100 * 1024),
            }),
            "other-error" => return Err(task_definition::Error::Other("broken on purpose".into())),
            "reject" => Err(reject("refused on purpose by test-misbehave"))?,
            "add-tag" => {
                task.tags.push(KeyValue {
                    key: "misbehave".into(),
                    value: "1".into(),
                });
                task.extra = Some(r#"{"pidMode":"task"}"#.into());
            }
            "add-all" => {
                task.tags.push(KeyValue {
                    key: "misbehave".into(),
                    value: "all".into(),
                });
                task.extra = Some(r#"{"pidMode":"task","ipcMode":"task"}"#.into());
                for c in task.containers.iter_mut().filter(|c| c.name == "build") {
                    c.environment.push(KeyValue {
                        key: "MISBEHAVE_ADDED".into(),
                        value: "1".into(),
                    });
                    c.docker_labels.push(KeyValue {
                        key: "misbehave.added".into(),
                        value: "1".into(),
                    });
                    c.extra = Some(
                        r#"{"user":"0","workingDirectory":"/","stopTimeout":20,"ulimits":[{"name":"nofile","softLimit":4096,"hardLimit":8192}]}"#
                            .into(),
                    );
                }
            }
            _ => {}
        }
        Ok(task)
    }
}

impl address::Guest for Misbehave {
    fn pick_address(_job: JobContext, _instance: Instance) -> Result<Option<address::DockerAddress>, address::Error> {
        let mode = settings_now().pick_address.unwrap_or_else(|| "accept".into());
        misbehave(&mode);
        match mode.as_str() {
            "other-error" => Err(address::Error::Other("broken on purpose".into())),
            _ => Ok(None),
        }
    }
}

impl services::Guest for Misbehave {
    fn map_services(
        _job: JobContext,
        services: Vec<CiService>,
    ) -> Result<Vec<services::ServiceMapping>, services::Error> {
        let mode = settings_now().map_services.unwrap_or_else(|| "accept".into());
        misbehave(&mode);
        match mode.as_str() {
            "other-error" => Err(services::Error::Other("broken on purpose".into())),
            "reject" => Err(reject("services refused on purpose"))?,
            // A list of the wrong length.
            "remove-build" => Ok(vec![]),
            _ => Ok(services.iter().map(|_| services::ServiceMapping::Decline).collect()),
        }
    }
}

export!(Misbehave);
