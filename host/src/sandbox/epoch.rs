//! The one epoch ticker thread of a sandbox: it advances the epoch of each of the
//! sandbox's engines every tick, which is how running guests notice deadlines and
//! cancellation (see `execution.rs`). A thread per execution would cost far more than one
//! shared ticker (wasmtime#11814).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// Ticks its engines' epochs until dropped (an engine that is gone is skipped).
pub(crate) struct EpochTicker {
    engines: Arc<Mutex<Vec<EngineWeak>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(tick: Duration) -> std::io::Result<Self> {
        let engines: Arc<Mutex<Vec<EngineWeak>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ticked, stop_flag) = (engines.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("braid-epoch".into()).spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                let engines = ticked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for engine in engines.iter().filter_map(EngineWeak::upgrade) {
                    engine.increment_epoch();
                }
            }
        })?;
        Ok(EpochTicker { engines, stop, thread: Some(thread) })
    }

    /// Ticks `engine` too, from the next tick on.
    pub(crate) fn tick(&self, engine: &Engine) {
        self.engines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(engine.weak());
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
