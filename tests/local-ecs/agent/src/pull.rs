//! Image pulls as the ECS agent makes them: `ECS_IMAGE_PULL_BEHAVIOR` (`default`, `always`,
//! `once`, `prefer-cached`), registry credentials from a container's `repositoryCredentials`
//! (a Secrets Manager secret `{"username","password"}`, read before any pull, as the agent's
//! `asm-auth` task resource does) or else from the instance-wide `ECS_ENGINE_AUTH_TYPE` /
//! `ECS_ENGINE_AUTH_DATA` (`dockercfg` or `docker`, matched as the agent's `dockerauth` does).
//!
//! Only registries on loopback (`127.x.y.z:port`, `localhost`) are really pulled from: nothing
//! else is reachable here, so an image of any other registry is used when it is on the host
//! and otherwise fails as a pull of an unknown reference does (`image_ref::cannot_pull_reason`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::image_ref::normalize;

/// `ECS_IMAGE_PULL_BEHAVIOR`, as the agent documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullBehavior {
    /// Pull; if the pull fails, use the cached image when there is one.
    Default,
    /// Pull; a failed pull fails the task.
    Always,
    /// Pull only if no earlier task on this instance pulled the image (or it was removed).
    Once,
    /// Pull only if the image is not on the instance.
    PreferCached,
}

impl PullBehavior {
    pub fn parse(value: &str) -> anyhow::Result<PullBehavior> {
        Ok(match value.trim() {
            "" | "default" => PullBehavior::Default,
            "always" => PullBehavior::Always,
            "once" => PullBehavior::Once,
            "prefer-cached" => PullBehavior::PreferCached,
            other => {
                anyhow::bail!("ECS_IMAGE_PULL_BEHAVIOR={other:?}: expected default, always, once or prefer-cached")
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullBehavior::Default => "default",
            PullBehavior::Always => "always",
            PullBehavior::Once => "once",
            PullBehavior::PreferCached => "prefer-cached",
        }
    }
}

/// A user name and password for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: *** }}", self.username)
    }
}

/// The agent's `dockerauth` key for Docker Hub (what `docker login` wrote in old configs).
const DOCKER_HUB_KEY: &str = "index.docker.io/v1/";
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The instance-wide credentials of `ECS_ENGINE_AUTH_TYPE` / `ECS_ENGINE_AUTH_DATA`, keyed by
/// registry without scheme (`host[:port][/namespace]`).
#[derive(Debug, Clone, Default)]
pub struct EngineAuth {
    auths: HashMap<String, Credentials>,
}

impl EngineAuth {
    /// Parses the two settings. As the agent, `dockercfg` data is `{"<registry>":
    /// {"auth":"<base64 user:password>"}}` and `docker` data is `{"<registry>":
    /// {"username","password"}}`; unlike the agent (which logs a warning and carries on with
    /// none), malformed data is refused at start so a test's mistake shows.
    pub fn parse(auth_type: Option<&str>, data: Option<&str>) -> anyhow::Result<EngineAuth> {
        let auth_type = auth_type.unwrap_or("").trim();
        let data = data.unwrap_or("").trim();
        let mut auths = HashMap::new();
        match auth_type {
            "" => {
                if !data.is_empty() {
                    anyhow::bail!("ECS_ENGINE_AUTH_DATA is set but ECS_ENGINE_AUTH_TYPE is not (dockercfg or docker)");
                }
            }
            "dockercfg" => {
                #[derive(Deserialize)]
                struct Entry {
                    auth: String,
                }
                let map: HashMap<String, Entry> =
                    serde_json::from_str(data).map_err(|e| anyhow::anyhow!("ECS_ENGINE_AUTH_DATA (dockercfg): {e}"))?;
                for (registry, entry) in map {
                    let decoded = base64_decode(&entry.auth).ok_or_else(|| {
                        anyhow::anyhow!("ECS_ENGINE_AUTH_DATA (dockercfg): malformed auth data for registry {registry}")
                    })?;
                    let (username, password) = decoded.split_once(':').ok_or_else(|| {
                        anyhow::anyhow!(
                            "ECS_ENGINE_AUTH_DATA (dockercfg): malformed auth data for registry {registry}; must contain ':'"
                        )
                    })?;
                    auths.insert(
                        strip_scheme(&registry).to_string(),
                        Credentials {
                            username: username.into(),
                            password: password.into(),
                        },
                    );
                }
            }
            "docker" => {
                #[derive(Deserialize)]
                struct Entry {
                    #[serde(default)]
                    username: String,
                    #[serde(default)]
                    password: String,
                }
                let map: HashMap<String, Entry> =
                    serde_json::from_str(data).map_err(|e| anyhow::anyhow!("ECS_ENGINE_AUTH_DATA (docker): {e}"))?;
                for (registry, entry) in map {
                    auths.insert(
                        strip_scheme(&registry).to_string(),
                        Credentials {
                            username: entry.username,
                            password: entry.password,
                        },
                    );
                }
            }
            other => anyhow::bail!("ECS_ENGINE_AUTH_TYPE={other:?}: expected dockercfg or docker"),
        }
        Ok(EngineAuth { auths })
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty()
    }

    /// The credentials for `image`, chosen as the agent's `GetAuthconfig` chooses: Docker Hub
    /// images take the `index.docker.io/v1/` entry; otherwise the entry for the image's
    /// registry host, or a longer `host/namespace` entry the image starts with.
    pub fn for_image(&self, image: &str) -> Option<&Credentials> {
        let repository = strip_tag(image);
        let index = registry_of(repository);
        if DOCKER_HUB_HOSTS.contains(&index) {
            return self.auths.get(DOCKER_HUB_KEY);
        }
        let mut longest: Option<&str> = self.auths.contains_key(index).then_some(index);
        for key in self.auths.keys() {
            let host = key.split('/').next().unwrap_or(key);
            if host != index {
                continue;
            }
            match longest {
                None => longest = Some(key),
                Some(l) if key.len() > l.len() && image.starts_with(key.as_str()) => longest = Some(key),
                Some(_) => {}
            }
        }
        longest.and_then(|k| self.auths.get(k))
    }
}

fn strip_scheme(registry: &str) -> &str {
    registry
        .strip_prefix("http://")
        .or_else(|| registry.strip_prefix("https://"))
        .unwrap_or(registry)
}

/// The repository without `:tag` or `@digest` (a ':' before the last '/' is a port).
fn strip_tag(image: &str) -> &str {
    let named = image.split('@').next().unwrap_or(image);
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    match named[last_slash..].rfind(':') {
        Some(i) => &named[..last_slash + i],
        None => named,
    }
}

/// The registry host of an image reference, as Docker splits it (`docker.io` when the first
/// component has no '.', no ':' and is not `localhost`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Whether the image's registry is on loopback, the only registries this stand-in can reach.
pub fn pullable_here(image: &str) -> bool {
    let host = registry_of(image);
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for b in text.trim().bytes().filter(|&b| b != b'=') {
        let v = ALPHABET.iter().position(|&a| a == b)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The secret value of a `repositoryCredentials` secret, checked as the agent's
/// `extractASMValue` checks it (same wording).
pub fn parse_asm_value(secret_string: Option<&str>) -> Result<Credentials, String> {
    let value = secret_string.unwrap_or("");
    if value.is_empty() {
        return Err("asm fetching authorization data: empty secrets value".into());
    }
    #[derive(Deserialize)]
    struct AuthDataValue {
        username: Option<String>,
        password: Option<String>,
    }
    let parsed: AuthDataValue = serde_json::from_str(value)
        .map_err(|_| "asm fetching authorization data: unable to unmarshal secret value, invalid schema".to_string())?;
    let username = parsed.username.unwrap_or_default();
    let password = parsed.password.unwrap_or_default();
    if username.is_empty() {
        return Err("asm fetching username: AuthorizationData is malformed, empty field".into());
    }
    if password.is_empty() {
        return Err("asm fetching password: AuthorizationData is malformed, empty field".into());
    }
    Ok(Credentials { username, password })
}

/// What a pull decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pulled from the registry now.
    Pulled,
    /// The cached image is used without a pull (`prefer-cached`, `once`, or a registry that
    /// cannot be reached from here).
    Cached,
    /// The pull failed and the cached image is used (`default`); the text is Docker's error.
    CachedAfterFailure(String),
}

/// The instance's image state: which images a task here has pulled (for `once`).
#[derive(Default)]
pub struct ImageState {
    pulled: Mutex<HashSet<String>>,
}

impl ImageState {
    /// Makes `image` available for a container as the pull behaviour says. `Err` is the
    /// container's reason (`CannotPullContainerError: ...`).
    pub async fn ensure(
        &self,
        docker: &Docker,
        behavior: PullBehavior,
        image: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Outcome, String> {
        let cached = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => false,
            Err(e) => return Err(format!("CannotPullContainerError: {}", docker_message(&e))),
        };
        if !pullable_here(image) {
            return if cached {
                Ok(Outcome::Cached)
            } else {
                Err(crate::image_ref::cannot_pull_reason(image))
            };
        }
        let key = normalize(image);
        let skip = match behavior {
            PullBehavior::PreferCached => cached,
            PullBehavior::Once => cached && self.pulled.lock().unwrap().contains(&key),
            PullBehavior::Default | PullBehavior::Always => false,
        };
        if skip {
            return Ok(Outcome::Cached);
        }
        match pull(docker, image, credentials).await {
            Ok(()) => {
                self.pulled.lock().unwrap().insert(key);
                Ok(Outcome::Pulled)
            }
            Err(e) if behavior == PullBehavior::Default && cached => Ok(Outcome::CachedAfterFailure(e)),
            Err(e) => Err(format!("CannotPullContainerError: {e}")),
        }
    }
}

/// One `docker pull` of `image` (with its tag; `:latest` when it has none) over the Engine
/// API, with the registry credentials if any. `Err` is Docker's message.
async fn pull(docker: &Docker, image: &str, credentials: Option<&Credentials>) -> Result<(), String> {
    let reference = normalize(image);
    let options = CreateImageOptions {
        from_image: Some(reference),
        ..Default::default()
    };
    let auth = credentials.map(|c| DockerCredentials {
        username: Some(c.username.clone()),
        password: Some(c.password.clone()),
        serveraddress: Some(registry_of(image).to_string()),
        ..Default::default()
    });
    let mut stream = docker.create_image(Some(options), None, auth);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("Error response from daemon: {}", detail.trim()));
                }
            }
            Err(e) => return Err(docker_message(&e)),
        }
    }
    Ok(())
}

/// Docker's answer as the real agent quotes it in reasons.
pub fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => {
            format!("Error response from daemon: {}", message.trim())
        }
        DockerError::DockerStreamError { error } => format!("Error response from daemon: {}", error.trim()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn pull_behaviours_parse_and_unknown_ones_are_refused() {
        assert_eq!(PullBehavior::parse("").unwrap(), PullBehavior::Default);
        assert_eq!(PullBehavior::parse("once").unwrap(), PullBehavior::Once);
        assert_eq!(
            PullBehavior::parse("prefer-cached").unwrap(),
            PullBehavior::PreferCached
        );
        let err = PullBehavior::parse("sometimes").unwrap_err().to_string();
        assert!(err.contains("sometimes") && err.contains("prefer-cached"), "{err}");
    }

    #[test]
    fn dockercfg_data_is_base64_user_colon_password_keyed_without_scheme() {
        // "user:pa:ss" — only the first ':' separates.
        let auth = EngineAuth::parse(
            Some("dockercfg"),
            Some(r#"{"https://127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw==", "email": ""}}"#),
        )
        .unwrap();
        assert_eq!(
            auth.for_image("127.0.0.1:5000/private/build:1"),
            Some(&creds("user", "pa:ss"))
        );
        assert_eq!(auth.for_image("127.0.0.1:5001/private/build:1"), None);
        let err = EngineAuth::parse(Some("dockercfg"), Some(r#"{"r": {"auth": "bm9jb2xvbg=="}}"#)).unwrap_err();
        assert!(err.to_string().contains("must contain ':'"), "{err}");
    }

    #[test]
    fn docker_data_matches_host_then_the_longest_namespace_and_hub_by_its_key() {
        let auth = EngineAuth::parse(
            Some("docker"),
            Some(
                r#"{"registry.example.com": {"username": "a", "password": "1"},
                    "registry.example.com/team": {"username": "b", "password": "2"},
                    "index.docker.io/v1/": {"username": "hub", "password": "3"}}"#,
            ),
        )
        .unwrap();
        assert_eq!(auth.for_image("registry.example.com/other/x:1").unwrap().username, "a");
        assert_eq!(auth.for_image("registry.example.com/team/x:1").unwrap().username, "b");
        assert_eq!(auth.for_image("busybox").unwrap().username, "hub");
        assert_eq!(auth.for_image("docker.io/library/busybox:1").unwrap().username, "hub");
        assert!(auth.for_image("elsewhere.example.com/x").is_none());
    }

    #[test]
    fn engine_auth_settings_that_make_no_sense_are_refused() {
        assert!(EngineAuth::parse(None, None).unwrap().is_empty());
        assert!(EngineAuth::parse(None, Some("{}")).is_err());
        assert!(EngineAuth::parse(Some("basic"), Some("{}")).is_err());
        assert!(EngineAuth::parse(Some("docker"), Some("not json")).is_err());
    }

    #[test]
    fn asm_values_are_checked_with_the_agents_words() {
        assert_eq!(
            parse_asm_value(Some(r#"{"username":"u","password":"p"}"#)).unwrap(),
            creds("u", "p")
        );
        assert_eq!(
            parse_asm_value(None).unwrap_err(),
            "asm fetching authorization data: empty secrets value"
        );
        assert!(parse_asm_value(Some("u:p")).unwrap_err().contains("invalid schema"));
        assert!(
            parse_asm_value(Some(r#"{"username":"u"}"#))
                .unwrap_err()
                .contains("asm fetching password")
        );
        assert!(format!("{:?}", creds("u", "hunter2")).contains("***"));
        assert!(!format!("{:?}", creds("u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn only_loopback_registries_are_pulled_from() {
        assert!(pullable_here("127.0.0.1:5000/private/build:1"));
        assert!(pullable_here("localhost:5000/x"));
        assert!(!pullable_here("busybox"));
        assert!(!pullable_here("registry.gitlab.com/group/app:1"));
        assert!(!pullable_here("10.0.0.1:5000/x"));
    }
}
