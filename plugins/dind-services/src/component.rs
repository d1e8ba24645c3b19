//! The component side: bindings, the two exports and the host calls. Built for wasm32 only:
//! a native build (for the unit tests) cannot export component-model symbols.

ecs_executor_plugin_sdk::plugin!("services-plugin", "../../wit");

use ecs_executor_plugin_sdk::types::{CiService, JobContext};
use ecs_executor_plugin_sdk::{log, reject, settings_json};
use exports::ecs_executor::plugin::services::{self, ServiceMapping};
use exports::ecs_executor::plugin::settings;

use crate::mapping::{DindMapper, Mapping};

struct DindServices;

impl settings::Guest for DindServices {
    fn validate_settings(json: String) -> Result<(), String> {
        DindMapper::from_settings(&json).map(|_| ())
    }
}

impl services::Guest for DindServices {
    fn map_services(_job: JobContext, services: Vec<CiService>) -> Result<Vec<ServiceMapping>, services::Error> {
        // The host validated these at load; failing here means the host broke that promise.
        let mapper = DindMapper::from_settings(&settings_json()).map_err(services::Error::Other)?;
        let mappings = mapper.map(&services).map_err(reject)?;
        Ok(mappings
            .into_iter()
            .zip(&services)
            .map(|(mapping, service)| match mapping {
                Mapping::Decline => ServiceMapping::Decline,
                Mapping::Containers(containers) => {
                    if let Some(note) = DindMapper::ignored_overrides(service) {
                        log::warn(&note);
                    }
                    let host = service.aliases.first().map(String::as_str).unwrap_or("docker");
                    for container in &containers {
                        log::info(&format!(
                            "service {} runs as privileged container {}; {}",
                            container.image,
                            container.name,
                            mapper.client_hint(&container.name, host)
                        ));
                    }
                    ServiceMapping::Containers(containers)
                }
            })
            .collect())
    }
}

export!(DindServices);
