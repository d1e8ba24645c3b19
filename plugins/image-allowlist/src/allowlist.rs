//! The decision, free of bindings and host calls so it unit-tests natively: settings parsing
//! and validation, Docker reference normalisation, and the registry check.

use serde::Deserialize;

/// The plugin's settings, from the executor config's `settings` table for this plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    allowed_registries: Vec<String>,
}

/// Validated settings: the normalised registry prefixes an image may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    /// Each entry is a registry host (`docker.io`, `registry.example.com:5000`), optionally
    /// followed by a repository path prefix (`registry.gitlab.com/my-group`), lower-cased.
    prefixes: Vec<String>,
}

impl Allowlist {
    /// Parse and validate `{"allowed_registries": ["docker.io", "registry.example.com/team"]}`.
    /// Errors say which entry is wrong and why, for the executor's start-up message.
    pub fn from_settings(json: &str) -> Result<Allowlist, String> {
        let raw: RawSettings = serde_json::from_str(json).map_err(|e| {
            format!("settings must be {{\"allowed_registries\": [\"registry\", ...]}}: {e}")
        })?;
        if raw.allowed_registries.is_empty() {
            return Err("allowed_registries is empty: every job would be refused".into());
        }
        let prefixes = raw
            .allowed_registries
            .iter()
            .map(|entry| normalise_prefix(entry))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { prefixes })
    }

    /// Whether `image` (a Docker reference, as a job writes it) comes from an allowed
    /// registry. A prefix matches whole path components only: `docker.io` does not allow
    /// `docker.io.evil.example/x`, and `r.example/team` does not allow `r.example/teamster`.
    pub fn allows(&self, image: &str) -> bool {
        let Some(repository) = normalise_image(image) else {
            return false;
        };
        self.prefixes.iter().any(|prefix| {
            repository == *prefix
                || repository
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The allowed prefixes, for messages.
    pub fn describe(&self) -> String {
        self.prefixes.join(", ")
    }
}

/// The first offending image among `(container name, image)` pairs, as a message for the
/// job's author; `None` if every image is allowed.
pub fn first_refusal<'a>(
    allowlist: &Allowlist,
    containers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    containers
        .into_iter()
        .find(|(_, image)| !allowlist.allows(image))
        .map(|(name, image)| {
            format!(
                "image `{image}` of container `{name}` is not from an allowed registry; \
             this runner only runs images from: {}",
                allowlist.describe()
            )
        })
}

/// `registry/repository` of a Docker reference, without tag or digest, with Docker Hub's
/// short forms spelled out (`alpine` → `docker.io/library/alpine`, `user/app` →
/// `docker.io/user/app`, `index.docker.io/...` → `docker.io/...`) and the registry host
/// lower-cased. `None` for a reference that is empty or malformed.
pub fn normalise_image(image: &str) -> Option<String> {
    let image = image.trim();
    // The digest first (`@sha256:...`), then a tag: a `:` after the last `/`.
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let name = match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    };
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return None;
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (first, rest) = match name.split_once('/') {
        // Docker's rule: the first component is a registry if it has a `.` or a `:` or is
        // `localhost`; otherwise the whole name is a Docker Hub repository.
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, Some(rest))
        }
        _ => ("docker.io", None),
    };
    let registry = canonical_registry(first);
    Some(match rest {
        Some(rest) if registry == "docker.io" && !rest.contains('/') => {
            format!("docker.io/library/{rest}")
        }
        Some(rest) => format!("{registry}/{rest}"),
        None if name.contains('/') => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    })
}

/// Docker Hub's aliases all mean `docker.io`; hosts are case-insensitive.
fn canonical_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// An allowlist entry: a registry host, optionally with a repository path prefix.
fn normalise_prefix(entry: &str) -> Result<String, String> {
    let trimmed = entry.trim().trim_end_matches('/');
    let bad = |why: &str| Err(format!("allowed_registries entry {entry:?}: {why}"));
    if trimmed.is_empty() {
        return bad("is empty");
    }
    if trimmed.contains("://") {
        return bad("write the registry host without a scheme, e.g. \"registry.example.com\"");
    }
    if trimmed.contains('@') || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("is not a registry host or repository prefix");
    }
    let (host, path) = match trimmed.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (trimmed, None),
    };
    if path.is_some_and(|p| p.is_empty() || p.contains("//") || p.contains(':')) {
        return bad("a repository prefix has no tag and no empty components");
    }
    let host = canonical_registry(host);
    Ok(match path {
        Some(path) => format!("{host}/{path}"),
        None => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist(entries: &[&str]) -> Allowlist {
        let json = serde_json::json!({ "allowed_registries": entries }).to_string();
        Allowlist::from_settings(&json).unwrap()
    }

    #[test]
    fn docker_hub_short_names_are_spelled_out() {
        assert_eq!(
            normalise_image("alpine").unwrap(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            normalise_image("alpine:3.20").unwrap(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            normalise_image("bitnami/redis:7").unwrap(),
            "docker.io/bitnami/redis"
        );
        assert_eq!(
            normalise_image("docker.io/alpine").unwrap(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            normalise_image("index.docker.io/library/alpine").unwrap(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            normalise_image("Registry-1.Docker.IO/user/app").unwrap(),
            "docker.io/user/app"
        );
    }

    #[test]
    fn tags_digests_and_ports_are_told_apart() {
        assert_eq!(
            normalise_image("registry.example.com:5000/team/app:1.2").unwrap(),
            "registry.example.com:5000/team/app"
        );
        assert_eq!(
            normalise_image("localhost:5000/app").unwrap(),
            "localhost:5000/app"
        );
        assert_eq!(normalise_image("localhost/app").unwrap(), "localhost/app");
        assert_eq!(
            normalise_image("ghcr.io/org/app:v1@sha256:0123456789abcdef").unwrap(),
            "ghcr.io/org/app"
        );
    }

    #[test]
    fn malformed_references_are_never_allowed() {
        for bad in ["", "   ", "/app", "app/", "a//b", "docker.io/ app"] {
            assert_eq!(normalise_image(bad), None, "{bad:?}");
            assert!(!allowlist(&["docker.io"]).allows(bad), "{bad:?}");
        }
    }

    #[test]
    fn docker_hub_allows_short_names_but_not_other_registries() {
        let list = allowlist(&["docker.io"]);
        assert!(list.allows("alpine:3.20"));
        assert!(list.allows("bitnami/redis"));
        assert!(!list.allows("quay.io/prometheus/node-exporter"));
        assert!(!list.allows("docker.io.evil.example/library/alpine"));
    }

    #[test]
    fn repository_prefixes_match_whole_components() {
        let list = allowlist(&["registry.gitlab.com/my-group/", "docker.io/library"]);
        assert!(list.allows("registry.gitlab.com/my-group/app:1"));
        assert!(list.allows("registry.gitlab.com/my-group/sub/app"));
        assert!(!list.allows("registry.gitlab.com/my-groupie/app"));
        assert!(!list.allows("registry.gitlab.com/other/app"));
        assert!(list.allows("alpine"));
        assert!(!list.allows("someone/alpine"));
    }

    #[test]
    fn registry_hosts_compare_case_insensitively() {
        assert!(allowlist(&["Registry.Example.com"]).allows("registry.EXAMPLE.com/app"));
    }

    #[test]
    fn the_refusal_names_the_container_and_what_is_allowed() {
        let list = allowlist(&["registry.example.com"]);
        let message = first_refusal(
            &list,
            [("build", "registry.example.com/app"), ("svc-0", "redis:7")],
        )
        .unwrap();
        assert_eq!(
            message,
            "image `redis:7` of container `svc-0` is not from an allowed registry; \
             this runner only runs images from: registry.example.com"
        );
        assert_eq!(
            first_refusal(&list, [("build", "registry.example.com/app")]),
            None
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let err = |json: &str| Allowlist::from_settings(json).unwrap_err();
        assert!(err("{}").contains("allowed_registries"));
        assert!(err(r#"{"allowed_registries": []}"#).contains("empty"));
        assert!(
            err(r#"{"allowed_registries": ["docker.io"], "extra": 1}"#).contains("unknown field")
        );
        assert!(
            err(r#"{"allowed_registries": ["https://r.example"]}"#).contains("without a scheme")
        );
        assert!(err(r#"{"allowed_registries": [""]}"#).contains("is empty"));
        assert!(err(r#"{"allowed_registries": ["r.example/app:1"]}"#).contains("no tag"));
        assert!(err("not json").contains("settings must be"));
    }
}
