//! The byte protocol inside the TLS stream between `client` (the host) and `server` (the job container).
//!
//! One connection runs one stage. The client sends one [`Request`] (a fixed header with magic,
//! version, kind and body length, then the body), and afterwards at most one
//! [`FrameKind::Cancel`] frame. The server answers with frames `[kind u8][u32 BE len][payload]`:
//! [`FrameKind::Started`] once the process is spawned, then stdout/stderr chunks as they are
//! read, then exactly one [`FrameKind::Exit`] — or a single [`FrameKind::Error`] if the stage
//! could not be started. Every length is checked against a cap before anything is allocated.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

/// First bytes of every request; lets the server reject a stray connection with a clear message.
pub const MAGIC: [u8; 4] = *b"ECSR";
/// Protocol version sent in every request. A server refuses any other version.
pub const VERSION: u16 = 1;
/// Bytes of the request header: magic, version (u16 BE), kind (u8), body length (u32 BE).
pub const REQUEST_HEADER_LEN: usize = 4 + 2 + 1 + 4;
/// Largest request body (argv + env + stdin) a server accepts; stage scripts are far smaller.
/// The body is read as it arrives, so a length alone makes nothing allocate this much.
pub const MAX_REQUEST_LEN: u32 = 64 << 20;
/// Most `argv` entries a run request may have. The host sends three (`sh -c <wrapper>`); the
/// cap keeps a body of empty strings (4 bytes each on the wire, a `String` each in memory)
/// from costing six times its size.
pub const MAX_ARGS: u32 = 4096;
/// Most environment variables a run request may add (same reason as [`MAX_ARGS`]).
pub const MAX_ENV_VARS: u32 = 4096;
/// Most bytes of `argv` strings plus env names and values together. Linux refuses larger
/// argument lists anyway (with the default 8 MiB stack, `ARG_MAX` is 2 MiB, pointers included);
/// the script itself travels on stdin, which only [`MAX_REQUEST_LEN`] bounds.
pub const MAX_ARGS_ENV_LEN: usize = 2 << 20;
/// Bytes of a frame header: kind (u8), payload length (u32 BE).
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest stdout/stderr frame payload accepted (the server sends at most 64 KiB per frame).
pub const MAX_DATA_FRAME: u32 = 1 << 20;
/// Largest error-message frame payload accepted.
pub const MAX_ERROR_FRAME: u32 = 64 << 10;

const KIND_RUN: u8 = 1;
const KIND_PING: u8 = 2;

/// What the client asks the server to do on this connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Answer with `Exit(0)` without spawning anything: proves the runner is up and trusts us.
    Ping,
    /// Run one stage.
    Run(RunRequest),
}

/// One stage to run: a process, its extra environment and its whole stdin.
#[derive(Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// `argv[0]` is looked up in the runner's `PATH`; the rest are its arguments. Must not be empty.
    pub argv: Vec<String>,
    /// Added to (and overriding) the runner's own environment. Never logged.
    pub env: Vec<(String, String)>,
    /// On cancel or a dropped connection: time between SIGTERM and SIGKILL of the process group.
    /// Sent in whole milliseconds, saturating at `u32::MAX` ms.
    pub kill_grace: Duration,
    /// Written to the process's stdin, which is then closed.
    pub stdin: Vec<u8>,
}

// Env values and stdin carry CI variables and scripts: secrets. Debug shows sizes only.
impl fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRequest")
            .field("argv0", &self.argv.first())
            .field("argc", &self.argv.len())
            .field("env_names", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("kill_grace", &self.kill_grace)
            .field("stdin_len", &self.stdin.len())
            .finish()
    }
}

/// A request or frame that does not follow the protocol; the connection cannot continue.
#[derive(Debug)]
pub enum ProtocolError {
    /// Reading from the connection failed (including EOF in the middle of a request).
    Io(io::Error),
    /// The first bytes are not [`MAGIC`]: not a stage-runner client.
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version; runner and host must be upgraded together.
    UnsupportedVersion(u16),
    /// A request kind this server does not know.
    UnknownRequestKind(u8),
    /// The request body is longer than [`MAX_REQUEST_LEN`].
    RequestTooLarge(u32),
    /// The request body ends in the middle of the named field.
    Truncated(&'static str),
    /// The request body has bytes left over after the last field.
    TrailingBytes(usize),
    /// The named field is not UTF-8.
    InvalidUtf8(&'static str),
    /// A run request with an empty argv.
    EmptyArgv,
    /// A run request with more than [`MAX_ARGS`] argv entries.
    TooManyArgs(u32),
    /// A run request with more than [`MAX_ENV_VARS`] environment variables.
    TooManyEnvVars(u32),
    /// argv and env of a run request hold more than [`MAX_ARGS_ENV_LEN`] bytes together.
    ArgsEnvTooLarge,
    /// An environment variable name that is empty or holds `=` or NUL.
    BadEnvName(String),
    /// A frame kind outside the protocol, or one this side never receives.
    UnexpectedFrameKind(u8),
    /// A frame whose payload length is not allowed for its kind.
    BadFrameLength {
        /// The frame's kind.
        kind: FrameKind,
        /// The announced payload length.
        len: u32,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading from the connection: {e}"),
            Self::BadMagic(m) => write!(f, "not a stage-runner request (first bytes {m:02x?})"),
            Self::UnsupportedVersion(v) => {
                write!(f, "protocol version {v} is not supported (this side speaks {VERSION})")
            }
            Self::UnknownRequestKind(k) => write!(f, "unknown request kind {k}"),
            Self::RequestTooLarge(n) => write!(f, "request of {n} bytes is over the limit of {MAX_REQUEST_LEN}"),
            Self::Truncated(field) => write!(f, "request ends inside {field}"),
            Self::TrailingBytes(n) => write!(f, "request has {n} unexpected bytes after its last field"),
            Self::InvalidUtf8(field) => write!(f, "{field} is not valid UTF-8"),
            Self::EmptyArgv => write!(f, "run request has an empty argv"),
            Self::TooManyArgs(n) => write!(f, "run request has {n} argv entries, over the limit of {MAX_ARGS}"),
            Self::TooManyEnvVars(n) => {
                write!(
                    f,
                    "run request has {n} environment variables, over the limit of {MAX_ENV_VARS}"
                )
            }
            Self::ArgsEnvTooLarge => write!(
                f,
                "argv and environment of the run request are over the limit of {MAX_ARGS_ENV_LEN} bytes"
            ),
            Self::BadEnvName(name) => write!(f, "environment variable name {name:?} is empty or holds '=' or NUL"),
            Self::UnexpectedFrameKind(k) => write!(f, "unexpected frame kind {k}"),
            Self::BadFrameLength { kind, len } => write!(f, "{kind:?} frame with a payload of {len} bytes"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Serialises a request: header and body, ready to write to the connection.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let (kind, body) = match request {
        Request::Ping => (KIND_PING, Vec::new()),
        Request::Run(run) => (KIND_RUN, encode_run(run)),
    };
    let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn encode_run(run: &RunRequest) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(64 + run.stdin.len());
    let grace_ms = u32::try_from(run.kill_grace.as_millis()).unwrap_or(u32::MAX);
    out.extend_from_slice(&grace_ms.to_be_bytes());
    out.extend_from_slice(&(run.argv.len() as u32).to_be_bytes());
    for arg in &run.argv {
        bytes(&mut out, arg.as_bytes());
    }
    out.extend_from_slice(&(run.env.len() as u32).to_be_bytes());
    for (name, value) in &run.env {
        bytes(&mut out, name.as_bytes());
        bytes(&mut out, value.as_bytes());
    }
    bytes(&mut out, &run.stdin);
    out
}

/// Reads one request. The body length is checked against [`MAX_REQUEST_LEN`] before any of the
/// body is read, the body buffer grows only with the bytes that actually arrive, and every
/// field length and count is checked against the bytes left in the body and the caps above.
/// Never panics, whatever the input.
pub fn read_request(reader: &mut impl Read) -> Result<Request, ProtocolError> {
    let mut header = [0u8; REQUEST_HEADER_LEN];
    reader.read_exact(&mut header)?;
    let magic: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    let kind = header[6];
    let len = u32::from_be_bytes(header[7..11].try_into().expect("4 bytes"));
    if len > MAX_REQUEST_LEN {
        return Err(ProtocolError::RequestTooLarge(len));
    }
    if kind != KIND_RUN && kind != KIND_PING {
        return Err(ProtocolError::UnknownRequestKind(kind));
    }
    // Grown as bytes arrive: a peer announcing 64 MiB and sending nothing costs nothing.
    let mut body = Vec::new();
    reader.take(len.into()).read_to_end(&mut body)?;
    if body.len() != len as usize {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    match kind {
        KIND_PING if body.is_empty() => Ok(Request::Ping),
        KIND_PING => Err(ProtocolError::TrailingBytes(body.len())),
        _ => decode_run(&body).map(Request::Run),
    }
}

/// Decodes a run request body (everything after the header).
fn decode_run(body: &[u8]) -> Result<RunRequest, ProtocolError> {
    let mut rest = body;
    let kill_grace = Duration::from_millis(take_u32(&mut rest, "kill grace")?.into());
    let argc = take_u32(&mut rest, "argv count")?;
    if argc > MAX_ARGS {
        return Err(ProtocolError::TooManyArgs(argc));
    }
    // Bytes of argv and env so far, against MAX_ARGS_ENV_LEN.
    let mut strings_len = 0usize;
    let mut counted = |s: String| {
        strings_len += s.len();
        if strings_len > MAX_ARGS_ENV_LEN {
            return Err(ProtocolError::ArgsEnvTooLarge);
        }
        Ok(s)
    };
    // No `with_capacity(argc)`: the count is untrusted; each entry is bounded by the body.
    let mut argv = Vec::new();
    for _ in 0..argc {
        argv.push(counted(take_string(&mut rest, "argv")?)?);
    }
    if argv.is_empty() {
        return Err(ProtocolError::EmptyArgv);
    }
    let envc = take_u32(&mut rest, "env count")?;
    if envc > MAX_ENV_VARS {
        return Err(ProtocolError::TooManyEnvVars(envc));
    }
    let mut env = Vec::new();
    for _ in 0..envc {
        let name = counted(take_string(&mut rest, "env name")?)?;
        // `execve` takes `NAME=VALUE` strings: such a name would set another variable.
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ProtocolError::BadEnvName(name));
        }
        let value = counted(take_string(&mut rest, "env value")?)?;
        env.push((name, value));
    }
    let stdin = take_bytes(&mut rest, "stdin")?.to_vec();
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes(rest.len()));
    }
    Ok(RunRequest {
        argv,
        env,
        kill_grace,
        stdin,
    })
}

fn take_u32(rest: &mut &[u8], field: &'static str) -> Result<u32, ProtocolError> {
    let (head, tail) = rest.split_at_checked(4).ok_or(ProtocolError::Truncated(field))?;
    *rest = tail;
    Ok(u32::from_be_bytes(head.try_into().expect("4 bytes")))
}

fn take_bytes<'a>(rest: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], ProtocolError> {
    let len = take_u32(rest, field)? as usize;
    let (head, tail) = rest.split_at_checked(len).ok_or(ProtocolError::Truncated(field))?;
    *rest = tail;
    Ok(head)
}

fn take_string(rest: &mut &[u8], field: &'static str) -> Result<String, ProtocolError> {
    let bytes = take_bytes(rest, field)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::InvalidUtf8(field))
}

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Server → client: a chunk of the process's stdout.
    Stdout = 1,
    /// Server → client: a chunk of the process's stderr.
    Stderr = 2,
    /// Server → client: the stage ended; payload is an i32 BE: the exit code, or 128 + signal
    /// number if the process was killed by a signal. Always the last frame.
    Exit = 3,
    /// Server → client: the stage could not be started (payload: UTF-8 message). Last frame.
    Error = 4,
    /// Client → server: stop the stage (SIGTERM, then SIGKILL after the grace). Empty payload.
    Cancel = 5,
    /// Server → client: the process was spawned; from here on a lost connection means the stage
    /// may have run. Empty payload.
    Started = 6,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Exit,
            4 => Self::Error,
            5 => Self::Cancel,
            6 => Self::Started,
            _ => return None,
        })
    }

    /// Whether `len` is an allowed payload length for this kind.
    fn allows(self, len: u32) -> bool {
        match self {
            Self::Stdout | Self::Stderr => len <= MAX_DATA_FRAME,
            Self::Exit => len == 4,
            Self::Error => len <= MAX_ERROR_FRAME,
            Self::Cancel | Self::Started => len == 0,
        }
    }
}

/// The 5-byte header of a frame with a `len`-byte payload.
pub fn frame_header(kind: FrameKind, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [kind as u8, 0, 0, 0, 0];
    header[1..].copy_from_slice(&len.to_be_bytes());
    header
}

/// Appends a whole frame (header and payload) to `out`. Payloads over `u32::MAX` are a bug.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload fits in u32");
    out.extend_from_slice(&frame_header(kind, len));
    out.extend_from_slice(payload);
}

/// A complete `Exit` frame.
pub fn exit_frame(code: i32) -> [u8; FRAME_HEADER_LEN + 4] {
    let mut frame = [0u8; FRAME_HEADER_LEN + 4];
    frame[..FRAME_HEADER_LEN].copy_from_slice(&frame_header(FrameKind::Exit, 4));
    frame[FRAME_HEADER_LEN..].copy_from_slice(&code.to_be_bytes());
    frame
}

/// What a [`FrameDecoder`] found in the bytes fed to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Part (or all) of a stdout frame's payload, borrowed from the input: write it out as is.
    Stdout(&'a [u8]),
    /// Part (or all) of a stderr frame's payload, borrowed from the input.
    Stderr(&'a [u8]),
    /// An `Exit` frame.
    Exit(i32),
    /// An `Error` frame (lossily decoded if it is not UTF-8).
    Error(String),
    /// A `Cancel` frame.
    Cancel,
    /// A `Started` frame.
    Started,
}

/// Incremental frame parser: feed it whatever the connection yielded, in any split.
/// Data payloads are handed out as borrowed slices as soon as they arrive, never buffered, so
/// output reaches its destination without waiting for the rest of the frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Kind and bytes left of the frame whose payload is being read.
    current: Option<(FrameKind, usize)>,
    /// Payload of a small control frame (exit, error) being assembled.
    small: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the decoder is between frames (nothing partial is pending).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }

    /// Consumes bytes from the front of `input` and returns the next event, or `None` once
    /// `input` is used up without completing one. Call again until it returns `None`.
    /// A kind or length outside the protocol is an error before any payload is read.
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<Event<'a>>, ProtocolError> {
        loop {
            let Some((kind, left)) = self.current else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                self.header_len += n;
                *input = &input[n..];
                if self.header_len < FRAME_HEADER_LEN {
                    return Ok(None);
                }
                self.header_len = 0;
                let kind =
                    FrameKind::from_byte(self.header[0]).ok_or(ProtocolError::UnexpectedFrameKind(self.header[0]))?;
                let len = u32::from_be_bytes(self.header[1..].try_into().expect("4 bytes"));
                if !kind.allows(len) {
                    return Err(ProtocolError::BadFrameLength { kind, len });
                }
                match kind {
                    FrameKind::Cancel => return Ok(Some(Event::Cancel)),
                    FrameKind::Started => return Ok(Some(Event::Started)),
                    FrameKind::Error if len == 0 => return Ok(Some(Event::Error(String::new()))),
                    _ if len == 0 && matches!(kind, FrameKind::Stdout | FrameKind::Stderr) => continue,
                    _ => {}
                }
                self.current = Some((kind, len as usize));
                self.small.clear();
                continue;
            };
            if input.is_empty() {
                return Ok(None);
            }
            let n = left.min(input.len());
            let (chunk, tail) = input.split_at(n);
            *input = tail;
            let left = left - n;
            self.current = if left == 0 { None } else { Some((kind, left)) };
            match kind {
                FrameKind::Stdout => return Ok(Some(Event::Stdout(chunk))),
                FrameKind::Stderr => return Ok(Some(Event::Stderr(chunk))),
                _ => {
                    self.small.extend_from_slice(chunk);
                    if left > 0 {
                        continue;
                    }
                    let payload = std::mem::take(&mut self.small);
                    return Ok(Some(match kind {
                        FrameKind::Exit => Event::Exit(i32::from_be_bytes(payload[..].try_into().expect("4 bytes"))),
                        _ => Event::Error(String::from_utf8_lossy(&payload).into_owned()),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_request() -> RunRequest {
        RunRequest {
            argv: vec!["sh".into(), "-c".into(), "echo é".into()],
            env: vec![("CI_JOB_ID".into(), "42".into()), ("EMPTY".into(), String::new())],
            kill_grace: Duration::from_millis(2500),
            stdin: b"exit 3\n\0\xff".to_vec(),
        }
    }

    fn decode_all(mut input: &[u8]) -> Result<Vec<String>, ProtocolError> {
        let mut decoder = FrameDecoder::new();
        let mut events = Vec::new();
        while let Some(event) = decoder.next(&mut input)? {
            events.push(format!("{event:?}"));
        }
        Ok(events)
    }

    #[test]
    fn run_request_round_trips() {
        let request = Request::Run(run_request());
        let bytes = encode_request(&request);
        assert_eq!(&bytes[..4], b"ECSR");
        assert_eq!(read_request(&mut &bytes[..]).unwrap(), request);
    }

    #[test]
    fn ping_round_trips_with_an_empty_body() {
        let bytes = encode_request(&Request::Ping);
        assert_eq!(bytes.len(), REQUEST_HEADER_LEN);
        assert_eq!(read_request(&mut &bytes[..]).unwrap(), Request::Ping);
    }

    #[test]
    fn kill_grace_saturates_instead_of_wrapping() {
        let mut run = run_request();
        run.kill_grace = Duration::from_secs(u64::MAX / 2);
        let Request::Run(back) = read_request(&mut &encode_request(&Request::Run(run))[..]).unwrap() else {
            panic!("not a run request")
        };
        assert_eq!(back.kill_grace, Duration::from_millis(u32::MAX.into()));
    }

    #[test]
    fn request_over_the_cap_is_refused_before_allocating() {
        let mut bytes = encode_request(&Request::Run(run_request()));
        bytes[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        // The reader holds only the header and a little body: a 4 GiB allocation would show as
        // an abort or a read error, not as this error.
        let err = read_request(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::RequestTooLarge(u32::MAX)), "{err}");
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn field_length_beyond_the_body_is_truncation_not_allocation() {
        let mut bytes = encode_request(&Request::Run(run_request()));
        // First argv string length (after grace and argc) claims 4 GiB.
        let at = REQUEST_HEADER_LEN + 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = read_request(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated("argv")), "{err}");
    }

    #[test]
    fn huge_argv_count_is_refused_and_one_within_the_cap_is_truncation() {
        let mut bytes = encode_request(&Request::Run(run_request()));
        let at = REQUEST_HEADER_LEN + 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_request(&mut &bytes[..]),
            Err(ProtocolError::TooManyArgs(u32::MAX))
        ));
        bytes[at..at + 4].copy_from_slice(&MAX_ARGS.to_be_bytes());
        assert!(matches!(
            read_request(&mut &bytes[..]),
            Err(ProtocolError::Truncated(_))
        ));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let good = encode_request(&Request::Run(run_request()));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'G';
        assert!(matches!(
            read_request(&mut &bad_magic[..]),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut bad_version = good.clone();
        bad_version[5] = 9;
        let err = read_request(&mut &bad_version[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version 9 is not supported (this side speaks 1)"
        );
        let mut bad_kind = good.clone();
        bad_kind[6] = 77;
        assert!(matches!(
            read_request(&mut &bad_kind[..]),
            Err(ProtocolError::UnknownRequestKind(77))
        ));
        let cut = &good[..good.len() - 1];
        assert!(matches!(read_request(&mut &cut[..]), Err(ProtocolError::Io(_))));
        assert!(matches!(read_request(&mut &good[..5]), Err(ProtocolError::Io(_))));
    }

    #[test]
    fn trailing_bytes_and_bad_utf8_and_empty_argv_are_refused() {
        let mut trailing = encode_request(&Request::Run(run_request()));
        trailing.push(0);
        let len = (trailing.len() - REQUEST_HEADER_LEN) as u32;
        trailing[7..11].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            read_request(&mut &trailing[..]),
            Err(ProtocolError::TrailingBytes(1))
        ));

        let mut utf8 = encode_request(&Request::Run(run_request()));
        let at = REQUEST_HEADER_LEN + 12; // first byte of argv[0]
        utf8[at] = 0xff;
        assert!(matches!(
            read_request(&mut &utf8[..]),
            Err(ProtocolError::InvalidUtf8("argv"))
        ));

        let mut empty = run_request();
        empty.argv.clear();
        let bytes = encode_request(&Request::Run(empty));
        assert!(matches!(read_request(&mut &bytes[..]), Err(ProtocolError::EmptyArgv)));
    }

    #[test]
    fn argv_and_env_counts_and_sizes_are_capped_with_clear_messages() {
        let at_argc = REQUEST_HEADER_LEN + 4;
        let mut bytes = encode_request(&Request::Run(run_request()));
        bytes[at_argc..at_argc + 4].copy_from_slice(&(MAX_ARGS + 1).to_be_bytes());
        let err = read_request(&mut &bytes[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "run request has 4097 argv entries, over the limit of 4096"
        );

        let many_env = RunRequest {
            env: (0..=MAX_ENV_VARS).map(|i| (format!("V{i}"), String::new())).collect(),
            ..run_request()
        };
        let err = read_request(&mut &encode_request(&Request::Run(many_env))[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::TooManyEnvVars(4097)), "{err}");

        // At the caps exactly: accepted.
        let full = RunRequest {
            argv: (0..MAX_ARGS).map(|_| String::new()).collect(),
            env: vec![("BIG".into(), "x".repeat(MAX_ARGS_ENV_LEN - 3))],
            ..run_request()
        };
        assert!(read_request(&mut &encode_request(&Request::Run(full.clone()))[..]).is_ok());
        let over = RunRequest {
            env: vec![("BIG".into(), "x".repeat(MAX_ARGS_ENV_LEN - 2))],
            ..full
        };
        let err = read_request(&mut &encode_request(&Request::Run(over))[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::ArgsEnvTooLarge), "{err}");

        for name in ["", "A=B", "A\0"] {
            let bad = RunRequest {
                env: vec![(name.into(), "v".into())],
                ..run_request()
            };
            let err = read_request(&mut &encode_request(&Request::Run(bad))[..]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadEnvName(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn a_body_announced_but_not_sent_is_not_allocated_up_front() {
        let mut bytes = encode_request(&Request::Ping);
        bytes[6] = KIND_RUN;
        bytes[7..11].copy_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
        let err = read_request(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(&err, ProtocolError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }

    /// xorshift64*: random enough for throwing bytes at the decoders, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn decoding_never_panics_on_random_or_mangled_input() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let good = encode_request(&Request::Run(run_request()));
        for round in 0..20_000 {
            let mut input: Vec<u8> = match round % 3 {
                // Pure noise.
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                // A valid header, then noise: reaches the body decoder.
                1 => {
                    let mut v = good[..REQUEST_HEADER_LEN].to_vec();
                    let body: Vec<u8> = (0..rng.below(128)).map(|_| rng.next() as u8).collect();
                    v[7..11].copy_from_slice(&(body.len() as u32).to_be_bytes());
                    v.extend(body);
                    v
                }
                // A valid request with a few bytes changed and maybe cut short.
                _ => {
                    let mut v = good.clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(v.len());
                        v[at] = rng.next() as u8;
                    }
                    v.truncate(rng.below(v.len() + 1));
                    v
                }
            };
            let _ = read_request(&mut &input[..]);
            // The same bytes as frames, fed in random splits.
            let mut decoder = FrameDecoder::new();
            let mut rest = &mut input[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let (chunk, tail) = rest.split_at_mut(n);
                let mut chunk: &[u8] = chunk;
                while let Ok(Some(_)) = decoder.next(&mut chunk) {}
                rest = tail;
            }
        }
    }

    #[test]
    fn debug_of_a_request_hides_env_values_and_stdin() {
        let shown = format!("{:?}", run_request());
        assert!(
            shown.contains("CI_JOB_ID") && !shown.contains("42") && !shown.contains("exit 3"),
            "{shown}"
        );
    }

    #[test]
    fn frames_decode_in_order() {
        let mut bytes = Vec::new();
        encode_frame(FrameKind::Started, &[], &mut bytes);
        encode_frame(FrameKind::Stdout, b"out", &mut bytes);
        encode_frame(FrameKind::Stderr, b"err", &mut bytes);
        encode_frame(FrameKind::Stdout, b"", &mut bytes);
        bytes.extend_from_slice(&exit_frame(-1));
        assert_eq!(
            decode_all(&bytes).unwrap(),
            [
                "Started",
                "Stdout([111, 117, 116])",
                "Stderr([101, 114, 114])",
                "Exit(-1)"
            ]
        );
    }

    #[test]
    fn frames_fed_one_byte_at_a_time_give_the_same_bytes() {
        let mut bytes = Vec::new();
        encode_frame(FrameKind::Stdout, b"hello", &mut bytes);
        encode_frame(FrameKind::Error, "cannot spawn `x`".as_bytes(), &mut bytes);
        bytes.extend_from_slice(&exit_frame(137));
        let mut decoder = FrameDecoder::new();
        let (mut out, mut others) = (Vec::new(), Vec::new());
        for byte in bytes.chunks(1) {
            let mut input = byte;
            while let Some(event) = decoder.next(&mut input).unwrap() {
                match event {
                    Event::Stdout(b) => out.extend_from_slice(b),
                    other => others.push(format!("{other:?}")),
                }
            }
            assert!(input.is_empty());
        }
        assert_eq!(out, b"hello");
        assert_eq!(others, ["Error(\"cannot spawn `x`\")", "Exit(137)"]);
        assert!(decoder.at_boundary());
    }

    #[test]
    fn frame_length_over_the_cap_is_refused_from_the_header_alone() {
        let header = frame_header(FrameKind::Stdout, MAX_DATA_FRAME + 1);
        let err = decode_all(&header).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::BadFrameLength {
                    kind: FrameKind::Stdout,
                    ..
                }
            ),
            "{err}"
        );
        let header = frame_header(FrameKind::Error, u32::MAX);
        assert!(decode_all(&header).is_err());
    }

    #[test]
    fn control_frames_must_have_their_exact_length() {
        assert!(decode_all(&frame_header(FrameKind::Exit, 3)).is_err());
        assert!(decode_all(&frame_header(FrameKind::Cancel, 1)).is_err());
        assert_eq!(decode_all(&frame_header(FrameKind::Cancel, 0)).unwrap(), ["Cancel"]);
        assert_eq!(decode_all(&frame_header(FrameKind::Error, 0)).unwrap(), ["Error(\"\")"]);
        let err = decode_all(&[9, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err.to_string(), "unexpected frame kind 9");
    }
}
