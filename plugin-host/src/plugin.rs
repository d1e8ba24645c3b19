//! One loaded plugin: its precompiled component, the hooks it exports, its checked settings,
//! and the sandboxed call of each hook (a fresh instance per call, a deadline, a memory cap,
//! stdout/stderr captured, log lines collected and handed to the caller's [`JobLog`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Instance, InstancePre, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};

/// Per plugin call, beside the memory cap: elements of one table (function references; a
/// Rust component uses a few hundred), tables, core instances and linear memories (a
/// component with the WASI adapter has a few of each).
pub const TABLE_ELEMENTS_CAP: usize = 100_000;
pub const TABLES_CAP: usize = 64;
pub const INSTANCES_CAP: usize = 64;
pub const MEMORIES_CAP: usize = 16;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::ecs_executor::plugin::{host_log, host_settings, types as wit_types};
use crate::bindings::exports::ecs_executor::plugin::{address, services, settings, task_definition};
use crate::cache::{CacheOutcome, CompiledCache};
use crate::engine::PluginEngine;
use crate::error::{Cause, Hook, PluginError};
use crate::types::{Instance as Ec2Instance, JobContext, TaskDefinition};
use crate::validate;
use crate::{DockerAddress, Level, ServiceMapping};

/// Most a plugin may write to the job log in one call; the rest is dropped with a note.
pub const LOG_CAP: usize = 64 * 1024;
/// Most of a plugin's stdout and stderr kept per call (its panic message is in there).
const STDIO_CAP: usize = 16 * 1024;

/// Per-call limits of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one hook call (instantiation included).
    pub deadline: Duration,
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(1000),
            memory_bytes: 64 << 20,
        }
    }
}

/// A plugin as the executor config names it.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
    /// The `settings` table as JSON text (`{}` when none).
    pub settings_json: String,
    pub limits: Limits,
}

/// Where a plugin's log lines go, and how secrets are kept out of them.
pub trait JobLog {
    /// Remove the job's secrets from `text`.
    fn redact(&self, text: &str) -> String {
        text.to_string()
    }
    /// Write one (already redacted and sanitised) line from `plugin`.
    fn write(&self, plugin: &str, level: Level, message: &str);
}

/// Log lines to stderr as `ecs-executor: plugin <name> <level>: ...`, no secrets known.
/// Debug lines only when `show_debug`.
pub struct StderrLog {
    pub show_debug: bool,
}

impl JobLog for StderrLog {
    fn write(&self, plugin: &str, level: Level, message: &str) {
        if level == Level::Debug && !self.show_debug {
            return;
        }
        for line in message.lines() {
            eprintln!("ecs-executor: plugin {plugin} {}: {line}", level_name(level));
        }
    }
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// What a plugin instance sees of the host.
pub(crate) struct State {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limits: StoreLimits,
    settings: String,
    logging: bool,
    logs: Vec<(Level, String)>,
    log_bytes: usize,
    log_dropped: bool,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl State {
    pub(crate) fn cli(&mut self) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
        wasmtime_wasi::cli::WasiCliView::cli(self)
    }
}

impl wit_types::Host for State {}

impl host_settings::Host for State {
    fn get(&mut self) -> String {
        self.settings.clone()
    }
}

impl host_log::Host for State {
    fn log(&mut self, level: Level, message: String) {
        if !self.logging || self.log_dropped {
            return;
        }
        let clean = sanitise(&message);
        if self.log_bytes + clean.len() > LOG_CAP {
            self.log_dropped = true;
            self.logs.push((
                Level::Warn,
                format!(
                    "(more log output dropped: a plugin may write {} KiB per call)",
                    LOG_CAP / 1024
                ),
            ));
            return;
        }
        self.log_bytes += clean.len();
        self.logs.push((level, clean));
    }
}

/// Control characters other than newlines removed (tabs become spaces).
pub fn sanitise(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// A loaded plugin, ready to call.
pub struct Plugin {
    name: String,
    path: PathBuf,
    settings: String,
    limits: Limits,
    engine: PluginEngine,
    pre: InstancePre<State>,
    settings_idx: settings::GuestIndices,
    customize_idx: Option<task_definition::GuestIndices>,
    address_idx: Option<address::GuestIndices>,
    services_idx: Option<services::GuestIndices>,
    pub(crate) cache: CacheOutcome,
    settings_checked: bool,
    /// What its answers may ask for beyond ordinary containers (`validate::Grants`).
    grants: validate::Grants,
}

/// When loading a plugin asks its `validate-settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsCheck {
    /// On every load: `check`, `plugin compile`, tests.
    Always,
    /// Only when this plugin content, settings and limits were not accepted before (the
    /// verdict is kept in the compiled cache): a job's `prepare` does not pay for a call
    /// whose answer cannot have changed.
    Remembered,
}

impl Plugin {
    /// Load `spec`: read and (if not cached) compile the component, link it, find its hooks
    /// and check its settings with `validate-settings`.
    pub fn load(engine: &PluginEngine, cache: &CompiledCache, spec: &PluginSpec) -> Result<Plugin, PluginError> {
        Plugin::load_with(engine, cache, spec, SettingsCheck::Always)
    }

    /// As [`load`](Self::load), asking `validate-settings` as `check` says.
    pub fn load_with(
        engine: &PluginEngine,
        cache: &CompiledCache,
        spec: &PluginSpec,
        check: SettingsCheck,
    ) -> Result<Plugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: spec.name.clone(),
            path: spec.path.display().to_string(),
            message,
        };
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&spec.settings_json).is_err() {
            return Err(PluginError::Config {
                plugin: spec.name.clone(),
                message: "settings must be a JSON object".into(),
            });
        }
        let (component, outcome, content_hash) = cache.load_file(&engine.engine, &spec.path).map_err(load_err)?;
        let pre = match engine.linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(first) => {
                // Language runtimes (componentize-py, -js) import more of WASI than they use.
                // Those imports are linked as traps: a call fails the plugin, nothing is granted.
                let ty = component.component_type();
                let foreign: Vec<String> = ty
                    .imports(&engine.engine)
                    .map(|(name, _)| name.to_string())
                    .filter(|name| !name.starts_with("wasi:") && !name.starts_with("ecs-executor:plugin/"))
                    .collect();
                let refuse = |e: &dyn std::fmt::Display| {
                    load_err(format!(
                        "it imports something the executor does not provide (plugins get only host-log, \
                         host-settings and stdio): {e}"
                    ))
                };
                if !foreign.is_empty() {
                    return Err(refuse(&foreign.join(", ")));
                }
                let mut linker = (*engine.linker).clone();
                linker
                    .define_unknown_imports_as_traps(&component)
                    .and_then(|()| linker.instantiate_pre(&component))
                    .map_err(|e| refuse(&format!("{first:#}; {e:#}")))?
            }
        };
        let settings_idx = settings::GuestIndices::new(&pre).map_err(|e| {
            load_err(format!(
                "it is not an ecs-executor:plugin@0.1.0 component (no `settings` export: {e:#})"
            ))
        })?;
        let plugin = Plugin {
            name: spec.name.clone(),
            path: spec.path.clone(),
            settings: spec.settings_json.clone(),
            limits: spec.limits,
            engine: engine.clone(),
            customize_idx: task_definition::GuestIndices::new(&pre).ok(),
            address_idx: address::GuestIndices::new(&pre).ok(),
            services_idx: services::GuestIndices::new(&pre).ok(),
            settings_idx,
            pre,
            cache: outcome,
            settings_checked: false,
            grants: validate::Grants::ALL,
        };
        if plugin.hooks().is_empty() {
            return Err(load_err(
                "it exports none of the hooks (task-definition, address, services)".into(),
            ));
        }
        let verdict_key = crate::cache::verdict_key(&engine.engine, &content_hash, &spec.settings_json, spec.limits);
        let mut plugin = plugin;
        if check == SettingsCheck::Always || !cache.accepted_before(&verdict_key) {
            plugin.validate_settings()?;
            plugin.settings_checked = true;
            cache.remember_accepted(&verdict_key);
        }
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the component had to be compiled in this process (a cache miss).
    pub fn was_compiled(&self) -> bool {
        self.cache == CacheOutcome::Compiled
    }

    /// Whether this load asked `validate-settings` (false: the same content, settings and
    /// limits were accepted before; see [`SettingsCheck::Remembered`]).
    pub fn settings_checked(&self) -> bool {
        self.settings_checked
    }

    /// The hooks the component exports.
    pub fn hooks(&self) -> Vec<Hook> {
        let mut hooks = Vec::new();
        if self.customize_idx.is_some() {
            hooks.push(Hook::Customize);
        }
        if self.address_idx.is_some() {
            hooks.push(Hook::PickAddress);
        }
        if self.services_idx.is_some() {
            hooks.push(Hook::MapServices);
        }
        hooks
    }

    pub fn has(&self, hook: Hook) -> bool {
        self.hooks().contains(&hook)
    }

    /// `settings.validate-settings` with the configured settings.
    pub fn validate_settings(&self) -> Result<(), PluginError> {
        self.validate_settings_json(&self.settings)
    }

    /// `settings.validate-settings` with other settings text (tests); `host-settings.get`
    /// returns that text during the call.
    pub fn validate_settings_json(&self, json: &str) -> Result<(), PluginError> {
        let result = self.call(Hook::ValidateSettings, json, None, |store, instance| {
            let guest = self.settings_idx.load(&mut *store, instance)?;
            guest.call_validate_settings(store, &json.to_string())
        })?;
        result.map_err(|message| PluginError::Settings {
            plugin: self.name.clone(),
            message: sanitise(&message),
        })
    }

    /// `task-definition.customize`, its answer checked ([`validate::task_definition`]).
    pub fn customize(
        &self,
        job: &JobContext,
        task: &TaskDefinition,
        log: &dyn JobLog,
    ) -> Result<TaskDefinition, PluginError> {
        let idx = self
            .customize_idx
            .as_ref()
            .ok_or_else(|| self.missing(Hook::Customize))?;
        let result = self.call(Hook::Customize, &self.settings, Some(log), |store, instance| {
            let guest = idx.load(&mut *store, instance)?;
            guest.call_customize(store, job, task)
        })?;
        match result {
            Ok(out) => {
                validate::task_definition(task, &out, &|s| log.redact(s))
                    .map_err(|msg| self.broken(Hook::Customize, Cause::Malformed(msg)))?;
                self.check_grants(Hook::Customize, validate::ungranted(Some(task), &out, self.grants))?;
                Ok(out)
            }
            Err(task_definition::Error::Rejected(msg)) => Err(self.rejected(Hook::Customize, &msg)),
            Err(task_definition::Error::Other(msg)) => Err(self.broken(Hook::Customize, Cause::Other(sanitise(&msg)))),
        }
    }

    /// `address.pick-address`: `None` when the plugin declines.
    pub fn pick_address(
        &self,
        job: &JobContext,
        instance: &Ec2Instance,
        log: &dyn JobLog,
    ) -> Result<Option<DockerAddress>, PluginError> {
        let idx = self
            .address_idx
            .as_ref()
            .ok_or_else(|| self.missing(Hook::PickAddress))?;
        let result = self.call(Hook::PickAddress, &self.settings, Some(log), |store, inst| {
            let guest = idx.load(&mut *store, inst)?;
            guest.call_pick_address(store, job, instance)
        })?;
        match result {
            Ok(Some(addr)) => {
                validate::docker_address(&addr).map_err(|m| self.broken(Hook::PickAddress, Cause::Malformed(m)))?;
                Ok(Some(addr))
            }
            Ok(None) => Ok(None),
            Err(address::Error::Other(msg)) => Err(self.broken(Hook::PickAddress, Cause::Other(sanitise(&msg)))),
        }
    }

    /// `services.map-services`: one mapping per service, in order.
    pub fn map_services(
        &self,
        job: &JobContext,
        services: &[crate::types::CiService],
        log: &dyn JobLog,
    ) -> Result<Vec<ServiceMapping>, PluginError> {
        let idx = self
            .services_idx
            .as_ref()
            .ok_or_else(|| self.missing(Hook::MapServices))?;
        let result = self.call(Hook::MapServices, &self.settings, Some(log), |store, inst| {
            let guest = idx.load(&mut *store, inst)?;
            guest.call_map_services(store, job, services)
        })?;
        match result {
            Ok(mappings) => {
                if mappings.len() != services.len() {
                    return Err(self.broken(
                        Hook::MapServices,
                        Cause::Malformed(format!(
                            "{} mappings for {} services (one per service expected)",
                            mappings.len(),
                            services.len()
                        )),
                    ));
                }
                for m in &mappings {
                    if let ServiceMapping::Containers(containers) = m {
                        validate::service_containers(containers, &|s| log.redact(s))
                            .map_err(|msg| self.broken(Hook::MapServices, Cause::Malformed(msg)))?;
                        self.check_grants(
                            Hook::MapServices,
                            validate::ungranted_service_containers(containers, self.grants),
                        )?;
                    }
                }
                Ok(mappings)
            }
            Err(services::Error::Rejected(msg)) => Err(self.rejected(Hook::MapServices, &msg)),
            Err(services::Error::Other(msg)) => Err(self.broken(Hook::MapServices, Cause::Other(sanitise(&msg)))),
        }
    }

    /// What this plugin may ask for beyond ordinary containers; a loaded plugin starts with
    /// [`validate::Grants::ALL`] (the executor narrows it to its config entry's grants).
    pub fn set_grants(&mut self, grants: validate::Grants) {
        self.grants = grants;
    }

    fn check_grants(&self, hook: Hook, ungranted: Vec<String>) -> Result<(), PluginError> {
        if ungranted.is_empty() {
            return Ok(());
        }
        Err(self.broken(
            hook,
            Cause::Malformed(format!(
                "{}; add the grant to the plugin's `grants` in its [[plugins]] entry if the site means it \
                 (and pin such jobs to dedicated instances)",
                ungranted.join("; ")
            )),
        ))
    }

    fn missing(&self, hook: Hook) -> PluginError {
        self.broken(hook, Cause::Other("the plugin does not export this hook".into()))
    }

    fn broken(&self, hook: Hook, cause: Cause) -> PluginError {
        PluginError::Broken {
            plugin: self.name.clone(),
            hook,
            cause,
        }
    }

    fn rejected(&self, hook: Hook, message: &str) -> PluginError {
        PluginError::Rejected {
            plugin: self.name.clone(),
            hook,
            message: sanitise(message),
        }
    }

    /// One sandboxed call: a fresh store and instance, the deadline armed, the memory capped,
    /// stdio captured. Log lines reach `log` (redacted) whatever the outcome.
    fn call<R>(
        &self,
        hook: Hook,
        settings: &str,
        log: Option<&dyn JobLog>,
        f: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<R> + Send,
    ) -> Result<R, PluginError>
    where
        R: Send,
    {
        let stdout = MemoryOutputPipe::new(STDIO_CAP);
        let stderr = MemoryOutputPipe::new(STDIO_CAP);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                // A component needs a handful of each; a guest that grows tables without end
                // fails here instead of holding host memory outside the memory cap.
                .table_elements(TABLE_ELEMENTS_CAP)
                .tables(TABLES_CAP)
                .instances(INSTANCES_CAP)
                .memories(MEMORIES_CAP)
                .trap_on_grow_failure(true)
                .build(),
            settings: settings.to_string(),
            logging: log.is_some(),
            logs: Vec::new(),
            log_bytes: 0,
            log_dropped: false,
        };
        // Not on the caller's thread: WASI's sync stdio blocks on tokio internally, which
        // panics on a thread that already drives a tokio runtime (as `prepare`'s does). The
        // caller waits and, if the deadline passes first, bumps the epoch once: the guest traps
        // at its next epoch check (loop back-edges and function entries).
        let deadline = self.limits.deadline;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Instant>(2);
        let mut outcome = None;
        let pool = self
            .engine
            .call_thread()
            .map_err(|e| self.broken(hook, Cause::Trap(e)))?;
        pool.in_place_scope(|scope| {
            let outcome = &mut outcome;
            scope.spawn(move |_| {
                let deadline_at = Instant::now() + deadline;
                let _ = tx.send(deadline_at);
                let run = std::panic::AssertUnwindSafe(|| {
                    let mut store = Store::new(&self.engine.engine, state);
                    store.limiter(|s| &mut s.limits);
                    store.set_epoch_deadline(1);
                    store.epoch_deadline_callback(move |_| {
                        if Instant::now() >= deadline_at {
                            Err(Trap::Interrupt.into())
                        } else {
                            // Another call's deadline moved the epoch: not ours yet.
                            Ok(UpdateDeadline::Continue(1))
                        }
                    });
                    let result = match self.pre.instantiate(&mut store) {
                        Ok(instance) => f(&mut store, &instance),
                        Err(e) => Err(e),
                    };
                    (result, std::mem::take(&mut store.data_mut().logs))
                });
                *outcome = Some(std::panic::catch_unwind(run));
                drop(tx);
            });
            // Started: wait for the end (the sender is dropped) at most until the deadline.
            if let Ok(deadline_at) = rx.recv() {
                let left = deadline_at.saturating_duration_since(Instant::now());
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                    self.engine.engine.increment_epoch();
                }
            }
        });
        let (result, logs) = match outcome {
            Some(Ok(done)) => done,
            _ => (
                Err(wasmtime::format_err!("the plugin call's thread panicked")),
                Vec::new(),
            ),
        };
        if let Some(log) = log {
            for (level, line) in logs {
                log.write(&self.name, level, &log.redact(&line));
            }
        }
        let redact = |s: &str| log.map_or_else(|| s.to_string(), |l| l.redact(s));
        result.map_err(|e| {
            let stderr = String::from_utf8_lossy(&stderr.contents()).trim().to_string();
            let stderr = redact(&sanitise(&stderr));
            self.broken(hook, self.classify(&e, stderr))
        })
    }

    fn classify(&self, e: &wasmtime::Error, stderr: String) -> Cause {
        let text = format!("{e:?}");
        if text.contains("forcing trap when growing memory") || text.contains("memory allocation of") {
            return Cause::Memory(self.limits.memory_bytes as u64);
        }
        if stderr.contains("memory allocation of") {
            return Cause::Memory(self.limits.memory_bytes as u64);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Cause::Timeout(self.limits.deadline),
            Some(Trap::UnreachableCodeReached) => Cause::Panic(last_lines(&stderr)),
            Some(trap) if stderr.is_empty() => Cause::Trap(trap.to_string()),
            Some(trap) => Cause::Trap(format!("{trap}; its stderr: {}", last_lines(&stderr))),
            None if stderr.is_empty() => Cause::Trap(format!("{e:#}")),
            None => Cause::Trap(format!("{e:#}; its stderr: {}", last_lines(&stderr))),
        }
    }
}

/// The end of a guest's stderr, where a panic message is, on one line.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    if tail.len() > 2000 {
        let mut cut = tail.len() - 2000;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &tail[cut..])
    } else {
        tail
    }
}
