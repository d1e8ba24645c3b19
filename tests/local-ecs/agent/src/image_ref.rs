//! Image references as the ECS agent's pull (containerd/docker) spells them in errors: fully
//! normalised (`busybox` → `docker.io/library/busybox:latest`). Only loopback registries are
//! reachable here (`pull`), so a missing image of any other registry is reported exactly as a
//! real instance reports a pull of a reference the registry does not know.

/// `name` normalised like `reference.ParseNormalizedNamed` + `TagNameOnly`: registry defaults
/// to `docker.io`, official images get `library/`, and a reference with neither tag nor digest
/// gets `:latest`.
pub fn normalize(name: &str) -> String {
    let (named, digest) = match name.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    // A tag is a ':' after the last '/' (a ':' before it belongs to a registry port).
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    let (domain, remainder) = match path.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest.to_string())
        }
        _ => ("docker.io", path.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let remainder = if domain == "docker.io" && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder
    };
    let mut out = format!("{domain}/{remainder}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

/// The task's and the container's `reason` when the image is not on the host, worded as ECS
/// words a pull of a reference the registry does not know.
pub fn cannot_pull_reason(image: &str) -> String {
    let r = normalize(image);
    format!(
        "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref {r}: {r}: not found"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_images_get_registry_library_and_latest() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            normalize("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn user_images_get_registry_only() {
        assert_eq!(
            normalize("ecs-executor-test/build:1"),
            "docker.io/ecs-executor-test/build:1"
        );
        assert_eq!(
            normalize("gitlab/gitlab-runner"),
            "docker.io/gitlab/gitlab-runner:latest"
        );
    }

    #[test]
    fn registries_with_dots_ports_or_localhost_are_kept() {
        assert_eq!(
            normalize("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v2"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v2"
        );
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("localhost/app:1"), "localhost/app:1");
        assert_eq!(normalize("registry:5000/team/app"), "registry:5000/team/app:latest");
    }

    #[test]
    fn digests_are_kept_and_suppress_latest() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            normalize(&format!("alpine@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
        assert_eq!(
            normalize(&format!("alpine:3@{d}")),
            format!("docker.io/library/alpine:3@{d}")
        );
    }

    #[test]
    fn the_pull_error_names_the_normalised_reference_twice() {
        assert_eq!(
            cannot_pull_reason("nosuch/image:1"),
            "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref \
             docker.io/nosuch/image:1: docker.io/nosuch/image:1: not found"
        );
    }
}
