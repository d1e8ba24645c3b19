//! Reading a plugin's settings so that every error names the setting at fault.
//!
//! Settings reach a plugin as the JSON text of its `settings` table in the executor config.
//! `serde_json::from_str` into a struct reports *where* in the text a problem is (line and
//! column of a text the site never wrote: it was TOML), not *which* setting; this reads the
//! object key by key instead, so messages say `tags: invalid type: ...`.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The top-level settings object, its keys checked against the ones the plugin knows.
#[derive(Debug, Clone)]
pub struct SettingsObject {
    map: Map<String, Value>,
}

impl SettingsObject {
    /// Parse `json`, which must be a JSON object whose keys are all in `known`.
    pub fn parse(json: &str, known: &[&str]) -> Result<SettingsObject, String> {
        let value: Value = serde_json::from_str(json).map_err(|e| format!("settings are not valid JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err(format!("settings must be a JSON object (a TOML table), not {value}"));
        };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(format!(
                "unknown setting `{unknown}`; known settings: {}",
                known.join(", ")
            ));
        }
        Ok(SettingsObject { map })
    }

    /// The setting `key` as a `T`; `None` when absent or `null`. The error names `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => field(key, value).map(Some),
        }
    }

    /// The setting `key` as a `T`; an error naming `key` when it is absent.
    pub fn required<T: DeserializeOwned>(&self, key: &str) -> Result<T, String> {
        self.get(key)?.ok_or_else(|| format!("setting `{key}` is missing"))
    }
}

/// Deserialize `value`, the setting at `path` (e.g. `roles[2]`), naming `path` on error.
pub fn field<T: DeserializeOwned>(path: &str, value: &Value) -> Result<T, String> {
    T::deserialize(value).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting() {
        let err = SettingsObject::parse(r#"{"port": 1, "prot": 2}"#, &["port"]).unwrap_err();
        assert_eq!(err, "unknown setting `prot`; known settings: port");
        let settings = SettingsObject::parse(r#"{"port": "x", "name": null}"#, &["port", "name"]).unwrap();
        assert!(
            settings
                .get::<u16>("port")
                .unwrap_err()
                .starts_with("port: invalid type: string")
        );
        assert_eq!(settings.get::<String>("name").unwrap(), None);
        assert_eq!(
            settings.required::<String>("name").unwrap_err(),
            "setting `name` is missing"
        );
        assert!(SettingsObject::parse("[1]", &[]).unwrap_err().contains("JSON object"));
        assert!(SettingsObject::parse("{", &[]).unwrap_err().contains("not valid JSON"));
    }
}
