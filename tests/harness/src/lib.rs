//! Test support for ecs-executor's integration tests.
//!
//! - [`standin`]: the local ECS stand-in brought up by `tests/local-ecs/up` (moto with our patch
//!   layer, Docker with mutual TLS, the agent stand-in): clients, fault injection, recorded requests.
//! - [`control`]: the patched moto's control API (`/_standin/...`): `control_get`, `control_post`,
//!   and a guard for the global scaling settings.
//! - [`runner`]: a runner-protocol harness that calls the built `ecs-executor` binary exactly as
//!   gitlab-runner's custom executor does.
pub mod control;
pub mod runner;
pub mod standin;

use std::time::{Duration, Instant};

/// Polls `ready` every `every` until it is true (→ `true`) or `limit` has passed (→ `false`).
pub fn wait_until(limit: Duration, every: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}
