//! CI services, the way GitLab's Docker executor runs them: which services a job has, whether
//! the site allows them, the host names they answer to, the containers they become in the task
//! and, once the task runs, launching them with their variables and waiting for their ports.
//!
//! Job variables never reach ECS: a service container is registered with only a launcher as
//! its entry point (wait for a launch file, then run it). After the task is RUNNING, prepare
//! writes the launch file (the variables, then `exec` of the service's real command) into the
//! container over Docker exec. So a service image needs `/bin/sh`.

mod containers;
mod launch;
mod spec;
#[cfg(test)]
mod tests;

pub use containers::{add_to_spec, builtin_containers};
pub use launch::start;
pub use spec::JobServices;
