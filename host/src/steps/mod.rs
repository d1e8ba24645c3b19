//! The four calls gitlab-runner makes for a job, in the order it makes them: `config`,
//! `prepare`, `run` (once per stage) and `cleanup`. Each returns `Ok` or a classified
//! [`Failure`](crate::failure::Failure); `main` turns that into the exit code. The steps
//! orchestrate the modules below them and nothing below calls back up into `steps`.

pub mod cleanup;
pub mod config;
pub mod prepare;
pub mod run;
