//! Docker image references as Docker reads them: `[registry/]repository[:tag][@digest]`.
//!
//! The WIT package passes references as the job wrote them (`alpine:3`, not
//! `docker.io/library/alpine:3`); policy plugins need the spelled-out form to compare them.
//! Plain Rust, no host calls: usable from native unit tests.

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry/repository`, with Docker Hub's short forms spelled out (`alpine` →
    /// `docker.io/library/alpine`, `user/app` → `docker.io/user/app`, `index.docker.io/...`
    /// → `docker.io/...`) and the registry host lower-cased.
    pub name: String,
    /// The tag (`3.20`, `27-dind`), if the reference has one. Docker's default is `latest`.
    pub tag: Option<String>,
    /// The digest (`sha256:...`), if the reference has one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse `image`; `None` for a reference that is empty or malformed (empty path
    /// components, whitespace or control characters, an empty tag or digest).
    pub fn parse(image: &str) -> Option<ImageRef> {
        let image = image.trim();
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
            return None;
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        if tag.is_some_and(str::is_empty) || digest.is_some_and(str::is_empty) {
            return None;
        }
        let (first, rest) = match name.split_once('/') {
            // Docker's rule: the first component is a registry if it has a `.` or a `:` or is
            // `localhost`; otherwise the whole name is a Docker Hub repository.
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, Some(rest)),
            _ => ("docker.io", None),
        };
        let registry = canonical_registry(first);
        let name = match rest {
            Some(rest) if registry == "docker.io" && !rest.contains('/') => format!("docker.io/library/{rest}"),
            Some(rest) => format!("{registry}/{rest}"),
            None if name.contains('/') => format!("docker.io/{name}"),
            None => format!("docker.io/library/{name}"),
        };
        Some(ImageRef {
            name,
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }
}

/// `registry/repository` of `image` without tag or digest (see [`ImageRef::name`]); `None`
/// for a reference that is empty or malformed.
pub fn normalise(image: &str) -> Option<String> {
    ImageRef::parse(image).map(|parsed| parsed.name)
}

/// A registry host as Docker compares it: lower-cased, with Docker Hub's aliases
/// (`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`) as `docker.io`.
pub fn canonical_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_are_spelled_out() {
        for (image, name) in [
            ("alpine", "docker.io/library/alpine"),
            ("alpine:3.20", "docker.io/library/alpine"),
            ("bitnami/redis:7", "docker.io/bitnami/redis"),
            ("docker.io/alpine", "docker.io/library/alpine"),
            ("index.docker.io/library/alpine", "docker.io/library/alpine"),
            ("Registry-1.Docker.IO/user/app", "docker.io/user/app"),
        ] {
            assert_eq!(normalise(image).as_deref(), Some(name), "{image}");
        }
    }

    #[test]
    fn tags_digests_and_ports_are_told_apart() {
        let parsed = ImageRef::parse("registry.example.com:5000/team/app:1.2").unwrap();
        assert_eq!(parsed.name, "registry.example.com:5000/team/app");
        assert_eq!(parsed.tag.as_deref(), Some("1.2"));
        assert_eq!(parsed.digest, None);
        let parsed = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!((parsed.name.as_str(), parsed.tag), ("localhost:5000/app", None));
        assert_eq!(normalise("localhost/app").unwrap(), "localhost/app");
        let parsed = ImageRef::parse("ghcr.io/org/app:v1@sha256:0123456789abcdef").unwrap();
        assert_eq!(parsed.name, "ghcr.io/org/app");
        assert_eq!(parsed.tag.as_deref(), Some("v1"));
        assert_eq!(parsed.digest.as_deref(), Some("sha256:0123456789abcdef"));
        let parsed = ImageRef::parse("docker:27-dind").unwrap();
        assert_eq!(
            (parsed.name.as_str(), parsed.tag.as_deref()),
            ("docker.io/library/docker", Some("27-dind"))
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "   ",
            "/app",
            "app/",
            "a//b",
            "docker.io/ app",
            "app:",
            "app@",
            "a\u{7}b",
        ] {
            assert_eq!(ImageRef::parse(bad), None, "{bad:?}");
        }
    }
}
