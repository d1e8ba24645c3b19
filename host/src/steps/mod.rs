//! The four calls gitlab-runner makes for a job, in the order it makes them.
//! Each step returns `Ok` or a classified [`Failure`](crate::failure::Failure); `main` turns that
//! into the exit code.

pub mod check;
pub mod cleanup;
pub mod config;
pub mod gc;
pub mod prepare;
pub mod run;

use std::time::Instant;

/// One line in the job log saying what a phase did and how long it took.
pub fn log_phase(started: Instant, what: impl std::fmt::Display) {
    println!("ecs-executor: {what} ({:.2} s)", started.elapsed().as_secs_f64());
}

/// A note in the job log (stderr, so it never mixes into `config`'s JSON).
pub fn log_note(what: impl std::fmt::Display) {
    eprintln!("ecs-executor: {what}");
}
