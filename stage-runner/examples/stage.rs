//! Drive a stage runner by hand, e.g. for measurements:
//!
//! ```text
//! stage credentials DIR          # writes ca.pem server.pem server-key.pem client.pem client-key.pem
//! stage run ADDR:PORT DIR SCRIPT # runs `sh -c SCRIPT` there; output to our fds, exits with its code
//! stage probe ADDR:PORT DIR      # ping
//! ```

use ecs_executor_stage_runner::client::{self, End};
use ecs_executor_stage_runner::credentials::JobCredentials;
use ecs_executor_stage_runner::protocol::RunRequest;
use ecs_executor_stage_runner::tls;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["credentials", dir] => credentials(Path::new(dir)).map(|()| 0),
        ["run", addr, dir, script] => run(addr, Path::new(dir), script),
        ["probe", addr, dir] => probe(addr, Path::new(dir)).map(|()| 0),
        _ => Err("usage: stage credentials DIR | stage run ADDR DIR SCRIPT | stage probe ADDR DIR".into()),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(message) => {
            eprintln!("stage: {message}");
            ExitCode::from(125)
        }
    }
}

fn credentials(dir: &Path) -> Result<(), String> {
    let c = JobCredentials::generate().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (name, pem) in [
        ("ca.pem", &c.ca_pem),
        ("server.pem", &c.server_cert_pem),
        ("server-key.pem", &c.server_key_pem),
        ("client.pem", &c.client_cert_pem),
        ("client-key.pem", &c.client_key_pem),
    ] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| format!("{name}: {e}"))?;
        std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

fn config(dir: &Path) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    tls::client_config(&read("ca.pem")?, &read("client.pem")?, &read("client-key.pem")?).map_err(|e| e.to_string())
}

fn run(addr: &str, dir: &Path, script: &str) -> Result<i32, String> {
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let request = RunRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        kill_grace: Duration::from_secs(5),
        stdin: Vec::new(),
    };
    // Our own fds 1 and 2, unbuffered, not closed on drop.
    // SAFETY: fds 1 and 2 are open for the life of the process, and ManuallyDrop keeps these
    // Files from closing them.
    let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut err = ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
    let end = client::run(
        addr,
        config(dir)?,
        Duration::from_secs(5),
        &request,
        None,
        &mut *out,
        &mut *err,
    );
    match end.map_err(|e| e.to_string())? {
        End::Exited(code) => Ok(code),
        End::Cancelled => Ok(130),
    }
}

fn probe(addr: &str, dir: &Path) -> Result<(), String> {
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    client::probe(addr, config(dir)?, Duration::from_secs(5)).map_err(|e| e.to_string())
}
