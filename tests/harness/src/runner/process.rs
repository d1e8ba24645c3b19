//! One driver process, started the way gitlab-runner starts it (`helpers/process`): a clean
//! environment, stdin from /dev/null, its OWN process group, stdout and stderr read as they
//! arrive; when its deadline passes, SIGTERM to the whole group, then SIGKILL to the group
//! after a grace period.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which pipe a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Bytes exactly as one `read` returned them, tagged with their pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    Exited(i32),
    Signaled(i32),
}

/// Why the harness ended a call early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// The per-call timeout (gitlab-runner's `*_exec_timeout`).
    Timeout,
    /// A job cancel ("canceling" or abort).
    Cancel,
    /// The job timeout.
    JobTimeout,
}

/// What the harness did to end a call: SIGTERM to the group, and whether SIGKILL followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termination {
    pub reason: KillReason,
    pub sigkill: bool,
}

pub(crate) struct Spawn<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub deadline: Option<(Instant, KillReason)>,
    pub kill_grace: Duration,
    /// How long to wait for stdout/stderr to close after the process exited.
    pub drain_limit: Duration,
}

pub(crate) struct Captured {
    pub pid: u32,
    pub status: ProcessStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub log: Vec<LogChunk>,
    pub duration: Duration,
    pub termination: Option<Termination>,
    pub pipes_held_open: bool,
}

/// Runs the process to its end and captures everything.
pub(crate) fn run(spawn: Spawn<'_>) -> std::io::Result<Captured> {
    let mut command = Command::new(spawn.program);
    command
        .args(spawn.args)
        .current_dir(spawn.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // setpgid(0, 0): the child leads a new group, so signals can reach all it starts.
        .process_group(0);
    // In order: later duplicates win, as with Go's exec.Cmd.
    for (key, value) in spawn.env {
        command.env(key, value);
    }

    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<(Stream, Option<Vec<u8>>)>();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((stream, Some(buf[..n].to_vec()))).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send((stream, None));
        });
    }
    drop(tx);

    let mut open_pipes = 2;
    let mut status = None;
    let mut exited_at = None;
    let mut term_sent_at: Option<Instant> = None;
    let mut termination: Option<Termination> = None;
    let mut pipes_held_open = false;
    let mut gave_up_at: Option<Instant> = None;
    let (mut stdout, mut stderr, mut log) = (Vec::new(), Vec::new(), Vec::new());

    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok((stream, Some(bytes))) => {
                match stream {
                    Stream::Stdout => stdout.extend_from_slice(&bytes),
                    Stream::Stderr => stderr.extend_from_slice(&bytes),
                }
                log.push(LogChunk { stream, bytes });
            }
            Ok((_, None)) => open_pipes -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open_pipes = 0,
        }
        if status.is_none()
            && let Some(exit) = child.try_wait()?
        {
            status = Some(match exit.code() {
                Some(code) => ProcessStatus::Exited(code),
                None => ProcessStatus::Signaled(exit.signal().unwrap_or(0)),
            });
            exited_at = Some(Instant::now());
        }
        if status.is_some() && open_pipes == 0 {
            break;
        }
        let now = Instant::now();
        if let Some((at, reason)) = spawn.deadline
            && now >= at
            && term_sent_at.is_none()
        {
            signal_group(pid, libc::SIGTERM);
            term_sent_at = Some(now);
            termination = Some(Termination { reason, sigkill: false });
        }
        if let (Some(sent), Some(t)) = (term_sent_at, termination.as_mut())
            && !t.sigkill
            && now >= sent + spawn.kill_grace
        {
            signal_group(pid, libc::SIGKILL);
            t.sigkill = true;
        }
        // The process is gone but something it started still holds its stdout/stderr.
        // gitlab-runner would wait for that forever (Go's Wait waits for the copy); here it is
        // reported, and the leftovers of the group are killed so tests do not leak them.
        if let Some(exited) = exited_at
            && open_pipes > 0
            && now >= exited + spawn.drain_limit
        {
            if gave_up_at.is_none() {
                pipes_held_open = true;
                signal_group(pid, libc::SIGKILL);
                gave_up_at = Some(now);
            } else if gave_up_at.is_some_and(|g| now >= g + Duration::from_secs(2)) {
                // A holder outside the group (setsid): stop waiting for it.
                break;
            }
        }
    }

    Ok(Captured {
        pid,
        status: status.expect("the loop ends only after the process exited"),
        stdout,
        stderr,
        log,
        duration: started.elapsed(),
        termination,
        pipes_held_open,
    })
}

/// kill(-pgid, sig): the group id is the leader's pid (process_group(0)).
fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only sends a signal; it touches no memory of ours.
    unsafe {
        libc::kill(-pgid, signal);
    }
}
