//! `ecs-executor-stage-runner serve --listen ADDR:PORT --dir DIR`: the runner in a job container.
//!
//! DIR holds the job's `ca.pem`, `server.pem` and `server-key.pem`, shipped by the host at
//! prepare time. Logs one line per connection to stderr. Exit codes: 2 for a usage error,
//! 1 if the runner cannot start or stops serving.

use ecs_executor_stage_runner::{server, tls};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: ecs-executor-stage-runner serve --listen ADDR:PORT --dir DIR
       ecs-executor-stage-runner --version

DIR must hold ca.pem, server.pem and server-key.pem.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("ecs-executor-stage-runner {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("serve") => match parse_serve(&args[1..]) {
            Ok((listen, dir)) => match serve(listen, &dir) {
                Ok(never) => match never {},
                Err(message) => {
                    eprintln!("ecs-executor-stage-runner: {message}");
                    ExitCode::FAILURE
                }
            },
            Err(message) => usage_error(&message),
        },
        _ => usage_error("expected `serve` or `--version`"),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("ecs-executor-stage-runner: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn parse_serve(args: &[String]) -> Result<(SocketAddr, PathBuf), String> {
    let (mut listen, mut dir) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            // An address, not a host name: no resolver in a static binary.
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e} (want IP:PORT)"))?),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok((listen.ok_or("--listen is required")?, dir.ok_or("--dir is required")?))
}

fn serve(listen: SocketAddr, dir: &Path) -> Result<std::convert::Infallible, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (ca, cert, key) = (read("ca.pem")?, read("server.pem")?, read("server-key.pem")?);
    let config = tls::server_config(&ca, &cert, &key).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Orphans of stages come to us, not to the container's PID 1 (which may never reap them),
    // and a cancel can still find them.
    server::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "ecs-executor-stage-runner {}: listening on {bound}",
        env!("CARGO_PKG_VERSION")
    );
    server::serve(listener, config, server::Limits::default()).map_err(|e| format!("accepting connections: {e}"))
}
