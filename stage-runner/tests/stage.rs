//! A real runner on loopback, real processes, real certificates: what the host will see.

use ecs_executor_stage_runner::client::{self, ClientError, End};
use ecs_executor_stage_runner::credentials::JobCredentials;
use ecs_executor_stage_runner::protocol::{self, FrameKind, Request, RunRequest};
use ecs_executor_stage_runner::server::{self, Limits};
use ecs_executor_stage_runner::tls;
use rustls::{ClientConfig, ServerConnection};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Runner {
    addr: SocketAddr,
    creds: JobCredentials,
}

impl Runner {
    fn start() -> Self {
        Self::start_with(Limits::default())
    }

    fn start_with(limits: Limits) -> Self {
        Self::start_with_credentials(JobCredentials::generate().unwrap(), limits)
    }

    fn start_with_credentials(creds: JobCredentials, limits: Limits) -> Self {
        let config = tls::server_config(
            creds.ca_pem.as_bytes(),
            creds.server_cert_pem.as_bytes(),
            creds.server_key_pem.as_bytes(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || server::serve(listener, config, limits));
        Self { addr, creds }
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let c = &self.creds;
        tls::client_config(
            c.ca_pem.as_bytes(),
            c.client_cert_pem.as_bytes(),
            c.client_key_pem.as_bytes(),
        )
        .unwrap()
    }

    fn run(&self, request: &RunRequest) -> (Result<End, ClientError>, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let end = client::run(
            self.addr,
            self.client_config(),
            CONNECT_TIMEOUT,
            request,
            None,
            &mut out,
            &mut err,
        );
        (end, out, err)
    }
}

fn sh(script: &str) -> RunRequest {
    RunRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        kill_grace: Duration::from_millis(500),
        stdin: Vec::new(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Whether any live (not zombie) process is in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

fn wait_until_gone(pgid: i32, within: Duration) -> Duration {
    let start = Instant::now();
    while group_alive(pgid) {
        assert!(
            start.elapsed() < within,
            "process group {pgid} still alive after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (read, write) = std::io::pipe().expect("pipe");
    (read.into(), write.into())
}

/// Sends every chunk it is given, with its arrival time.
struct ChunkSender(Sender<(Instant, Vec<u8>)>);

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.send((Instant::now(), buf.to_vec()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stage running in a client thread, with a cancel pipe.
struct Cancellable {
    /// The script's `$$` (its first line of stdout): its process group.
    pgid: i32,
    /// Write a byte here to cancel.
    cancel: OwnedFd,
    client: std::thread::JoinHandle<Result<End, ClientError>>,
}

impl Cancellable {
    fn start(runner: &Runner, request: RunRequest) -> Self {
        let (cancel_read, cancel) = pipe();
        let (tx, rx) = mpsc::channel();
        let (addr, config) = (runner.addr, runner.client_config());
        let client = std::thread::spawn(move || {
            let mut out = ChunkSender(tx);
            let mut err = io::sink();
            client::run(
                addr,
                config,
                CONNECT_TIMEOUT,
                &request,
                Some(cancel_read.as_fd()),
                &mut out,
                &mut err,
            )
        });
        let (_, first) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stage printed its pid");
        let pgid = String::from_utf8(first).unwrap().trim().parse().unwrap();
        Self { pgid, cancel, client }
    }

    fn cancel(&self) {
        // SAFETY: `cancel` is an open pipe fd we own; the buffer is one valid byte.
        assert_eq!(
            unsafe { libc::write(self.cancel.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
    }

    fn end(self) -> Result<End, ClientError> {
        self.client.join().unwrap()
    }
}

#[test]
fn stdout_and_stderr_arrive_byte_exact_and_separately() {
    let runner = Runner::start();
    let (end, out, err) = runner.run(&sh("yes 0123456789abcdef | head -c 8388608; seq 1 100000 >&2"));
    assert_eq!(end.unwrap(), End::Exited(0));
    let expected_out: Vec<u8> = b"0123456789abcdef\n".iter().copied().cycle().take(8 << 20).collect();
    let expected_err: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), expected_out.len());
    assert_eq!(sha256(&out), sha256(&expected_out));
    assert_eq!(sha256(&err), sha256(expected_err.as_bytes()));
}

#[test]
fn binary_output_is_not_mangled() {
    let runner = Runner::start();
    let (end, out, _) = runner.run(&sh(r"printf '\000\377\r\n\033[31m'"));
    assert_eq!(end.unwrap(), End::Exited(0));
    assert_eq!(out, b"\0\xff\r\n\x1b[31m");
}

#[test]
fn chunks_keep_their_order_within_each_stream() {
    let runner = Runner::start();
    let script = "i=1; while [ $i -le 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done";
    let (end, out, err) = runner.run(&sh(script));
    assert_eq!(end.unwrap(), End::Exited(0));
    let want = |s: &str| (1..=3000).map(|i| format!("{s}{i}\n")).collect::<String>();
    assert_eq!(String::from_utf8(out).unwrap(), want("out"));
    assert_eq!(String::from_utf8(err).unwrap(), want("err"));
}

#[test]
fn output_is_forwarded_as_it_is_written_not_at_the_end() {
    let runner = Runner::start();
    let (tx, rx) = mpsc::channel();
    let mut out = ChunkSender(tx);
    let end = client::run(
        runner.addr,
        runner.client_config(),
        CONNECT_TIMEOUT,
        &sh("echo first; sleep 1; echo second"),
        None,
        &mut out,
        &mut io::sink(),
    );
    assert_eq!(end.unwrap(), End::Exited(0));
    let chunks: Vec<_> = rx.try_iter().collect();
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].1, b"first\n");
    let gap = chunks[1].0 - chunks[0].0;
    assert!(
        gap >= Duration::from_millis(800),
        "first chunk arrived only {gap:?} before the second"
    );
}

#[test]
fn exit_codes_and_signals_come_back_as_the_shell_would_report_them() {
    let runner = Runner::start();
    for (script, code) in [("true", 0), ("exit 3", 3), ("kill -9 $$", 137), ("kill -TERM $$", 143)] {
        let (end, _, _) = runner.run(&sh(script));
        assert_eq!(end.unwrap(), End::Exited(code), "{script}");
    }
}

#[test]
fn stdin_is_delivered_then_closed() {
    let runner = Runner::start();
    let request = RunRequest {
        argv: vec!["sh".into()],
        stdin: b"echo from stdin; read more || echo eof; exit 7\n".to_vec(),
        ..sh("")
    };
    let (end, out, _) = runner.run(&request);
    assert_eq!(end.unwrap(), End::Exited(7));
    assert_eq!(out, b"from stdin\neof\n");

    // More than a pipe holds: written as the process reads.
    let big = RunRequest {
        argv: vec!["wc".into(), "-c".into()],
        stdin: vec![b'x'; 3 << 20],
        ..sh("")
    };
    let (end, out, _) = runner.run(&big);
    assert_eq!(end.unwrap(), End::Exited(0));
    assert_eq!(String::from_utf8(out).unwrap().trim(), (3 << 20).to_string());
}

#[test]
fn extra_env_is_added_to_the_runner_environment() {
    let runner = Runner::start();
    let request = RunRequest {
        env: vec![("CI_JOB_STAGE".into(), "build it".into())],
        ..sh("echo \"$CI_JOB_STAGE|$PATH\"")
    };
    let (end, out, _) = runner.run(&request);
    assert_eq!(end.unwrap(), End::Exited(0));
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("build it|") && out.len() > "build it|\n".len(),
        "{out:?}"
    );
}

#[test]
fn cancel_terms_then_kills_the_whole_group_after_the_grace() {
    let runner = Runner::start();
    // The group ignores SIGTERM, so only the SIGKILL after the 500 ms grace ends it.
    let request = sh("trap '' TERM; echo $$; sleep 1000 & sleep 1000");
    let stage = Cancellable::start(&runner, request);
    let pgid = stage.pgid;
    std::thread::sleep(Duration::from_millis(200));
    assert!(group_alive(pgid));
    let cancelled_at = Instant::now();
    stage.cancel();
    assert_eq!(stage.end().unwrap(), End::Cancelled);
    let took = cancelled_at.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "ended after {took:?}, before the grace"
    );
    assert!(
        took < Duration::from_millis(500) + client::CANCEL_SLACK,
        "took {took:?}"
    );
    wait_until_gone(pgid, Duration::from_millis(1500).saturating_sub(cancelled_at.elapsed()));
}

#[test]
fn cancel_of_a_group_that_obeys_sigterm_does_not_wait_for_the_grace() {
    let runner = Runner::start();
    let request = RunRequest {
        kill_grace: Duration::from_secs(30),
        ..sh("echo $$; sleep 1000 & sleep 1000")
    };
    let stage = Cancellable::start(&runner, request);
    let pgid = stage.pgid;
    std::thread::sleep(Duration::from_millis(200));
    let cancelled_at = Instant::now();
    stage.cancel();
    assert_eq!(stage.end().unwrap(), End::Cancelled);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert!(!group_alive(pgid));
}

#[test]
fn a_dropped_connection_kills_the_group() {
    /// Takes the first chunk, then fails like a closed pipe: the client drops the connection.
    struct FailingOutput(Sender<Vec<u8>>);
    impl Write for FailingOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let runner = Runner::start();
    let (tx, rx) = mpsc::channel();
    let request = sh("trap '' TERM; echo $$; sleep 1000");
    let end = client::run(
        runner.addr,
        runner.client_config(),
        CONNECT_TIMEOUT,
        &request,
        None,
        &mut FailingOutput(tx),
        &mut io::sink(),
    );
    let dropped_at = Instant::now();
    assert!(matches!(end, Err(ClientError::Output(_))), "{end:?}");
    let pgid: i32 = String::from_utf8(rx.recv().unwrap()).unwrap().trim().parse().unwrap();
    wait_until_gone(pgid, request.kill_grace + Duration::from_secs(1));
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(400),
        "killed before the grace: SIGTERM was not ignored?"
    );
}

#[test]
fn a_client_certificate_from_another_jobs_ca_is_refused_at_the_handshake() {
    let runner = Runner::start();
    let other = JobCredentials::generate().unwrap();
    let marker = std::env::temp_dir().join(format!("stage-runner-rogue-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let rogue = tls::client_config(
        runner.creds.ca_pem.as_bytes(),
        other.client_cert_pem.as_bytes(),
        other.client_key_pem.as_bytes(),
    )
    .unwrap();
    let request = sh(&format!("touch {}", marker.display()));
    let end = client::run(
        runner.addr,
        rogue.clone(),
        CONNECT_TIMEOUT,
        &request,
        None,
        &mut io::sink(),
        &mut io::sink(),
    );
    let Err(ClientError::Connect { reason, .. }) = end else {
        panic!("not refused at connect: {end:?}")
    };
    assert!(
        reason.to_lowercase().contains("alert") || reason.contains("certificate"),
        "{reason}"
    );
    assert!(!marker.exists(), "the stage ran for a rogue client");
    assert!(matches!(
        client::probe(runner.addr, rogue, CONNECT_TIMEOUT),
        Err(ClientError::Connect { .. })
    ));

    // And a client of another job does not trust this runner.
    let other_job = tls::client_config(
        other.ca_pem.as_bytes(),
        other.client_cert_pem.as_bytes(),
        other.client_key_pem.as_bytes(),
    )
    .unwrap();
    let end = client::probe(runner.addr, other_job, CONNECT_TIMEOUT);
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("certificate")),
        "{end:?}"
    );
}

#[test]
fn a_background_process_holding_stdout_does_not_hold_the_stage() {
    let runner = Runner::start();
    let started = Instant::now();
    let (end, out, _) = runner.run(&sh("sleep 30 & echo $!"));
    let took = started.elapsed();
    assert_eq!(end.unwrap(), End::Exited(0));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "stage took {took:?}"
    );
    let pid: i32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Left running, as dockerd leaves it; then cleaned up by the test.
    assert!(
        state.contains("(sleep)") && !state.contains(") Z"),
        "background process gone: {state:?}"
    );
    // SAFETY: kill takes integers only; `pid` is the background process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn a_client_slower_than_the_drain_still_gets_everything_the_process_wrote() {
    /// Stalls 3 s on the first chunk: longer than the 2 s drain after the process exits.
    /// (Whether the process has exited by then depends on socket buffer sizes; this pins the
    /// behaviour, it does not reliably reproduce the loss the drain timer once allowed.)
    struct SlowOutput(Vec<u8>);
    impl Write for SlowOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                std::thread::sleep(Duration::from_secs(3));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let runner = Runner::start();
    let mut out = SlowOutput(Vec::new());
    let request = sh("head -c 67108864 /dev/zero | tr '\\0' x");
    let end = client::run(
        runner.addr,
        runner.client_config(),
        CONNECT_TIMEOUT,
        &request,
        None,
        &mut out,
        &mut io::sink(),
    );
    assert_eq!(end.unwrap(), End::Exited(0));
    assert_eq!(out.0.len(), 64 << 20);
    assert!(out.0.iter().all(|&b| b == b'x'));
}

#[test]
fn a_stage_that_cannot_be_spawned_is_rejected_with_the_reason() {
    let runner = Runner::start();
    let request = RunRequest {
        argv: vec!["/nonexistent/sh".into()],
        ..sh("")
    };
    let (end, _, _) = runner.run(&request);
    let Err(ClientError::Rejected { message, .. }) = end else {
        panic!("{end:?}")
    };
    assert!(
        message.starts_with("cannot spawn `/nonexistent/sh`: No such file"),
        "{message}"
    );
}

#[test]
fn a_busy_runner_refuses_with_a_message_and_serves_again_afterwards() {
    let runner = Runner::start_with(Limits {
        max_connections: 1,
        ..Limits::default()
    });
    let first = Cancellable::start(&runner, sh("echo $$; sleep 1000"));
    let (end, _, _) = runner.run(&sh("true"));
    let Err(ClientError::Rejected { message, .. }) = end else {
        panic!("{end:?}")
    };
    assert_eq!(message, "runner busy: already running 1 stages");
    // Ping needs no stage slot, only a connection place (2 x max_connections), which the refused
    // connection's thread may hold a moment longer.
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Err(e) = client::probe(runner.addr, runner.client_config(), CONNECT_TIMEOUT) {
        assert!(Instant::now() < deadline, "ping refused while a stage runs: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.cancel();
    assert_eq!(first.end().unwrap(), End::Cancelled);
    assert_eq!(runner.run(&sh("exit 4")).0.unwrap(), End::Exited(4));
}

#[test]
fn ping_answers_without_spawning() {
    let runner = Runner::start();
    client::probe(runner.addr, runner.client_config(), CONNECT_TIMEOUT).unwrap();
}

#[test]
fn nothing_listening_is_a_connect_error() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed again
    let runner = Runner::start();
    let end = client::probe(addr, runner.client_config(), CONNECT_TIMEOUT);
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("refused")),
        "{end:?}"
    );
}

#[test]
fn the_binary_refuses_to_start_without_its_certificates() {
    let out = runner_binary()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir", "/nonexistent-dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot read /nonexistent-dir/ca.pem: No such file"),
        "{stderr}"
    );
}

/// A command that runs the runner binary: cargo's build of it, or `STAGE_RUNNER_TEST_BINARY`
/// (e.g. `build-static --arch arm64`'s output, the binary prepare ships), started through
/// `STAGE_RUNNER_TEST_EXEC_WRAPPER` when set (`qemu-aarch64-static`: these tests then run
/// under qemu-user, where a child aarch64 binary needs qemu too, having no binfmt_misc).
fn runner_binary() -> std::process::Command {
    let binary = std::env::var_os("STAGE_RUNNER_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_ecs-executor-stage-runner").into());
    match std::env::var_os("STAGE_RUNNER_TEST_EXEC_WRAPPER").filter(|w| !w.is_empty()) {
        Some(wrapper) => {
            let mut command = std::process::Command::new(wrapper);
            command.arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    }
}

/// The runner binary, serving on loopback from a certificate directory; killed on drop.
struct BinaryRunner {
    runner: Runner,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl BinaryRunner {
    fn start() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let creds = JobCredentials::generate().unwrap();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stage-runner-bin-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, pem) in [
            ("ca.pem", &creds.ca_pem),
            ("server.pem", &creds.server_cert_pem),
            ("server-key.pem", &creds.server_key_pem),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        let mut child = runner_binary()
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while stderr.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || io::copy(&mut stderr, &mut io::sink()));
        let line = String::from_utf8(line).unwrap();
        let addr: SocketAddr = line.rsplit_once("listening on ").expect(&line).1.parse().unwrap();
        Self {
            runner: Runner { addr, creds },
            child,
            dir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for BinaryRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_binary_serves_a_stage_from_its_certificate_directory() {
    let bin = BinaryRunner::start();
    let (end, out, _) = bin.runner.run(&sh("echo hello from the binary"));
    assert_eq!(end.unwrap(), End::Exited(0));
    assert_eq!(out, b"hello from the binary\n");
}

/// `/proc/<pid>/stat` fields after the command name: state, ppid, pgrp, ...
fn stat_of(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    stat_of(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// Every live descendant of `pid` now (through ppid links).
fn descendants(pid: i32) -> Vec<i32> {
    let procs: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, stat_of(p)?[1].parse().ok()?)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|(_, ppid)| *ppid == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.into_iter().skip(1).filter(|&p| alive(p)).collect()
}

/// Starts `request` with a cancel pipe and collects the first `lines` lines of its stdout.
fn start_cancellable(runner: &Runner, request: RunRequest, lines: usize) -> (Vec<i32>, Cancellable) {
    let (cancel_read, cancel) = pipe();
    let (tx, rx) = mpsc::channel();
    let (addr, config) = (runner.addr, runner.client_config());
    let client = std::thread::spawn(move || {
        client::run(
            addr,
            config,
            CONNECT_TIMEOUT,
            &request,
            Some(cancel_read.as_fd()),
            &mut ChunkSender(tx),
            &mut io::sink(),
        )
    });
    let mut out = String::new();
    while out.lines().count() < lines || !out.ends_with('\n') {
        let (_, chunk) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stage printed its pids");
        out.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let pids: Vec<i32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    let stage = Cancellable {
        pgid: pids[0],
        cancel,
        client,
    };
    (pids, stage)
}

/// A stage whose processes left its process group two ways and ignore SIGTERM: only a
/// SIGKILL to each of them, found through /proc, ends them.
const ESCAPING_STAGE: &str = "trap '' TERM; echo $$; (setsid sleep 1000 & echo $!); \
    setsid sh -c 'sleep 1000; :' & echo $!; sleep 1000";

fn assert_cancel_ends_everything(runner: &Runner) {
    let (pids, stage) = start_cancellable(runner, sh(ESCAPING_STAGE), 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut tree = descendants(pids[0]);
    tree.extend(&pids[1..]);
    assert!(pids[1..].iter().all(|&p| alive(p)), "{pids:?}");
    // Left the stage's group: the old group kill never reached them.
    for &p in &pids[1..] {
        assert_ne!(stat_of(p).unwrap()[2], pids[0].to_string(), "{p} still in the group");
    }
    let cancelled_at = Instant::now();
    stage.cancel();
    assert_eq!(stage.end().unwrap(), End::Cancelled);
    let within = Duration::from_millis(500) + client::CANCEL_SLACK;
    while let Some(p) = tree.iter().find(|&&p| alive(p)) {
        let state = stat_of(*p);
        assert!(
            cancelled_at.elapsed() < within,
            "process {p} of the stage survived the cancel: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cancel_ends_processes_that_left_the_group_with_setsid_or_a_double_fork() {
    assert_cancel_ends_everything(&Runner::start());
}

#[test]
fn the_binary_as_subreaper_ends_escaped_processes_and_reaps_orphans_without_losing_exit_codes() {
    let bin = BinaryRunner::start();
    assert_cancel_ends_everything(&bin.runner);
    // Orphans whose leader exited come to the runner (a subreaper) and die there while other
    // stages run: each stage still gets its own exit code, and no zombie stays behind.
    for i in 0..10 {
        let (end, _, _) = bin
            .runner
            .run(&sh(&format!("(setsid sleep 0.0{i} &); exit {}", 10 + i)));
        assert_eq!(end.unwrap(), End::Exited(10 + i));
    }
    let (end, out, _) = bin.runner.run(&sh("(setsid sleep 2 >/dev/null 2>&1 & echo $!)"));
    assert_eq!(end.unwrap(), End::Exited(0));
    let orphan: i32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    let runner = bin.pid().to_string();
    assert_eq!(
        stat_of(orphan).map(|f| f[1].clone()),
        Some(runner.clone()),
        "{orphan} not adopted by the runner: {}",
        String::from_utf8_lossy(
            &std::process::Command::new("ps")
                .args(["-eo", "pid,ppid,pgid,stat,lstart,args"])
                .output()
                .unwrap()
                .stdout
        )
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let zombies: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| stat_of(p).is_some_and(|f| f[0] == "Z" && f[1] == runner))
            .collect();
        if zombies.is_empty() && stat_of(orphan).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies of the runner: {zombies:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fake runner with `creds`' server half: accepts one connection, completes the handshake,
/// reads the request and reports it on the returned channel, then hands the connection to `then`.
fn fake_runner(
    creds: &JobCredentials,
    then: impl FnOnce(&mut ServerConnection, &mut TcpStream) + Send + 'static,
) -> (SocketAddr, mpsc::Receiver<Request>) {
    let config = tls::server_config(
        creds.ca_pem.as_bytes(),
        creds.server_cert_pem.as_bytes(),
        creds.server_key_pem.as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut conn = ServerConnection::new(config).unwrap();
        let request = protocol::read_request(&mut rustls::Stream::new(&mut conn, &mut sock)).unwrap();
        tx.send(request).unwrap();
        then(&mut conn, &mut sock);
    });
    (addr, rx)
}

fn client_of(creds: &JobCredentials) -> Arc<ClientConfig> {
    tls::client_config(
        creds.ca_pem.as_bytes(),
        creds.client_cert_pem.as_bytes(),
        creds.client_key_pem.as_bytes(),
    )
    .unwrap()
}

/// Runs `sh("true")` against `addr` with a 1 s connect timeout; returns the end and its duration.
fn run_against(addr: SocketAddr, config: Arc<ClientConfig>) -> (Result<End, ClientError>, Duration) {
    let started = Instant::now();
    let end = client::run(
        addr,
        config,
        Duration::from_secs(1),
        &sh("true"),
        None,
        &mut io::sink(),
        &mut io::sink(),
    );
    (end, started.elapsed())
}

#[test]
fn a_runner_that_takes_the_request_and_stalls_is_a_lost_stage_not_a_fallback() {
    let creds = JobCredentials::generate().unwrap();
    let (addr, requests) = fake_runner(&creds, |_, _| std::thread::sleep(Duration::from_secs(60)));
    let (end, took) = run_against(addr, client_of(&creds));
    assert!(
        matches!(requests.try_recv(), Ok(Request::Run(_))),
        "the fake runner got no request"
    );
    assert!(
        matches!(&end, Err(ClientError::Lost { started: false, reason, .. }) if reason.contains("no answer")),
        "{end:?}"
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let shown = end.unwrap_err().to_string();
    assert!(shown.contains("may have started"), "{shown}");
}

#[test]
fn a_runner_that_takes_the_request_and_closes_is_a_lost_stage_not_a_fallback() {
    let creds = JobCredentials::generate().unwrap();
    // Closed without a word (a crash), and closed cleanly with close_notify.
    let (addr, _requests) = fake_runner(&creds, |_, _| {});
    let (end, _) = run_against(addr, client_of(&creds));
    assert!(matches!(&end, Err(ClientError::Lost { started: false, .. })), "{end:?}");
    let (addr, _requests) = fake_runner(&creds, |conn, sock| {
        conn.send_close_notify();
        conn.complete_io(sock).unwrap();
    });
    let (end, _) = run_against(addr, client_of(&creds));
    assert!(matches!(&end, Err(ClientError::Lost { started: false, .. })), "{end:?}");
}

#[test]
fn garbage_before_started_is_a_lost_stage_and_a_break_after_started_too() {
    let creds = JobCredentials::generate().unwrap();
    let (addr, _requests) = fake_runner(&creds, |conn, sock| {
        conn.writer().write_all(&[9, 0, 0, 0, 0]).unwrap();
        conn.complete_io(sock).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let (end, took) = run_against(addr, client_of(&creds));
    assert!(matches!(&end, Err(ClientError::Lost { started: false, .. })), "{end:?}");
    assert!(took < Duration::from_millis(900), "waited for the timeout: {took:?}");

    let (addr, _requests) = fake_runner(&creds, |conn, sock| {
        conn.writer()
            .write_all(&protocol::frame_header(FrameKind::Started, 0))
            .unwrap();
        conn.complete_io(sock).unwrap();
    });
    let (end, _) = run_against(addr, client_of(&creds));
    assert!(matches!(&end, Err(ClientError::Lost { started: true, .. })), "{end:?}");
}

#[test]
fn an_error_frame_before_started_is_a_rejection() {
    let creds = JobCredentials::generate().unwrap();
    let (addr, _requests) = fake_runner(&creds, |conn, sock| {
        let mut frame = Vec::new();
        protocol::encode_frame(FrameKind::Error, b"no", &mut frame);
        conn.writer().write_all(&frame).unwrap();
        conn.complete_io(sock).unwrap();
    });
    let (end, _) = run_against(addr, client_of(&creds));
    assert!(
        matches!(&end, Err(ClientError::Rejected { message, .. }) if message == "no"),
        "{end:?}"
    );
}

#[test]
fn a_tls_refusal_of_the_client_certificate_is_still_a_connect_error() {
    // The fake runner's handshake fails (the client certificate is from another job's CA): it
    // sends its alert, as rustls does, and never reads the request.
    let creds = JobCredentials::generate().unwrap();
    let other = JobCredentials::generate().unwrap();
    let config = tls::server_config(
        creds.ca_pem.as_bytes(),
        creds.server_cert_pem.as_bytes(),
        creds.server_key_pem.as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut conn = ServerConnection::new(config).unwrap();
        let mut result = Ok((0, 0));
        while conn.is_handshaking() && result.is_ok() {
            result = conn.complete_io(&mut sock);
        }
        tx.send(result.map(|_| ()).map_err(|e| e.to_string())).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    let rogue = tls::client_config(
        creds.ca_pem.as_bytes(),
        other.client_cert_pem.as_bytes(),
        other.client_key_pem.as_bytes(),
    )
    .unwrap();
    let (end, took) = run_against(addr, rogue);
    let handshake = rx.recv().unwrap();
    assert!(handshake.is_err(), "the fake runner accepted the rogue certificate");
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("alert")),
        "{end:?}"
    );
    assert!(took < Duration::from_millis(900), "waited for the timeout: {took:?}");
}

#[test]
fn a_refused_certificate_with_a_large_request_is_still_a_connect_error() {
    // The request (4 MiB of stdin) follows the client's Finished before the runner has
    // refused the certificate: the refusal must still reach the client as an alert.
    let runner = Runner::start();
    let other = JobCredentials::generate().unwrap();
    let rogue = tls::client_config(
        runner.creds.ca_pem.as_bytes(),
        other.client_cert_pem.as_bytes(),
        other.client_key_pem.as_bytes(),
    )
    .unwrap();
    let request = RunRequest {
        stdin: vec![b'#'; 4 << 20],
        ..sh("true")
    };
    for _ in 0..5 {
        let end = client::run(
            runner.addr,
            rogue.clone(),
            CONNECT_TIMEOUT,
            &request,
            None,
            &mut io::sink(),
            &mut io::sink(),
        );
        assert!(matches!(end, Err(ClientError::Connect { .. })), "{end:?}");
    }
}

/// Whether the server closes `sock` (EOF or reset) within `within`.
fn closed_within(sock: &mut TcpStream, within: Duration) -> bool {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8];
    match sock.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let runner = Runner::start_with(Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let started = Instant::now();
    let mut idle = TcpStream::connect(runner.addr).unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(3)), "still open after 3 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[test]
fn connections_beyond_the_handshake_cap_are_closed_at_once_and_the_cap_frees_up() {
    let runner = Runner::start_with(Limits {
        max_handshakes: 2,
        ..Limits::default()
    });
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(runner.addr).unwrap()).collect();
    // Let the runner accept both before the third comes.
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(runner.addr).unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "third connection held"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let refused = client::probe(runner.addr, runner.client_config(), CONNECT_TIMEOUT);
    assert!(matches!(refused, Err(ClientError::Connect { .. })), "{refused:?}");
    assert!(!closed_within(&mut idle[0], Duration::from_millis(50)));
    idle.clear();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Err(e) = client::probe(runner.addr, runner.client_config(), CONNECT_TIMEOUT) {
        assert!(Instant::now() < deadline, "the cap did not free up: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Credentials like a job's, but with the given extended key usages on the two leaves (the
/// server one still named for the runner), from a CA whose key the test holds.
fn credentials_with_ekus(
    server: rcgen::ExtendedKeyUsagePurpose,
    client: rcgen::ExtendedKeyUsagePurpose,
) -> JobCredentials {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>, usage| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let (server_cert_pem, server_key_pem) = leaf(vec![tls::SERVER_NAME.to_string()], server);
    let (client_cert_pem, client_key_pem) = leaf(Vec::new(), client);
    JobCredentials {
        ca_pem: ca_cert.pem(),
        server_cert_pem,
        server_key_pem,
        client_cert_pem,
        client_key_pem,
    }
}

#[test]
fn the_jobs_server_certificate_is_refused_as_a_client_certificate() {
    let runner = Runner::start();
    let c = &runner.creds;
    let impostor = tls::client_config(
        c.ca_pem.as_bytes(),
        c.server_cert_pem.as_bytes(),
        c.server_key_pem.as_bytes(),
    )
    .unwrap();
    let marker = std::env::temp_dir().join(format!("stage-runner-impostor-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let end = client::run(
        runner.addr,
        impostor.clone(),
        CONNECT_TIMEOUT,
        &sh(&format!("touch {}", marker.display())),
        None,
        &mut io::sink(),
        &mut io::sink(),
    );
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("alert")),
        "{end:?}"
    );
    assert!(
        !marker.exists(),
        "the stage ran for a server certificate posing as a client"
    );
    assert!(matches!(
        client::probe(runner.addr, impostor, CONNECT_TIMEOUT),
        Err(ClientError::Connect { .. })
    ));
}

#[test]
fn extended_key_usages_are_enforced_both_ways() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let probe = |creds: JobCredentials| {
        let runner = Runner::start_with_credentials(creds, Limits::default());
        client::probe(runner.addr, runner.client_config(), CONNECT_TIMEOUT)
    };
    // The control: right usages, same CA layout, the handshake works.
    probe(credentials_with_ekus(ServerAuth, ClientAuth)).unwrap();
    // A server certificate for clients only: the client refuses it.
    let end = probe(credentials_with_ekus(ClientAuth, ClientAuth));
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("extended key usage for server authentication")),
        "{end:?}"
    );
    // A client certificate for servers only: the runner refuses it.
    let end = probe(credentials_with_ekus(ServerAuth, ServerAuth));
    assert!(
        matches!(&end, Err(ClientError::Connect { reason, .. }) if reason.contains("alert")),
        "{end:?}"
    );
}
