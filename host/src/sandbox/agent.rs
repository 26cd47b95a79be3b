//! Loading an agent: checking that bytes are a component implementing the `braid:agent`
//! world, compiling it once and linking it once, so that executions only instantiate.
//!
//! An agent is compiled for one engine or both: plain code, and code that counts fuel
//! ([`Metering`]). Steps with a fuel budget need the metered code; the rest run the plain
//! code, which is faster. Whoever loads an agent for a workflow knows which its steps need.

use super::bindings::AgentPre;
use super::execution::StepState;
use super::{MeteredEngine, Sandbox};
use wasmtime::component::Component;

/// Why bytes could not be loaded as an agent. Each message says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build the agent for the wasm32-wasip2 target \
         (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("the component could not be compiled: {0}")]
    Compile(String),
    #[error("the component does not implement the braid:agent@0.1.0 world: {0}")]
    WrongWorld(String),
}

/// Whether an agent's compiled code counts the fuel it burns. Metered code is what a fuel
/// budget needs (and what records `fuel_consumed`); it runs ~1.2× slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metering {
    Unmetered = 0,
    Metered = 1,
}

impl Metering {
    /// Both, in order.
    pub const ALL: [Metering; 2] = [Metering::Unmetered, Metering::Metered];
}

/// A compiled, pre-linked agent component: ready to instantiate any number of times, for
/// the meterings it was loaded for.
#[derive(Clone, Default)]
pub struct Agent {
    pres: [Option<AgentPre<StepState>>; 2],
}

impl Agent {
    /// Whether it was loaded for `metering`.
    pub fn has(&self, metering: Metering) -> bool {
        self.pres[metering as usize].is_some()
    }

    /// This agent with the code `other` was loaded for too (the same component).
    pub fn merge(mut self, other: &Agent) -> Agent {
        for (mine, theirs) in self.pres.iter_mut().zip(&other.pres) {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
        self
    }

    pub(super) fn pre(&self, metering: Metering) -> Option<&AgentPre<StepState>> {
        self.pres[metering as usize].as_ref()
    }

    /// The code compiled for `metering`, serialized for [`Sandbox::load_precompiled`] (no
    /// compiling).
    pub fn precompiled(&self, metering: Metering) -> Result<Vec<u8>, LoadError> {
        let pre = self.pre(metering).ok_or_else(|| LoadError::Compile(format!("not loaded for {metering:?} code")))?;
        pre.instance_pre().component().serialize().map_err(|e| LoadError::Compile(format!("{e:#}")))
    }
}

/// The component-model layer/version field that follows the magic bytes.
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const MAGIC: &[u8; 4] = b"\0asm";

impl Sandbox {
    /// Compiles `wasm` for the sandbox's default metering (unmetered, unless it meters every
    /// step) and links it against the host. CPU-heavy (tens of milliseconds for a typical
    /// agent): call it from a blocking context, once per component.
    pub fn load(&self, wasm: &[u8]) -> Result<Agent, LoadError> {
        self.load_for(wasm, self.default_metering())
    }

    /// [`Sandbox::load`] for `metering`.
    pub fn load_for(&self, wasm: &[u8], metering: Metering) -> Result<Agent, LoadError> {
        if wasm.len() < 8 || &wasm[..4] != MAGIC {
            return Err(LoadError::NotWasm);
        }
        if wasm[4..8] != COMPONENT_VERSION {
            return Err(LoadError::CoreModule);
        }
        let engine = self.metered_engine(metering)?;
        let component = Component::new(&engine.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        link(engine, &component, metering)
    }

    /// Loads an agent's `metering` code from a file that [`Agent::precompiled`] wrote,
    /// without compiling.
    ///
    /// Only for files this host wrote itself (its cache): wasmtime trusts precompiled code.
    /// Artifacts of another wasmtime version or configuration are refused, not run.
    pub fn load_precompiled(&self, path: &std::path::Path, metering: Metering) -> Result<Agent, LoadError> {
        let engine = self.metered_engine(metering)?;
        // SAFETY: the cache directory holds only artifacts this process family wrote with
        // `Agent::precompiled`, keyed by the engine's compatibility hash; wasmtime checks
        // the header and refuses incompatible artifacts.
        let component = unsafe { Component::deserialize_file(&engine.engine, path) }
            .map_err(|e| LoadError::Compile(format!("precompiled artifact {}: {e:#}", path.display())))?;
        link(engine, &component, metering)
    }

    /// A key that changes whenever precompiled artifacts of the `metering` engine could not
    /// be loaded by another (wasmtime version, target, engine settings, metering).
    pub fn artifact_key(&self, metering: Metering) -> Result<String, LoadError> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.metered_engine(metering)?.engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(format!("{:016x}", hasher.finish()))
    }

    fn metered_engine(&self, metering: Metering) -> Result<&MeteredEngine, LoadError> {
        self.engine_for(metering).map_err(|err| LoadError::Compile(err.to_string()))
    }
}

/// Links a compiled component (see [`Sandbox::load`]).
fn link(engine: &MeteredEngine, component: &Component, metering: Metering) -> Result<Agent, LoadError> {
    if let Some(problem) = missing_run_export(engine, component) {
        return Err(LoadError::WrongWorld(problem));
    }
    let pre = engine.instantiate_pre(component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
    // The memory image every instance maps copy-on-write, made now rather than by the
    // first instance: a run's first step does not pay for it.
    component.initialize_copy_on_write_image().map_err(|err| LoadError::Compile(format!("{err:#}")))?;
    let mut agent = Agent::default();
    agent.pres[metering as usize] = Some(pre);
    Ok(agent)
}

/// Names the problem when the component has no `run` function export at all, listing what
/// it exports instead (wasmtime's own message for this case does not).
fn missing_run_export(engine: &MeteredEngine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(&engine.engine).map(|(name, _)| name.to_owned()).collect();
    if exports.iter().any(|name| name == "run") {
        return None;
    }
    let listed = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
    Some(format!(
        "it has no `run` export (it exports {listed}); an agent exports \
         `run: func(ctx: step-context, input: string) -> result<string, step-error>`"
    ))
}
