//! image-allowlist: refuse jobs whose containers would run an image from a registry the site
//! has not allowed.
//!
//! Settings: `{"allowed_registries": ["docker.io", "registry.example.com", "registry.gitlab.com/my-group"]}`.
//! Each entry is a registry host (with port if any), optionally followed by a repository
//! prefix. Docker Hub short names (`alpine`, `user/app`) count as `docker.io`. EVERY container
//! of the task is checked, the executor's own `helper` and service containers included, so
//! list the helper image's registry (by default `registry.gitlab.com`, or
//! `registry.gitlab.com/gitlab-org` to allow only GitLab's own images).
//!
//! Native tests of the decision: `cargo test --target x86_64-unknown-linux-gnu -p image-allowlist`.

pub mod allowlist;
#[cfg(target_arch = "wasm32")]
mod component;
