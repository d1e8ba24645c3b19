//! Commands for runner admins and plugin authors, not called by gitlab-runner: `check`, `gc`
//! and `unregister`, `plan`, `plugin compile` / `plugin test`, `tls init|server|put-ssm`, `warm-images`. Their exit codes follow
//! [`Caller::Admin`](crate::failure::Caller::Admin).

pub mod check;
pub mod gc;
pub mod plan;
pub mod plugin;
pub mod tls;
pub mod warm_images;
