//! plugin-template: a small site policy to copy when starting a new plugin (see
//! `docs/plugins.md`). It labels every container with the job's project path, refuses
//! untagged or `:latest` build images outside the groups allowed them, and tags the task
//! definition with the cost centre of the project's group.
//!
//! Settings (all optional): `label` (default `gitlab.project`): the Docker label key to set;
//! `floating_images_allowed_in` (e.g. `["platform"]`; absent: no image check);
//! `cost_centres` (e.g. `{"platform": "cc-100"}`): the `cost-centre` tag per group.
//!
//! The layout every plugin follows: the decision in plain modules ([`decision`]), unit-tested
//! natively (`cargo test --target x86_64-unknown-linux-gnu`); the
//! component glue in `component.rs`, compiled for wasm32 only; case files for
//! `ecs-executor plugin test` in `cases/`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod decision;
