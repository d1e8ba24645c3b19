//! Test support for ecs-executor's integration tests.
//!
//! - [`standin`]: the local ECS stand-in brought up by `tests/local-ecs/up` (moto with our patch
//!   layer, Docker with mutual TLS, the agent stand-in): clients, fault injection, recorded requests.
//! - [`runner`]: a runner-protocol harness that calls the built `ecs-executor` binary exactly as
//!   gitlab-runner's custom executor does.
pub mod runner;
pub mod standin;
