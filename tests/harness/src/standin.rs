//! The local ECS stand-in that `tests/local-ecs/up` brings up (tests/local-ecs/CONTRACT.md):
//! its description (`$STATE/standin.json`), clients for its parts (ECS on the patched moto,
//! Docker over the Unix socket and over mutual TLS), moto's fault injection and request
//! recording, and names that keep parallel tests out of each other's way.
//!
//! Tests never skip when the stand-in is missing: [`Standin::require`] panics with what is
//! missing and how to bring it up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use bollard::{ClientVersion, Docker};
use serde::{Deserialize, Serialize};

/// What a test that finds no stand-in tells the person running it.
pub const UP_HINT: &str = "run `tests/local-ecs/up` (as root) first; it starts dockerd, moto and the agent stand-in";

/// Docker 20.10 serves API 1.41; bollard's newer default would be refused.
pub const DOCKER_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// The state directory: `$ECS_LOCAL_STATE`, else `/var/tmp/ecs-executor/local-ecs`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("ECS_LOCAL_STATE").map_or_else(|| PathBuf::from("/var/tmp/ecs-executor/local-ecs"), PathBuf::from)
}

/// `$STATE/standin.json`, as `up` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Standin {
    /// moto, e.g. `http://127.0.0.1:4580`.
    pub endpoint: String,
    pub region: String,
    /// The cluster name (`local`).
    pub cluster: String,
    pub cluster_arn: String,
    /// The one container instance, served by the agent stand-in.
    pub container_instance_arn: String,
    pub instance_id: String,
    /// Where the instance's Docker listens with mutual TLS (127.0.0.1 and 127.0.0.2).
    pub private_ip: String,
    pub public_ip: String,
    pub docker_port: u16,
    /// `unix:///var/run/docker.sock`.
    pub docker_host: String,
    pub certs: Certs,
    pub images: Images,
    pub state_dir: PathBuf,
    /// The private registry on loopback (`up` since issue 13); `None` in an older standin.json.
    #[serde(default)]
    pub registry: Option<Registry>,
}

/// The stand-in's private registry (tests/local-ecs/lib/registry.sh): htpasswd auth over
/// plain HTTP on loopback, with private copies of the test images.
#[derive(Debug, Clone, Deserialize)]
pub struct Registry {
    /// `127.0.0.1:5000`.
    pub address: String,
    pub username: String,
    pub password: String,
    pub images: RegistryImages,
    /// A loopback address where nothing listens (`127.0.0.1:5999`).
    pub unreachable: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegistryImages {
    /// The build image (busybox) as `<address>/private/build:1`.
    pub build: String,
    /// `ecs-executor-test/svc-echo:1` as `<address>/private/svc-echo:1`.
    pub service: String,
}

/// The client side of Docker's mutual TLS.
#[derive(Debug, Clone, Deserialize)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Images made locally by `up` (no registry is reachable).
#[derive(Debug, Clone, Deserialize)]
pub struct Images {
    /// `ecs-executor-test/build:1`: busybox only.
    pub build: String,
    /// `ecs-executor-test/helper:1`: Debian with git.
    pub helper: String,
}

/// Whether a TLS client presents the client certificate from standin.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Present,
    Absent,
}

impl Standin {
    /// Reads `$STATE/standin.json`; the error says what is wrong and how to fix it.
    pub fn load() -> Result<Standin, String> {
        let path = state_dir().join("standin.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not what up writes: {e}", path.display()))
    }

    /// The stand-in with all three parts answering: moto, dockerd (socket) and the agent
    /// stand-in process. Panics otherwise, naming the part and how to bring it up.
    pub fn require() -> Standin {
        Self::require_parts(true)
    }

    /// As [`Standin::require`], for tests that run an agent of their own (`up --no-agent`).
    pub fn require_without_agent() -> Standin {
        Self::require_parts(false)
    }

    fn require_parts(agent: bool) -> Standin {
        let standin = Self::load().unwrap_or_else(|e| not_up(&e));
        let health = format!("{}/_standin/health", standin.endpoint);
        match http().get(&health).call() {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => not_up(&format!(
                "moto at {} answers {} to {health}",
                standin.endpoint,
                r.status()
            )),
            Err(e) => not_up(&format!("moto at {} does not answer: {e}", standin.endpoint)),
        }
        let socket = standin.docker_socket();
        if let Err(e) = std::os::unix::net::UnixStream::connect(&socket) {
            not_up(&format!("dockerd does not listen on {}: {e}", socket.display()));
        }
        if agent {
            let pid_file = standin.state_dir.join("pids/agent.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            match pid {
                // SAFETY: signal 0 only checks that the process exists.
                Some(pid) if unsafe { libc::kill(pid, 0) } == 0 => {}
                Some(pid) => not_up(&format!(
                    "the agent stand-in (pid {pid} in {}) is not running",
                    pid_file.display()
                )),
                None => not_up(&format!("no agent stand-in: {} is missing", pid_file.display())),
            }
        }
        standin
    }

    /// The private registry; panics, saying how to get one, when this stand-in has none.
    pub fn registry(&self) -> Registry {
        self.registry.clone().unwrap_or_else(|| {
            not_up("standin.json names no private registry (tests/local-ecs/up starts one since issue 13)")
        })
    }

    /// One Secrets Manager call to moto (JSON protocol over plain HTTP; moto does not check
    /// signatures): HTTP status and body.
    fn secrets_call(&self, action: &str, body: serde_json::Value) -> (u16, String) {
        let answer = http()
            .post(&self.endpoint)
            .header("X-Amz-Target", format!("secretsmanager.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=test/20250101/{}/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
                    self.region
                ),
            )
            .send(body.to_string());
        let mut r = answer.unwrap_or_else(|e| panic!("Secrets Manager {action}: {e}"));
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    }

    /// Creates (or overwrites) a secret in moto's Secrets Manager.
    pub fn put_secret(&self, name: &str, value: &str) {
        let (status, body) =
            self.secrets_call("CreateSecret", serde_json::json!({"Name": name, "SecretString": value}));
        if status == 400 && body.contains("ResourceExistsException") {
            let (status, body) = self.secrets_call(
                "PutSecretValue",
                serde_json::json!({"SecretId": name, "SecretString": value}),
            );
            assert_eq!(status, 200, "PutSecretValue {name}: {body}");
        } else {
            assert_eq!(status, 200, "CreateSecret {name}: {body}");
        }
    }

    /// Deletes a secret at once (missing is fine).
    pub fn delete_secret(&self, name: &str) {
        let _ = self.secrets_call(
            "DeleteSecret",
            serde_json::json!({"SecretId": name, "ForceDeleteWithoutRecovery": true}),
        );
    }

    /// A Secrets Manager secret's `SecretString` in moto, or `None` when there is no such secret.
    pub fn secret_string(&self, name: &str) -> Option<String> {
        let (status, body) = self.secrets_call("GetSecretValue", serde_json::json!({ "SecretId": name }));
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&body).expect("GetSecretValue answers JSON");
                Some(v["SecretString"].as_str().unwrap_or_default().to_string())
            }
            // AWS answers 400, moto 404.
            400 | 404 if body.contains("ResourceNotFoundException") => None,
            _ => panic!("GetSecretValue {name}: HTTP {status}: {body}"),
        }
    }

    /// `$STATE/executor.toml`: an ecs-executor config for this stand-in.
    pub fn executor_config(&self) -> PathBuf {
        self.state_dir.join("executor.toml")
    }

    /// An ECS client for moto with static test credentials, standard retry mode capped at
    /// `max_attempts` (1 = no retry) and a 200 ms initial back-off.
    pub async fn ecs(&self, max_attempts: u32) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::new(&self.aws_config(max_attempts).await)
    }

    /// An EC2 client for moto, configured as [`Standin::ecs`].
    pub async fn ec2(&self, max_attempts: u32) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.aws_config(max_attempts).await)
    }

    async fn aws_config(&self, max_attempts: u32) -> aws_config::SdkConfig {
        let retry = RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(Duration::from_millis(200));
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "local-ecs-standin",
            ))
            .retry_config(retry)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await
    }

    fn docker_socket(&self) -> PathBuf {
        PathBuf::from(self.docker_host.strip_prefix("unix://").unwrap_or(&self.docker_host))
    }

    /// Docker over the Unix socket (what the agent stand-in uses).
    pub fn docker(&self) -> Docker {
        let socket = self.docker_socket();
        Docker::connect_with_unix(&socket.to_string_lossy(), 120, &DOCKER_API)
            .unwrap_or_else(|e| panic!("Docker client for {}: {e}", socket.display()))
    }

    /// Docker over mutual TLS at `address` (`127.0.0.1:2376`), trusting the stand-in's CA
    /// (and the system's, as bollard does). With [`ClientCert::Absent`] no client certificate
    /// is offered, which dockerd must refuse.
    pub fn docker_tls(&self, address: &str, cert: ClientCert) -> Result<Docker, bollard::errors::Error> {
        let (key, crt) = match cert {
            ClientCert::Present => (self.certs.key.clone(), self.certs.cert.clone()),
            // bollard offers no certificate when it cannot load one.
            ClientCert::Absent => (
                self.state_dir.join("no-such-client-key.pem"),
                self.state_dir.join("no-such-client.pem"),
            ),
        };
        // The workspace enables both of rustls' providers (the executor uses ring for Docker,
        // the AWS SDK aws-lc), so bollard's own TLS setup needs a process default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Docker::connect_with_ssl(address, &key, &crt, &self.certs.ca, 30, &DOCKER_API)
    }

    /// Adds a fault rule to moto; it is removed when the guard drops (if not used up before).
    pub fn inject(&self, fault: &Fault) -> FaultGuard {
        let url = format!("{}/_standin/faults", self.endpoint);
        let mut response = http()
            .post(&url)
            .send_json(fault)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        let body: serde_json::Value = response
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("POST {url}: {status}, {e}"));
        assert!(status.is_success(), "POST {url} {fault:?}: {status} {body}");
        let id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {url}: no id in {body}"))
            .to_string();
        FaultGuard {
            endpoint: self.endpoint.clone(),
            id,
        }
    }

    /// All fault rules with their remaining counts (`GET /_standin/faults`).
    pub fn faults(&self) -> Vec<serde_json::Value> {
        self.get_json("/_standin/faults")
    }

    /// A cursor for [`Standin::requests_since`]: the sequence number of the last recorded call.
    pub fn request_mark(&self) -> u64 {
        let page: RequestPage = self.get_json(&format!("/_standin/requests?since={}", u64::MAX >> 1));
        page.next
    }

    /// Every ECS/EC2 call moto received after `mark`, oldest first. The agent stand-in's own
    /// polling (ListTasks, DescribeTasks, ...) is in there too: filter by action and body.
    pub fn requests_since(&self, mark: u64) -> Vec<RecordedRequest> {
        let page: RequestPage = self.get_json(&format!("/_standin/requests?since={mark}"));
        page.requests
    }

    /// The calls of `action` (`RunTask`) after `mark` whose body contains `needle` (a test's
    /// family prefix or task), oldest first.
    pub fn calls_since(&self, mark: u64, action: &str, needle: &str) -> Vec<RecordedRequest> {
        self.requests_since(mark)
            .into_iter()
            .filter(|r| r.action.as_deref() == Some(action) && r.body.contains(needle))
            .collect()
    }

    /// Calls after `mark` by `service:Action` (`"ecs:RunTask"`), all clients together.
    pub fn counts_since(&self, mark: u64) -> BTreeMap<String, u64> {
        self.get_json(&format!("/_standin/counts?since={mark}"))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let url = format!("{}{path}", self.endpoint);
        let mut response = http().get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// StopTask without the SDK or an async runtime, for cleanup in `Drop` (also while a test
    /// panics). Errors are ignored: the task may be gone already.
    pub fn stop_task_blocking(&self, task_arn: &str, reason: &str) {
        let body = serde_json::json!({ "cluster": self.cluster, "task": task_arn, "reason": reason });
        let day = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        // moto reads the region (and our recorder the service) from the credential scope;
        // it does not check signatures.
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=test/{}/{}/ecs/aws4_request, SignedHeaders=host, Signature=0",
            yyyymmdd(day),
            self.region
        );
        let _ = http()
            .post(&format!("{}/", self.endpoint))
            .header("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.StopTask")
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", auth)
            .send(body.to_string());
    }
}

fn not_up(why: &str) -> ! {
    panic!(
        "the local ECS stand-in is not up: {why}.\n{UP_HINT} (state dir: {})",
        state_dir().display()
    )
}

/// A blocking HTTP client for moto's control endpoints: no proxy, statuses as values.
fn http() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build();
    ureq::Agent::new_with_config(config)
}

fn yyyymmdd(days_since_epoch: u64) -> String {
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days_since_epoch as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// A fault rule for moto (`POST /_standin/faults`): the next `count` calls of `action` whose
/// body contains `match` fail with `error` and/or wait `delay_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub service: String,
    pub action: String,
    pub count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub delay_ms: u64,
    /// Only calls whose request body contains this text: scope a fault to one test's family
    /// or task, since tests share one moto.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
}

impl Fault {
    /// The next `count` ECS `action` calls fail with `error` (status chosen by moto: 400 for
    /// client errors such as `ThrottlingException`).
    pub fn ecs_error(action: &str, error: &str, count: i64) -> Fault {
        Fault {
            service: "ecs".into(),
            action: action.into(),
            count,
            error: Some(error.into()),
            status: None,
            message: None,
            delay_ms: 0,
            matching: None,
        }
    }

    /// The next `count` ECS `action` calls are throttled as ECS throttles them
    /// (`ThrottlingException`, "Rate exceeded").
    pub fn ecs_throttle(action: &str, count: i64) -> Fault {
        Fault::ecs_error(action, "ThrottlingException", count).message("Rate exceeded")
    }

    /// The next `count` ECS `action` calls are served `delay_ms` late.
    pub fn ecs_delay(action: &str, delay_ms: u64, count: i64) -> Fault {
        Fault {
            error: None,
            delay_ms,
            ..Fault::ecs_error(action, "", count)
        }
    }

    /// Only calls whose body contains `text`.
    pub fn matching(mut self, text: &str) -> Fault {
        self.matching = Some(text.into());
        self
    }

    pub fn message(mut self, text: &str) -> Fault {
        self.message = Some(text.into());
        self
    }

    pub fn status(mut self, status: u16) -> Fault {
        self.status = Some(status);
        self
    }
}

/// A fault rule in moto; removed on drop.
#[derive(Debug)]
pub struct FaultGuard {
    endpoint: String,
    pub id: String,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let _ = http()
            .delete(&format!("{}/_standin/faults/{}", self.endpoint, self.id))
            .call();
    }
}

#[derive(Debug, Deserialize)]
struct RequestPage {
    requests: Vec<RecordedRequest>,
    next: u64,
}

/// One AWS API call as moto recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedRequest {
    pub seq: u64,
    pub service: String,
    pub action: Option<String>,
    /// The request body as text (JSON for ECS, a form for EC2).
    pub body: String,
    /// Seconds since the epoch.
    pub time: f64,
    pub region: Option<String>,
    /// moto's HTTP status; `None` while the call is in flight.
    pub status: Option<u16>,
    /// The fault rule that took the call, if any.
    pub fault: Option<String>,
    /// The caller's User-Agent header (the SDK's, with the app name).
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// Creates the cluster `cluster` and registers the EC2 instance `instance_id` in it as a
/// container instance: its ARN.
pub async fn cluster_with_instance(ecs: &aws_sdk_ecs::Client, cluster: &str, instance_id: &str) -> String {
    ecs.create_cluster()
        .cluster_name(cluster)
        .send()
        .await
        .expect("CreateCluster");
    ecs.register_container_instance()
        .cluster(cluster)
        .instance_identity_document(serde_json::json!({ "instanceId": instance_id }).to_string())
        .send()
        .await
        .expect("RegisterContainerInstance")
        .container_instance()
        .and_then(|ci| ci.container_instance_arn())
        .expect("RegisterContainerInstance names the instance's ARN")
        .to_string()
}

/// `docker exec` of `cmd` without a TTY: (exit code, stdout and stderr together).
pub async fn docker_exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
) -> Result<(i64, String), bollard::errors::Error> {
    use futures_util::StreamExt;
    let created = docker
        .create_exec(
            container,
            bollard::exec::CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await? {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk?.to_string());
        }
    }
    let code = docker.inspect_exec(&created.id).await?.exit_code.unwrap_or(-1);
    Ok((code, text))
}

/// A task that is stopped (StopTask) when the guard drops, also when the test panics.
pub struct TaskGuard {
    standin: Standin,
    pub arn: String,
}

impl TaskGuard {
    pub fn new(standin: &Standin, arn: &str) -> TaskGuard {
        TaskGuard {
            standin: standin.clone(),
            arn: arn.to_string(),
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.standin.stop_task_blocking(&self.arn, "test cleanup");
    }
}

/// A name no other test (in this run or a parallel one) uses: `<prefix>-<pid>-<n>-<time>`, in
/// the characters ECS families, container names and Docker names all accept.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{clean}-{:x}-{n}-{:x}", std::process::id(), micros & 0xff_ffff)
}

/// The agent stand-in binary every test starts: `$ECS_AGENT_STANDIN_BIN` when set, else the one
/// of this workspace build, beside the test binary's `deps/` directory (`tests/local-ecs/up` and
/// `tests/run` build it into the same target directory as the tests).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ECS_AGENT_STANDIN_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug")
        .join("ecs-agent-standin");
    assert!(
        bin.is_file(),
        "{} is missing: run tests/local-ecs/up (or cargo build -p ecs-agent-standin)",
        bin.display()
    );
    bin
}

/// An agent stand-in process a test starts for a cluster and container instance of its own,
/// with its own environment (`ECS_IMAGE_PULL_BEHAVIOR`, `ECS_ENGINE_AUTH_*`); killed on drop.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `ecs-agent-standin` (this workspace build) for `cluster`/`instance_arn` with
    /// `env` added to its environment; stderr to a log file of its own.
    pub fn start(standin: &Standin, cluster: &str, instance_arn: &str, env: &[(&str, &str)]) -> AgentProcess {
        let bin = agent_binary();
        let log = std::env::temp_dir().join(format!("{cluster}.agent.log"));
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--standin", &standin.state_dir.join("standin.json").to_string_lossy()])
            .args(["--cluster", cluster, "--container-instance", instance_arn])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("ECS_IMAGE_PULL_BEHAVIOR")
            .env_remove("ECS_ENGINE_AUTH_TYPE")
            .env_remove("ECS_ENGINE_AUTH_DATA")
            .stderr(std::fs::File::create(&log).expect("agent log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start ecs-agent-standin");
        AgentProcess { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_ecs_and_docker() {
        let a = unique_name("linked task");
        let b = unique_name("linked task");
        assert_ne!(a, b);
        assert!(a.starts_with("linked-task-"), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{a}");
    }

    #[test]
    fn faults_serialize_as_moto_reads_them() {
        let f = Fault::ecs_error("RunTask", "ThrottlingException", 2).matching("family-x");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service":"ecs","action":"RunTask","count":2,"error":"ThrottlingException",
                               "delay_ms":0,"match":"family-x"})
        );
        let d = serde_json::to_value(Fault::ecs_delay("DescribeTasks", 500, 1)).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"service":"ecs","action":"DescribeTasks","count":1,"delay_ms":500})
        );
    }

    #[test]
    fn credential_scope_dates_are_civil_dates() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(19_782), "20240229");
    }
}
