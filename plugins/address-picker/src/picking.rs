//! The decision, free of bindings and host calls so it unit-tests natively.

use ecs_executor_plugin_sdk::settings::SettingsObject;
use ecs_executor_plugin_sdk::types::Instance;

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPicker {
    public_subnets: Vec<String>,
    port: Option<u16>,
    tls_server_name: Option<String>,
}

/// The address chosen (mirrors the WIT `docker-address`, which exists only in the component
/// bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    /// The IPv4 address to connect to.
    pub host: String,
    /// The port from the settings, if any.
    pub port: Option<u16>,
    /// The TLS server name from the settings, if any.
    pub tls_server_name: Option<String>,
}

impl AddressPicker {
    /// Parse and validate the settings; errors name the setting at fault.
    pub fn from_settings(json: &str) -> Result<AddressPicker, String> {
        let settings = SettingsObject::parse(json, &["public_subnets", "port", "tls_server_name"])?;
        let public_subnets: Vec<String> = settings.required("public_subnets")?;
        if let Some(bad) = public_subnets.iter().find(|id| !is_subnet_id(id)) {
            return Err(format!(
                "public_subnets: {bad:?} is not a subnet id (`subnet-` and letters or digits)"
            ));
        }
        let port: Option<u16> = settings.get("port")?;
        if port == Some(0) {
            return Err("port: 0 is not a TCP port to connect to".into());
        }
        let tls_server_name: Option<String> = settings.get("tls_server_name")?;
        if let Some(name) = tls_server_name.as_deref().filter(|name| !is_dns_name(name)) {
            return Err(format!("tls_server_name: {name:?} is not a DNS name"));
        }
        Ok(AddressPicker {
            public_subnets,
            port,
            tls_server_name,
        })
    }

    /// The public IPv4 of an instance in a listed subnet, else the private IPv4; `None`
    /// (decline) when the chosen one is missing.
    pub fn pick(&self, instance: &Instance) -> Option<Picked> {
        let public = instance
            .subnet_id
            .as_ref()
            .is_some_and(|subnet| self.public_subnets.contains(subnet));
        let host = if public {
            &instance.public_ipv4
        } else {
            &instance.private_ipv4
        };
        let host = host.as_deref().map(str::trim).filter(|host| !host.is_empty())?;
        Some(Picked {
            host: host.into(),
            port: self.port,
            tls_server_name: self.tls_server_name.clone(),
        })
    }
}

fn is_subnet_id(id: &str) -> bool {
    id.strip_prefix("subnet-")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A host name as a TLS certificate names it: dot-separated labels of letters, digits and
/// `-` (not at either end), 1 to 63 characters each, 253 in all; `*.` first for a wildcard.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use ecs_executor_plugin_sdk::fixtures;
    use serde_json::json;

    use super::*;

    fn picker(settings: serde_json::Value) -> AddressPicker {
        AddressPicker::from_settings(&settings.to_string()).unwrap()
    }

    fn settings_error(settings: serde_json::Value) -> String {
        AddressPicker::from_settings(&settings.to_string()).unwrap_err()
    }

    fn instance(subnet: Option<&str>, private: Option<&str>, public: Option<&str>) -> Instance {
        let mut instance = fixtures::instance();
        instance.subnet_id = subnet.map(Into::into);
        instance.private_ipv4 = private.map(Into::into);
        instance.public_ipv4 = public.map(Into::into);
        instance
    }

    fn host(picked: Option<Picked>) -> Option<String> {
        picked.map(|picked| picked.host)
    }

    #[test]
    fn listed_subnets_use_the_public_address_others_the_private_one() {
        let picker = picker(json!({"public_subnets": ["subnet-pub"]}));
        let public = instance(Some("subnet-pub"), Some("10.0.0.5"), Some("203.0.113.7"));
        assert_eq!(host(picker.pick(&public)).as_deref(), Some("203.0.113.7"));
        let private = instance(Some("subnet-private"), Some("10.0.0.5"), Some("203.0.113.7"));
        assert_eq!(host(picker.pick(&private)).as_deref(), Some("10.0.0.5"));
        let unknown = instance(None, Some("10.0.0.5"), Some("203.0.113.7"));
        assert_eq!(host(picker.pick(&unknown)).as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn a_missing_chosen_address_declines_instead_of_switching_networks() {
        let picker = picker(json!({"public_subnets": ["subnet-pub"]}));
        assert_eq!(picker.pick(&instance(Some("subnet-pub"), Some("10.0.0.5"), None)), None);
        assert_eq!(
            picker.pick(&instance(Some("subnet-pub"), Some("10.0.0.5"), Some(" "))),
            None
        );
        assert_eq!(
            picker.pick(&instance(Some("subnet-private"), None, Some("203.0.113.7"))),
            None
        );
    }

    #[test]
    fn port_and_server_name_come_from_the_settings() {
        let default = picker(json!({"public_subnets": []}))
            .pick(&fixtures::instance())
            .unwrap();
        assert_eq!((default.port, default.tls_server_name), (None, None));
        let set = picker(json!({"public_subnets": [], "port": 12376, "tls_server_name": "docker.ci.internal"}))
            .pick(&fixtures::instance())
            .unwrap();
        assert_eq!(
            set,
            Picked {
                host: "10.0.0.5".into(),
                port: Some(12376),
                tls_server_name: Some("docker.ci.internal".into())
            }
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        for (settings, expected) in [
            (json!({}), "setting `public_subnets` is missing"),
            (json!({"public_subnets": "subnet-a"}), "public_subnets: invalid type"),
            (
                json!({"public_subnets": ["sg-123"]}),
                "public_subnets: \"sg-123\" is not a subnet id",
            ),
            (
                json!({"public_subnets": ["subnet-"]}),
                "public_subnets: \"subnet-\" is not a subnet id",
            ),
            (json!({"public_subnets": [], "port": 0}), "port: 0 is not a TCP port"),
            (json!({"public_subnets": [], "port": 65536}), "port: invalid value"),
            (
                json!({"public_subnets": [], "tls_server_name": "a b"}),
                "tls_server_name: \"a b\" is not a DNS name",
            ),
            (
                json!({"public_subnets": [], "tls_server_name": "-x.example"}),
                "is not a DNS name",
            ),
            (json!({"public_subnets": [], "tls": "x"}), "unknown setting `tls`"),
        ] {
            let err = settings_error(settings.clone());
            assert!(err.starts_with(expected) || err.contains(expected), "{settings}: {err}");
        }
        picker(json!({"public_subnets": ["subnet-0a1b2c3d4e5f60718"], "tls_server_name": "*.ci.example.com"}));
    }
}
