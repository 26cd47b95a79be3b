//! A local folder of agent components (`braid run FILE --agents DIR`): a workflow's
//! `"agent": "word-count"` resolves to `DIR/word-count.wasm` or `DIR/word_count.wasm`
//! (hyphens and underscores alike), and `"name@version"` to `DIR/name@version.wasm`.

use super::{RegistryError, agent_name, agent_references, digest, file_names};
use crate::engine::ResolvedAgent;
use crate::sandbox::Sandbox;
use crate::workflow::Workflow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of agent components.
pub struct AgentDirectory {
    dir: PathBuf,
}

impl AgentDirectory {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AgentDirectory { dir: dir.into() }
    }

    /// The component file for `reference`, if there is one.
    pub fn path_of(&self, reference: &str) -> Option<PathBuf> {
        file_names(reference).into_iter().map(|name| self.dir.join(format!("{name}.wasm"))).find(|path| path.is_file())
    }

    /// Reads, compiles and links every agent `workflow` names (CPU-heavy: call from a
    /// blocking context).
    pub fn resolve(
        &self,
        workflow: &Workflow,
        sandbox: &Sandbox,
    ) -> Result<HashMap<String, Arc<ResolvedAgent>>, RegistryError> {
        agent_references(workflow)
            .into_iter()
            .map(|reference| {
                let agent = self.load(&reference, sandbox)?;
                Ok((reference, Arc::new(agent)))
            })
            .collect()
    }

    fn load(&self, reference: &str, sandbox: &Sandbox) -> Result<ResolvedAgent, RegistryError> {
        let path = self
            .path_of(reference)
            .ok_or_else(|| RegistryError::NotFound { reference: reference.to_owned(), dir: self.dir.clone() })?;
        let bytes = std::fs::read(&path).map_err(|source| RegistryError::Read {
            reference: reference.to_owned(),
            path: path.clone(),
            source,
        })?;
        let agent = sandbox.load(&bytes).map_err(|source| RegistryError::Load {
            reference: reference.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(ResolvedAgent { name: agent_name(reference).to_owned(), version: None, digest: digest(&bytes), agent })
    }

    /// The component bytes of every agent `workflow` names, with their digests.
    pub fn components(&self, workflow: &Workflow) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        agent_references(workflow)
            .into_iter()
            .map(|reference| {
                let path = self
                    .path_of(&reference)
                    .ok_or_else(|| RegistryError::NotFound { reference: reference.clone(), dir: self.dir.clone() })?;
                let bytes = std::fs::read(&path).map_err(|source| RegistryError::Read { reference, path, source })?;
                Ok((digest(&bytes), bytes))
            })
            .collect()
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
