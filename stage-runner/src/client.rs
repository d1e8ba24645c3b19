//! The host side: run one stage on a runner and copy its output out as it arrives.
//!
//! Errors say whether falling back to another path (Docker exec) is safe. Only
//! [`ClientError::Connect`] and [`ClientError::Rejected`] mean the stage was provably not
//! started. Once the request has left, anything but an answer from the runner is
//! [`ClientError::Lost`]: the runner may be running the script, and running it again elsewhere
//! could apply it twice (think `terraform apply`).

use crate::protocol::{self, Event, FrameDecoder, FrameKind, Request, RunRequest};
use crate::socket::{self, DeadlineStream, pollfd};
use crate::tls;
use rustls::{ClientConfig, ClientConnection};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After sending a cancel, how much longer than the kill grace to wait for the runner's exit frame.
pub const CANCEL_SLACK: Duration = Duration::from_secs(2);

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The process exited with this code (128 + signal number if a signal killed it).
    Exited(i32),
    /// `cancel_fd` became readable; the runner was told to stop the stage. Returned once the
    /// runner confirms, or after the kill grace + [`CANCEL_SLACK`], or if the connection drops.
    Cancelled,
}

/// Why a stage could not be run to its end.
///
/// The rule the host relies on: fall back to another path (Docker exec) only on
/// [`Connect`](Self::Connect). [`Rejected`](Self::Rejected) did not start anything either, but
/// the runner said why, and that is the job log's business. [`Lost`](Self::Lost) means the stage
/// may have run: it must not be run again.
#[derive(Debug)]
pub enum ClientError {
    /// The runner provably started nothing: the TCP connect failed, the TLS handshake failed
    /// (either side refused the other's certificate — including a refusal that, with TLS 1.3,
    /// only arrives as an alert after the request was sent, see [`run`]), or the request could
    /// not be sent whole (the runner spawns only once it has read all of it). Falling back is safe.
    Connect {
        /// The runner address dialled.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The runner refused the request before starting anything (e.g. `argv[0]` cannot be
    /// spawned, or the runner is busy). Its message is meant for the job log.
    Rejected {
        /// The runner address.
        addr: SocketAddr,
        /// The runner's message.
        message: String,
    },
    /// The whole request was sent, and then the connection broke, timed out or carried
    /// something that is not the protocol. The stage may have run, in part or to its end, and
    /// may still be running until the runner notices the dropped connection and kills it. An
    /// infrastructure failure, not the job's fault; never a reason to run the stage again.
    Lost {
        /// The runner address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
        /// Whether the runner had confirmed the spawn (a `Started` frame). `false` does not
        /// mean it did not start: the confirmation may be what was lost or late.
        started: bool,
    },
    /// Writing the stage's output to our stdout or stderr failed; the connection was dropped,
    /// so the runner kills the stage.
    Output(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { addr, reason } => write!(f, "stage runner at {addr}: cannot connect: {reason}"),
            Self::Rejected { addr, message } => write!(f, "stage runner at {addr} refused the stage: {message}"),
            Self::Lost {
                addr,
                reason,
                started: true,
            } => write!(f, "stage runner at {addr}: connection lost mid-stage: {reason}"),
            Self::Lost { addr, reason, .. } => write!(
                f,
                "stage runner at {addr}: the stage may have started, the runner did not confirm it: {reason}"
            ),
            Self::Output(e) => write!(f, "writing the stage's output: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Output(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs `request` on the runner at `addr` and copies its stdout and stderr to `stdout` and
/// `stderr` as they arrive: each chunk with one `write_all` and a `flush`, byte for byte.
///
/// `connect_timeout` bounds the TCP connect, the handshake, each write of the request, and the
/// wait for the runner to confirm the spawn. A failure up to and including the handshake, or
/// while sending the request, is [`ClientError::Connect`]; once the request is out, a missing
/// confirmation is [`ClientError::Lost`] (`started: false`), since the runner may have spawned
/// the stage and only its answer be late. Once the stage runs there is no timeout (TCP
/// keepalive notices a vanished runner).
///
/// With TLS 1.3 the client's side of the handshake is done before the runner has checked the
/// client certificate, so a runner refusing our certificate is only seen as a fatal TLS alert
/// on the first read after the request was sent. Such an alert, with no frame byte before it,
/// is still [`ClientError::Connect`] (why that is safe is explained where it is decided).
///
/// If `cancel_fd` becomes readable (or hangs up), the runner is told to cancel; the fd is only
/// polled, never read or closed.
pub fn run(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    request: &RunRequest,
    cancel_fd: Option<BorrowedFd<'_>>,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<End, ClientError> {
    let request_bytes = protocol::encode_request(&Request::Run(request.clone()));
    let session = Session::open(addr, config, connect_timeout, &request_bytes)?;
    session.drive(connect_timeout, request.kill_grace, cancel_fd, stdout, stderr)
}

/// Checks that a runner is up at `addr` and that both sides trust each other: connect,
/// handshake and a ping the runner answers without spawning anything, all within `timeout`.
/// Every failure is [`ClientError::Connect`] (or `Rejected` if the runner answers with an
/// error): a ping spawns nothing, so a connection that breaks after it was sent loses no stage.
pub fn probe(addr: SocketAddr, config: Arc<ClientConfig>, timeout: Duration) -> Result<(), ClientError> {
    let deadline = Instant::now() + timeout;
    let session = Session::open(addr, config, timeout, &protocol::encode_request(&Request::Ping))?;
    let left = deadline.saturating_duration_since(Instant::now());
    let connect = |reason: String| ClientError::Connect { addr, reason };
    match session.drive(left, Duration::ZERO, None, &mut io::sink(), &mut io::sink()) {
        Ok(End::Exited(0)) => Ok(()),
        Ok(end) => Err(connect(format!("ping answered with {end:?}"))),
        Err(ClientError::Lost { reason, .. }) => Err(connect(reason)),
        Err(e) => Err(e),
    }
}

/// A connected, authenticated session whose request has been sent.
struct Session {
    addr: SocketAddr,
    conn: ClientConnection,
    sock: TcpStream,
}

impl Session {
    fn open(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        timeout: Duration,
        request: &[u8],
    ) -> Result<Self, ClientError> {
        let connect = |reason: String| ClientError::Connect { addr, reason };
        let deadline = Instant::now() + timeout;
        let sock = TcpStream::connect_timeout(&addr, timeout).map_err(|e| connect(e.to_string()))?;
        socket::tune(&sock).map_err(|e| connect(format!("socket options: {e}")))?;
        let mut conn = ClientConnection::new(config, tls::server_name()).map_err(|e| connect(e.to_string()))?;
        let mut timed = DeadlineStream { sock: &sock, deadline };
        while conn.is_handshaking() {
            conn.complete_io(&mut timed)
                .map_err(|e| connect(format!("TLS handshake: {e}")))?;
        }
        // A large stdin may take longer than the handshake: each write must progress within
        // the timeout, the whole request need not.
        sock.set_write_timeout(Some(timeout))
            .map_err(|e| connect(e.to_string()))?;
        let mut sock_ref = &sock;
        let mut stream = rustls::Stream::new(&mut conn, &mut sock_ref);
        // Still safe to fall back if this fails: a write that fails leaves the request's tail
        // (at least the rest of its last TLS record) unsent, and the runner decrypts a record only
        // when it is whole and spawns only once it has read the whole request.
        stream
            .write_all(request)
            .and_then(|()| stream.flush())
            .map_err(|e| connect(format!("sending the request: {e}")))?;
        // From here on the runner may be running the stage.
        sock.set_nonblocking(true).map_err(|e| ClientError::Lost {
            addr,
            reason: format!("socket: {e}"),
            started: false,
        })?;
        Ok(Self { addr, conn, sock })
    }

    /// Reads frames until the exit frame (see [`run`]). `start_timeout` bounds the wait for the
    /// `Started` frame.
    fn drive(
        mut self,
        start_timeout: Duration,
        kill_grace: Duration,
        cancel_fd: Option<BorrowedFd<'_>>,
        stdout: &mut impl Write,
        stderr: &mut impl Write,
    ) -> Result<End, ClientError> {
        let addr = self.addr;
        let start_deadline = Instant::now() + start_timeout;
        let mut started = false;
        // Whether any plaintext (frame bytes) has come from the runner.
        let mut answered = false;
        let mut cancel_deadline: Option<Instant> = None;
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 256 << 10];
        // A TLS error from the last read; acted on once the plaintext before it is decoded (a
        // `Started` or even the exit frame may have arrived in the same read).
        let mut tls_error: Option<rustls::Error> = None;
        // The request is out: the stage may run from here on, whatever breaks. After a cancel
        // the end is near anyway (Cancelled).
        let broken = |started: bool, cancelled: bool, reason: String| {
            if cancelled {
                Ok(End::Cancelled)
            } else {
                Err(ClientError::Lost { addr, reason, started })
            }
        };
        loop {
            // Hand out all the plaintext rustls holds.
            let mut eof = None;
            loop {
                let n = match self.conn.reader().read(&mut buf) {
                    Ok(0) => {
                        eof = Some("the runner closed the connection before the end".to_string());
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        eof = Some(e.to_string());
                        break;
                    }
                };
                answered = true;
                let mut input = &buf[..n];
                loop {
                    let event = match decoder.next(&mut input) {
                        Ok(Some(event)) => event,
                        Ok(None) => break,
                        Err(e) => return broken(started, cancel_deadline.is_some(), e.to_string()),
                    };
                    match event {
                        Event::Stdout(bytes) => write_out(stdout, bytes)?,
                        Event::Stderr(bytes) => write_out(stderr, bytes)?,
                        Event::Started => started = true,
                        Event::Exit(_) if cancel_deadline.is_some() => return Ok(End::Cancelled),
                        Event::Exit(code) => return Ok(End::Exited(code)),
                        Event::Error(message) if !started => return Err(ClientError::Rejected { addr, message }),
                        Event::Error(message) => return broken(true, cancel_deadline.is_some(), message),
                        Event::Cancel => {
                            return broken(
                                started,
                                cancel_deadline.is_some(),
                                "cancel frame from the runner".into(),
                            );
                        }
                    }
                }
            }
            if let Some(e) = tls_error.take() {
                // TLS 1.3: our handshake is complete once we have sent our Finished, before the
                // runner has checked our certificate, so its refusal (e.g. a certificate from
                // another job's CA) arrives as a fatal alert on the first read after the
                // request was sent. That alert, with no frame byte before it, proves nothing
                // started: the runner reads the request only after the handshake succeeded,
                // and whatever it sends after that (`Started` first, then output) travels in
                // the same ordered stream ahead of any alert it could send later. Any other
                // TLS failure (our own decryption, a record we refuse) may come mid-stage.
                if !answered && cancel_deadline.is_none() && matches!(e, rustls::Error::AlertReceived(_)) {
                    let reason = format!("TLS handshake refused by the runner: {e}");
                    return Err(ClientError::Connect { addr, reason });
                }
                return broken(started, cancel_deadline.is_some(), format!("TLS: {e}"));
            }
            if let Some(reason) = eof {
                return broken(started, cancel_deadline.is_some(), reason);
            }

            let cancel_fd = cancel_fd.filter(|_| cancel_deadline.is_none());
            let mut fds = [
                pollfd(
                    self.sock.as_raw_fd(),
                    libc::POLLIN | if self.conn.wants_write() { libc::POLLOUT } else { 0 },
                ),
                pollfd(cancel_fd.map_or(-1, |fd| fd.as_raw_fd()), libc::POLLIN),
            ];
            let deadline = cancel_deadline.or((!started).then_some(start_deadline));
            let timeout = socket::timeout_until([deadline]);
            let ready = match socket::poll(&mut fds, timeout) {
                Ok(ready) => ready,
                Err(e) => return broken(started, false, format!("poll: {e}")),
            };
            if ready == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                if cancel_deadline.is_some() {
                    return Ok(End::Cancelled);
                }
                // Not Connect: the runner has the request and may be running it; only its
                // `Started` is missing (a runner under load, a stalled network).
                let reason = format!("no answer within {start_timeout:?} of sending the request");
                return broken(false, false, reason);
            }
            if fds[1].revents != 0 {
                self.queue_cancel();
                cancel_deadline = Some(Instant::now() + kill_grace + CANCEL_SLACK);
            }
            if fds[0].revents & !libc::POLLOUT != 0 {
                match self.conn.read_tls(&mut self.sock) {
                    Ok(0) => {} // EOF: rustls reports it through the reader on the next turn.
                    Ok(_) => {
                        if let Err(e) = self.conn.process_new_packets() {
                            // Send our alert if we can; decide once the plaintext is decoded.
                            let _ = self.conn.write_tls(&mut self.sock);
                            tls_error = Some(e);
                            continue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return broken(started, cancel_deadline.is_some(), e.to_string()),
                }
            }
            if let Err(e) = self.flush() {
                return broken(started, cancel_deadline.is_some(), e.to_string());
            }
        }
    }

    fn queue_cancel(&mut self) {
        let _ = self
            .conn
            .writer()
            .write_all(&protocol::frame_header(FrameKind::Cancel, 0));
    }

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
}

fn write_out(out: &mut impl Write, bytes: &[u8]) -> Result<(), ClientError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}
