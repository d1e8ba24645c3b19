//! plugin-template: the smallest useful task-definition plugin, to copy when starting a new
//! one (see `plugins/README.md`). It labels every container with the job's project path.
//!
//! Settings: `{"label": "com.example.project"}` (optional; default `gitlab.project`): the
//! Docker label key to set.
//!
//! The layout every plugin follows: the decision in plain modules ([`decision`]), unit-tested
//! natively (`cargo test --target x86_64-unknown-linux-gnu -p plugin-template`); the
//! component glue in `component.rs`, compiled for wasm32 only; case files for
//! `ecs-executor plugin test` in `cases/`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod decision;
