//! test-misbehave: a plugin that misbehaves on purpose, so the host's limits can be tested.
//! NEVER deploy it.
//!
//! Settings: `{"customize": "<mode>", "pick_address": "<mode>", "map_services": "<mode>",
//! "validate": "ok" | "refuse"}`. Modes: `accept` (default; pass the input through / decline),
//! `loop` (spin forever), `allocate` (grow memory without bound), `panic`, `busy` (burn CPU
//! on real work for a long time, without sleeping), `remove-build` (drop the `build`
//! container), `oversize` (a 100 KiB environment value), `other-error` (`err(other)`),
//! `reject` (`err(rejected)`), `log-flood` (log 200 KiB, then accept), `add-tag` (a
//! well-behaved change: tag `misbehave=1`, task `extra` `{"pidMode": "task"}`), `add-all`
//! (well-behaved, touching every kind of field: tag `misbehave=all`, task `extra` `pidMode` and
//! `ipcMode` `task`, and on `build` an environment variable, a Docker label and every container
//! `extra` key).

#[cfg(target_arch = "wasm32")]
mod component;
pub mod modes;
