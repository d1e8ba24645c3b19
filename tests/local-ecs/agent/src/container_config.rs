//! One ECS container definition (plus the task's container overrides) turned into the Docker
//! create request the real agent would send: image, command, environment, mounts, links,
//! resources, network mode, labels. Settings with no local meaning are reported, not guessed.

use std::collections::HashMap;

use aws_sdk_ecs::types::{ContainerDefinition, ContainerOverride};
use bollard::models::{
    ContainerCreateBody, DeviceMapping, HealthConfig, HostConfig, HostConfigLogConfig, PortBinding, PortMap,
    ResourcesUlimits,
};

use crate::host_ports::HostPorts;
use crate::naming::TaskIdentity;

/// Where a task definition volume comes from on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// `host.sourcePath`: a bind mount of a host directory.
    Bind(String),
    /// A Docker volume (task-scoped or shared) by its Docker name.
    Named(String),
}

/// The network a container is created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlacement {
    /// A Docker network mode of its own: `bridge`, `host` or `none`.
    Mode(String),
    /// Our awsvpc emulation: join the namespace of the task's first container (`container:<id>`).
    Join(String),
}

impl NetworkPlacement {
    fn docker_mode(&self) -> String {
        match self {
            NetworkPlacement::Mode(m) => m.clone(),
            NetworkPlacement::Join(id) => format!("container:{id}"),
        }
    }

    fn owns_namespace(&self) -> bool {
        matches!(self, NetworkPlacement::Mode(m) if m != "host")
    }
}

/// Everything the create request of one container depends on besides its definition.
pub struct ContainerInputs<'a> {
    pub task: &'a TaskIdentity,
    pub def: &'a ContainerDefinition,
    pub overrides: Option<&'a ContainerOverride>,
    pub network: &'a NetworkPlacement,
    /// ECS container name → Docker container name, for links and `volumesFrom`.
    pub docker_names: &'a HashMap<String, String>,
    /// Task definition volume name → where it comes from.
    pub volumes: &'a HashMap<String, VolumeSource>,
    /// Task-level `pidMode` / `ipcMode` when `host`.
    pub pid_mode: Option<String>,
    pub ipc_mode: Option<String>,
    /// `ECS_DYNAMIC_HOST_PORT_RANGE`: where dynamic host ports come from; `None`: Docker picks.
    pub host_ports: Option<&'a HostPorts>,
}

/// The create request, and notes on settings that were left out (for the agent's log).
#[derive(Debug)]
pub struct ContainerPlan {
    pub body: ContainerCreateBody,
    pub notes: Vec<String>,
}

/// Log drivers that work on a host with no AWS or log services behind it.
const LOCAL_LOG_DRIVERS: &[&str] = &["json-file", "local", "none"];

pub fn plan_container(input: &ContainerInputs<'_>) -> Result<ContainerPlan, String> {
    let def = input.def;
    let name = def.name().unwrap_or_default();
    let ov = input.overrides;
    let mut notes = Vec::new();

    let mut host = HostConfig {
        network_mode: Some(input.network.docker_mode()),
        ..Default::default()
    };
    let bridge_like = matches!(input.network, NetworkPlacement::Mode(m) if m == "bridge");

    // Resources: CPU units are Docker CPU shares (2 is Docker's floor); memory is MiB.
    let cpu = ov.and_then(|o| o.cpu()).unwrap_or(def.cpu());
    host.cpu_shares = Some(i64::from(cpu.max(2)));
    if let Some(mem) = ov.and_then(|o| o.memory()).or(def.memory()) {
        host.memory = Some(i64::from(mem) << 20);
    }
    if let Some(res) = ov.and_then(|o| o.memory_reservation()).or(def.memory_reservation()) {
        host.memory_reservation = Some(i64::from(res) << 20);
    }
    if !def.ulimits().is_empty() {
        host.ulimits = Some(
            def.ulimits()
                .iter()
                .map(|u| ResourcesUlimits {
                    name: Some(u.name().as_str().to_string()),
                    soft: Some(i64::from(u.soft_limit())),
                    hard: Some(i64::from(u.hard_limit())),
                })
                .collect(),
        );
    }
    host.privileged = def.privileged();
    host.readonly_rootfs = def.readonly_root_filesystem();
    if !def.docker_security_options().is_empty() {
        host.security_opt = Some(def.docker_security_options().to_vec());
    }
    if !def.system_controls().is_empty() {
        host.sysctls = Some(
            def.system_controls()
                .iter()
                .filter_map(|s| Some((s.namespace()?.to_string(), s.value().unwrap_or_default().to_string())))
                .collect(),
        );
    }
    if let Some(lp) = def.linux_parameters() {
        host.init = lp.init_process_enabled();
        if let Some(caps) = lp.capabilities() {
            host.cap_add = (!caps.add().is_empty()).then(|| caps.add().to_vec());
            host.cap_drop = (!caps.drop().is_empty()).then(|| caps.drop().to_vec());
        }
        if !lp.devices().is_empty() {
            host.devices = Some(
                lp.devices()
                    .iter()
                    .map(|d| DeviceMapping {
                        path_on_host: Some(d.host_path().to_string()),
                        path_in_container: Some(d.container_path().unwrap_or(d.host_path()).to_string()),
                        cgroup_permissions: Some(if d.permissions().is_empty() {
                            "rwm".to_string()
                        } else {
                            d.permissions().iter().map(|p| &p.as_str()[..1]).collect()
                        }),
                    })
                    .collect(),
            );
        }
        if let Some(shm) = lp.shared_memory_size() {
            host.shm_size = Some(i64::from(shm) << 20);
        }
        if !lp.tmpfs().is_empty() {
            host.tmpfs = Some(
                lp.tmpfs()
                    .iter()
                    .map(|t| {
                        let mut opts = vec![format!("size={}m", t.size())];
                        opts.extend(t.mount_options().iter().cloned());
                        (t.container_path().to_string(), opts.join(","))
                    })
                    .collect(),
            );
        }
    }
    host.pid_mode = input.pid_mode.clone();
    host.ipc_mode = input.ipc_mode.clone();

    // Storage: definition volumes (bind or Docker volume), then other containers' volumes.
    let mut binds = Vec::new();
    for mp in def.mount_points() {
        let (Some(source), Some(path)) = (mp.source_volume(), mp.container_path()) else {
            continue;
        };
        let from = match input.volumes.get(source) {
            Some(VolumeSource::Bind(p)) | Some(VolumeSource::Named(p)) => p,
            None => {
                return Err(format!(
                    "mount point of container {name} refers to unknown volume {source}"
                ));
            }
        };
        let ro = if mp.read_only() == Some(true) { ":ro" } else { "" };
        binds.push(format!("{from}:{path}{ro}"));
    }
    host.binds = (!binds.is_empty()).then_some(binds);
    let mut volumes_from = Vec::new();
    for vf in def.volumes_from() {
        let Some(source) = vf.source_container() else { continue };
        let docker = input
            .docker_names
            .get(source)
            .ok_or_else(|| format!("volumesFrom of {name} refers to unknown container {source}"))?;
        let ro = if vf.read_only() == Some(true) { ":ro" } else { "" };
        volumes_from.push(format!("{docker}{ro}"));
    }
    host.volumes_from = (!volumes_from.is_empty()).then_some(volumes_from);

    // Network: links only exist on the default bridge; ports are published only where the
    // container has a namespace of its own on the bridge (host mode uses the host's ports).
    if !def.links().is_empty() {
        if bridge_like {
            let mut links = Vec::new();
            for link in def.links() {
                let (target, alias) = link.split_once(':').unwrap_or((link, link));
                let docker = input
                    .docker_names
                    .get(target)
                    .ok_or_else(|| format!("link of {name} refers to unknown container {target}"))?;
                links.push(format!("{docker}:{alias}"));
            }
            host.links = Some(links);
        } else {
            notes.push(format!("links ignored: network mode {}", input.network.docker_mode()));
        }
    }
    let mut exposed = Vec::new();
    let mut bindings = PortMap::new();
    let mut picked = Vec::new();
    for pm in def.port_mappings() {
        let Some(port) = pm.container_port() else {
            notes.push("portMappings with containerPortRange are not emulated".into());
            continue;
        };
        let proto = pm.protocol().map_or("tcp", |p| p.as_str());
        let key = format!("{port}/{proto}");
        exposed.push(key.clone());
        if bridge_like {
            let host_port = match (pm.host_port().filter(|&p| p > 0), input.host_ports) {
                (Some(p), _) => p.to_string(),
                // The agent picks from its range and tells Docker, as the real agent does.
                (None, Some(ports)) => {
                    let p = ports.pick(proto, &picked)?;
                    picked.push(p);
                    p.to_string()
                }
                (None, None) => String::new(),
            };
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: None,
                    host_port: Some(host_port),
                });
        }
    }
    if !bindings.is_empty() {
        host.port_bindings = Some(bindings);
    }
    if input.network.owns_namespace() {
        if !def.extra_hosts().is_empty() {
            host.extra_hosts = Some(
                def.extra_hosts()
                    .iter()
                    .map(|h| format!("{}:{}", h.hostname(), h.ip_address()))
                    .collect(),
            );
        }
        host.dns = (!def.dns_servers().is_empty()).then(|| def.dns_servers().to_vec());
        host.dns_search = (!def.dns_search_domains().is_empty()).then(|| def.dns_search_domains().to_vec());
    }

    if let Some(log) = def.log_configuration() {
        let driver = log.log_driver().as_str();
        if LOCAL_LOG_DRIVERS.contains(&driver) {
            host.log_config = Some(HostConfigLogConfig {
                typ: Some(driver.to_string()),
                config: log.options().cloned(),
            });
        } else {
            notes.push(format!(
                "log driver {driver} is not available locally; Docker's default is used"
            ));
        }
    }

    // Environment: the definition's, then the override's (an override wins by name).
    let mut env: Vec<(String, String)> = Vec::new();
    let overriding = ov.map(|o| o.environment()).unwrap_or_default();
    for kv in def.environment().iter().chain(overriding) {
        let (Some(k), v) = (kv.name(), kv.value().unwrap_or_default()) else {
            continue;
        };
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    if !def.secrets().is_empty() || !def.environment_files().is_empty() {
        notes.push(
            "container secrets and environmentFiles are not emulated (only repositoryCredentials are read)".into(),
        );
    }

    // An empty list means "not set", for overrides and definitions alike.
    let command = match ov.map(|o| o.command()).filter(|c| !c.is_empty()) {
        Some(cmd) => cmd.to_vec(),
        None => def.command().to_vec(),
    };
    let health = def.health_check().map(|h| HealthConfig {
        test: Some(h.command().to_vec()),
        interval: h.interval().map(seconds_to_nanos),
        timeout: h.timeout().map(seconds_to_nanos),
        retries: h.retries().map(i64::from),
        start_period: h.start_period().map(seconds_to_nanos),
        start_interval: None,
    });

    let body = ContainerCreateBody {
        image: def.image().map(String::from),
        entrypoint: (!def.entry_point().is_empty()).then(|| def.entry_point().to_vec()),
        cmd: (!command.is_empty()).then_some(command),
        env: (!env.is_empty()).then(|| env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: def.working_directory().map(String::from),
        user: def.user().map(String::from),
        hostname: def
            .hostname()
            .filter(|_| input.network.owns_namespace())
            .map(String::from),
        labels: Some(input.task.container_labels(name, def.docker_labels())),
        exposed_ports: (!exposed.is_empty() && input.network.owns_namespace()).then_some(exposed),
        network_disabled: def.disable_networking(),
        open_stdin: def.interactive(),
        tty: def.pseudo_terminal(),
        healthcheck: health,
        host_config: Some(host),
        ..Default::default()
    };
    Ok(ContainerPlan { body, notes })
}

fn seconds_to_nanos(s: i32) -> i64 {
    i64::from(s) * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{
        HostEntry, KeyValuePair, LinuxParameters, LogConfiguration, LogDriver, MountPoint, PortMapping,
        TransportProtocol, Ulimit, UlimitName, VolumeFrom,
    };

    fn identity() -> TaskIdentity {
        TaskIdentity {
            cluster: "local".into(),
            endpoint: "http://127.0.0.1:4566".into(),
            task_arn: "arn:task/local/abc".into(),
            family: "fam".into(),
            revision: 3,
        }
    }

    fn kv(k: &str, v: &str) -> KeyValuePair {
        KeyValuePair::builder().name(k).value(v).build()
    }

    fn plan(def: &ContainerDefinition, ov: Option<&ContainerOverride>, network: NetworkPlacement) -> ContainerPlan {
        let task = identity();
        let names = HashMap::from([
            ("db".to_string(), "ecs-fam-3-db-00".to_string()),
            ("data".to_string(), "ecs-fam-3-data-00".to_string()),
        ]);
        let volumes = HashMap::from([
            ("builds".to_string(), VolumeSource::Named("ecs-fam-3-builds-00".into())),
            ("cache".to_string(), VolumeSource::Bind("/srv/cache".into())),
        ]);
        plan_container(&ContainerInputs {
            task: &task,
            def,
            overrides: ov,
            network: &network,
            docker_names: &names,
            volumes: &volumes,
            pid_mode: None,
            ipc_mode: None,
            host_ports: None,
        })
        .unwrap()
    }

    fn full_definition() -> ContainerDefinition {
        ContainerDefinition::builder()
            .name("app")
            .image("ecs-executor-test/build:1")
            .cpu(256)
            .memory(128)
            .memory_reservation(64)
            .entry_point("sh")
            .entry_point("-c")
            .command("echo hi")
            .environment(kv("A", "1"))
            .environment(kv("B", "2"))
            .working_directory("/tmp")
            .user("1000:1000")
            .links("db:database")
            .volumes_from(VolumeFrom::builder().source_container("data").read_only(true).build())
            .mount_points(
                MountPoint::builder()
                    .source_volume("builds")
                    .container_path("/builds")
                    .build(),
            )
            .mount_points(
                MountPoint::builder()
                    .source_volume("cache")
                    .container_path("/cache")
                    .read_only(true)
                    .build(),
            )
            .extra_hosts(
                HostEntry::builder()
                    .hostname("gitlab.local")
                    .ip_address("10.0.0.1")
                    .build()
                    .unwrap(),
            )
            .privileged(true)
            .ulimits(
                Ulimit::builder()
                    .name(UlimitName::Nofile)
                    .soft_limit(1024)
                    .hard_limit(4096)
                    .build()
                    .unwrap(),
            )
            .linux_parameters(LinuxParameters::builder().init_process_enabled(true).build())
            .port_mappings(PortMapping::builder().container_port(80).host_port(8080).build())
            .port_mappings(
                PortMapping::builder()
                    .container_port(53)
                    .protocol(TransportProtocol::Udp)
                    .build(),
            )
            .docker_security_options("no-new-privileges")
            .docker_labels("team", "ci")
            .build()
    }

    #[test]
    fn a_bridge_container_gets_every_mapped_setting() {
        let p = plan(&full_definition(), None, NetworkPlacement::Mode("bridge".into()));
        let b = &p.body;
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(b.image.as_deref(), Some("ecs-executor-test/build:1"));
        assert_eq!(b.entrypoint, Some(vec!["sh".to_string(), "-c".to_string()]));
        assert_eq!(b.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(b.env, Some(vec!["A=1".to_string(), "B=2".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(b.user.as_deref(), Some("1000:1000"));
        assert_eq!(b.labels.as_ref().unwrap()["team"], "ci");
        assert_eq!(b.labels.as_ref().unwrap()["com.amazonaws.ecs.container-name"], "app");
        assert_eq!(h.network_mode.as_deref(), Some("bridge"));
        assert_eq!(h.links, Some(vec!["ecs-fam-3-db-00:database".to_string()]));
        assert_eq!(h.volumes_from, Some(vec!["ecs-fam-3-data-00:ro".to_string()]));
        assert_eq!(
            h.binds,
            Some(vec![
                "ecs-fam-3-builds-00:/builds".to_string(),
                "/srv/cache:/cache:ro".to_string()
            ])
        );
        assert_eq!(h.extra_hosts, Some(vec!["gitlab.local:10.0.0.1".to_string()]));
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.cpu_shares, Some(256));
        assert_eq!(h.memory, Some(128 << 20));
        assert_eq!(h.memory_reservation, Some(64 << 20));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        let ul = &h.ulimits.as_ref().unwrap()[0];
        assert_eq!(
            (ul.name.as_deref(), ul.soft, ul.hard),
            (Some("nofile"), Some(1024), Some(4096))
        );
        let ports = h.port_bindings.as_ref().unwrap();
        assert_eq!(ports["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("8080"));
        assert_eq!(
            ports["53/udp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some(""),
            "dynamic host port"
        );
        assert_eq!(b.exposed_ports, Some(vec!["80/tcp".to_string(), "53/udp".to_string()]));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn overrides_replace_command_and_win_on_environment() {
        let ov = ContainerOverride::builder()
            .name("app")
            .command("sh")
            .command("-c")
            .command("exit 0")
            .environment(kv("B", "override"))
            .environment(kv("C", "3"))
            .memory(256)
            .build();
        let p = plan(&full_definition(), Some(&ov), NetworkPlacement::Mode("bridge".into()));
        assert_eq!(
            p.body.cmd,
            Some(vec!["sh".to_string(), "-c".to_string(), "exit 0".to_string()])
        );
        assert_eq!(
            p.body.env,
            Some(vec!["A=1".to_string(), "B=override".to_string(), "C=3".to_string()])
        );
        assert_eq!(p.body.host_config.unwrap().memory, Some(256 << 20));
    }

    #[test]
    fn a_container_joining_the_task_namespace_gets_no_network_settings() {
        let p = plan(&full_definition(), None, NetworkPlacement::Join("0123abc".into()));
        let h = p.body.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("container:0123abc"));
        assert_eq!(
            (h.links.as_ref(), h.port_bindings.as_ref(), h.extra_hosts.as_ref()),
            (None, None, None)
        );
        assert_eq!(p.body.exposed_ports, None);
        assert!(p.notes.iter().any(|n| n.contains("links ignored")), "{:?}", p.notes);
    }

    #[test]
    fn host_mode_exposes_ports_without_publishing() {
        let def = ContainerDefinition::builder()
            .name("web")
            .image("x")
            .port_mappings(PortMapping::builder().container_port(8080).host_port(8080).build())
            .build();
        let p = plan(&def, None, NetworkPlacement::Mode("host".into()));
        let h = p.body.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(h.port_bindings, None);
        assert_eq!(h.cpu_shares, Some(2), "CPU 0 is Docker's minimum of 2 shares");
    }

    #[test]
    fn remote_log_drivers_and_unknown_volumes_are_reported() {
        let def = ContainerDefinition::builder()
            .name("app")
            .image("x")
            .log_configuration(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .build()
                    .unwrap(),
            )
            .build();
        let p = plan(&def, None, NetworkPlacement::Mode("bridge".into()));
        assert!(p.body.host_config.as_ref().unwrap().log_config.is_none());
        assert!(p.notes.iter().any(|n| n.contains("awslogs")), "{:?}", p.notes);

        let def = ContainerDefinition::builder()
            .name("app")
            .image("x")
            .mount_points(MountPoint::builder().source_volume("nope").container_path("/x").build())
            .build();
        let task = identity();
        let err = plan_container(&ContainerInputs {
            task: &task,
            def: &def,
            overrides: None,
            network: &NetworkPlacement::Mode("bridge".into()),
            docker_names: &HashMap::new(),
            volumes: &HashMap::new(),
            pid_mode: None,
            ipc_mode: None,
            host_ports: None,
        })
        .unwrap_err();
        assert!(err.contains("unknown volume nope"), "{err}");
    }
}
