//! The one wasmtime [`Engine`] of a process, its epoch ticker and the [`Linker`] every plugin
//! is instantiated with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::bindings as wasi;

use crate::bindings::FullPlugin;
use crate::plugin::State;

/// How often the ticker advances the engine's epoch while a call runs: the resolution of
/// every deadline.
pub const TICK: Duration = Duration::from_millis(5);

/// The engine, the linker and the ticker. Create one per process and share it (cheap clones).
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<State>>,
    ticker: Arc<Ticker>,
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
            ticker: Ticker::new(),
        })
    }

    /// The engine (e.g. for its precompile compatibility hash).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Keep the epoch ticking while the returned guard lives.
    pub(crate) fn ticking(&self) -> TickGuard {
        self.ticker.start(&self.engine)
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

/// A thread that increments the epoch every [`TICK`] while at least one call runs, and
/// sleeps otherwise (a process that never calls a plugin never starts it).
struct Ticker {
    active: Mutex<usize>,
    wake: Condvar,
    started: AtomicUsize,
}

pub(crate) struct TickGuard {
    ticker: Arc<Ticker>,
}

impl Ticker {
    /// One ticker per engine (epochs are per engine); its thread starts on the first call.
    fn new() -> Arc<Ticker> {
        Arc::new(Ticker {
            active: Mutex::new(0),
            wake: Condvar::new(),
            started: AtomicUsize::new(0),
        })
    }

    fn start(self: &Arc<Self>, engine: &Engine) -> TickGuard {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.wake.notify_all();
        if self.started.fetch_add(1, Ordering::SeqCst) == 0 {
            let ticker = Arc::clone(self);
            let engine = engine.clone();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || ticker.run(engine))
                .expect("spawn the plugin epoch ticker");
        }
        TickGuard {
            ticker: Arc::clone(self),
        }
    }

    fn run(&self, engine: Engine) {
        loop {
            {
                let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
                while *active == 0 {
                    active = self.wake.wait(active).unwrap_or_else(|e| e.into_inner());
                }
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }
}

impl Drop for TickGuard {
    fn drop(&mut self) {
        *self.ticker.active.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}
