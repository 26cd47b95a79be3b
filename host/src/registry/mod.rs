//! Where agents come from, and how they are identified: by name (and version), and by the
//! sha256 digest of their component bytes.
//!
//! For now this is a local folder of components (`braid run --agents DIR`): a workflow's
//! `"agent": "word-count"` resolves to `DIR/word-count.wasm` or `DIR/word_count.wasm`
//! (hyphens and underscores alike), and `"name@version"` to `DIR/name@version.wasm`.
//! Every agent a workflow names is resolved, compiled and linked before its run starts,
//! which pins the run to exactly those bytes.

use crate::engine::ResolvedAgent;
use crate::sandbox::{LoadError, Sandbox};
use crate::workflow::{StepKind, Workflow};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an agent could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("agent {reference:?}: no {} in {}", candidates(.reference), .dir.display())]
    NotFound { reference: String, dir: PathBuf },
    #[error("agent {reference:?}: cannot read {}: {source}", .path.display())]
    Read { reference: String, path: PathBuf, source: std::io::Error },
    #[error("agent {reference:?} ({}): {source}", .path.display())]
    Load { reference: String, path: PathBuf, source: LoadError },
}

fn candidates(reference: &str) -> String {
    let names = file_names(reference);
    names.iter().map(|name| format!("{name}.wasm")).collect::<Vec<_>>().join(" or ")
}

/// The file names (without `.wasm`) a reference may have: as written, and with hyphens
/// and underscores swapped.
fn file_names(reference: &str) -> Vec<String> {
    let mut names = vec![reference.to_owned(), reference.replace('-', "_"), reference.replace('_', "-")];
    names.dedup();
    names.sort();
    names.dedup();
    names
}

/// sha256 of `bytes`, as lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The name part of an agent reference (`name@version` → `name`).
pub fn agent_name(reference: &str) -> &str {
    reference.split_once('@').map_or(reference, |(name, _)| name)
}

/// Every agent reference a workflow makes, nested steps included.
pub fn agent_references(workflow: &Workflow) -> BTreeSet<String> {
    fn walk(steps: &[crate::workflow::Step], found: &mut BTreeSet<String>) {
        for step in steps {
            match &step.kind {
                StepKind::Agent(agent) => {
                    found.insert(agent.agent.clone());
                }
                StepKind::Parallel(block) => block.branches.iter().for_each(|branch| walk(&branch.steps, found)),
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&workflow.steps, &mut found);
    found
}

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

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
