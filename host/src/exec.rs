//! Running one stage's script inside a task container with Docker exec, streaming its output
//! back byte-exact, and killing it inside the container when gitlab-runner cancels us.
//!
//! The script travels on the exec's stdin (gitlab-runner's scripts read nothing from stdin:
//! their body runs `< /dev/null`), into the first shell found, as the Docker executor does.
//! Docker cannot kill an exec'd process (moby#35703), so every exec carries a marker in its
//! environment, inherited by all its children, and cancel kills the marked processes with a
//! second exec.

use std::future::Future;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::unix::io::FromRawFd;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::docker::{DockerError, DockerHost};
use crate::protocol::StageRoute;

/// The environment variable that marks every process of one stage's exec.
pub const EXEC_MARKER_VAR: &str = "ECS_EXECUTOR_EXEC";

/// Finds a shell the way GitLab's Docker executor does and makes it read the script on stdin.
const DETECT_SHELL: &str = r#"for s in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh /bin/sh /busybox/sh; do
  if [ -x "$s" ]; then exec "$s"; fi
done
echo "shell not found" >&2
exit 1"#;

/// GitLab's helper images ship `gitlab-runner-helper`; the cache and artifact stages call
/// `gitlab-runner`. Where only the former exists, a link to it goes first on PATH.
const HELPER_PATH: &str = r#"if ! command -v gitlab-runner >/dev/null 2>&1 && h=$(command -v gitlab-runner-helper); then
  d=/tmp/.ecs-executor-bin; mkdir -p "$d" && ln -sf "$h" "$d/gitlab-runner" && PATH="$d:$PATH" && export PATH
fi"#;

/// How long the script's processes get between SIGTERM and SIGKILL on cancel.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// The shell command a stage runs in its container (the script comes on its stdin).
pub fn stage_wrapper(route: StageRoute) -> String {
    match route {
        // The helper writes with umask 0000 so a non-root build user can use the checkout.
        StageRoute::Helper => format!("umask 0000\n{HELPER_PATH}\n{DETECT_SHELL}"),
        StageRoute::Build => DETECT_SHELL.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The script ended with this exit code.
    Exited(i64),
    /// We were told to stop; the script's processes were killed in the container.
    Cancelled,
    /// The script died with its container: the task was stopped under it (StopTask, the
    /// instance went away, an essential container exited). `state` is Docker's word on the
    /// container ("exited (137)", "removed", ...).
    ContainerStopped { exit_code: i64, state: String },
}

/// One stage's script in one container.
pub struct ExecStream<'a> {
    pub docker: &'a DockerHost,
    pub container_id: &'a str,
    pub route: StageRoute,
    /// Unique per exec (the stage name plus our pid is enough on one job).
    pub marker: String,
}

impl ExecStream<'_> {
    /// Run `script`, copying its stdout and stderr to ours as chunks arrive. Returns when the
    /// script ends, or after killing it when `cancel` completes first.
    pub async fn run(&self, script: Vec<u8>, cancel: impl Future<Output = ()>) -> Result<ExecEnd, DockerError> {
        let api = &self.docker.api;
        let wrapper = stage_wrapper(self.route);
        let exec = api
            .create_exec(
                self.container_id,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    env: Some(vec![format!("{EXEC_MARKER_VAR}={}", self.marker)]),
                    cmd: Some(vec!["sh".to_string(), "-c".to_string(), wrapper]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.docker.error(&e))?;
        let started = api
            // Small on purpose: the upgraded stream zero-fills the unused capacity on every read,
            // so a large buffer costs a memset per TLS record (34% of CPU at 256 KiB).
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    output_capacity: Some(16 * 1024),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.docker.error(&e))?;
        let StartExecResults::Attached { mut output, mut input } = started else {
            unreachable!("start_exec without detach always attaches")
        };

        // Feed the script and close stdin (EOF ends the shell's input), while output flows.
        let feed = async move {
            let _ = input.write_all(&script).await;
            let _ = input.shutdown().await;
        };
        let copy = async {
            let mut out = RawOut::new();
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => out.stdout(&message),
                    Ok(LogOutput::StdErr { message }) => out.stderr(&message),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => return Err(self.lost(self.docker.error(&e).to_string())),
                }
            }
            Ok(())
        };
        let streamed = async { tokio::join!(feed, copy).1 };
        tokio::pin!(streamed);
        tokio::pin!(cancel);

        tokio::select! {
            result = &mut streamed => {
                result?;
                let inspect = api
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(|e| self.lost(self.docker.error(&e).to_string()))?;
                match (inspect.running, inspect.exit_code) {
                    (Some(false), Some(code)) if code != 0 => match self.container_stopped(code > 128).await {
                        Some(state) => Ok(ExecEnd::ContainerStopped { exit_code: code, state }),
                        None => Ok(ExecEnd::Exited(code)),
                    },
                    (Some(false), Some(code)) => Ok(ExecEnd::Exited(code)),
                    _ => Err(self.lost("the output stream ended while the script was still running".into())),
                }
            }
            () = &mut cancel => {
                self.kill("TERM").await;
                // Give the script's own traps a moment, then make sure nothing is left.
                if tokio::time::timeout(KILL_GRACE, &mut streamed).await.is_err() {
                    self.kill("KILL").await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut streamed).await;
                }
                Ok(ExecEnd::Cancelled)
            }
        }
    }

    /// The connection to Docker broke mid-stage: say what that costs the job.
    fn lost(&self, why: String) -> DockerError {
        DockerError::Api {
            address: self.docker.address.clone(),
            message: format!(
                "connection lost while the stage ran: {why}. Output after this point was lost and the \
                 script's exit status is unknown (it may still be running in the container until cleanup \
                 stops the task)"
            ),
        }
    }

    /// `Some(Docker's state)` when the container is no longer running (or gone). `by_signal`:
    /// the script died of a signal, as it does when its container is killed; Docker may still
    /// show the container running for a moment then, so look again for up to 3 s.
    pub async fn container_stopped(&self, by_signal: bool) -> Option<String> {
        let looks = if by_signal { 15 } else { 1 };
        for look in 0..looks {
            if look > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Some(state) = self.container_state_if_stopped().await {
                return Some(state);
            }
        }
        None
    }

    async fn container_state_if_stopped(&self) -> Option<String> {
        match self
            .docker
            .api
            .inspect_container(
                self.container_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => {
                let state = c.state?;
                if state.running == Some(true) {
                    return None;
                }
                let mut text = format!(
                    "{} ({})",
                    state.status.map(|s| s.to_string()).unwrap_or_else(|| "stopped".into()),
                    state.exit_code.unwrap_or(-1)
                );
                if state.oom_killed == Some(true) {
                    text.push_str(", killed for lack of memory");
                }
                Some(text)
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Some("removed".into()),
            // Docker unreachable: nothing is known, the exit code stands.
            Err(_) => None,
        }
    }

    /// Send `signal` to every process in the container that carries this exec's marker.
    async fn kill(&self, signal: &str) {
        let needle = format!("{EXEC_MARKER_VAR}={}", self.marker);
        let script = format!(
            r#"for p in /proc/[0-9]*; do
  if grep -qs "{needle}" "$p/environ" 2>/dev/null; then kill -{signal} "${{p#/proc/}}" 2>/dev/null; fi
done; true"#
        );
        let api = &self.docker.api;
        let Ok(exec) = api
            .create_exec(
                self.container_id,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(vec!["sh".to_string(), "-c".to_string(), script]),
                    ..Default::default()
                },
            )
            .await
        else {
            return;
        };
        if let Ok(StartExecResults::Attached { mut output, .. }) = api.start_exec(&exec.id, None).await {
            while output.next().await.is_some() {}
        }
    }
}

/// Unbuffered writes to our own stdout/stderr: chunks reach gitlab-runner in the order they
/// came, with nothing held back in a line buffer.
struct RawOut {
    out: ManuallyDrop<std::fs::File>,
    err: ManuallyDrop<std::fs::File>,
}

impl RawOut {
    fn new() -> RawOut {
        // SAFETY: fds 1 and 2 stay open for the whole process; ManuallyDrop never closes them.
        unsafe {
            RawOut {
                out: ManuallyDrop::new(std::fs::File::from_raw_fd(1)),
                err: ManuallyDrop::new(std::fs::File::from_raw_fd(2)),
            }
        }
    }

    fn stdout(&mut self, bytes: &[u8]) {
        // A closed stdout (runner gone) must not stop us from reaping the exec.
        let _ = self.out.write_all(bytes);
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let _ = self.err.write_all(bytes);
    }
}
