//! How a step failed, and the ONE place where that becomes an exit code.
//!
//! gitlab-runner reads our exit code: `BUILD_FAILURE_EXIT_CODE` means the user's job failed
//! (their script, their image, a policy that refused their job), `SYSTEM_FAILURE_EXIT_CODE`
//! means we or the infrastructure failed (and the runner may retry). Anything else would be
//! an "unknown" failure, so every error in this crate is classified here.

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

/// The exit codes gitlab-runner asked for (its env), with its documented defaults.
#[derive(Debug, Clone, Copy)]
pub struct ExitCodes {
    pub build_failure: i32,
    pub system_failure: i32,
}

impl ExitCodes {
    pub fn from_env() -> Self {
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

    /// The exit code for a failure. This is the only mapping from failures to exit codes.
    pub fn for_failure(&self, failure: &Failure) -> i32 {
        match failure.blame {
            Blame::Build => self.build_failure,
            Blame::System => self.system_failure,
        }
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
