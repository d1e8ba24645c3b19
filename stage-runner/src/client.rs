//! The host side: run one stage on a runner and copy its output out as it arrives.
//!
//! Errors say whether falling back to another path (Docker exec) is safe: [`ClientError::Connect`]
//! and [`ClientError::Rejected`] mean the stage was not started; [`ClientError::Lost`] means it
//! was, and the connection broke — an infrastructure failure, since the stage may have run in
//! part (the runner kills its process group when the connection drops).

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
#[derive(Debug)]
pub enum ClientError {
    /// No connection, no TLS handshake (e.g. a certificate from another job's CA), or no answer
    /// to the request within the connect timeout. Nothing was started: falling back is safe.
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
    /// The connection broke or the runner broke the protocol after the stage started: it may
    /// have run in part. An infrastructure failure, not the job's fault.
    Lost {
        /// The runner address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
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
            Self::Lost { addr, reason } => write!(f, "stage runner at {addr}: connection lost mid-stage: {reason}"),
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
/// wait for the runner to confirm the spawn. Once the stage runs there is no timeout (TCP
/// keepalive notices a vanished runner). If `cancel_fd` becomes readable (or hangs up), the
/// runner is told to cancel; the fd is only polled, never read or closed.
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
/// Every failure is [`ClientError::Connect`] (or `Rejected` if the runner answers with an error).
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
        stream
            .write_all(request)
            .and_then(|()| stream.flush())
            .map_err(|e| connect(format!("sending the request: {e}")))?;
        sock.set_nonblocking(true).map_err(|e| connect(e.to_string()))?;
        Ok(Self { addr, conn, sock })
    }

    /// Reads frames until the exit frame (see [`run`]). `start_timeout` bounds the wait for the
    /// first frame.
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
        let mut cancel_deadline: Option<Instant> = None;
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 256 << 10];
        // Before the runner answers, nothing ran (Connect); after a cancel, the end is near
        // anyway (Cancelled); otherwise the stage was cut short (Lost).
        let broken = |started: bool, cancelled: bool, reason: String| {
            if cancelled {
                Ok(End::Cancelled)
            } else if started {
                Err(ClientError::Lost { addr, reason })
            } else {
                Err(ClientError::Connect { addr, reason })
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
            let ready = socket::poll(&mut fds, timeout).map_err(|e| ClientError::Lost {
                addr,
                reason: format!("poll: {e}"),
            })?;
            if ready == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                if cancel_deadline.is_some() {
                    return Ok(End::Cancelled);
                }
                let reason = format!("no answer from the runner within {start_timeout:?}");
                return Err(ClientError::Connect { addr, reason });
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
                            // Send the alert if we can; a refused certificate surfaces here.
                            let _ = self.conn.write_tls(&mut self.sock);
                            return broken(started, cancel_deadline.is_some(), e.to_string());
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
