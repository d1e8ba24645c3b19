//! Lines the executor adds to the job log: one per phase with its duration, and notes. Phases
//! go to stdout, notes to stderr (so a note never mixes into `config`'s JSON on stdout).

use std::time::Instant;

/// One line in the job log saying what a phase did and how long it took.
pub fn log_phase(started: Instant, what: impl std::fmt::Display) {
    println!("ecs-executor: {what} ({:.2} s)", started.elapsed().as_secs_f64());
}

/// A note in the job log (stderr).
pub fn log_note(what: impl std::fmt::Display) {
    eprintln!("ecs-executor: {what}");
}
