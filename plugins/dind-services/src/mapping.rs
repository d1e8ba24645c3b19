//! The decision, free of bindings and host calls so it unit-tests natively: which services
//! are Docker-in-Docker, whether their tag is allowed, and the container each becomes.

use ecs_executor_plugin_sdk::image::ImageRef;
use ecs_executor_plugin_sdk::settings::SettingsObject;
use ecs_executor_plugin_sdk::types::{CiService, ContainerDefinition, KeyValue};

/// The Docker Hub repository of the official `docker` image, spelled out.
const DOCKER_REPOSITORY: &str = "docker.io/library/docker";
/// The variable the `docker` image's entry point reads to turn TLS on (a path) or off (`""`).
pub const TLS_CERTDIR: &str = "DOCKER_TLS_CERTDIR";
/// The label marking the container as a service, and its value.
pub const ROLE_LABEL: (&str, &str) = ("ecs-executor.role", "service");
/// The executor's own containers, which a service container must not be named after.
const RESERVED_NAMES: &[&str] = &["build", "helper"];

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DindMapper {
    tls_certdir: String,
    allowed_tags: Option<Vec<String>>,
}

/// What to do with one service (mirrors the WIT `service-mapping`, which exists only in the
/// component bindings).
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// Not Docker-in-Docker: the next plugin or the built-in mapping decides.
    Decline,
    /// The containers to add for the service.
    Containers(Vec<ContainerDefinition>),
}

impl DindMapper {
    /// Parse and validate the settings; errors name the setting at fault.
    pub fn from_settings(json: &str) -> Result<DindMapper, String> {
        let settings = SettingsObject::parse(json, &["tls_certdir", "allowed_tags"])?;
        let tls_certdir: String = settings.get("tls_certdir")?.unwrap_or_default();
        if !tls_certdir.is_empty()
            && (!tls_certdir.starts_with('/') || tls_certdir.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "tls_certdir: {tls_certdir:?} must be \"\" (TLS off) or an absolute path without spaces"
            ));
        }
        let allowed_tags: Option<Vec<String>> = settings.get("allowed_tags")?;
        for glob in allowed_tags.iter().flatten() {
            let valid = !glob.is_empty()
                && glob.len() <= 128
                && glob.chars().all(|c| c.is_ascii_alphanumeric() || "_.-*?".contains(c));
            if !valid {
                return Err(format!(
                    "allowed_tags: {glob:?} is not a tag glob (1 to 128 of letters, digits, `_ . -` and `* ?`)"
                ));
            }
        }
        Ok(DindMapper {
            tls_certdir,
            allowed_tags,
        })
    }

    /// One mapping per service, in order; `Err(message)` (a rejection for the job's author)
    /// for the first dind service whose tag is not allowed.
    pub fn map(&self, services: &[CiService]) -> Result<Vec<Mapping>, String> {
        let mut taken: Vec<String> = Vec::new();
        services
            .iter()
            .map(|service| {
                let Some(tag) = dind_tag(&service.name) else {
                    return Ok(Mapping::Decline);
                };
                if let Some(allowed) = self.allowed_tags.as_ref().filter(|allowed| !allowed.iter().any(|g| glob(g, &tag))) {
                    return Err(format!(
                        "service image `{}` is not allowed on this runner: its Docker-in-Docker tag must match one of {}",
                        service.name,
                        allowed.join(", ")
                    ));
                }
                let name = unique_name(container_name(service), &taken);
                taken.push(name.clone());
                Ok(Mapping::Containers(vec![self.container(name, service)]))
            })
            .collect()
    }

    fn container(&self, name: String, service: &CiService) -> ContainerDefinition {
        let mut environment = vec![kv(TLS_CERTDIR, &self.tls_certdir)];
        for variable in service.variables.iter().filter(|variable| variable.key != TLS_CERTDIR) {
            match environment.iter_mut().find(|existing| existing.key == variable.key) {
                Some(existing) => existing.value = variable.value.clone(),
                None => environment.push(variable.clone()),
            }
        }
        ContainerDefinition {
            name,
            image: service.name.clone(),
            cpu: None,
            memory: None,
            memory_reservation: None,
            essential: false,
            entry_point: service.entrypoint.clone(),
            command: service.command.clone().unwrap_or_default(),
            environment,
            mount_points: Vec::new(),
            links: Vec::new(),
            docker_labels: vec![kv(ROLE_LABEL.0, ROLE_LABEL.1)],
            log_configuration: None,
            privileged: true,
            extra: None,
        }
    }
}

/// The tag of a Docker-in-Docker image of the official `docker` repository (`dind` or
/// `…-dind`), or `None` for any other image.
pub fn dind_tag(image: &str) -> Option<String> {
    let parsed = ImageRef::parse(image)?;
    let tag = parsed.tag.filter(|tag| tag == "dind" || tag.ends_with("-dind"))?;
    (parsed.name == DOCKER_REPOSITORY).then_some(tag)
}

/// The container name for `service`: its first alias as a DNS label, else `docker`.
fn container_name(service: &CiService) -> String {
    let alias = service.aliases.first().map(String::as_str).unwrap_or("docker");
    let cleaned: String = alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned: String = cleaned.trim_matches('-').chars().take(200).collect();
    match cleaned.as_str() {
        "" => "docker".into(),
        name if RESERVED_NAMES.contains(&name) => format!("svc-{name}"),
        _ => cleaned,
    }
}

/// `name`, or `name-2`, `name-3`... if an earlier service of the job took it.
fn unique_name(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|n| format!("{name}-{n}"))
        .find(|candidate| !taken.contains(candidate))
        .expect("a free suffix")
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` one.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with backtracking to the last `*`: linear in practice, no recursion.
    let (mut p, mut t, mut star, mut resume) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            resume = t;
            p += 1;
        } else if let Some(star) = star {
            p = star + 1;
            resume += 1;
            t = resume;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

#[cfg(test)]
mod tests {
    use ecs_executor_plugin_sdk::fixtures::{self, kv};
    use serde_json::json;

    use super::*;

    fn mapper(settings: serde_json::Value) -> DindMapper {
        DindMapper::from_settings(&settings.to_string()).unwrap()
    }

    fn containers(mapping: &Mapping) -> &[ContainerDefinition] {
        match mapping {
            Mapping::Containers(containers) => containers,
            Mapping::Decline => panic!("declined"),
        }
    }

    #[test]
    fn dind_images_of_the_official_repository_are_recognised() {
        for image in [
            "docker:dind",
            "docker:27-dind",
            "docker:27.3.1-dind",
            "docker.io/library/docker:27-dind",
            "docker.io/docker:dind",
            "index.docker.io/library/docker:27-dind",
            "docker:27-dind@sha256:0123",
        ] {
            assert!(dind_tag(image).is_some(), "{image}");
        }
        for image in [
            "docker",
            "docker:27",
            "docker:27-dind-rootless",
            "docker:latest",
            "someone/docker:dind",
            "registry.example.com/docker:dind",
            "library/dockerx:dind",
            "postgres:16",
            "docker:",
        ] {
            assert_eq!(dind_tag(image), None, "{image}");
        }
    }

    #[test]
    fn a_dind_service_becomes_one_privileged_non_essential_container() {
        let mut service = fixtures::service("docker:27-dind", &["docker", "dind"]);
        service.entrypoint = Some(vec!["dockerd-entrypoint.sh".into()]);
        service.command = Some(vec!["--mtu=1400".into()]);
        service.variables = vec![kv("DOCKER_DRIVER", "overlay2"), kv(TLS_CERTDIR, "/certs")];
        let mappings = mapper(json!({})).map(&[service]).unwrap();
        let [mapping] = mappings.as_slice() else {
            panic!("{mappings:?}")
        };
        let [container] = containers(mapping) else {
            panic!("{mapping:?}")
        };
        assert_eq!(container.name, "docker");
        assert_eq!(container.image, "docker:27-dind");
        assert!(container.privileged && !container.essential);
        assert_eq!(container.entry_point, Some(vec!["dockerd-entrypoint.sh".into()]));
        assert_eq!(container.command, ["--mtu=1400"]);
        assert_eq!(
            container.environment,
            [kv(TLS_CERTDIR, ""), kv("DOCKER_DRIVER", "overlay2")]
        );
        assert_eq!(container.docker_labels, [kv("ecs-executor.role", "service")]);
        assert!(container.mount_points.is_empty() && container.links.is_empty());
    }

    #[test]
    fn other_services_are_declined_in_place() {
        let services = [
            fixtures::service("postgres:16", &["db"]),
            fixtures::service("docker:dind", &[]),
            fixtures::service("docker:27", &[]),
        ];
        let mappings = mapper(json!({"tls_certdir": "/certs"})).map(&services).unwrap();
        assert_eq!(mappings.len(), 3);
        assert_eq!(mappings[0], Mapping::Decline);
        assert_eq!(containers(&mappings[1])[0].name, "docker");
        assert_eq!(containers(&mappings[1])[0].environment, [kv(TLS_CERTDIR, "/certs")]);
        assert_eq!(mappings[2], Mapping::Decline);
        assert_eq!(mapper(json!({})).map(&[]).unwrap(), []);
    }

    #[test]
    fn names_come_from_the_first_alias_and_never_clash() {
        let services = [
            fixtures::service("docker:dind", &["my.docker.host", "docker"]),
            fixtures::service("docker:dind", &["build"]),
            fixtures::service("docker:dind", &[]),
            fixtures::service("docker:dind", &["docker"]),
            fixtures::service("docker:dind", &["..."]),
        ];
        let mappings = mapper(json!({})).map(&services).unwrap();
        let names: Vec<&str> = mappings.iter().map(|m| containers(m)[0].name.as_str()).collect();
        assert_eq!(names, ["my-docker-host", "svc-build", "docker", "docker-2", "docker-3"]);
    }

    #[test]
    fn tags_outside_allowed_tags_are_rejected_naming_the_image() {
        let mapper = mapper(json!({"allowed_tags": ["27-dind", "27.*-dind"]}));
        assert!(mapper.map(&[fixtures::service("docker:27.3.1-dind", &[])]).is_ok());
        let err = mapper
            .map(&[
                fixtures::service("postgres:16", &[]),
                fixtures::service("docker:26-dind", &["docker"]),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            "service image `docker:26-dind` is not allowed on this runner: \
             its Docker-in-Docker tag must match one of 27-dind, 27.*-dind"
        );
    }

    #[test]
    fn globs_match_whole_tags() {
        assert!(glob("27-dind", "27-dind") && !glob("27-dind", "27-dind2"));
        assert!(glob("*-dind", "27.3-dind") && glob("*", "dind") && glob("2?-dind", "27-dind"));
        assert!(!glob("2?-dind", "2-dind") && glob("*2*7*", "a2b7c") && !glob("a*b", "acbx"));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        for (settings, expected) in [
            (json!({"tls_certdir": "certs"}), "tls_certdir: \"certs\" must be"),
            (json!({"tls_certdir": 1}), "tls_certdir: invalid type"),
            (json!({"allowed_tags": "27-dind"}), "allowed_tags: invalid type"),
            (
                json!({"allowed_tags": ["27 dind"]}),
                "allowed_tags: \"27 dind\" is not a tag glob",
            ),
            (json!({"allowed_tags": [""]}), "allowed_tags: \"\" is not a tag glob"),
            (json!({"tls": ""}), "unknown setting `tls`"),
        ] {
            let err = DindMapper::from_settings(&settings.to_string()).unwrap_err();
            assert!(err.starts_with(expected), "{settings}: {err}");
        }
    }
}
