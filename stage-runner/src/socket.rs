//! The plumbing both ends share below TLS: TCP options, deadlines on blocking I/O, and `poll`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// No delay for small frames, and keepalive so a peer whose machine vanished (no FIN, no RST)
/// is noticed within about a minute even while a stage prints nothing.
pub(crate) fn tune(sock: &TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let fd = sock.as_raw_fd();
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10)?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    // Unacknowledged data (a peer that stopped acking) fails the connection after 60 s.
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 60_000)
}

fn set_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Blocking reads and writes on a socket that fail with `TimedOut` once `deadline` has passed,
/// however the peer dribbles its bytes. Used for the handshake and the request.
pub(crate) struct DeadlineStream<'a> {
    pub(crate) sock: &'a TcpStream,
    pub(crate) deadline: Instant,
}

impl DeadlineStream<'_> {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(timed_out()) } else { Ok(left) }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

// SO_RCVTIMEO/SO_SNDTIMEO expiry surfaces as EAGAIN; report it as the timeout it is.
fn timeout_kind(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.remaining()?))?;
        (&mut &*self.sock).read(buf).map_err(timeout_kind)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.remaining()?))?;
        (&mut &*self.sock).write(buf).map_err(timeout_kind)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `pollfd` for `fd` with `events`.
pub(crate) fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// `poll(2)` with an optional timeout (rounded up to whole ms so a deadline is never missed by
/// waking early). An interrupted call returns 0 ready fds; callers recompute their timers anyway.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(r as usize)
}

/// Puts `fd`'s open file description in non-blocking mode (a pipe's other end is unaffected).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: plain fcntl on a borrowed, open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The earliest of some optional deadlines, as a timeout from now (`None`: wait for events only).
pub(crate) fn timeout_until(deadlines: impl IntoIterator<Item = Option<Instant>>) -> Option<Duration> {
    let now = Instant::now();
    deadlines
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
}
