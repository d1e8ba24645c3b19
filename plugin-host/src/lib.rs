//! ecs-executor's plugin host: everything wasmtime.
//!
//! Site plugins are WebAssembly components implementing the `ecs-executor:plugin@0.1.0`
//! interfaces (`wit/` at the repository root). This crate loads them (one [`Engine`] per
//! process, a precompiled cache on disk), checks their settings, runs their hooks in a fresh
//! sandboxed instance per call (deadline, memory cap, no filesystem, network, clock or
//! environment) and checks their answers. It also holds the JSON form of the WIT records and
//! the test-support API behind `ecs-executor plugin test`.
//!
//! It knows nothing about ECS or gitlab-runner: the executor converts its own task spec to
//! and from [`types::TaskDefinition`] and decides what a [`PluginError`] means for the job.

pub mod bindings;
mod cache;
mod engine;
mod error;
pub mod json;
mod plugin;
mod set;
pub mod testing;
pub mod validate;

pub use bindings::ecs_executor::plugin::host_log::Level;
pub use bindings::ecs_executor::plugin::types;
pub use bindings::exports::ecs_executor::plugin::address::DockerAddress;
pub use bindings::exports::ecs_executor::plugin::services::ServiceMapping;
pub use cache::CompiledCache;
pub use engine::PluginEngine;
pub use error::{Cause, Hook, PluginError};
pub use plugin::{JobLog, Limits, Plugin, PluginSpec, SettingsCheck, StderrLog};
pub use set::{PickedAddress, PluginSet};
