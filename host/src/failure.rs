//! How a step failed, and the ONE place where that becomes an exit code.
//!
//! gitlab-runner reads our exit code: `BUILD_FAILURE_EXIT_CODE` means the user's job failed
//! (their script, their image, a policy that refused their job), `SYSTEM_FAILURE_EXIT_CODE`
//! means we or the infrastructure failed (and the runner may retry). Anything else would be
//! an "unknown" failure, so every error in this crate is classified here. The admin commands
//! use the same mapping with fixed numbers (see [`Caller`]).

use std::fmt;

/// Whose fault a failure is, as gitlab-runner must learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The user's job: exit with `BUILD_FAILURE_EXIT_CODE`.
    Build,
    /// The executor or the infrastructure: exit with `SYSTEM_FAILURE_EXIT_CODE`.
    System,
}

/// A failed step: what went wrong (already worded for the job log) and whose fault it is.
#[derive(Debug)]
pub struct Failure {
    pub blame: Blame,
    pub message: String,
    /// The user's script's own exit code, written to `BUILD_EXIT_CODE_FILE` (run only).
    pub script_exit_code: Option<i32>,
}

impl Failure {
    pub fn build(message: impl Into<String>) -> Self {
        Failure {
            blame: Blame::Build,
            message: message.into(),
            script_exit_code: None,
        }
    }

    pub fn system(message: impl Into<String>) -> Self {
        Failure {
            blame: Blame::System,
            message: message.into(),
            script_exit_code: None,
        }
    }

    /// The user's script exited with `code` (non-zero).
    pub fn script(code: i32) -> Self {
        Failure {
            blame: Blame::Build,
            message: format!("the job script exited with code {code}"),
            script_exit_code: Some(code),
        }
    }

    /// Prefix the message with where the failure happened ("prepare: ...").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Who called the binary, which decides what the exit code numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// gitlab-runner's custom executor (`config`, `prepare`, `run`, `cleanup`): it names the
    /// codes in `BUILD_FAILURE_EXIT_CODE` / `SYSTEM_FAILURE_EXIT_CODE`.
    GitlabRunner,
    /// An admin or a plugin author (`check`, `gc`, `unregister`, `plan`, `plugin ...`, `tls`):
    /// 1 when what was checked or asked is refused (a failed check case, a plugin that refused
    /// the job), 2 when the command could not do its work.
    Admin,
}

/// The exit codes gitlab-runner asked for (its env), with its documented defaults.
#[derive(Debug, Clone, Copy)]
pub struct ExitCodes {
    pub build_failure: i32,
    pub system_failure: i32,
}

impl ExitCodes {
    /// gitlab-runner's codes from its environment, or the admin commands' fixed 1 and 2.
    pub fn for_caller(caller: Caller) -> Self {
        match caller {
            Caller::Admin => ExitCodes {
                build_failure: 1,
                system_failure: 2,
            },
            Caller::GitlabRunner => {
                let read = |name: &str, default: i32| {
                    std::env::var(name)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(default)
                };
                ExitCodes {
                    build_failure: read("BUILD_FAILURE_EXIT_CODE", 1),
                    system_failure: read("SYSTEM_FAILURE_EXIT_CODE", 2),
                }
            }
        }
    }

    /// The exit code for a failure. This is the only mapping from failures to exit codes.
    pub fn for_failure(&self, failure: &Failure) -> i32 {
        match failure.blame {
            Blame::Build => self.build_failure,
            Blame::System => self.system_failure,
        }
    }
}

/// The end of every command: its result reported and turned into the process's exit code.
/// `command` names it in the error line.
pub fn exit(caller: Caller, command: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    crate::metrics::finish(
        command,
        match &result {
            Ok(()) => "ok",
            Err(f) if f.blame == Blame::Build => "build_failure",
            Err(_) => "system_failure",
        },
    );
    let failure = match result {
        Ok(()) => return std::process::ExitCode::SUCCESS,
        Err(failure) => failure,
    };
    // A script's own failure is already in the job log, in its own words.
    if failure.script_exit_code.is_none() {
        eprintln!("ecs-executor: {command}: {failure}");
    }
    // gitlab-runner keeps one exit-code file per attempt across stages: always write it on a
    // build failure, or an earlier stage's code would be reported.
    if caller == Caller::GitlabRunner && failure.blame == Blame::Build {
        write_build_exit_code(failure.script_exit_code.unwrap_or(1));
    }
    let code = ExitCodes::for_caller(caller).for_failure(&failure);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(2))
}

/// gitlab-runner reads the script's real exit code from here when we exit with BUILD_FAILURE.
fn write_build_exit_code(code: i32) {
    if let Some(path) = std::env::var_os("BUILD_EXIT_CODE_FILE").filter(|p| !p.is_empty())
        && let Err(e) = std::fs::write(&path, code.to_string())
    {
        eprintln!(
            "ecs-executor: cannot write BUILD_EXIT_CODE_FILE {}: {e}",
            std::path::PathBuf::from(path).display()
        );
    }
}

/// Errors of the modules below, classified. Each module's error type says whose fault it is.
pub trait Classify {
    fn blame(&self) -> Blame;
}

impl<E: Classify + fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure {
            blame: err.blame(),
            message: err.to_string(),
            script_exit_code: None,
        }
    }
}
