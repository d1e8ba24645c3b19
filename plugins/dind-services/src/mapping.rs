//! The decision, free of bindings and host calls so it unit-tests natively: which services
//! are Docker-in-Docker, whether their tag is allowed, and the container each becomes.

use ecs_executor_plugin_sdk::image::ImageRef;
use ecs_executor_plugin_sdk::settings::SettingsObject;
use ecs_executor_plugin_sdk::types::{CiService, ContainerDefinition, KeyValue, MountPoint};

/// The Docker Hub repository of the official `docker` image, spelled out.
const DOCKER_REPOSITORY: &str = "docker.io/library/docker";
/// The variable the `docker` image's entry point reads to turn TLS on (a path) or off (`""`).
pub const TLS_CERTDIR: &str = "DOCKER_TLS_CERTDIR";
/// The label marking the container as a service, and its value.
pub const ROLE_LABEL: (&str, &str) = ("ecs-executor.role", "service");
/// The executor's own containers, which a service container must not be named after.
const RESERVED_NAMES: &[&str] = &["build", "helper"];
/// The executor's task-scoped volume with the checkout, mounted in `build` and `helper` at
/// the executor's `builds_dir`: the dind container writes its client certificates there.
pub const BUILDS_VOLUME: &str = "builds";
/// Under the builds dir: one directory of certificates per dind container.
pub const CERTS_SUBDIR: &str = ".dind-certs";
/// The port the `docker` image's daemon listens on with TLS.
pub const TLS_PORT: u16 = 2376;

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DindMapper {
    /// `None` (the default): TLS on, certificates in the job's builds volume. `Some("")`: TLS
    /// off. `Some(path)`: that `DOCKER_TLS_CERTDIR` (the site shares it with `build` itself).
    tls_certdir: Option<String>,
    /// The executor's `builds_dir` (where `build` sees the builds volume).
    builds_dir: String,
    /// The container's command: arguments of the image's `dockerd-entrypoint.sh`, all flags.
    dockerd_args: Vec<String>,
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
        let settings = SettingsObject::parse(json, &["tls_certdir", "builds_dir", "dockerd_args", "allowed_tags"])?;
        let path_ok = |p: &str| p.starts_with('/') && !p.chars().any(|c| c.is_whitespace() || c.is_control());
        let tls_certdir: Option<String> = settings.get("tls_certdir")?;
        if let Some(dir) = tls_certdir.as_deref().filter(|d| !d.is_empty() && !path_ok(d)) {
            return Err(format!(
                "tls_certdir: {dir:?} must be \"\" (TLS off) or an absolute path without spaces"
            ));
        }
        let builds_dir: String = settings.get("builds_dir")?.unwrap_or_else(|| "/builds".to_string());
        if !path_ok(&builds_dir) || builds_dir == "/" {
            return Err(format!(
                "builds_dir: {builds_dir:?} must be the executor's builds_dir, an absolute path without spaces"
            ));
        }
        let builds_dir = builds_dir.trim_end_matches('/').to_string();
        let dockerd_args: Vec<String> = settings.get("dockerd_args")?.unwrap_or_default();
        // The image's entry point runs a first argument that is not a flag as a program: only
        // flags, so the command stays the daemon's.
        if let Some(bad) = dockerd_args
            .iter()
            .find(|a| !a.starts_with('-') || a.chars().any(char::is_control))
        {
            return Err(format!(
                "dockerd_args: {bad:?} is not a dockerd flag (each argument must start with `-`)"
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
            builds_dir,
            dockerd_args,
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

    /// The `DOCKER_TLS_CERTDIR` of the container `name` ("" with TLS off).
    pub fn certdir(&self, name: &str) -> String {
        match &self.tls_certdir {
            Some(dir) => dir.clone(),
            None => format!("{}/{CERTS_SUBDIR}/{name}", self.builds_dir),
        }
    }

    /// What a job sets to reach the daemon of container `name` under the host name `host`.
    pub fn client_hint(&self, name: &str, host: &str) -> String {
        match self.certdir(name).as_str() {
            "" => format!(
                "TLS is off (tls_certdir = \"\"): DOCKER_HOST=tcp://{host}:2375 — any container on the \
                 instance's bridge network can drive this privileged daemon"
            ),
            dir => format!(
                "DOCKER_HOST=tcp://{host}:{TLS_PORT} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir}/client \
                 (the daemon writes its certificates when it starts)"
            ),
        }
    }

    /// Why the job's own entry point and command for `service` are not used, if it set one.
    pub fn ignored_overrides(service: &CiService) -> Option<String> {
        let set: Vec<&str> = [
            service.entrypoint.as_ref().map(|_| "entrypoint"),
            service.command.as_ref().filter(|c| !c.is_empty()).map(|_| "command"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!set.is_empty()).then(|| {
            format!(
                "service {}: the job's {} ignored: a privileged container runs only the image's entry point \
                 with the runner's dockerd_args",
                service.name,
                set.join(" and ") + if set.len() == 1 { " is" } else { " are" }
            )
        })
    }

    fn container(&self, name: String, service: &CiService) -> ContainerDefinition {
        let certdir = self.certdir(&name);
        let mut environment = vec![kv(TLS_CERTDIR, &certdir)];
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
            // Never the job's: in a privileged container that would be the job's own code as
            // root on the instance (`ignored_overrides` says so in the job log).
            entry_point: None,
            command: self.dockerd_args.clone(),
            environment,
            // TLS on by default: the daemon writes its CA, server and client certificates into
            // the job's own builds volume, where `build` finds the client's and no other task
            // can (the volume is task-scoped).
            mount_points: match &self.tls_certdir {
                None => vec![MountPoint {
                    source_volume: BUILDS_VOLUME.into(),
                    container_path: self.builds_dir.clone(),
                    read_only: false,
                }],
                Some(_) => Vec::new(),
            },
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
        assert_eq!(container.docker_labels, [kv("ecs-executor.role", "service")]);
        assert!(container.links.is_empty());
    }

    /// TLS is on unless the site turns it off: the daemon's certificates go to the job's own
    /// (task-scoped) builds volume, one directory per dind container, where `build` finds
    /// the client's; the service's own DOCKER_TLS_CERTDIR does not change that.
    #[test]
    fn tls_is_on_by_default_with_the_certificates_in_the_jobs_builds_volume() {
        let mut first = fixtures::service("docker:27-dind", &["docker"]);
        first.variables = vec![kv("DOCKER_DRIVER", "overlay2"), kv(TLS_CERTDIR, "")];
        let second = fixtures::service("docker:dind", &["docker"]);
        let m = mapper(json!({}));
        let mappings = m.map(&[first, second]).unwrap();
        let (a, b) = (&containers(&mappings[0])[0], &containers(&mappings[1])[0]);
        assert_eq!(
            a.environment,
            [
                kv(TLS_CERTDIR, "/builds/.dind-certs/docker"),
                kv("DOCKER_DRIVER", "overlay2")
            ]
        );
        assert_eq!(b.environment, [kv(TLS_CERTDIR, "/builds/.dind-certs/docker-2")]);
        for c in [a, b] {
            assert_eq!(
                c.mount_points,
                [MountPoint {
                    source_volume: "builds".into(),
                    container_path: "/builds".into(),
                    read_only: false
                }]
            );
        }
        assert_eq!(
            m.client_hint("docker", "docker"),
            "DOCKER_HOST=tcp://docker:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/builds/.dind-certs/docker/client \
             (the daemon writes its certificates when it starts)"
        );
        // Another builds_dir; the site's own certificate dir; TLS off (said so).
        let other = mapper(json!({"builds_dir": "/srv/builds/"}));
        assert_eq!(other.certdir("d"), "/srv/builds/.dind-certs/d");
        let site = mapper(json!({"tls_certdir": "/certs"}))
            .map(&[fixtures::service("docker:dind", &[])])
            .unwrap();
        let c = &containers(&site[0])[0];
        assert_eq!(c.environment, [kv(TLS_CERTDIR, "/certs")]);
        assert!(c.mount_points.is_empty(), "the site shares /certs itself");
        let off = mapper(json!({"tls_certdir": ""}));
        assert_eq!(off.certdir("docker"), "");
        assert!(off.client_hint("docker", "docker").contains("TLS is off"));
    }

    /// A privileged container runs the image's own entry point with the site's dockerd
    /// flags, never the job's entry point or command (that would be the job's code as root
    /// on the instance); the job log says they were ignored.
    #[test]
    fn the_jobs_entrypoint_and_command_are_ignored_for_the_privileged_container() {
        let mut service = fixtures::service("docker:27-dind", &["docker"]);
        service.entrypoint = Some(vec!["sh".into(), "-c".into()]);
        service.command = Some(vec!["mount /dev/xvda1 /mnt && cat /mnt/etc/shadow".into()]);
        for settings in [
            json!({}),
            json!({"dockerd_args": ["--mtu=1400", "--registry-mirror=https://mirror.example"]}),
        ] {
            let m = mapper(settings.clone());
            let mapped = m.map(std::slice::from_ref(&service)).unwrap();
            let c = &containers(&mapped[0])[0];
            assert_eq!(c.entry_point, None, "{settings}");
            let expected: Vec<String> = settings["dockerd_args"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            assert_eq!(c.command, expected, "{settings}");
        }
        let note = DindMapper::ignored_overrides(&service).unwrap();
        assert!(note.contains("entrypoint and command are ignored"), "{note}");
        service.entrypoint = None;
        let note = DindMapper::ignored_overrides(&service).unwrap();
        assert!(note.contains("command is ignored"), "{note}");
        service.command = None;
        assert_eq!(DindMapper::ignored_overrides(&service), None);
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
            (json!({"builds_dir": "builds"}), "builds_dir: \"builds\" must be"),
            (json!({"builds_dir": "/"}), "builds_dir: \"/\" must be"),
            (
                json!({"dockerd_args": ["sh"]}),
                "dockerd_args: \"sh\" is not a dockerd flag",
            ),
            (json!({"dockerd_args": "--mtu=1"}), "dockerd_args: invalid type"),
        ] {
            let err = DindMapper::from_settings(&settings.to_string()).unwrap_err();
            assert!(err.starts_with(expected), "{settings}: {err}");
        }
    }
}
