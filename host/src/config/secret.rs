//! A value from the config that must never be printed: `Debug` and `Display` show `[MASKED]`;
//! only [`Secret::expose`] gives the value, where it is used.

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[MASKED]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[MASKED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s: Secret = serde_json::from_str("\"wJalrXUtnFEMI\"").unwrap();
        assert_eq!(format!("{s} {s:?}"), "[MASKED] [MASKED]");
        assert_eq!(s.expose(), "wJalrXUtnFEMI");
    }
}
