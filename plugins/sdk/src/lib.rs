//! Write ecs-executor plugins in Rust.
//!
//! This crate owns the Rust side of the `ecs-executor:plugin@0.1.0` WIT package (`wit/` at
//! the repository root): the shared records (`types`), the imports every plugin gets
//! (`host-log`, `host-settings`), and a few helpers. It exports nothing itself: a plugin
//! crate says which hooks it implements by choosing a world, and only those hooks end up in
//! its component's exports, which is how the host discovers them.
//!
//! # Writing a plugin
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. Put the component side in a
//! module compiled for wasm32 only (`#[cfg(target_arch = "wasm32")] mod component;`): a
//! native build cannot link component-model export names, and the native build is what
//! runs the unit tests of the plugin's decision logic. `plugins/template` is the crate to
//! copy; `plugins/image-allowlist`, `role-mapper`, `address-picker` and `dind-services` are
//! worked examples, and [`fixtures`] gives their unit tests realistic inputs.
//!
//! ```ignore
//! // src/component.rs
//! // One world per role: "task-definition-plugin", "address-plugin", "services-plugin",
//! // or "full-plugin"; the WIT package is the one this SDK was built from.
//! ecs_executor_plugin_sdk::plugin!("task-definition-plugin");
//!
//! use ecs_executor_plugin_sdk::{log, types::{JobContext, TaskDefinition}};
//! use exports::ecs_executor::plugin::{settings, task_definition};
//!
//! struct Plugin;
//!
//! impl settings::Guest for Plugin {
//!     fn validate_settings(json: String) -> Result<(), String> { Ok(()) }
//! }
//!
//! impl task_definition::Guest for Plugin {
//!     fn customize(job: JobContext, task: TaskDefinition)
//!         -> Result<TaskDefinition, task_definition::Error> {
//!         // project-path comes from GitLab, not from the job's variables (see `job`).
//!         if ecs_executor_plugin_sdk::job::in_group(&job, "sandbox") {
//!             return Err(ecs_executor_plugin_sdk::reject("sandbox projects may not run here"))?;
//!         }
//!         log::info("task definition accepted");
//!         ecs_executor_plugin_sdk::accept(task)
//!     }
//! }
//!
//! export!(Plugin);
//! ```
//!
//! `plugin!` generates the world's export traits in the plugin crate (module `exports`) and
//! an `export!` macro, and reuses this crate's types, so helpers here work with any world.
//! Keep the decision logic in plain functions over these types: they are ordinary Rust and
//! unit-test natively (`cargo test --target x86_64-unknown-linux-gnu -p <plugin>`), as long
//! as the tests do not call the host imports (`log`, `settings_json`).

// The generated code names its runtime by absolute path, in this crate as in plugins.
extern crate self as ecs_executor_plugin_sdk;

/// Generated bindings of the `plugin-base` world (imports and shared types only).
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin-base",
        runtime_path: "::ecs_executor_plugin_sdk::__wit_bindgen::rt",
        // Comparable records, so plugins' unit tests can assert on whole values.
        additional_derives: [PartialEq, Eq],
        generate_all,
    });
}

pub use bindings::ecs_executor::plugin::types;

pub mod fixtures;
pub mod image;
pub mod job;
pub mod settings;

include!(concat!(env!("OUT_DIR"), "/wit_path.rs"));

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// A refusal by site policy, meant for the person who wrote the job.
///
/// Each hook interface has its own `error` variant; `plugin!` implements `From<Rejection>`
/// for those that have a `rejected` case, so `Err(reject("..."))?` works in any hook that can
/// refuse a job. The host prints the message in the job log and fails the job as a build
/// failure (the job's fault), without running later plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

/// Refuse the job with `message` (see [`Rejection`]). Say what was refused and what is
/// allowed, so the author can fix the job without asking an administrator.
pub fn reject(message: impl Into<String>) -> Rejection {
    Rejection(message.into())
}

/// Accept a task definition (changed or not): `Ok(task)`, spelled as the intent.
pub fn accept<T, E>(task: T) -> Result<T, E> {
    Ok(task)
}

/// The plugin's settings as JSON text: the same text `validate-settings` accepted when the
/// executor loaded the plugin (`{}` when the config gives none). Host import: call it only
/// from inside a hook, never from native unit tests.
pub fn settings_json() -> String {
    bindings::ecs_executor::plugin::host_settings::get()
}

/// Write to the log of the job being prepared. The host prefixes each line with the
/// plugin's name and level, redacts the job's secrets and caps the volume. Host imports:
/// call them only from inside a hook, never from native unit tests.
pub mod log {
    use crate::bindings::ecs_executor::plugin::host_log::{self, Level};

    /// Detail shown only when the job debugs (`CI_DEBUG_TRACE`) or the executor does.
    pub fn debug(message: &str) {
        host_log::log(Level::Debug, message)
    }
    /// Normal progress the job's author may want to see.
    pub fn info(message: &str) {
        host_log::log(Level::Info, message)
    }
    /// Something the job's author should look at; the job goes on.
    pub fn warn(message: &str) {
        host_log::log(Level::Warn, message)
    }
    /// A problem, usually followed by the hook returning an error.
    pub fn error(message: &str) {
        host_log::log(Level::Error, message)
    }
}

/// Generate a plugin's bindings for one world of `ecs-executor:plugin` and tie them to this
/// crate's types and imports.
///
/// `plugin!("<world>")` uses the WIT package this SDK was built from, so a plugin in its own
/// repository needs no copy of `wit/`; `plugin!("<world>", "<path to wit/ relative to the
/// plugin's Cargo.toml>")` names one explicitly. World is `task-definition-plugin`,
/// `address-plugin`, `services-plugin` or `full-plugin`. Defines
/// module `exports` (the traits to implement) and macro `export!` (call it once with the type
/// that implements them). The plugin crate needs no direct wit-bindgen dependency.
#[macro_export]
macro_rules! plugin {
    ($world:tt) => {
        $crate::__plugin_with_sdk_wit!($world);
    };
    ("task-definition-plugin", $path:literal) => {
        $crate::plugin!(@generate "task-definition-plugin", $path);
        $crate::plugin!(@rejection exports::ecs_executor::plugin::task_definition::Error);
    };
    ("address-plugin", $path:literal) => {
        $crate::plugin!(@generate "address-plugin", $path);
    };
    ("services-plugin", $path:literal) => {
        $crate::plugin!(@generate "services-plugin", $path);
        $crate::plugin!(@rejection exports::ecs_executor::plugin::services::Error);
    };
    ("full-plugin", $path:literal) => {
        $crate::plugin!(@generate "full-plugin", $path);
        $crate::plugin!(@rejection exports::ecs_executor::plugin::task_definition::Error);
        $crate::plugin!(@rejection exports::ecs_executor::plugin::services::Error);
    };
    (@generate $world:literal, $path:literal) => {
        $crate::__wit_bindgen::generate!({
            path: $path,
            world: $world,
            runtime_path: "::ecs_executor_plugin_sdk::__wit_bindgen::rt",
            with: {
                "ecs-executor:plugin/types@0.1.0": ::ecs_executor_plugin_sdk::bindings::ecs_executor::plugin::types,
                "ecs-executor:plugin/host-log@0.1.0": ::ecs_executor_plugin_sdk::bindings::ecs_executor::plugin::host_log,
                "ecs-executor:plugin/host-settings@0.1.0": ::ecs_executor_plugin_sdk::bindings::ecs_executor::plugin::host_settings,
            },
        });
    };
    (@rejection $error:path) => {
        impl ::core::convert::From<$crate::Rejection> for $error {
            fn from(rejection: $crate::Rejection) -> Self {
                <$error>::Rejected(rejection.0)
            }
        }
    };
}
