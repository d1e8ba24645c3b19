//! The Docker exec path of a stage: one stage's script inside a task container with Docker exec, streaming its output
//! back byte-exact, and killing it inside the container when gitlab-runner cancels us.
//!
//! The script travels on the exec's stdin (gitlab-runner's scripts read nothing from stdin:
//! their body runs `< /dev/null`), into the first shell found, as the Docker executor does.
//! Docker cannot kill an exec'd process (moby#35703), so every exec carries a marker in its
//! environment, inherited by all its children, and cancel kills the marked processes with a
//! second exec.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{RawOut, StageEnd};
use crate::docker::exec::{AttachedExec, ExecChunk, ExecCommand};
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
    pub async fn run(&self, script: Vec<u8>, cancel: impl Future<Output = ()>) -> Result<StageEnd, DockerError> {
        let command = ExecCommand {
            cmd: vec!["sh".to_string(), "-c".to_string(), stage_wrapper(self.route)],
            env: vec![format!("{EXEC_MARKER_VAR}={}", self.marker)],
            // The container's own user, which Docker gives an exec that names none: the job's
            // `docker: user:` (or a plugin's `user`) as ECS set it, else the image's.
            user: None,
        };
        let AttachedExec {
            id,
            mut output,
            mut input,
        } = self.docker.exec_attached(self.container_id, command).await?;

        // Feed the script and close stdin (EOF ends the shell's input), while output flows.
        let feed = async move {
            let _ = input.write_all(&script).await;
            let _ = input.shutdown().await;
        };
        let copy = async {
            let mut out = RawOut::new();
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(ExecChunk::Stdout(message)) => out.stdout(&message),
                    Ok(ExecChunk::Stderr(message)) => out.stderr(&message),
                    Err(e) => return Err(self.lost(e.to_string())),
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
                let status = self.docker.exec_status(&id).await.map_err(|e| self.lost(e.to_string()))?;
                match (status.running, status.exit_code) {
                    (Some(false), Some(code)) if code != 0 => match self.container_stopped(code > 128).await {
                        Some(state) => Ok(StageEnd::ContainerStopped { exit_code: code, state }),
                        None => Ok(StageEnd::Exited(code)),
                    },
                    (Some(false), Some(code)) => Ok(StageEnd::Exited(code)),
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
                Ok(StageEnd::Cancelled)
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
            match self.docker.container_info(self.container_id).await {
                Ok(None) => return Some("removed".into()),
                Ok(Some(info)) if !info.running => {
                    let mut text = format!("{} ({})", info.status, info.exit_code.unwrap_or(-1));
                    if info.oom_killed {
                        text.push_str(", killed for lack of memory");
                    }
                    return Some(text);
                }
                Ok(Some(_)) => {}
                // Docker unreachable: nothing is known, the exit code stands.
                Err(_) => return None,
            }
        }
        None
    }

    /// Send `signal` to every process in the container that carries this exec's marker.
    async fn kill(&self, signal: &str) {
        let needle = format!("{EXEC_MARKER_VAR}={}", self.marker);
        let script = format!(
            r#"for p in /proc/[0-9]*; do
  if grep -qs "{needle}" "$p/environ" 2>/dev/null; then kill -{signal} "${{p#/proc/}}" 2>/dev/null; fi
done; true"#
        );
        let _ = self
            .docker
            .exec_capture(self.container_id, ExecCommand::new(&["sh", "-c", &script]), b"")
            .await;
    }
}
