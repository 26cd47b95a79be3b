//! Loading an agent: checking that bytes are a component implementing the `braid:agent`
//! world, compiling it once and linking it once, so that executions only instantiate.

use super::Sandbox;
use super::bindings::AgentPre;
use super::execution::StepState;
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

/// A compiled, pre-linked agent component: ready to instantiate any number of times.
#[derive(Clone)]
pub struct Agent {
    pub(super) pre: AgentPre<StepState>,
}

impl Agent {
    /// The compiled component, serialized for [`Sandbox::load_precompiled`] (no compiling).
    pub fn precompiled(&self) -> Result<Vec<u8>, LoadError> {
        self.pre.instance_pre().component().serialize().map_err(|e| LoadError::Compile(format!("{e:#}")))
    }
}

/// The component-model layer/version field that follows the magic bytes.
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const MAGIC: &[u8; 4] = b"\0asm";

impl Sandbox {
    /// Compiles `wasm` and links it against the host. CPU-heavy (tens of milliseconds for a
    /// typical agent): call it from a blocking context, once per component.
    pub fn load(&self, wasm: &[u8]) -> Result<Agent, LoadError> {
        if wasm.len() < 8 || &wasm[..4] != MAGIC {
            return Err(LoadError::NotWasm);
        }
        if wasm[4..8] != COMPONENT_VERSION {
            return Err(LoadError::CoreModule);
        }
        let component = Component::new(self.engine(), wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.link(&component)
    }

    /// Loads an agent from a file that [`Agent::precompiled`] wrote, without compiling.
    ///
    /// Only for files this host wrote itself (its cache): wasmtime trusts precompiled code.
    /// Artifacts of another wasmtime version or configuration are refused, not run.
    pub fn load_precompiled(&self, path: &std::path::Path) -> Result<Agent, LoadError> {
        // SAFETY: the cache directory holds only artifacts this process family wrote with
        // `Agent::precompiled`, keyed by the engine's compatibility hash; wasmtime checks
        // the header and refuses incompatible artifacts.
        let component = unsafe { Component::deserialize_file(self.engine(), path) }
            .map_err(|e| LoadError::Compile(format!("precompiled artifact {}: {e:#}", path.display())))?;
        self.link(&component)
    }

    /// A key that changes whenever precompiled artifacts of this engine could not be
    /// loaded by another (wasmtime version, target, engine settings).
    pub fn artifact_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine().precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Links an already compiled component (see [`Sandbox::load`]).
    pub fn link(&self, component: &Component) -> Result<Agent, LoadError> {
        if let Some(problem) = missing_run_export(self, component) {
            return Err(LoadError::WrongWorld(problem));
        }
        let pre = self.instantiate_pre(component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok(Agent { pre })
    }
}

/// Names the problem when the component has no `run` function export at all, listing what
/// it exports instead (wasmtime's own message for this case does not).
fn missing_run_export(sandbox: &Sandbox, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(sandbox.engine()).map(|(name, _)| name.to_owned()).collect();
    if exports.iter().any(|name| name == "run") {
        return None;
    }
    let listed = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
    Some(format!(
        "it has no `run` export (it exports {listed}); an agent exports \
         `run: func(ctx: step-context, input: string) -> result<string, step-error>`"
    ))
}
