//! `ecs-agent-standin`: a test-only stand-in for the Amazon ECS container agent, for the local
//! ECS made of Docker and a patched moto (tests/local-ecs/CONTRACT.md). Never shipped.
//!
//! Like the real agent it runs the tasks ECS places on its container instance as Docker
//! containers (names and labels as the agent gives them), reports their state with
//! SubmitTaskStateChange / SubmitContainerStateChange, stops them on StopTask or when an
//! essential container exits, and keeps stopped containers for a while before removing them.
//! It polls ECS every 100 ms instead of holding the agent's WebSocket session.
//!
//! Flow: `instance` (what ECS wants) → `task_run` (one task's life) → `container_config`
//! (definition → Docker create request), with `start_order`, `naming`, `image_ref`;
//! `docker_events` reports exits, `cleanup` removes old stopped tasks.

mod action_log;
mod cleanup;
mod container_config;
mod control_plane;
mod docker_events;
mod docker_listener;
mod host_ports;
mod image_ref;
mod instance;
mod naming;
mod pull;
mod settings;
mod start_order;
mod task_run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bollard::{ClientVersion, Docker};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::action_log::say;
use crate::control_plane::ControlPlane;
use crate::docker_events::ExitRoutes;
use crate::pull::{EngineAuth, ImageState, PullBehavior};
use crate::settings::{Overrides, Settings, StandinFile, default_standin_path};
use crate::task_run::{Agent, Latency, PullSettings};

/// Docker 20.10 serves API 1.41; bollard's newer default would be refused.
const DOCKER_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Longer than any `stopTimeout` (ECS allows 120 s), since `docker stop` waits that long.
const DOCKER_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Test-only stand-in for the Amazon ECS container agent (never shipped)"
)]
struct Cli {
    /// standin.json written by tests/local-ecs/up [default: $ECS_LOCAL_STATE/standin.json]
    #[arg(long)]
    standin: Option<PathBuf>,
    /// ECS endpoint URL (moto), e.g. http://127.0.0.1:4580
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    cluster: Option<String>,
    /// The container instance ARN this agent is
    #[arg(long)]
    container_instance: Option<String>,
    /// Docker daemon, unix:///path only
    #[arg(long)]
    docker_host: Option<String>,
    /// Seconds a stopped task's containers and task volumes are kept (the real agent: 3 h)
    #[arg(long, default_value_t = 3 * 3600)]
    cleanup_after: u64,
    /// Milliseconds between two looks at ECS
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Serve every ACTIVE or DRAINING container instance of the cluster, following
    /// ListContainerInstances (instances registered by a simulated scale-out are served
    /// within a second), instead of the one container instance
    #[arg(long)]
    all_instances: bool,
    /// With --all-instances: the directory of client-ca.pem, server.pem and server-key.pem for
    /// each instance's mutual-TLS Docker listener [default: $STATE/certs of standin.json]
    #[arg(long)]
    docker_tls_dir: Option<PathBuf>,
    /// With --all-instances: the port of each instance's Docker listener [default:
    /// standin.json's docker_port, else 2376]
    #[arg(long)]
    docker_port: Option<u16>,
    /// With --all-instances: open no Docker listeners (clients reach dockerd's own only)
    #[arg(long)]
    no_docker_listeners: bool,
    /// What a lost instance's open Docker connections do: `cut` (closed at once) or `hang`
    /// (kept open and silent, as with a host that vanished without a word)
    #[arg(long, default_value = "cut")]
    lost_connections: String,
    /// Milliseconds the image pull takes (the real agent checks the registry even for a cached image)
    #[arg(long, default_value_t = 0)]
    pull_ms: u64,
    /// Milliseconds before each container start
    #[arg(long, default_value_t = 0)]
    start_ms: u64,
    /// Milliseconds before the RUNNING state report reaches ECS
    #[arg(long, default_value_t = 0)]
    report_ms: u64,
    /// `realistic`: pull 2000 ms, start 700 ms, report 500 ms unless given (benchmarks);
    /// `fast`: no delays (tests)
    #[arg(long, default_value = "fast")]
    latency: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let path = cli.standin.clone().unwrap_or_else(default_standin_path);
    let file = match StandinFile::read(&path) {
        Ok(f) => Some((path.clone(), f)),
        // Without an explicit --standin, flags alone may do.
        Err(e) if cli.standin.is_some() => return Err(e),
        Err(_) => None,
    };
    let follow_file = file.is_some() && cli.container_instance.is_none();
    let tls_dir = cli.docker_tls_dir.clone().or_else(|| {
        file.as_ref()
            .and_then(|(_, f)| f.state_dir.as_ref())
            .map(|d| d.join("certs"))
    });
    let docker_port = cli
        .docker_port
        .or_else(|| file.as_ref().and_then(|(_, f)| f.docker_port))
        .unwrap_or(2376);
    // --all-instances serves whatever the cluster has: no one container instance to name.
    let container_instance = cli
        .container_instance
        .or_else(|| cli.all_instances.then(|| "(every instance of the cluster)".to_string()));
    let flags = Overrides {
        endpoint: cli.endpoint,
        region: cli.region,
        cluster: cli.cluster,
        container_instance_arn: container_instance,
        docker_host: cli.docker_host,
    };
    let mut settings = Settings::resolve(
        file,
        flags,
        Duration::from_secs(cli.cleanup_after),
        Duration::from_millis(cli.poll_ms),
    )?;
    if !follow_file {
        settings.source = None;
    }

    let docker = Docker::connect_with_unix(
        &settings.docker_socket.to_string_lossy(),
        DOCKER_TIMEOUT_SECS,
        &DOCKER_API,
    )
    .with_context(|| format!("Docker at {}", settings.docker_socket.display()))?;
    let ecs = ControlPlane::connect(&settings.endpoint, &settings.region, &settings.cluster).await;
    say!(
        "ecs-agent-standin {}: cluster {}, container instance {}, ECS {}, Docker {}, poll {} ms, cleanup after {} s",
        env!("CARGO_PKG_VERSION"),
        settings.cluster,
        settings.container_instance_arn,
        settings.endpoint,
        settings.docker_socket.display(),
        settings.poll.as_millis(),
        settings.cleanup_after.as_secs()
    );
    let (pull, start, report) = match cli.latency.as_str() {
        "fast" => (0, 0, 0),
        "realistic" => (2000, 700, 500),
        other => anyhow::bail!("--latency {other}: expected fast or realistic"),
    };
    let pick = |given: u64, profile: u64| if given > 0 { given } else { profile };
    let latency = Latency {
        pull: Duration::from_millis(pick(cli.pull_ms, pull)),
        start: Duration::from_millis(pick(cli.start_ms, start)),
        report: Duration::from_millis(pick(cli.report_ms, report)),
    };
    say!(
        "latency: pull {:?}, start {:?}, report {:?}",
        latency.pull,
        latency.start,
        latency.report
    );
    // The agent's own settings, read from its environment as the agent reads /etc/ecs/ecs.config.
    let env = |name: &str| std::env::var(name).ok();
    let behavior = PullBehavior::parse(&env("ECS_IMAGE_PULL_BEHAVIOR").unwrap_or_default())?;
    let engine_auth = EngineAuth::parse(
        env("ECS_ENGINE_AUTH_TYPE").as_deref(),
        env("ECS_ENGINE_AUTH_DATA").as_deref(),
    )?;
    say!(
        "image pull behaviour {}; engine auth data {}; images are pulled from loopback registries only",
        behavior.as_str(),
        if engine_auth.is_empty() { "none" } else { "set" }
    );
    let host_ports = host_ports::PortRange::from_env()?;
    match host_ports {
        Some(r) => say!(
            "dynamic host ports: picked by the agent from {} {}-{}",
            host_ports::VARIABLE,
            r.start,
            r.end
        ),
        None => say!("dynamic host ports: picked by Docker (no {})", host_ports::VARIABLE),
    }
    let agent = Arc::new(Agent {
        ecs,
        docker: docker.clone(),
        cluster: settings.cluster.clone(),
        endpoint: settings.endpoint.clone(),
        latency,
        pull: PullSettings {
            behavior,
            engine_auth,
            images: ImageState::default(),
        },
        host_ports: host_ports.map(host_ports::HostPorts::new),
    });
    let routes = ExitRoutes::default();

    tokio::spawn(docker_events::route_exits(
        docker,
        settings.cluster.clone(),
        routes.clone(),
    ));
    tokio::spawn(cleanup::sweep_forever(
        agent.clone(),
        routes.clone(),
        settings.cleanup_after,
    ));
    let instance = if cli.all_instances {
        let lost = match cli.lost_connections.as_str() {
            "cut" => docker_listener::Lost::Cut,
            "hang" => docker_listener::Lost::Hang,
            other => anyhow::bail!("--lost-connections {other}: expected cut or hang"),
        };
        let listeners = if cli.no_docker_listeners {
            None
        } else {
            let dir = tls_dir.context(
                "--all-instances opens a Docker listener per instance: give --docker-tls-dir (or a \
                 standin.json with state_dir), or --no-docker-listeners",
            )?;
            let config = docker_listener::server_config(&dir)?;
            say!(
                "Docker listeners: mutual TLS on port {docker_port} of each instance's addresses, certificates from {}",
                dir.display()
            );
            Some(docker_listener::Listeners::new(
                config,
                settings.docker_socket.clone(),
                docker_port,
                lost,
            ))
        };
        tokio::spawn(instance::serve_all(agent, settings, routes, listeners))
    } else {
        tokio::spawn(instance::InstanceLoop::new(agent, settings, routes).run())
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => say!("SIGTERM: exiting; tasks and containers are left as they are"),
        _ = int.recv() => say!("SIGINT: exiting; tasks and containers are left as they are"),
        _ = instance => say!("the instance loop ended unexpectedly"),
    }
    // Do not wait for in-flight Docker or ECS calls: a stop must be prompt and touch nothing.
    std::process::exit(0)
}
