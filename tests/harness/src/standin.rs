//! Owned by the stand-in support (see lib.rs).
