//! Precompiled plugins on disk, so a stage process never compiles: `<dir>/<sha256 of the
//! .wasm>-<engine compatibility hash>.cwasm`. The directory is created mode 0700 and refused if
//! anyone but us could write it, because `deserialize` trusts what it loads. Files are written
//! to a temporary name and renamed (a mapped file is never overwritten); a file that does not
//! deserialize is compiled again.
//!
//! Each file is opened once, without following a symbolic link, and that open file is checked
//! (a regular file, owned by root or by us, not writable by group or others) before a byte of
//! it is deserialized; what is deserialized is that same open file. A `.cwasm` that fails the
//! check is refused with an error naming it and the fix (remove it): in a directory only we
//! can write it cannot get there by accident, so it is a sign of tampering (or of an admin's
//! copy), and compiling over it silently would hide that. A stat index or an `accepted-`
//! record that fails the check is ignored (the plugin is hashed or asked again: nothing is
//! trusted on its word).

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
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
        matches!(open_checked(&self.dir.join(format!("accepted-{key}"))), Ok(Some(_)))
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
        // An index that is not ours (or not a hash) is ignored: the file is hashed again.
        let mut known = String::new();
        if let Ok(Some(mut file)) = open_checked(&index)
            && file.read_to_string(&mut known).is_ok()
        {
            let known = known.trim();
            if known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()) {
                let cwasm = self.dir.join(format!("{known}-{}.cwasm", engine_hash(engine)));
                if let Some(component) = deserialize_checked(engine, &cwasm)? {
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
        if let Some(component) = deserialize_checked(engine, &path)? {
            return Ok((component, CacheOutcome::Hit));
        }
        let compiled = engine
            .precompile_component(wasm)
            .map_err(|e| format!("cannot compile the component: {e:#}"))?;
        self.store(&path, &compiled)?;
        // SAFETY: the bytes `Engine::precompile_component` just produced, in our memory (the
        // file is not read back: nothing between the write and a load can swap it).
        let component = unsafe { Component::deserialize(engine, &compiled) }
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

/// Open a cache file for reading, once: never through a symbolic link (`O_NOFOLLOW`), and only
/// if the open file is a regular file owned by root or by us and not writable by group or
/// others. `Ok(None)`: there is no such file. `Err`: there is one and it must not be trusted.
fn open_checked(path: &Path) -> Result<Option<File>, String> {
    let shown = path.display();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("plugin cache file {shown} is a symbolic link"));
        }
        Err(e) => return Err(format!("cannot open the plugin cache file {shown}: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the plugin cache file {shown}: {e}"))?;
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    if !meta.file_type().is_file() {
        return Err(format!("plugin cache file {shown} is not a regular file"));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "plugin cache file {shown} is owned by uid {} (only root or uid {me} may own it)",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "plugin cache file {shown} is writable by group or others (mode {mode:o})"
        ));
    }
    Ok(Some(file))
}

/// The compiled component in the cache file at `path`, checked by [`open_checked`] first.
/// `Ok(None)`: no file, or one that does not deserialize (compile again). `Err`: a file that
/// fails the check, which is not loaded and not silently replaced.
fn deserialize_checked(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let file = match open_checked(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        Err(problem) => {
            return Err(format!(
                "{problem}: compiled plugins are trusted code, so it is not loaded. Remove it \
                 (`rm {}`); the executor compiles the plugin again",
                path.display()
            ));
        }
    };
    // The open file itself, not the path again: through /proc its mapping is the inode just
    // checked, whatever the name now points at (mmap, as `deserialize_file` maps it); without
    // /proc, its bytes.
    let proc_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let loaded = if proc_fd.exists() {
        // SAFETY: the cache directory is ours only (`ensure_dir`), the file was checked above
        // (ours or root's, writable by its owner only) and `store` wrote it from
        // `Engine::precompile_component`, to a temporary name renamed into place: it is never
        // modified while mapped.
        unsafe { Component::deserialize_file(engine, &proc_fd) }
    } else {
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the plugin cache file {}: {e}", path.display()))?;
        // SAFETY: as above; the bytes are now our own copy.
        unsafe { Component::deserialize(engine, &bytes) }
    };
    drop(file);
    Ok(loaded.ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is: the component-model preamble and no sections.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plugin-host-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cwasm(cache: &CompiledCache) -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    /// Each way a `.cwasm` can be unsafe is refused before it is deserialized, naming the
    /// file and the fix, and the file is left in place (evidence, not silently replaced).
    #[test]
    fn a_cache_file_that_is_a_symlink_not_ours_or_writable_by_others_is_refused() {
        let engine = crate::PluginEngine::new().unwrap();
        let engine = engine.engine();
        let dir = tempdir("files");
        let cache = CompiledCache::new(dir.join("cache"));
        assert_eq!(cache.load(engine, EMPTY_COMPONENT).unwrap().1, CacheOutcome::Compiled);
        assert_eq!(cache.load(engine, EMPTY_COMPONENT).unwrap().1, CacheOutcome::Hit);
        let path = cwasm(&cache);
        let good = std::fs::read(&path).unwrap();
        let shown = path.display().to_string();
        let refused = |what: &str| {
            let err = cache.load(engine, EMPTY_COMPONENT).map(|(_, o)| o).unwrap_err();
            assert!(err.contains(&shown) && err.contains(what), "{what}: {err}");
            assert!(
                err.contains("Remove it") && err.contains(&format!("rm {shown}")),
                "{err}"
            );
        };

        // Writable by group, then by others.
        for mode in [0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            refused("writable by group or others");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cache.load(engine, EMPTY_COMPONENT).unwrap().1, CacheOutcome::Hit);

        // A symbolic link (to a perfectly good copy elsewhere).
        let elsewhere = dir.join("planted.cwasm");
        std::fs::write(&elsewhere, &good).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        refused("is a symbolic link");
        assert!(
            std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(),
            "left in place"
        );

        // Owned by someone else (needs root to give it away).
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &good).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            refused("owned by uid 4242");
            // Root's own files are fine (an admin ran `plugin compile` as root).
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        assert_eq!(cache.load(engine, EMPTY_COMPONENT).unwrap().1, CacheOutcome::Hit);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Through `load_file` (the path every process takes) the stat index is followed to the
    /// `.cwasm`, which gets the same check; an index or a verdict record that is not ours is
    /// ignored rather than believed.
    #[test]
    fn load_file_checks_the_cwasm_the_index_points_at_and_ignores_an_unsafe_index() {
        let engine = crate::PluginEngine::new().unwrap();
        let engine = engine.engine();
        let dir = tempdir("index");
        let wasm = dir.join("empty.wasm");
        std::fs::write(&wasm, EMPTY_COMPONENT).unwrap();
        let cache = CompiledCache::new(dir.join("cache"));
        assert_eq!(cache.load_file(engine, &wasm).unwrap().1, CacheOutcome::Compiled);
        assert_eq!(cache.load_file(engine, &wasm).unwrap().1, CacheOutcome::Hit);
        let path = cwasm(&cache);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = cache.load_file(engine, &wasm).map(|_| ()).unwrap_err();
        assert!(
            err.contains("writable by group or others") && err.contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A verdict record and a stat index others may write are not believed.
        let index = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("stat-"))
            .unwrap();
        std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            cache.load_file(engine, &wasm).unwrap().1,
            CacheOutcome::Hit,
            "hashed again, found"
        );
        cache.remember_accepted("k");
        assert!(cache.accepted_before("k"));
        let record = cache.dir().join("accepted-k");
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o662)).unwrap();
        assert!(
            !cache.accepted_before("k"),
            "a verdict record others may write is ignored"
        );
        std::fs::remove_file(&record).unwrap();
        std::os::unix::fs::symlink(&wasm, &record).unwrap();
        assert!(!cache.accepted_before("k"), "a symlinked verdict record is ignored");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
