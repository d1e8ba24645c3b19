//! The guest plugins of `plugins/` as the tests use them: `build.rs` builds them all (release,
//! wasm32-wasip2) and this crate names each `.wasm` by a const (`IMAGE_ALLOWLIST`,
//! `TEST_MISBEHAVE`, ...). Tests take a path through [`wasm`], which says why it is missing.

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The built plugin at `path` (one of this crate's consts). Panics with the build's error, or
/// with how to build it, when the file is not there.
#[track_caller]
pub fn wasm(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if !path.is_file() {
        match BUILD_ERROR {
            Some(e) => panic!("{} is missing: {e}", path.display()),
            None => panic!(
                "{} is missing although the guest plugins were built; rebuild this crate (touch tests/test-components/build.rs)",
                path.display()
            ),
        }
    }
    path
}

/// The built plugin crate `name` (its package name in `plugins/`, e.g. `image-allowlist`).
#[track_caller]
pub fn plugin(name: &str) -> PathBuf {
    let (_, path) = PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no plugin crate {name:?} in plugins/ (there are: {PLUGINS:?})"));
    wasm(path)
}
