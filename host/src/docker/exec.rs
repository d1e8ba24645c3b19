//! Docker exec: the one routine that starts a command in a task container, in its three uses —
//! attached with streaming output (a stage), run to completion with its output captured (a
//! launch file, `/etc/hosts` lines, a port probe, a kill), and detached (the stage runner).

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{DockerError, DockerHost};

/// What to run: the command, extra environment (`NAME=value`) and the user (`None`: the
/// image's).
#[derive(Debug, Clone, Default)]
pub struct ExecCommand {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
}

impl ExecCommand {
    pub fn new<S: AsRef<str>>(cmd: &[S]) -> ExecCommand {
        ExecCommand {
            cmd: cmd.iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }
}

/// A chunk of an attached exec's output, in the order Docker sent it.
pub enum ExecChunk {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

/// An exec started with stdin, stdout and stderr attached.
pub struct AttachedExec {
    pub id: String,
    pub output: Pin<Box<dyn Stream<Item = Result<ExecChunk, DockerError>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// An exec's state after its output ended.
pub struct ExecStatus {
    pub running: Option<bool>,
    pub exit_code: Option<i64>,
}

impl DockerHost {
    async fn create_exec(&self, container_id: &str, command: ExecCommand, attach: bool) -> Result<String, DockerError> {
        let exec = self
            .api
            .create_exec(
                container_id,
                CreateExecOptions {
                    attach_stdin: Some(attach),
                    attach_stdout: Some(attach),
                    attach_stderr: Some(attach),
                    tty: Some(false),
                    env: (!command.env.is_empty()).then_some(command.env),
                    user: command.user,
                    cmd: Some(command.cmd),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(&e))?;
        Ok(exec.id)
    }

    /// Start `command` in the container with stdin, stdout and stderr attached.
    pub async fn exec_attached(&self, container_id: &str, command: ExecCommand) -> Result<AttachedExec, DockerError> {
        let id = self.create_exec(container_id, command, true).await?;
        let started = self
            .api
            // Small on purpose: the upgraded stream zero-fills the unused capacity on every read,
            // so a large buffer costs a memset per TLS record (34% of CPU at 256 KiB).
            .start_exec(
                &id,
                Some(StartExecOptions {
                    output_capacity: Some(16 * 1024),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.error(&e))?;
        let StartExecResults::Attached { output, input } = started else {
            unreachable!("start_exec without detach always attaches")
        };
        let this = self.clone();
        let output = output.filter_map(move |chunk| {
            let mapped = match chunk {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok(ExecChunk::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(ExecChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(this.error(&e))),
            };
            std::future::ready(mapped)
        });
        Ok(AttachedExec {
            id,
            output: Box::pin(output),
            input,
        })
    }

    /// Start `command` detached: it lives as long as the container (or until it exits).
    pub async fn exec_detached(&self, container_id: &str, command: ExecCommand) -> Result<(), DockerError> {
        let id = self.create_exec(container_id, command, false).await?;
        self.api
            .start_exec(
                &id,
                Some(StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.error(&e))?;
        Ok(())
    }

    /// Run `command` to its end with `input` on stdin: (exit code, stdout and stderr as text).
    /// The exit code is -1 when Docker does not report one.
    pub async fn exec_capture(
        &self,
        container_id: &str,
        command: ExecCommand,
        input: &[u8],
    ) -> Result<(i64, String), DockerError> {
        let AttachedExec {
            id,
            mut output,
            input: mut stdin,
        } = self.exec_attached(container_id, command).await?;
        let data = input.to_vec();
        let feed = async move {
            let _ = stdin.write_all(&data).await;
            let _ = stdin.shutdown().await;
        };
        let mut text = String::new();
        let read = async {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    ExecChunk::Stdout(b) | ExecChunk::Stderr(b) => text.push_str(&String::from_utf8_lossy(&b)),
                }
            }
            Ok::<_, DockerError>(())
        };
        tokio::join!(feed, read).1?;
        let code = self.exec_status(&id).await?.exit_code.unwrap_or(-1);
        Ok((code, text))
    }

    /// Whether an exec still runs, and its exit code once it ended.
    pub async fn exec_status(&self, exec_id: &str) -> Result<ExecStatus, DockerError> {
        let inspect = self.api.inspect_exec(exec_id).await.map_err(|e| self.error(&e))?;
        Ok(ExecStatus {
            running: inspect.running,
            exit_code: inspect.exit_code,
        })
    }
}
