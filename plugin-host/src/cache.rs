//! Precompiled plugins on disk, so a stage process never compiles: `<dir>/<sha256 of the
//! .wasm>-<engine compatibility hash>.cwasm`. The directory is created mode 0700 and refused if
//! anyone but us could write it, because `deserialize` trusts what it loads. Files are written
//! to a temporary name and renamed (a mapped file is never overwritten); a file that does not
//! deserialize is compiled again.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled plugins are kept.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

/// Was the component found compiled, or compiled now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

impl CompiledCache {
    pub fn new(dir: impl Into<PathBuf>) -> CompiledCache {
        CompiledCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component of `wasm`, from the cache or compiled (and cached) now.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Result<(Component, CacheOutcome), String> {
        self.ensure_dir()?;
        self.load_hashed(engine, wasm, &hex::encode(Sha256::digest(wasm)))
    }

    /// Whether `validate-settings` already accepted exactly this (plugin content, settings,
    /// limits) — see [`remember_accepted`](Self::remember_accepted). Plugins get no clock,
    /// randomness, filesystem or environment, so the verdict is a function of these inputs.
    pub(crate) fn accepted_before(&self, key: &str) -> bool {
        self.dir.join(format!("accepted-{key}")).is_file()
    }

    /// Remember that `validate-settings` accepted `key` (best effort: without the record the
    /// next process asks the plugin again). Rejections are never remembered, so their message
    /// is always the plugin's own, fresh.
    pub(crate) fn remember_accepted(&self, key: &str) {
        let _ = self.store(&self.dir.join(format!("accepted-{key}")), b"");
    }

    /// As [`load`](Self::load) for the file at `path`, without reading and hashing it again
    /// when it has not changed since it was last hashed (SHA-256 of a 170 KB plugin costs
    /// ~1 ms here, a stat microseconds). The content hash is remembered in the cache under the
    /// file's device, inode, size, mtime and ctime: rewriting or replacing the file changes its
    /// ctime, which its owner cannot set back, so a changed file is always hashed afresh.
    pub fn load_file(&self, engine: &Engine, path: &Path) -> Result<(Component, CacheOutcome, String), String> {
        self.ensure_dir()?;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
        let index = self.dir.join(format!(
            "stat-{}-{}-{}-{}.{}-{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        ));
        if let Ok(known) = std::fs::read_to_string(&index) {
            let known = known.trim();
            let cwasm = self.dir.join(format!("{known}-{}.cwasm", engine_hash(engine)));
            if known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()) && cwasm.exists() {
                // SAFETY: as in `load_hashed`: our directory, our file.
                if let Ok(component) = unsafe { Component::deserialize_file(engine, &cwasm) } {
                    return Ok((component, CacheOutcome::Hit, known.to_string()));
                }
            }
        }
        let wasm = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
        let hash = hex::encode(Sha256::digest(&wasm));
        let (component, outcome) = self.load_hashed(engine, &wasm, &hash)?;
        // Best effort: without the record the next load hashes the file again.
        let _ = self.store(&index, hash.as_bytes());
        Ok((component, outcome, hash))
    }

    fn load_hashed(&self, engine: &Engine, wasm: &[u8], hash: &str) -> Result<(Component, CacheOutcome), String> {
        let path = self.dir.join(format!("{hash}-{}.cwasm", engine_hash(engine)));
        if path.exists() {
            // SAFETY: the file is in a directory only this user can write (checked above) and
            // was written by `store` below from `Engine::precompile_component`.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok((component, CacheOutcome::Hit));
            }
        }
        let compiled = engine
            .precompile_component(wasm)
            .map_err(|e| format!("cannot compile the component: {e:#}"))?;
        self.store(&path, &compiled)?;
        // SAFETY: as above; just written by us.
        let component = unsafe { Component::deserialize_file(engine, &path) }
            .map_err(|e| format!("cannot load the compiled component {}: {e:#}", path.display()))?;
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        // Unique per process AND call: two threads compiling the same plugin must not share a
        // temporary file (one would truncate what the other already mapped).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("plugin"),
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let io = |e: std::io::Error| format!("cannot write the plugin cache file {}: {e}", tmp.display());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
        })
    }

    /// Create the directory (0700), or check that only we can write the existing one.
    fn ensure_dir(&self) -> Result<(), String> {
        let shown = self.dir.display();
        match std::fs::metadata(&self.dir) {
            Ok(meta) => {
                let me = unsafe { libc::geteuid() };
                if !meta.is_dir() {
                    return Err(format!("plugin cache {shown} is not a directory"));
                }
                if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
                    return Err(format!(
                        "plugin cache {shown} must be owned by uid {me} and writable by it only \
                         (it is uid {} mode {:o}): compiled plugins are trusted code",
                        meta.uid(),
                        meta.permissions().mode() & 0o7777
                    ));
                }
                Ok(())
            }
            Err(_) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| format!("cannot create the plugin cache {shown}: {e}")),
        }
    }
}

/// The name of a remembered `validate-settings` verdict: every input of the call (plugin
/// content, engine, settings text, limits) hashed together.
pub(crate) fn verdict_key(engine: &Engine, content_hash: &str, settings: &str, limits: crate::Limits) -> String {
    let mut h = Sha256::new();
    for part in [
        "validate-settings v1",
        content_hash,
        &engine_hash(engine),
        settings,
        &limits.deadline.as_millis().to_string(),
        &limits.memory_bytes.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// `Engine::precompile_compatibility_hash` (wasmtime version, Config, features) as hex.
fn engine_hash(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only `write` is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}
