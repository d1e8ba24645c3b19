//! Owned by the runner-protocol harness (see lib.rs).
