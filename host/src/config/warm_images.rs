//! The `[warm_images]` table: images `ecs-executor gc` keeps pulled on every ACTIVE container
//! instance (`crate::warm_images`, `docs/warm-pools.md`).

use serde::Deserialize;

/// `[warm_images]`: images pre-pulled on every instance, so a cold task of one of them finds
/// it in the instance's Docker cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmImagesSettings {
    /// Image references (`alpine:3.20`, `registry.example/group/x:1`, `x@sha256:...`). Pulled
    /// with no credentials or the runner host's own Docker config, never a job's.
    #[serde(default)]
    pub images: Vec<String>,
    /// The deadline of one pull on one instance.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_secs: u64,
    /// Pulls running at once, over all instances.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for WarmImagesSettings {
    fn default() -> Self {
        WarmImagesSettings {
            images: Vec::new(),
            pull_timeout_secs: default_pull_timeout(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_pull_timeout() -> u64 {
    600
}
fn default_concurrency() -> usize {
    4
}

impl WarmImagesSettings {
    /// The first problem, as (key, what is wrong): every error names the key and the entry.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        for (i, image) in self.images.iter().enumerate() {
            if let Some(why) = reference_problem(image) {
                return Some(("warm_images.images", format!("entry {image:?}: {why}")));
            }
            if self.images[..i].contains(image) {
                return Some(("warm_images.images", format!("entry {image:?} is listed twice")));
            }
        }
        if !(1..=7200).contains(&self.pull_timeout_secs) {
            return Some((
                "warm_images.pull_timeout_secs",
                format!("= {} must be 1..=7200", self.pull_timeout_secs),
            ));
        }
        if !(1..=32).contains(&self.concurrency) {
            return Some((
                "warm_images.concurrency",
                format!("= {} must be 1..=32", self.concurrency),
            ));
        }
        None
    }
}

/// Why `image` is not an image reference Docker can pull by name, if it is not.
fn reference_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("is empty".into());
    }
    if image.len() > 512 {
        return Some("is longer than 512 characters".into());
    }
    if image.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace".into());
    }
    if image.contains("${") || image.contains('$') {
        return Some("contains `$`: warm images are not expanded (no job variables exist at gc)".into());
    }
    let (named, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d
            .split_once(':')
            .is_some_and(|(alg, hex)| !alg.is_empty() && hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Some(format!("the digest {d:?} is not `algorithm:hex`"));
        }
    }
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    if let Some(tag) = tag
        && (tag.is_empty() || tag.len() > 128 || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return Some(format!("the tag {tag:?} is not a Docker tag"));
    }
    let mut parts = repository.split('/').collect::<Vec<_>>();
    // A first component with '.', ':' or `localhost` is the registry host (case and port allowed).
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
            return Some(format!("the registry {host:?} is not a host[:port]"));
        }
    }
    let component_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
    };
    if let Some(bad) = parts.iter().find(|p| !component_ok(p)) {
        return Some(format!(
            "the repository component {bad:?} must be lower-case letters, digits and separators"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_docker_pulls_by_name_are_accepted() {
        for ok in [
            "alpine:3.20",
            "busybox",
            "registry.example/x:1",
            "127.0.0.1:5000/private/build:1",
            "localhost/a/b",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(reference_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("alp ine", "whitespace"),
            ("Alpine:3", "lower-case"),
            ("alpine:", "tag"),
            ("x@sha256:zz", "digest"),
            ("$CI_IMAGE", "`$`"),
            ("a//b", "component"),
        ] {
            let why = reference_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(why.contains(says), "{bad:?}: {why}");
        }
    }
}
