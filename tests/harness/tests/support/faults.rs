//! Helpers of the fault, bad-input and secrets tests (`faults_e2e.rs`, `bad_input_e2e.rs`):
//! the executor's admin commands, direct spawns for signals the harness does not send
//! (SIGKILL), config variants, TCP proxies we can cut or make stall, and throw-away
//! certificates.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionStatus;
use ecs_executor_tests::runner::{JobSpec, Runner};

use super::E2e;

#[allow(unused_imports)]
pub use super::{admin, executor_bin, text};

/// A copy of the test's config with `edit` applied, next to it as `<name>.toml`.
pub fn config_variant(e: &E2e, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(&e.config).expect("read the test config");
    let path = e.dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).expect("write the config variant");
    path
}

/// Replace the `[docker]` table's `key = ...` line (or add it to the table).
pub fn set_docker_key(text: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut in_docker = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if in_docker && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            in_docker = t.starts_with("[docker]");
        }
        if in_docker && t.split('=').next().is_some_and(|k| k.trim() == key) {
            out.push(format!("{key} = {value}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if in_docker && !done {
        out.push(format!("{key} = {value}"));
    }
    out.join("\n") + "\n"
}

/// Spawn one call of the executor with gitlab-runner's env for `runner`'s current attempt
/// (for signals the harness does not send, e.g. SIGKILL). `args` after `--config`.
pub fn spawn_direct(e: &E2e, r: &Runner, args: &[&str]) -> std::process::Child {
    command_direct(e, r, args).spawn().expect("spawn ecs-executor")
}

/// The command [`spawn_direct`] runs, to adjust before running it (`.env(...)` overrides).
pub fn command_direct(e: &E2e, r: &Runner, args: &[&str]) -> Command {
    let tmp = r
        .temp_dir()
        .expect("the runner has an attempt (run config first)")
        .to_path_buf();
    let mut cmd = Command::new(executor_bin());
    cmd.arg("--config").arg(&e.config).args(args);
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("TMPDIR", &tmp)
        .env("BUILD_FAILURE_EXIT_CODE", "1")
        .env("SYSTEM_FAILURE_EXIT_CODE", "2")
        .env("BUILD_EXIT_CODE_FILE", tmp.join("direct_exit_code"))
        .env("JOB_RESPONSE_FILE", tmp.join("response.json"))
        .envs(r.job_env())
        .envs(r.custom_env())
        .current_dir(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Task definition revisions of this test's families: (ACTIVE, INACTIVE) ARNs.
pub fn task_definitions(e: &E2e) -> (Vec<String>, Vec<String>) {
    e.block_on(async {
        let families = e
            .ecs
            .list_task_definition_families()
            .family_prefix(&e.family_prefix)
            .send()
            .await
            .expect("ListTaskDefinitionFamilies");
        let (mut active, mut inactive) = (Vec::new(), Vec::new());
        for family in families.families().iter().filter(|f| f.starts_with(&e.family_prefix)) {
            for (status, into) in [
                (TaskDefinitionStatus::Active, &mut active),
                (TaskDefinitionStatus::Inactive, &mut inactive),
            ] {
                let out = e
                    .ecs
                    .list_task_definitions()
                    .family_prefix(family)
                    .status(status)
                    .send()
                    .await
                    .expect("ListTaskDefinitions");
                into.extend(out.task_definition_arns().iter().cloned());
            }
        }
        (active, inactive)
    })
}

/// Tasks of `job` meant to run now.
pub fn running_count(e: &E2e, job: &JobSpec) -> usize {
    e.tasks_of(job)
        .iter()
        .filter(|t| t.desired_status() == Some("RUNNING"))
        .count()
}

/// Wait until moto recorded a call of `action` whose body contains `needle` after `mark`.
pub fn wait_for_call(e: &E2e, mark: u64, action: &str, needle: &str, limit: Duration) -> bool {
    ecs_executor_tests::wait_until(limit, Duration::from_millis(20), || {
        e.standin
            .requests_since(mark)
            .iter()
            .any(|r| r.action.as_deref() == Some(action) && r.body.contains(needle) && r.status.is_some())
    })
}

/// A TCP proxy on 127.0.0.1:<port> to `target` (a TCP address, or a Unix socket path when
/// it starts with `/`). `cut()` drops every connection at once and refuses new ones.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, conns2, target) = (cut.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                conns2.lock().unwrap().push(client.try_clone().unwrap());
                let target = target.clone();
                std::thread::spawn(move || {
                    if target.starts_with('/') {
                        let Ok(up) = std::os::unix::net::UnixStream::connect(&target) else {
                            return;
                        };
                        pump(client, up.try_clone().unwrap(), up);
                    } else {
                        let Ok(up) = TcpStream::connect(&target) else { return };
                        pump(client, up.try_clone().unwrap(), up);
                    }
                });
            }
        });
        Proxy { port, cut, conns }
    }

    /// Drop every connection now (both directions, no goodbye) and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// What a [`Proxy::with_fault`] does to a connection once its client has sent more than the
/// threshold (the request, when the request is larger than a TLS handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRequest {
    /// Forward the rest of the request, then swallow every byte the server sends: to the
    /// client, the server went silent after reading the request.
    Stall,
    /// As `Stall`, and after `CLOSE_AFTER` close the connection (both sides, no goodbye).
    Close,
}

/// How long [`AfterRequest::Close`] lets the server work on the request before closing.
pub const CLOSE_AFTER: Duration = Duration::from_secs(1);

impl Proxy {
    /// A TCP proxy to `target` (TCP only) that forwards both ways until a client has sent
    /// more than `threshold` bytes, then does `fault` to that connection. Bytes pass through
    /// unchanged (TLS stays end to end); only whether and when they pass is changed.
    pub fn with_fault(target: &str, threshold: usize, fault: AfterRequest) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (conns2, target) = (conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                conns2.lock().unwrap().push(client.try_clone().unwrap());
                let Ok(up) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                faulty_pump(client, up, threshold, fault);
            }
        });
        Proxy {
            port,
            cut: Arc::default(),
            conns,
        }
    }
}

fn faulty_pump(client: TcpStream, up: TcpStream, threshold: usize, fault: AfterRequest) {
    let tripped = Arc::new(AtomicBool::new(false));
    let (mut from_client, mut to_up) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let (client_side, up_side) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let trip = tripped.clone();
    std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from_client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent += n;
            // Set before forwarding: the server's answer to this request comes after it.
            if sent > threshold && !trip.swap(true, Ordering::SeqCst) && fault == AfterRequest::Close {
                let (c, u) = (client_side.try_clone().unwrap(), up_side.try_clone().unwrap());
                std::thread::spawn(move || {
                    std::thread::sleep(CLOSE_AFTER);
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = u.shutdown(Shutdown::Both);
                });
            }
            if to_up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_up.shutdown(Shutdown::Write);
    });
    let (mut from_up, mut to_client) = (up, client);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from_up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !tripped.load(Ordering::SeqCst) && to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        if !tripped.load(Ordering::SeqCst) {
            let _ = to_client.shutdown(Shutdown::Write);
        }
    });
}

fn pump<U: Read + Write + Send + 'static>(
    client: TcpStream,
    mut up_read: U,
    mut up_write: impl Write + Send + 'static,
) {
    let mut client_read = client.try_clone().unwrap();
    let mut client_write = client;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut up_write);
    });
    let _ = std::io::copy(&mut up_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = t.join();
}

/// Throw-away certificates made with openssl in `dir`.
pub struct BadCerts {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    super::run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// `<name>-key.pem` (a new RSA key) and `<name>.csr` for the subject `CN=<cn>`.
fn key_and_csr(dir: &Path, name: &str, cn: &str) {
    let (key, csr, subject) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("/CN={cn}"));
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject,
        ],
    );
}

impl BadCerts {
    /// `other-ca.pem` (a CA that signed nothing of the stand-in's), `expired.pem` + key (a
    /// client certificate signed by the stand-in's real client CA, valid only in 2020), `stranger.pem`
    /// + key (a current client certificate signed by the other CA).
    pub fn make(dir: &Path, real_ca: &Path, real_ca_key: &Path) -> BadCerts {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "other-ca-key.pem",
                "-out",
                "other-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=other-ca",
            ],
        );
        // The expired one: `openssl ca` takes explicit start and end dates.
        key_and_csr(dir, "expired", "expired-client");
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        let conf = "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\npolicy = p\ndefault_md = sha256\nunique_subject = no\nx509_extensions = ext\n[p]\ncommonName = supplied\n[ext]\nextendedKeyUsage = clientAuth\n";
        std::fs::write(dir.join("ca.cnf"), conf).unwrap();
        let (ca, key) = (real_ca.display().to_string(), real_ca_key.display().to_string());
        openssl(
            dir,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                &ca,
                "-keyfile",
                &key,
                "-in",
                "expired.csr",
                "-out",
                "expired.pem",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
                "-notext",
            ],
        );
        key_and_csr(dir, "stranger", "stranger");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "stranger.csr",
                "-CA",
                "other-ca.pem",
                "-CAkey",
                "other-ca-key.pem",
                "-CAcreateserial",
                "-extfile",
                "ca.cnf",
                "-extensions",
                "ext",
                "-out",
                "stranger.pem",
                "-days",
                "2",
            ],
        );
        BadCerts { dir: dir.to_path_buf() }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}
