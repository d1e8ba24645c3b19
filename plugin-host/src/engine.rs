//! The one wasmtime [`Engine`] of a process and the [`Linker`] every plugin is instantiated
//! with.
//!
//! Deadlines use epoch interruption without a ticker thread: every store's epoch deadline is
//! one tick away and a callback compares the call's own wall-clock deadline; the thread that
//! waits for a call bumps the epoch once when that call's deadline passes (see
//! `Plugin::call`). A bump meant for one call only makes other running calls look at their
//! own clocks, so concurrent calls on one engine keep their own deadlines.

use std::sync::{Arc, OnceLock};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::bindings as wasi;

use crate::bindings::FullPlugin;
use crate::plugin::State;

/// The engine and the linker. Create one per process and share it (cheap clones).
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<State>>,
    calls: Arc<OnceLock<rayon::ThreadPool>>,
}

impl PluginEngine {
    /// An engine with epoch interruption and a linker with only `wasi:io`, `wasi:cli` (empty
    /// stdin, no environment or arguments, captured stdout/stderr) and the plugin imports.
    pub fn new() -> wasmtime::Result<PluginEngine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<State>::new(&engine);
        add_wasi_stdio(&mut linker)?;
        FullPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, itself)?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            calls: Arc::default(),
        })
    }

    /// The thread every call of this engine runs on, started by the first call. One thread
    /// for the process instead of one per call: creating a thread, and wasmtime's per-thread
    /// signal stack, cost more than a small plugin's call. Calls queue on it (a process
    /// calls its plugins one after another); a call's deadline starts when it starts.
    pub(crate) fn call_thread(&self) -> Result<&rayon::ThreadPool, String> {
        if let Some(pool) = self.calls.get() {
            return Ok(pool);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "plugin-call".into())
            .build()
            .map_err(|e| format!("cannot start the plugin thread: {e}"))?;
        Ok(self.calls.get_or_init(|| pool))
    }

    /// The engine (e.g. for its precompile compatibility hash).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The smallest WASI surface a plugin built with Rust's std needs for stdio, exit and panics:
/// `wasi:io/{error,poll,streams}` and `wasi:cli/*`. No filesystem, sockets, clocks or random.
fn add_wasi_stdio(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::WasiCli;
    let l = linker;
    wasi::io::error::add_to_linker::<State, HasIo>(l, table)?;
    wasi::sync::io::poll::add_to_linker::<State, HasIo>(l, table)?;
    wasi::sync::io::streams::add_to_linker::<State, HasIo>(l, table)?;
    wasi::cli::exit::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::environment::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::stdin::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::stdout::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::stderr::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::terminal_input::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::terminal_output::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::terminal_stdin::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::terminal_stdout::add_to_linker::<State, WasiCli>(l, State::cli)?;
    wasi::cli::terminal_stderr::add_to_linker::<State, WasiCli>(l, State::cli)?;
    Ok(())
}

fn table(state: &mut State) -> &mut wasmtime::component::ResourceTable {
    &mut state.table
}

fn itself(state: &mut State) -> &mut State {
    state
}

struct HasIo;
impl wasmtime::component::HasData for HasIo {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}
