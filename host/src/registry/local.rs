//! A local folder of agent components (`braid run FILE --agents DIR`): a workflow's
//! `"agent": "word-count"` resolves to `DIR/word-count.wasm` or `DIR/word_count.wasm`
//! (hyphens and underscores alike), and `"name@version"` to `DIR/name@version.wasm`.
//! With a cache ([`AgentDirectory::with_cache`]) a component is compiled once per machine.

use super::{ArtifactCache, RegistryError, agent_meterings, agent_name, agent_references, digest, file_names};
use crate::engine::ResolvedAgent;
use crate::sandbox::{Agent, Metering, Sandbox};
use crate::workflow::Workflow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of agent components.
pub struct AgentDirectory {
    dir: PathBuf,
    cache: Option<ArtifactCache>,
}

impl AgentDirectory {
    /// The folder, compiling every component it loads.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AgentDirectory { dir: dir.into(), cache: None }
    }

    /// The same folder, loading components precompiled from `cache` (and caching those it
    /// compiles).
    pub fn with_cache(mut self, cache: ArtifactCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The component file for `reference`, if there is one.
    pub fn path_of(&self, reference: &str) -> Option<PathBuf> {
        file_names(reference).into_iter().map(|name| self.dir.join(format!("{name}.wasm"))).find(|path| path.is_file())
    }

    /// Reads, compiles and links every agent `workflow` names, for the code its steps need
    /// (CPU-heavy: call from a blocking context).
    pub fn resolve(
        &self,
        workflow: &Workflow,
        sandbox: &Sandbox,
    ) -> Result<HashMap<String, Arc<ResolvedAgent>>, RegistryError> {
        agent_meterings(workflow, Some(sandbox))
            .into_iter()
            .map(|(reference, needs)| {
                let agent = self.load(&reference, sandbox, &needs)?;
                Ok((reference, Arc::new(agent)))
            })
            .collect()
    }

    fn load(
        &self,
        reference: &str,
        sandbox: &Sandbox,
        needs: &std::collections::BTreeSet<Metering>,
    ) -> Result<ResolvedAgent, RegistryError> {
        let path = self
            .path_of(reference)
            .ok_or_else(|| RegistryError::NotFound { reference: reference.to_owned(), dir: self.dir.clone() })?;
        let bytes = std::fs::read(&path).map_err(|source| RegistryError::Read {
            reference: reference.to_owned(),
            path: path.clone(),
            source,
        })?;
        let digest = digest(&bytes);
        let mut agent = Agent::default();
        for &metering in needs {
            let loaded = match &self.cache {
                Some(cache) => cache.load(sandbox, &digest, &bytes, metering).map(|(agent, _)| agent),
                None => sandbox.load_for(&bytes, metering),
            };
            let loaded = loaded.map_err(|source| RegistryError::Load {
                reference: reference.to_owned(),
                path: path.clone(),
                source,
            })?;
            agent = agent.merge(&loaded);
        }
        Ok(ResolvedAgent { name: agent_name(reference).to_owned(), version: None, digest, agent })
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
