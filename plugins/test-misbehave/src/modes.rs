//! Settings parsing (native-testable).

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub customize: Option<String>,
    #[serde(default)]
    pub pick_address: Option<String>,
    #[serde(default)]
    pub map_services: Option<String>,
    #[serde(default)]
    pub validate: Option<String>,
}

pub const MODES: &[&str] = &[
    "accept",
    "add-tag",
    "add-all",
    "loop",
    "allocate",
    "panic",
    "busy",
    "remove-build",
    "oversize",
    "other-error",
    "reject",
    "log-flood",
];

impl Settings {
    pub fn parse(json: &str) -> Result<Settings, String> {
        let s: Settings = serde_json::from_str(json).map_err(|e| format!("settings: {e}"))?;
        for mode in [&s.customize, &s.pick_address, &s.map_services].into_iter().flatten() {
            if !MODES.contains(&mode.as_str()) {
                return Err(format!("unknown mode {mode:?} (modes: {})", MODES.join(", ")));
            }
        }
        if s.validate.as_deref() == Some("refuse") {
            return Err("refused on purpose (validate = \"refuse\")".into());
        }
        Ok(s)
    }
}

/// Real work that never ends: a hash chain the optimiser cannot remove.
pub fn busy() -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        if x == 42 {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_checked() {
        assert!(Settings::parse(r#"{"customize":"loop"}"#).is_ok());
        assert!(
            Settings::parse(r#"{"customize":"nap"}"#)
                .unwrap_err()
                .contains("unknown mode")
        );
        assert!(
            Settings::parse(r#"{"validate":"refuse"}"#)
                .unwrap_err()
                .contains("on purpose")
        );
        assert!(Settings::parse(r#"{"bogus":1}"#).is_err());
    }
}
