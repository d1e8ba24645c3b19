//! A cluster of a test's own in the shared moto, with several container instances (each with
//! its own private and public loopback address, registered through the stand-in's control
//! API) and an agent stand-in process of its own serving them all (`--all-instances`): each
//! instance gets its own mutual-TLS Docker listener on its addresses, closed when the
//! instance is lost. Nothing the test does to these instances (drain, spot interruption,
//! termination) touches the shared cluster or other tests.
//!
//! Dropping an [`OwnCluster`] terminates its instances (ECS stops their tasks), stops the
//! agent, removes the containers and volumes of its tasks and deletes the cluster.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions, RemoveContainerOptions};
use ecs_executor_tests::standin::{ClientCert, Standin, agent_binary, unique_name};
use serde::Deserialize;

/// Instances of test clusters take addresses from here up (the shared cluster and simulated
/// scale-outs take the lowest free pairs, from 127.0.0.1).
const FIRST_ADDRESS: u8 = 200;
/// How long the agent may take to serve a new instance and open its listener.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A container instance as the stand-in's control API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Instance {
    pub container_instance_arn: String,
    pub container_instance_id: String,
    pub instance_id: String,
    pub private_ip: String,
    pub public_ip: String,
    pub status: String,
    #[serde(default)]
    pub availability_zone: Option<String>,
}

/// A cluster and an agent stand-in of the test's own.
pub struct OwnCluster {
    /// The shared stand-in's description with `cluster` set to this cluster.
    pub standin: Standin,
    pub name: String,
    pub instances: Vec<Instance>,
    pub log: PathBuf,
    agent: Child,
    rt: tokio::runtime::Runtime,
}

impl OwnCluster {
    /// A new cluster `<prefix>-...` with `n` container instances (4096 CPU units and 7482
    /// MiB each) and an agent stand-in serving them; returns once every instance's Docker
    /// listener answers over mutual TLS.
    pub fn start(prefix: &str, n: usize) -> OwnCluster {
        Self::start_with(prefix, n, &[])
    }

    /// As [`OwnCluster::start`], the agent run with `agent_args` besides (e.g.
    /// `--lost-connections hang`, `--latency realistic`).
    pub fn start_with(prefix: &str, n: usize, agent_args: &[&str]) -> OwnCluster {
        Self::start_instances(prefix, &vec![None; n], agent_args)
    }

    /// As [`OwnCluster::start`], one instance per entry of `arches`, each registered with that
    /// `ecs.cpu-architecture` (`x86_64`, `arm64`). The attribute only: every instance's
    /// containers still run on this host's dockerd, whatever it says.
    pub fn start_with_arches(prefix: &str, arches: &[&str]) -> OwnCluster {
        let arches: Vec<Option<&str>> = arches.iter().copied().map(Some).collect();
        Self::start_instances(prefix, &arches, &[])
    }

    fn start_instances(prefix: &str, arches: &[Option<&str>], agent_args: &[&str]) -> OwnCluster {
        let n = arches.len();
        let shared = Standin::require();
        let name = unique_name(prefix);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ecs = rt.block_on(shared.ecs(3));
        rt.block_on(ecs.create_cluster().cluster_name(&name).send())
            .expect("CreateCluster");
        let standin = Standin {
            cluster: name.clone(),
            ..shared
        };
        let log = std::env::temp_dir().join(format!("{name}-agent.log"));
        let agent = Command::new(agent_binary())
            .args(["--standin", &standin.state_dir.join("standin.json").to_string_lossy()])
            .args(["--cluster", &name, "--all-instances", "--cleanup-after", "60"])
            .args(agent_args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stderr(std::fs::File::create(&log).expect("agent log file"))
            .spawn()
            .expect("start ecs-agent-standin");
        let mut own = OwnCluster {
            standin,
            name,
            instances: Vec::new(),
            log,
            agent,
            rt,
        };
        let mut next = FIRST_ADDRESS;
        while own.instances.len() < n {
            assert!(
                next < 254,
                "no free loopback address pair from 127.0.0.{FIRST_ADDRESS} up"
            );
            let (private, public) = (format!("127.0.0.{next}"), format!("127.0.0.{}", next + 1));
            next += 2;
            let mut body = serde_json::json!({"cluster": own.name, "private_ip": private, "public_ip": public});
            if let Some(arch) = arches[own.instances.len()] {
                body["arch"] = arch.into();
            }
            match own.control("POST", "/_standin/instances", Some(body)) {
                (200, answer) => own.instances.push(serde_json::from_value(answer).expect("an instance")),
                // Taken by another test's cluster: the next pair.
                (400, answer) if answer.to_string().contains("in use") => {}
                (status, answer) => panic!("POST /_standin/instances: {status} {answer}"),
            }
        }
        for i in own.instances.clone() {
            own.wait_for_listener(&i.private_ip);
            own.wait_for_listener(&i.public_ip);
        }
        own
    }

    /// A call of the stand-in's control API: (HTTP status, JSON answer).
    pub fn control(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.standin.endpoint);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        let response = match (method, body) {
            ("POST", Some(body)) => agent.post(&url).send_json(body),
            ("POST", None) => agent.post(&url).send_empty(),
            ("GET", _) => agent.get(&url).call(),
            (m, _) => panic!("control: method {m} not supported here"),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let answer = response.body_mut().read_json().unwrap_or(serde_json::Value::Null);
        (status, answer)
    }

    /// `POST /_standin/instances/<container instance id>` with `body` (drain, spot
    /// interruption, termination): the instance as it is now.
    pub fn instance_control(&self, instance: &Instance, body: serde_json::Value) -> serde_json::Value {
        let path = format!("/_standin/instances/{}", instance.container_instance_id);
        let (status, answer) = self.control("POST", &path, Some(body.clone()));
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    /// The instance's status now (`ACTIVE`, `DRAINING`, `INACTIVE`).
    pub fn instance_status(&self, instance: &Instance) -> String {
        let path = format!("/_standin/instances/{}", instance.container_instance_id);
        let (status, answer) = self.control("GET", &path, None);
        assert_eq!(status, 200, "GET {path}: {answer}");
        answer["status"].as_str().unwrap_or_default().to_string()
    }

    /// The instance a task was placed on.
    pub fn instance_of(&self, container_instance_arn: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.container_instance_arn == container_instance_arn)
            .unwrap_or_else(|| panic!("{container_instance_arn} is not an instance of {}", self.name))
    }

    /// An executor config edit: this cluster instead of the shared one.
    pub fn config_edit(&self) -> impl FnOnce(String) -> String + use<> {
        let name = self.name.clone();
        move |text: String| {
            text.lines()
                .map(|l| {
                    if l.split('=').next().is_some_and(|k| k.trim() == "cluster") {
                        format!("cluster = \"{name}\"")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
    }

    /// Docker over mutual TLS at an instance address's listener, with the client certificate
    /// or without.
    pub fn docker_at(&self, ip: &str, cert: ClientCert) -> Docker {
        let address = format!("{ip}:{}", self.standin.docker_port);
        self.standin
            .docker_tls(&address, cert)
            .unwrap_or_else(|e| panic!("a Docker client for {address}: {e}"))
    }

    /// Does Docker answer a ping at an instance address over mutual TLS (with the client
    /// certificate)?
    pub fn docker_answers(&self, ip: &str) -> Result<(), String> {
        let docker = self.docker_at(ip, ClientCert::Present);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), docker.ping()).await })
            .map_err(|_| "no answer within 5 s".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn wait_for_listener(&self, address: &str) {
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            match self.docker_answers(address) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!(
                    "the agent opened no Docker listener on {address} within {SERVE_TIMEOUT:?} ({e}); its log:\n{}",
                    self.agent_log()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        // Terminating every instance stops its tasks in ECS; the containers go below.
        for i in &self.instances {
            let path = format!("/_standin/instances/{}", i.container_instance_id);
            let _ = self.control("POST", &path, Some(serde_json::json!({"lost": "terminated"})));
        }
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let docker = self.standin.docker();
        let label = format!("com.amazonaws.ecs.cluster={}", self.name);
        self.rt.block_on(async {
            let filters = HashMap::from([("label".to_string(), vec![label.clone()])]);
            let containers = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .unwrap_or_default();
            for c in containers.into_iter().filter_map(|c| c.id) {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&c, Some(options)).await;
            }
            if let Ok(volumes) = docker
                .list_volumes(Some(ListVolumesOptions { filters: Some(filters) }))
                .await
            {
                for v in volumes.volumes.unwrap_or_default() {
                    let _ = docker
                        .remove_volume(&v.name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                        .await;
                }
            }
            if let Ok(ecs) = tokio::time::timeout(Duration::from_secs(10), self.standin.ecs(1)).await {
                let _ = ecs.delete_cluster().cluster(&self.name).send().await;
            }
        });
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("agent stand-in log of cluster {}: {}", self.name, self.log.display());
        }
    }
}
