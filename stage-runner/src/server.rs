//! The runner side: accept mutual-TLS connections and run one stage per connection.
//!
//! A connection is served by its own thread: handshake (under a short deadline, and only so
//! many at once), request (under a deadline), spawn the process in its own process group, then
//! one `poll` loop over the socket, the three pipes and a pidfd until the stage ends. Output is forwarded as it is read, with backpressure: while
//! the client has not taken the previous chunk, the pipes are not read. When the process exits,
//! its pipes are drained for at most [`Limits::drain_after_exit`] (as dockerd does for exec), so
//! a background process holding them open cannot hold the stage. A cancel frame or a dropped
//! connection SIGTERMs every process of the stage — its process group, and also whatever left
//! the group (`setsid`, a double fork), found through `/proc` (see [`become_subreaper`]) — and
//! SIGKILLs what is left after the request's kill grace.

use crate::procs::{self, Members};
use crate::protocol::{self, Event, FrameDecoder, FrameKind, Request, RunRequest};
use crate::socket::{self, DeadlineStream, pollfd};
use rustls::{ServerConfig, ServerConnection};
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bytes read from a pipe at once: one frame's payload at most.
const CHUNK: usize = 64 << 10;
/// How long the last frames and close_notify may take to leave once the stage is over.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// While a cancelled stage's leader is gone but its group is not, how often to look again.
const GROUP_RECHECK: Duration = Duration::from_millis(20);
/// After the SIGKILL of a cancelled stage, how long to keep killing what a member forked just
/// before it (and to wait for the dead to become zombies) before the stage ends anyway: a
/// process in uninterruptible sleep cannot hold the cancel.
const KILL_SETTLE: Duration = Duration::from_millis(500);
/// Without a pidfd (kernel < 5.3), how often to look for the leader's exit.
const EXIT_RECHECK: Duration = Duration::from_millis(50);
/// After a failed handshake, how long to wait for the client to close before we do. Closing
/// with the client's unread request in our buffer sends a TCP reset, and should our alert be
/// lost on the way, the client would see only the reset — which it must take for a stage that
/// may have started. Waiting for its close (it closes once it has our alert) avoids that.
const HANDSHAKE_FAILURE_LINGER: Duration = Duration::from_secs(1);

pub use crate::procs::become_subreaper;

/// Bounds on what one runner does at once and how long it waits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Stages running at once; a run request beyond this gets an `Error` frame ("busy").
    /// Connections count separately, up to twice this number (stages, pings, connections in
    /// handshake); beyond that, new connections are closed without a word.
    pub max_connections: usize,
    /// Connections still in their TLS handshake (not yet authenticated) at once. Beyond this,
    /// a new connection is closed at once: an unauthenticated peer cannot hold more than this
    /// many threads, each for at most [`handshake_timeout`](Self::handshake_timeout).
    pub max_handshakes: usize,
    /// Time allowed for the TLS handshake (the client sends its certificate in the first round
    /// trip; a few ms on a live network).
    pub handshake_timeout: Duration,
    /// Time allowed for the whole request once the client is authenticated (a large stdin may
    /// take a while on a slow link).
    pub request_timeout: Duration,
    /// After the process exits, how long its pipes are still read before the exit frame is sent.
    pub drain_after_exit: Duration,
}

impl Default for Limits {
    /// 16 stages, 8 handshakes of at most 5 s each, 30 s for the request, 2 s of draining
    /// (dockerd's exec value).
    fn default() -> Self {
        Self {
            max_connections: 16,
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            drain_after_exit: Duration::from_secs(2),
        }
    }
}

/// Serves connections from `listener` forever, one thread each, logging one line per
/// connection to stderr. Returns only if accepting fails for a reason other than a transient
/// one (out of file descriptors, a connection aborted before accept).
pub fn serve(listener: TcpListener, config: Arc<ServerConfig>, limits: Limits) -> io::Result<Infallible> {
    let limits = Arc::new(limits);
    let connections = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let stages = Arc::new(AtomicUsize::new(0));
    loop {
        let (sock, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if is_transient_accept_error(&e) => {
                eprintln!("stage-runner: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(connection) = Slot::take(&connections, 2 * limits.max_connections) else {
            eprintln!("stage-runner: {peer}: closed: too many connections");
            continue;
        };
        let Some(handshake) = Slot::take(&handshakes, limits.max_handshakes) else {
            eprintln!("stage-runner: {peer}: closed: too many connections in handshake");
            continue;
        };
        let (config, limits, stages) = (config.clone(), limits.clone(), stages.clone());
        let spawned = std::thread::Builder::new().name(format!("conn {peer}")).spawn(move || {
            let _connection = connection;
            let outcome = handle(sock, handshake, config, &limits, &stages);
            eprintln!("stage-runner: {peer}: {outcome}");
        });
        if let Err(e) = spawned {
            eprintln!("stage-runner: {peer}: cannot start a thread: {e}");
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED | libc::EINTR)
    )
}

/// A counted place in a bounded set (connections, running stages), given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Slot(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection; returns its log line.
fn handle(
    sock: TcpStream,
    handshake: Slot,
    config: Arc<ServerConfig>,
    limits: &Limits,
    stages: &Arc<AtomicUsize>,
) -> String {
    let started = Instant::now();
    let (Ok(what) | Err(what)) = handle_inner(sock, handshake, config, limits, stages);
    format!("{what} ({:.1} ms)", started.elapsed().as_secs_f64() * 1e3)
}

fn handle_inner(
    sock: TcpStream,
    handshake: Slot,
    config: Arc<ServerConfig>,
    limits: &Limits,
    stages: &Arc<AtomicUsize>,
) -> Result<String, String> {
    socket::tune(&sock).map_err(|e| format!("socket options: {e}"))?;
    let mut conn = ServerConnection::new(config).map_err(|e| format!("TLS: {e}"))?;
    let mut timed = DeadlineStream {
        sock: &sock,
        deadline: Instant::now() + limits.handshake_timeout,
    };
    // TLS 1.3: done once the client's certificate is verified and its Finished is in. On an
    // error, rustls has already tried to send its alert (a refused certificate shows on the
    // client as that alert, which it takes for "nothing started").
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut timed) {
            linger(&sock);
            return Err(format!("handshake failed: {e}"));
        }
    }
    drop(handshake);
    timed.deadline = Instant::now() + limits.request_timeout;
    let request = protocol::read_request(&mut rustls::Stream::new(&mut conn, &mut timed));
    // Frames are queued whole (at most two chunks, see the backpressure in `Stage::run`).
    conn.set_buffer_limit(None);
    sock.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
    let mut link = Link {
        conn,
        sock,
        decoder: FrameDecoder::new(),
    };
    let request = match request {
        Ok(request) => request,
        Err(protocol::ProtocolError::Io(e)) => return Err(format!("reading the request: {e}")),
        Err(e) => return Err(link.refuse(&format!("bad request: {e}"))),
    };
    let run = match request {
        Request::Ping => {
            link.queue(&protocol::exit_frame(0));
            link.finish().map_err(|e| format!("ping: answering: {e}"))?;
            return Ok("ping".into());
        }
        Request::Run(run) => run,
    };
    let argv0 = run.argv[0].clone();
    let Some(_stage_slot) = Slot::take(stages, limits.max_connections) else {
        let max = limits.max_connections;
        return Err(link.refuse(&format!("runner busy: already running {max} stages")));
    };
    let stage = match Stage::spawn(&run) {
        Ok(stage) => stage,
        Err(e) => return Err(link.refuse(&format!("cannot spawn `{argv0}`: {e}"))),
    };
    let pid = stage.pgid;
    link.queue(&protocol::frame_header(FrameKind::Started, 0));
    let ended = stage.run(&mut link, run.kill_grace, limits.drain_after_exit);
    let summary = format!(
        "run `{argv0}` pid {pid}: exit {} (stdout {} B, stderr {} B)",
        ended.code, ended.stdout_bytes, ended.stderr_bytes
    );
    match ended.peer {
        PeerEnd::Connected => link
            .finish()
            .map(|()| summary.clone())
            .map_err(|e| format!("{summary}; sending the end: {e}")),
        PeerEnd::Cancelled => {
            let _ = link.finish();
            Ok(format!("{summary}; cancelled by the client"))
        }
        PeerEnd::Gone(why) => Err(format!("{summary}; connection lost ({why}), process group killed")),
    }
}

/// After a failed handshake: stop sending, and wait (briefly) for the client to close, so our
/// close does not turn into a reset that could be all the client sees (see
/// [`HANDSHAKE_FAILURE_LINGER`]).
fn linger(sock: &TcpStream) {
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut timed = DeadlineStream {
        sock,
        deadline: Instant::now() + HANDSHAKE_FAILURE_LINGER,
    };
    let _ = io::copy(&mut timed, &mut io::sink());
}

/// The TLS connection to the client, after the request: non-blocking socket, queued frames.
struct Link {
    conn: ServerConnection,
    sock: TcpStream,
    decoder: FrameDecoder,
}

impl Link {
    fn queue(&mut self, bytes: &[u8]) {
        // The buffer limit is off: the whole frame is always accepted.
        let _ = self.conn.writer().write_all(bytes);
    }

    /// Sends what is queued as far as the socket takes it now.
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the client sent. Returns whether a cancel frame came; an error is the end of
    /// the connection (EOF, close_notify, TLS failure, or anything but a cancel frame).
    fn receive(&mut self) -> Result<bool, String> {
        let mut cancelled = false;
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Err("closed by the client".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.to_string()),
            }
            self.conn.process_new_packets().map_err(|e| e.to_string())?;
        }
        cancelled |= self.read_plaintext()?;
        Ok(cancelled)
    }

    /// Decodes plaintext rustls already holds (e.g. a cancel sent right behind the request).
    fn read_plaintext(&mut self) -> Result<bool, String> {
        let mut cancelled = false;
        let mut buf = [0u8; 64];
        loop {
            let n = match self.conn.reader().read(&mut buf) {
                Ok(0) => return Err("client closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(cancelled),
                Err(e) => return Err(e.to_string()),
            };
            let mut input = &buf[..n];
            while let Some(event) = self.decoder.next(&mut input).map_err(|e| e.to_string())? {
                match event {
                    Event::Cancel => cancelled = true,
                    other => return Err(format!("unexpected frame from the client: {other:?}")),
                }
            }
        }
    }

    /// Sends an error frame (the stage did not start) and closes; returns the log line.
    fn refuse(&mut self, message: &str) -> String {
        let mut frame = Vec::new();
        protocol::encode_frame(FrameKind::Error, message.as_bytes(), &mut frame);
        self.queue(&frame);
        match self.finish() {
            Ok(()) => format!("refused: {message}"),
            Err(e) => format!("refused: {message} (not delivered: {e})"),
        }
    }

    /// Sends everything queued and close_notify, waiting for the socket at most
    /// [`FINAL_WRITE_TIMEOUT`].
    fn finish(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let deadline = Instant::now() + FINAL_WRITE_TIMEOUT;
        loop {
            self.flush()?;
            if !self.conn.wants_write() {
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            let mut fds = [pollfd(self.sock.as_raw_fd(), libc::POLLOUT)];
            if socket::poll(&mut fds, socket::timeout_until([Some(deadline)]))? == 0 && Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client does not read"));
            }
        }
    }
}

/// How the client side of a stage ended.
enum PeerEnd {
    /// Still there: it gets the exit frame.
    Connected,
    /// Sent a cancel frame; it still gets the exit frame.
    Cancelled,
    /// Gone (EOF, error, protocol violation): the group was killed, nothing more is sent.
    Gone(String),
}

/// The end of a stage.
struct Ended {
    code: i32,
    peer: PeerEnd,
    stdout_bytes: u64,
    stderr_bytes: u64,
}

/// One running process and its pipes.
struct Stage {
    child: Child,
    /// The child's pid, which is also its process group id.
    pgid: libc::pid_t,
    /// Every process of the stage, for a cancel.
    members: Members,
    pidfd: Option<OwnedFd>,
    stdin: Option<ChildStdin>,
    stdin_data: Vec<u8>,
    stdin_written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Stage {
    fn spawn(run: &RunRequest) -> io::Result<Self> {
        let mut command = Command::new(&run.argv[0]);
        command
            .args(&run.argv[1..])
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // The leader is a child subreaper (kept across its execve): what its descendants
        // orphan while it runs (a double fork, `setsid cmd &` in a subshell) reparents to it
        // and stays in its tree, where a cancel finds it.
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, as required
        // between fork and exec.
        unsafe { command.pre_exec(procs::make_subreaper) };
        let mut child = procs::spawn_leader(|| {
            let child = command.spawn()?;
            let pid = child.id() as libc::pid_t;
            Ok((child, pid))
        })?;
        let pgid = child.id() as libc::pid_t;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (stdin, stdout, stderr) = (stdin.expect("piped"), stdout.expect("piped"), stderr.expect("piped"));
        for fd in [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()] {
            if let Err(e) = socket::set_nonblocking(fd) {
                let _ = child.kill();
                let _ = child.wait();
                procs::forget_leader(pgid);
                return Err(e);
            }
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1) that we own.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pgid, 0) };
        let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) });
        let stdin_data = run.stdin.clone();
        // Empty stdin: the pipe is closed right away (dropped here).
        let stdin = (!stdin_data.is_empty()).then_some(stdin);
        Ok(Self {
            child,
            pgid,
            members: Members::new(pgid),
            pidfd,
            stdin,
            stdin_data,
            stdin_written: 0,
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Signals every process of the stage (see [`Members`]); returns how many were alive.
    fn signal_all(&mut self, signal: i32) -> usize {
        self.members.signal(signal)
    }

    /// Forwards output until the stage is over (see the module doc) and reaps the leader.
    fn run(mut self, link: &mut Link, kill_grace: Duration, drain: Duration) -> Ended {
        let mut peer = PeerEnd::Connected;
        let mut status: Option<ExitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed_at: Option<Instant> = None;
        let mut counts = [0u64; 2]; // bytes of stdout, stderr
        let mut buf = vec![0u8; protocol::FRAME_HEADER_LEN + CHUNK];

        // What the client did since the last turn: `Ok(true)` cancel, `Err` gone. A cancel may
        // already sit in rustls' buffer, right behind the request.
        let mut from_client = Some(link.read_plaintext());
        let _ = link.flush();
        loop {
            let now = Instant::now();
            let was_connected = matches!(peer, PeerEnd::Connected);
            match from_client.take() {
                Some(Ok(true)) if was_connected => peer = PeerEnd::Cancelled,
                Some(Err(why)) if !matches!(peer, PeerEnd::Gone(_)) => {
                    peer = PeerEnd::Gone(why);
                    // Nobody reads the output any more.
                    (self.stdout, self.stderr) = (None, None);
                }
                _ => {}
            }
            if was_connected && !matches!(peer, PeerEnd::Connected) {
                self.signal_all(libc::SIGTERM);
                kill_at = Some(now + kill_grace);
            }
            if killed_at.is_none() && kill_at.is_some_and(|t| now >= t) {
                self.signal_all(libc::SIGKILL);
                killed_at = Some(now);
            }
            // Time the client makes us wait (backlog) does not count against the drain: what the
            // process wrote before it exited must not be lost to a slow reader.
            if drain_until.is_some_and(|t| now >= t) && !link.conn.wants_write() {
                // What is already in a pipe (at most its 64 KiB capacity) is the process's; what
                // comes later belongs to background processes, which keep running but lose our
                // end of the pipes.
                for kind in [FrameKind::Stdout, FrameKind::Stderr] {
                    if let Err(e) = self.forward(kind, &mut buf, link, &mut counts)
                        && from_client.is_none()
                    {
                        from_client = Some(Err(format!("writing: {e}")));
                    }
                }
                (self.stdout, self.stderr) = (None, None);
                drain_until = None;
            }
            if self.pidfd.is_none() && status.is_none() {
                status = self.child.try_wait().ok().flatten();
                if status.is_some() {
                    self.members.leader_exited();
                    procs::forget_leader(self.pgid);
                    drain_until = Some(now + drain);
                }
            }

            let gone = matches!(peer, PeerEnd::Gone(_));
            let output_done = gone || (self.stdout.is_none() && self.stderr.is_none() && !link.conn.wants_write());
            // After a cancel, every process of the stage must be gone, not just the leader. After
            // the SIGKILL, each look kills again what a member forked just before it died.
            let group_done = |stage: &mut Self| match killed_at {
                _ if matches!(peer, PeerEnd::Connected) => true,
                None => stage.members.all_gone(),
                Some(at) => stage.signal_all(libc::SIGKILL) == 0 || now >= at + KILL_SETTLE,
            };
            if let Some(status) = status
                && output_done
                && group_done(&mut self)
            {
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                if !gone {
                    link.queue(&protocol::exit_frame(code));
                }
                return Ended {
                    code,
                    peer,
                    stdout_bytes: counts[0],
                    stderr_bytes: counts[1],
                };
            }

            // Wait for something to do. While the client has not taken the last chunk, the
            // pipes are left alone: the process blocks on a full pipe, not the runner's memory.
            let backlog = link.conn.wants_write();
            let sock = if gone { -1 } else { link.sock.as_raw_fd() };
            let pipe = |p: Option<i32>| pollfd(p.filter(|_| !backlog).unwrap_or(-1), libc::POLLIN);
            let mut fds = [
                pollfd(sock, libc::POLLIN | if backlog { libc::POLLOUT } else { 0 }),
                pipe(self.stdout.as_ref().map(|p| p.as_raw_fd())),
                pipe(self.stderr.as_ref().map(|p| p.as_raw_fd())),
                pollfd(self.stdin.as_ref().map_or(-1, |p| p.as_raw_fd()), libc::POLLOUT),
                pollfd(
                    self.pidfd
                        .as_ref()
                        .filter(|_| status.is_none())
                        .map_or(-1, |p| p.as_raw_fd()),
                    libc::POLLIN,
                ),
            ];
            let recheck = if status.is_some() && output_done {
                Some(now + GROUP_RECHECK)
            } else if self.pidfd.is_none() && status.is_none() {
                Some(now + EXIT_RECHECK)
            } else {
                None
            };
            let drain_timer = drain_until.filter(|_| !backlog);
            let timeout = socket::timeout_until([kill_at.filter(|_| killed_at.is_none()), drain_timer, recheck]);
            if let Err(e) = socket::poll(&mut fds, timeout) {
                // Cannot wait any more: end the stage the hard way rather than spin.
                self.signal_all(libc::SIGKILL);
                let code = self
                    .child
                    .wait()
                    .map_or(-1, |s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
                self.members.leader_exited();
                procs::forget_leader(self.pgid);
                return Ended {
                    code,
                    peer: PeerEnd::Gone(format!("poll: {e}")),
                    stdout_bytes: counts[0],
                    stderr_bytes: counts[1],
                };
            }

            if fds[0].revents & libc::POLLOUT != 0
                && let Err(e) = link.flush()
            {
                from_client = Some(Err(format!("writing: {e}")));
            }
            if fds[0].revents & !libc::POLLOUT != 0 && from_client.is_none() {
                from_client = Some(link.receive());
            }
            for (i, kind) in [(1, FrameKind::Stdout), (2, FrameKind::Stderr)] {
                if fds[i].revents != 0
                    && let Err(e) = self.forward(kind, &mut buf, link, &mut counts)
                    && from_client.is_none()
                {
                    from_client = Some(Err(format!("writing: {e}")));
                }
            }
            if fds[3].revents != 0 {
                self.write_stdin();
            }
            if fds[4].revents != 0 {
                // The pidfd is readable: the leader has exited (a zombie, its pid still ours),
                // so this does not block.
                self.members.leader_exited();
                status = self.child.wait().ok();
                procs::forget_leader(self.pgid);
                drain_until = Some(Instant::now() + drain);
            }
        }
    }

    /// Reads what one pipe has now and queues it as one frame; an error is the client's.
    fn forward(&mut self, kind: FrameKind, buf: &mut [u8], link: &mut Link, counts: &mut [u64; 2]) -> io::Result<()> {
        let payload = &mut buf[protocol::FRAME_HEADER_LEN..];
        let (n, count) = match kind {
            FrameKind::Stdout => (read_pipe(&mut self.stdout, payload), &mut counts[0]),
            _ => (read_pipe(&mut self.stderr, payload), &mut counts[1]),
        };
        if n == 0 {
            return Ok(());
        }
        buf[..protocol::FRAME_HEADER_LEN].copy_from_slice(&protocol::frame_header(kind, n as u32));
        link.queue(&buf[..protocol::FRAME_HEADER_LEN + n]);
        *count += n as u64;
        link.flush()
    }

    /// Writes as much of the remaining stdin as the pipe takes; closes it when all is written
    /// or the process no longer reads it.
    fn write_stdin(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else { return };
        loop {
            match pipe.write(&self.stdin_data[self.stdin_written..]) {
                Ok(n) => {
                    self.stdin_written += n;
                    if self.stdin_written == self.stdin_data.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // EPIPE: the process stopped reading; that is its business.
            }
        }
        self.stdin = None;
        self.stdin_data = Vec::new();
    }
}

impl Drop for Stage {
    /// Normally the leader is reaped and forgotten already; after a panic, this lets the orphan
    /// reaper take it rather than wait for a thread that is gone.
    fn drop(&mut self) {
        procs::forget_leader(self.pgid);
    }
}

/// Reads what a pipe has (0 if nothing right now); closes it at EOF or on an error.
fn read_pipe(pipe: &mut Option<impl Read>, buf: &mut [u8]) -> usize {
    let Some(p) = pipe.as_mut() else { return 0 };
    match p.read(buf) {
        Ok(n) if n > 0 => n,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
        _ => {
            *pipe = None;
            0
        }
    }
}
