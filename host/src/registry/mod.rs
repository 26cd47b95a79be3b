//! Where agents and workflows come from, and how they are identified: by name and
//! version, and by the sha256 digest of their bytes.
//!
//! Two sources: a local folder of components for `braid run FILE --agents DIR`
//! ([`AgentDirectory`]), and the deployed registry in the database ([`Registry`]), with
//! the on-disk cache of precompiled components every command shares ([`ArtifactCache`]). Either way, every agent a workflow names is
//! resolved, compiled (or loaded precompiled) and linked before its run starts, which pins
//! the run to exactly those bytes.

mod cache;
mod deployed;
mod local;

pub use cache::{ArtifactCache, Source, default_cache_dir};
pub use deployed::{DeployError, Deployed, PlanError, Registry};
pub use local::AgentDirectory;

use crate::sandbox::{LoadError, Metering, Sandbox};
use crate::workflow::{StepKind, Workflow};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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
    agent_meterings(workflow, None).into_keys().collect()
}

/// Every agent reference a workflow makes, with the code its steps need on `sandbox`:
/// fuel-metered for steps with a fuel budget (their own or the sandbox's default), plain
/// for the others unless the sandbox meters every step. Without a sandbox, no code.
pub fn agent_meterings(workflow: &Workflow, sandbox: Option<&Sandbox>) -> BTreeMap<String, BTreeSet<Metering>> {
    fn walk(
        steps: &[crate::workflow::Step],
        sandbox: Option<&Sandbox>,
        found: &mut BTreeMap<String, BTreeSet<Metering>>,
    ) {
        for step in steps {
            if let StepKind::Agent(agent) = &step.kind {
                let needs = found.entry(agent.agent.clone()).or_default();
                if let Some(sandbox) = sandbox {
                    needs.insert(sandbox.metering(agent.fuel.or(sandbox.config().default_limits.fuel)));
                }
            }
            for (nested, _) in step.kind.nested() {
                walk(nested, sandbox, found);
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(&workflow.steps, sandbox, &mut found);
    found
}
