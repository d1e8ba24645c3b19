//! `plugin-host/src/json.rs` and `validate.rs`, compiled from their own files over `types`, a
//! mirror of the WIT records (the real crate gets them from `wasmtime::component::bindgen!`).
#![allow(dead_code, unused_imports, clippy::all)]

pub mod types;
pub use types::{DockerAddress, ServiceMapping};

#[path = "../../../plugin-host/src/json.rs"]
pub mod json;
#[path = "../../../plugin-host/src/validate.rs"]
pub mod validate;
