//! A cluster of its own with a managed-scaling capacity provider in the shared moto, served by
//! an ecs-agent-standin process of its own (`--all-instances`): for the capacity tests
//! (`capacity_e2e.rs`). Everything is undone on drop: the agent stopped, the cluster's
//! instances terminated (their loopback addresses freed), its containers removed, the
//! capacity provider deleted.
//!
//! Docker of a scaled-out instance: the stand-in's instances share the one dockerd, which
//! listens (mutual TLS) on the seeded instance's addresses only. Until instances get listeners
//! of their own, a forwarder on `<new instance's private IP>:<docker port>` to the shared
//! listener makes the new instance's Docker reachable where the executor looks for it (the
//! fleet server certificate covers every address of 127.0.0.0/24). It starts the moment moto
//! announces the instance (`instance-registered` scale event), and steps aside when something
//! else already listens there.

#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ecs_executor_tests::control::{control_get, control_post_lenient};
use ecs_executor_tests::standin::{Standin, agent_binary, unique_name};
use serde_json::{Value, json};

/// The capacity tests change global scaling settings and rely on them: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct CapacityCluster {
    pub standin: Standin,
    pub cluster: String,
    pub provider: String,
    pub agent_log: PathBuf,
    agent: Child,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    /// Addresses a forwarder listens on (for the test's checks).
    pub forwarded: Arc<Mutex<Vec<String>>>,
}

impl CapacityCluster {
    /// A new cluster `cap-…` whose default strategy is a new capacity provider with managed
    /// scaling and no instance yet, and an agent for it; logs under `dir`.
    pub fn new(standin: &Standin, dir: &Path) -> CapacityCluster {
        let cluster = unique_name("cap");
        let provider = unique_name("cp");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let ecs = standin.ecs(3).await;
            ecs.create_cluster()
                .cluster_name(&cluster)
                .send()
                .await
                .expect("CreateCluster");
            let asg = format!(
                "arn:aws:autoscaling:{}:123456789012:autoScalingGroup:00000000-0000-0000-0000-000000000000:autoScalingGroupName/{provider}",
                standin.region
            );
            ecs.create_capacity_provider()
                .name(&provider)
                .auto_scaling_group_provider(
                    aws_sdk_ecs::types::AutoScalingGroupProvider::builder()
                        .auto_scaling_group_arn(asg)
                        .managed_scaling(
                            aws_sdk_ecs::types::ManagedScaling::builder()
                                .status(aws_sdk_ecs::types::ManagedScalingStatus::Enabled)
                                .target_capacity(100)
                                .minimum_scaling_step_size(1)
                                .instance_warmup_period(0)
                                .build(),
                        )
                        .managed_termination_protection(aws_sdk_ecs::types::ManagedTerminationProtection::Disabled)
                        .build()
                        .expect("an ASG provider"),
                )
                .send()
                .await
                .expect("CreateCapacityProvider");
            ecs.put_cluster_capacity_providers()
                .cluster(&cluster)
                .capacity_providers(&provider)
                .default_capacity_provider_strategy(
                    aws_sdk_ecs::types::CapacityProviderStrategyItem::builder()
                        .capacity_provider(&provider)
                        .weight(1)
                        .build()
                        .expect("a strategy item"),
                )
                .send()
                .await
                .expect("PutClusterCapacityProviders");
        });
        let mark = control_get(&standin.endpoint, "/_standin/scale-events?since=999999999")["next"]
            .as_u64()
            .expect("a scale-event cursor");
        let agent_log = dir.join("agent.log");
        let log = std::fs::File::create(&agent_log).expect("create the agent log");
        let agent = Command::new(agent_binary())
            .arg("--standin")
            .arg(standin.state_dir.join("standin.json"))
            .args(["--cluster", &cluster, "--all-instances", "--cleanup-after", "600"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", &standin.region)
            .env("AWS_DEFAULT_REGION", &standin.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ecs-agent-standin");
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded: Arc<Mutex<Vec<String>>> = Arc::default();
        let watcher = {
            let (stop, forwarded, standin, cluster) =
                (stop.clone(), forwarded.clone(), standin.clone(), cluster.clone());
            std::thread::spawn(move || forward_new_instances(&standin, &cluster, mark, &stop, &forwarded))
        };
        CapacityCluster {
            standin: standin.clone(),
            cluster,
            provider,
            agent_log,
            agent,
            stop,
            watcher: Some(watcher),
            forwarded,
        }
    }

    /// Scale events of this cluster after `since` (a cursor from [`CapacityCluster::event_mark`]).
    pub fn events_since(&self, since: u64) -> Vec<Value> {
        let page = control_get(&self.standin.endpoint, &format!("/_standin/scale-events?since={since}"));
        page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["cluster"].as_str() == Some(&self.cluster))
            .cloned()
            .collect()
    }

    pub fn event_mark(&self) -> u64 {
        control_get(&self.standin.endpoint, "/_standin/scale-events?since=999999999")["next"]
            .as_u64()
            .expect("a scale-event cursor")
    }

    /// The cluster's container instances as the stand-in describes them.
    pub fn instances(&self) -> Vec<Value> {
        control_get(
            &self.standin.endpoint,
            &format!("/_standin/instances?cluster={}", self.cluster),
        )["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The executor config edit for this cluster: its name and capacity provider strategy.
    pub fn config_edit(&self, text: &str, local_cluster: &str) -> String {
        let text = text.replace(
            &format!("cluster = \"{local_cluster}\""),
            &format!("cluster = \"{}\"", self.cluster),
        );
        assert!(text.contains(&self.cluster), "the config names the cluster: {text}");
        format!(
            "{text}\n[[capacity_provider_strategy]]\ncapacity_provider = \"{}\"\nweight = 1\n",
            self.provider
        )
    }
}

impl Drop for CapacityCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        // The agent exits at once on SIGTERM.
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
        unsafe { libc::kill(self.agent.id() as i32, libc::SIGTERM) };
        let _ = self.agent.wait();
        for i in self.instances() {
            if i["status"].as_str() != Some("INACTIVE")
                && let Some(id) = i["instance_id"].as_str()
            {
                let _ = control_post_lenient(
                    &self.standin.endpoint,
                    &format!("/_standin/instances/{id}"),
                    &json!({"lost": "terminated"}),
                );
            }
        }
        // Our agent is gone, and the shared one only sweeps its own cluster's containers.
        let label = format!("label=com.amazonaws.ecs.cluster={}", self.cluster);
        if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Ok(out) = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", &label])
            .output()
        {
            for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", v])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let ecs = self.standin.ecs(2).await;
                let _ = ecs
                    .put_cluster_capacity_providers()
                    .cluster(&self.cluster)
                    .set_capacity_providers(Some(vec![]))
                    .set_default_capacity_provider_strategy(Some(vec![]))
                    .send()
                    .await;
                let _ = ecs
                    .delete_capacity_provider()
                    .capacity_provider(&self.provider)
                    .send()
                    .await;
            });
        }
    }
}

/// Follows the scale events; for each instance of `cluster` that registers, a forwarder on
/// its private address's Docker port to the shared listener (unless that port is taken).
fn forward_new_instances(
    standin: &Standin,
    cluster: &str,
    mut since: u64,
    stop: &Arc<AtomicBool>,
    forwarded: &Mutex<Vec<String>>,
) {
    let target = format!("{}:{}", standin.private_ip, standin.docker_port);
    let mut accepting = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let page = control_get(&standin.endpoint, &format!("/_standin/scale-events?since={since}"));
        since = page["next"].as_u64().unwrap_or(since);
        for e in page["events"].as_array().into_iter().flatten() {
            if e["type"].as_str() != Some("instance-registered") || e["cluster"].as_str() != Some(cluster) {
                continue;
            }
            let Some(ip) = e["private_ip"].as_str() else { continue };
            let address = format!("{ip}:{}", standin.docker_port);
            if address == target {
                continue;
            }
            match TcpListener::bind(&address) {
                Ok(l) => {
                    l.set_nonblocking(true).expect("a non-blocking listener");
                    forwarded.lock().unwrap().push(address);
                    let (stop, target) = (stop.clone(), target.clone());
                    accepting.push(std::thread::spawn(move || forward(&l, &target, &stop)));
                }
                // Something serves that address already (instances with listeners of their own).
                Err(e) if e.kind() == ErrorKind::AddrInUse => {}
                Err(e) => panic!("bind {address}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in accepting {
        let _ = t.join();
    }
}

/// Accepts on `listener` until `stop`, each connection pumped to `target`.
fn forward(listener: &TcpListener, target: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let target = target.to_string();
                std::thread::spawn(move || {
                    if let Ok(up) = TcpStream::connect(&target) {
                        pump(client, up);
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn pump(client: TcpStream, up: TcpStream) {
    let (mut client_read, mut up_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut up_write);
        let _ = up_write.shutdown(Shutdown::Write);
    });
    let (mut up_read, mut client_write) = (up, client);
    let _ = std::io::copy(&mut up_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = t.join();
}
