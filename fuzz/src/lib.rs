//! The executor's parsers, compiled from their own source files for the fuzz targets (see
//! Cargo.toml for why by path). Module paths mirror the crates' own (`crate::config`,
//! `crate::protocol`, ...) so the files compile unchanged.
#![allow(dead_code, unused_imports, clippy::all)]

/// Stand-in for `host/src/failure.rs` (which also holds the exit-code and metrics code):
/// just what the parser modules use.
pub mod failure {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Blame {
        Build,
        System,
    }
    pub trait Classify {
        fn blame(&self) -> Blame;
    }
}

#[path = "../../host/src/config/mod.rs"]
pub mod config;

#[path = "../../host/src/protocol.rs"]
pub mod protocol;

#[path = "../../host/src/job.rs"]
pub mod job;

#[path = "../../host/src/platform.rs"]
pub mod platform;

// The job's registry logins (`DOCKER_AUTH_CONFIG`, the job payload's `credentials`), which
// `job.rs` reads for its redaction list.
#[path = "../../host/src/registry_auth.rs"]
pub mod registry_auth;

/// Stand-in for `host/src/task/` (the whole task model and its builders): just the fields
/// `registry_auth::attach` touches.
pub mod task {
    pub struct TaskSpec {
        pub containers: Vec<ContainerSpec>,
        pub execution_role_arn: Option<String>,
    }
    pub struct ContainerSpec {
        pub name: String,
        pub image: String,
        pub repository_credentials: Option<String>,
    }
}

// `host/src/services/spec.rs` (its siblings launch containers); its `pub(super)` items are
// then the crate root's.
#[path = "../../host/src/services/spec.rs"]
pub mod services_spec;
pub mod services {
    pub use crate::services_spec as spec;
    pub use crate::services_spec::JobServices;
}

/// The plugin host's answer checks and WIT JSON form (the shim crate, see its Cargo.toml).
pub use ecs_executor_plugin_host::{json, types, validate};

/// A valid executor config for targets that need one (the example's minimal form).
pub fn minimal_config() -> config::Config {
    config::Config::parse(
        "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
        std::path::Path::new("fuzz.toml"),
    )
    .expect("the minimal config parses")
}
