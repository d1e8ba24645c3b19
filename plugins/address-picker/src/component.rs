//! The component side: bindings, the two exports and the host calls. Built for wasm32 only:
//! a native build (for the unit tests) cannot export component-model symbols.

ecs_executor_plugin_sdk::plugin!("address-plugin", "../../wit");

use ecs_executor_plugin_sdk::types::{Instance, JobContext};
use ecs_executor_plugin_sdk::{log, settings_json};
use exports::ecs_executor::plugin::address::{self, DockerAddress};
use exports::ecs_executor::plugin::settings;

use crate::picking::AddressPicker;

struct AddressPickerPlugin;

impl settings::Guest for AddressPickerPlugin {
    fn validate_settings(json: String) -> Result<(), String> {
        AddressPicker::from_settings(&json).map(|_| ())
    }
}

impl address::Guest for AddressPickerPlugin {
    fn pick_address(_job: JobContext, instance: Instance) -> Result<Option<DockerAddress>, address::Error> {
        // The host validated these at load; failing here means the host broke that promise.
        let picker = AddressPicker::from_settings(&settings_json()).map_err(address::Error::Other)?;
        let picked = picker.pick(&instance);
        match &picked {
            Some(address) => log::debug(&format!(
                "Docker daemon of {} at {}",
                instance.ec2_instance_id, address.host
            )),
            None => log::debug(&format!(
                "no address for {}: left to the built-in rule",
                instance.ec2_instance_id
            )),
        }
        Ok(picked.map(|picked| DockerAddress {
            host: picked.host,
            port: picked.port,
            tls_server_name: picked.tls_server_name,
        }))
    }
}

export!(AddressPickerPlugin);
