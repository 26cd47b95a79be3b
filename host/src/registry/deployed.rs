//! The deployed registry: agents and workflows stored by name and version in the database
//! (agent bytes content-addressed by sha256), and an on-disk cache of precompiled
//! components keyed by digest and the engine's artifact key, so that a restarted host
//! loads what it compiled before instead of compiling again.
//!
//! Versions are immutable: deploying the same name and version again with the same bytes
//! is a no-op, with other bytes a conflict. `"agent": "name"` means the latest deployed
//! version (the most recently deployed), `"name@version"` pins one. A run pins the exact
//! digests when it starts; deploying later never changes it.

use super::{ArtifactCache, agent_meterings, agent_name, digest};
use crate::engine::{ResolvedAgent, RunPlan};
use crate::metrics::METRICS;
use crate::sandbox::{Agent, LoadError, Metering, Sandbox};
use crate::store::{AgentRecord, Inserted, RunRecord, Store, StoreError, WorkflowRecord};
use crate::workflow::{self, InvalidWorkflow, Workflow};
use chrono::Utc;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid {what} {value:?}: use letters, digits, '.', '_' and '-' (at most 128)")]
    BadName { what: &'static str, value: String },
    #[error(transparent)]
    NotAnAgent(#[from] LoadError),
    #[error(
        "{kind} {name}@{version} is already deployed with other content (digest {existing_digest}); versions are immutable"
    )]
    Conflict { kind: &'static str, name: String, version: String, existing_digest: String },
    #[error(transparent)]
    Invalid(#[from] InvalidWorkflow),
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a deployed workflow could not be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no deployed workflow {0}")]
    UnknownWorkflow(String),
    #[error("no deployed agent {0}")]
    UnknownAgent(String),
    #[error("deployed workflow {name}@{version} no longer validates: {source}")]
    Invalid { name: String, version: String, source: InvalidWorkflow },
    #[error("agent {reference}: {source}")]
    Load { reference: String, source: LoadError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployed {
    Created,
    AlreadyThere,
}

/// The deployed registry of one host.
pub struct Registry {
    store: Store,
    sandbox: Arc<Sandbox>,
    cache: ArtifactCache,
    /// Agents ready to run, by digest: compiled at most once per process.
    loaded: Mutex<HashMap<String, Arc<ResolvedAgent>>>,
    /// Deployed definitions, parsed, by digest.
    parsed: Mutex<HashMap<String, Arc<Workflow>>>,
    /// One lock per digest being loaded: units arriving together for an agent not yet
    /// loaded here wait for one compile instead of each starting its own.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Locks a cache; a panic elsewhere cannot leave a map of ready values inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_name(what: &'static str, value: &str) -> Result<(), DeployError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(DeployError::BadName { what, value: value.to_owned() }) }
}

impl Registry {
    /// A registry over `store`, caching precompiled components in `cache_dir`.
    pub fn new(store: Store, sandbox: Arc<Sandbox>, cache_dir: impl Into<PathBuf>) -> Self {
        Registry {
            store,
            sandbox,
            cache: ArtifactCache::new(cache_dir),
            loaded: Mutex::new(HashMap::new()),
            parsed: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// Type-checks `wasm` against the agent world, precompiles it into the cache and stores
    /// it as `name@version`.
    pub async fn deploy_agent(
        &self,
        name: &str,
        version: &str,
        wasm: Vec<u8>,
    ) -> Result<(AgentRecord, Deployed), DeployError> {
        check_name("agent name", name)?;
        check_name("agent version", version)?;
        let record = AgentRecord {
            name: name.to_owned(),
            version: version.to_owned(),
            digest: digest(&wasm),
            size_bytes: wasm.len() as i64,
            created_at: Utc::now(),
        };
        // An existing version is judged before compiling anything.
        if let Some(existing) = self.store.find_agent(name, Some(version)).await? {
            return judge("agent", existing.digest.clone(), &record.digest, name, version).map(|d| (existing, d));
        }
        let metering = self.sandbox.default_metering();
        self.compile_and_cache(&record.name, Some(&record.version), &record.digest, wasm.clone(), metering).await?;
        let deployed = match self.store.insert_agent(&record, &wasm).await? {
            Inserted::Created => Deployed::Created,
            Inserted::AlreadyThere => Deployed::AlreadyThere,
            Inserted::Conflict { existing_digest } => {
                return Err(conflict("agent", name, version, existing_digest));
            }
        };
        Ok((record, deployed))
    }

    /// Validates a definition against the deployed agents and stores it as `name@version`.
    /// A `name` or `version` inside the definition must match the path's.
    pub async fn deploy_workflow(
        &self,
        name: &str,
        version: &str,
        mut definition: Value,
    ) -> Result<(WorkflowRecord, Deployed), DeployError> {
        check_name("workflow name", name)?;
        check_name("workflow version", version)?;
        let Some(fields) = definition.as_object_mut() else {
            return Err(DeployError::Mismatch("a workflow definition must be a JSON object".into()));
        };
        for (key, expected) in [("name", name), ("version", version)] {
            match fields.get(key).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())) {
                Some(given) if given != expected => {
                    return Err(DeployError::Mismatch(format!(
                        "the definition's {key} {given:?} does not match the {key} in the path {expected:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    fields.insert(key.to_owned(), Value::String(expected.to_owned()));
                }
            }
        }
        let deployed_agents = self.store.list_agents(None).await?;
        let known: BTreeSet<String> = deployed_agents
            .iter()
            .flat_map(|agent| [agent.name.clone(), format!("{}@{}", agent.name, agent.version)])
            .collect();
        let ceiling = &self.sandbox.config().outbound.ceiling;
        workflow::check_on_host(&definition.to_string(), &|reference| known.contains(reference), ceiling)?;
        let record = WorkflowRecord {
            name: name.to_owned(),
            version: version.to_owned(),
            digest: digest(definition.to_string().as_bytes()),
            definition,
            created_at: Utc::now(),
        };
        match self.store.insert_workflow(&record).await? {
            Inserted::Created => Ok((record, Deployed::Created)),
            Inserted::AlreadyThere => Ok((record, Deployed::AlreadyThere)),
            Inserted::Conflict { existing_digest } => Err(conflict("workflow", name, version, existing_digest)),
        }
    }

    /// Makes `name` (at `version`, or its latest) ready to run, pinning each agent
    /// reference to a digest now.
    pub async fn plan(&self, name: &str, version: Option<&str>) -> Result<Arc<RunPlan>, PlanError> {
        let label = version.map_or_else(|| name.to_owned(), |v| format!("{name}@{v}"));
        let record = self.store.find_workflow(name, version).await?.ok_or(PlanError::UnknownWorkflow(label))?;
        let parsed = self.parsed(&record)?;
        let mut agents = HashMap::new();
        for (reference, needs) in agent_meterings(&parsed, Some(&self.sandbox)) {
            let (agent, pinned) = match reference.split_once('@') {
                Some((agent, version)) => (agent, Some(version)),
                None => (reference.as_str(), None),
            };
            let deployed = self
                .store
                .find_agent(agent, pinned)
                .await?
                .ok_or_else(|| PlanError::UnknownAgent(reference.clone()))?;
            let ready = self.agent(&deployed.name, Some(&deployed.version), &deployed.digest, &needs).await?;
            agents.insert(reference, ready);
        }
        Ok(Arc::new(RunPlan { workflow: parsed, agents, workflow_digest: Some(record.digest) }))
    }

    /// The plan a run was pinned to when it started — the exact definition (by digest) and
    /// agent components (by digest) — however it was started (deployed, or from a file).
    pub async fn plan_for_run(&self, run: &RunRecord) -> Result<Arc<RunPlan>, PlanError> {
        let label = format!("{}@{}", run.workflow_name, run.workflow_version);
        let stored = match &run.workflow_digest {
            Some(digest) => self.store.definition(digest).await?.map(|definition| WorkflowRecord {
                name: run.workflow_name.clone(),
                version: run.workflow_version.clone(),
                digest: digest.clone(),
                definition,
                created_at: run.created_at,
            }),
            None => None,
        };
        let record = match stored {
            Some(record) => record,
            // Runs recorded before definitions were stored by digest.
            None => self
                .store
                .find_workflow(&run.workflow_name, Some(&run.workflow_version))
                .await?
                .ok_or(PlanError::UnknownWorkflow(label))?,
        };
        let parsed = self.parsed(&record)?;
        let pins = run.pinned_agents.clone().unwrap_or(Value::Null);
        let mut agents = HashMap::new();
        for (reference, needs) in agent_meterings(&parsed, Some(&self.sandbox)) {
            let pin = &pins[&reference];
            let digest = pin["digest"].as_str().ok_or_else(|| PlanError::UnknownAgent(reference.clone()))?;
            let version = pin["version"].as_str();
            agents.insert(reference.clone(), self.agent(agent_name(&reference), version, digest, &needs).await?);
        }
        Ok(Arc::new(RunPlan { workflow: parsed, agents, workflow_digest: Some(record.digest) }))
    }

    /// Stores what a run from a file needs to be resumed by any host: its definition and
    /// its agents' components, by digest. Returns the definition's digest.
    pub async fn keep_for_resume(
        &self,
        definition: &Value,
        components: &[(String, Vec<u8>)],
    ) -> Result<String, StoreError> {
        let digest = digest(definition.to_string().as_bytes());
        self.store.insert_definition(&digest, definition).await?;
        for (component_digest, wasm) in components {
            self.store.insert_component(component_digest, wasm).await?;
        }
        Ok(digest)
    }

    /// A deployed definition, parsed once per digest (deployed definitions never change).
    fn parsed(&self, record: &WorkflowRecord) -> Result<Arc<Workflow>, PlanError> {
        if let Some(parsed) = lock(&self.parsed).get(&record.digest) {
            return Ok(parsed.clone());
        }
        let invalid =
            |source| PlanError::Invalid { name: record.name.clone(), version: record.version.clone(), source };
        let parsed = workflow::parse(&record.definition.to_string()).map_err(invalid)?;
        // Checked against this host's ceiling too: it may allow less than the deploying one.
        workflow::check_grants(&parsed, &self.sandbox.config().outbound.ceiling).map_err(invalid)?;
        let parsed = Arc::new(parsed);
        lock(&self.parsed).insert(record.digest.clone(), parsed.clone());
        Ok(parsed)
    }

    /// The agent with `digest`, ready to run the code `needs` names: from memory, from the
    /// precompiled cache, or compiled from the stored bytes (and cached).
    pub(crate) async fn agent(
        &self,
        name: &str,
        version: Option<&str>,
        digest: &str,
        needs: &BTreeSet<Metering>,
    ) -> Result<Arc<ResolvedAgent>, PlanError> {
        let ready = |loaded: &HashMap<String, Arc<ResolvedAgent>>| {
            loaded.get(digest).filter(|agent| needs.iter().all(|&metering| agent.agent.has(metering))).cloned()
        };
        if let Some(ready) = ready(&lock(&self.loaded)) {
            return Ok(ready);
        }
        let once = lock(&self.loading).entry(digest.to_owned()).or_default().clone();
        let _loading = once.lock().await;
        if let Some(ready) = ready(&lock(&self.loaded)) {
            return Ok(ready);
        }
        // The code each metering needs that is not loaded yet, then the agent with all of it.
        let loaded = async {
            for &metering in needs {
                if !lock(&self.loaded).get(digest).is_some_and(|agent| agent.agent.has(metering)) {
                    self.load_agent(name, version, digest, metering).await?;
                }
            }
            Ok::<(), PlanError>(())
        }
        .await;
        lock(&self.loading).remove(digest);
        loaded?;
        ready(&lock(&self.loaded)).ok_or_else(|| PlanError::UnknownAgent(format!("{name} ({digest})")))
    }

    /// Loads the `metering` code of the agent with `digest` (one caller at a time per
    /// digest: see `agent`).
    async fn load_agent(
        &self,
        name: &str,
        version: Option<&str>,
        digest: &str,
        metering: Metering,
    ) -> Result<Arc<ResolvedAgent>, PlanError> {
        let reference = format!("{name}@{}", version.unwrap_or("?"));
        let (sandbox, cache, key) = (self.sandbox.clone(), self.cache.clone(), digest.to_owned());
        let cached = tokio::task::spawn_blocking(move || cache.cached(&sandbox, &key, metering))
            .await
            .map_err(|e| PlanError::Load { reference: reference.clone(), source: LoadError::Compile(e.to_string()) })?;
        if let Some(agent) = cached {
            METRICS.compiles.with_label_values(&["precompiled"]).inc();
            return Ok(self.remember(name, version, digest, agent));
        }
        let wasm = self.store.agent_wasm(digest).await?.ok_or_else(|| PlanError::UnknownAgent(reference.clone()))?;
        self.compile_and_cache(name, version, digest, wasm, metering).await.map_err(|err| match err {
            DeployError::NotAnAgent(source) => PlanError::Load { reference, source },
            other => PlanError::Load { reference, source: LoadError::Compile(other.to_string()) },
        })
    }

    /// Compiles and links `wasm` for `metering` off the async threads, writes the
    /// precompiled artifact to the cache and keeps the agent in memory.
    async fn compile_and_cache(
        &self,
        name: &str,
        version: Option<&str>,
        digest: &str,
        wasm: Vec<u8>,
        metering: Metering,
    ) -> Result<Arc<ResolvedAgent>, DeployError> {
        let (sandbox, cache, key) = (self.sandbox.clone(), self.cache.clone(), digest.to_owned());
        let agent = tokio::task::spawn_blocking(move || cache.compile(&sandbox, &key, &wasm, metering))
            .await
            .map_err(|e| LoadError::Compile(e.to_string()))??;
        METRICS.compiles.with_label_values(&["compiled"]).inc();
        Ok(self.remember(name, version, digest, agent))
    }

    /// Keeps `agent`'s code in memory, beside the code of the same digest loaded before
    /// (whose name and version stay).
    fn remember(&self, name: &str, version: Option<&str>, digest: &str, agent: Agent) -> Arc<ResolvedAgent> {
        let mut loaded = lock(&self.loaded);
        let ready = Arc::new(match loaded.get(digest) {
            Some(known) => ResolvedAgent { agent: known.agent.clone().merge(&agent), ..ResolvedAgent::clone(known) },
            None => ResolvedAgent {
                name: name.to_owned(),
                version: version.map(str::to_owned),
                digest: digest.to_owned(),
                agent,
            },
        });
        loaded.insert(digest.to_owned(), ready.clone());
        ready
    }

    /// The sandbox agents are loaded into.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The store behind the registry.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn judge(
    kind: &'static str,
    existing: String,
    digest: &str,
    name: &str,
    version: &str,
) -> Result<Deployed, DeployError> {
    if existing == digest { Ok(Deployed::AlreadyThere) } else { Err(conflict(kind, name, version, existing)) }
}

fn conflict(kind: &'static str, name: &str, version: &str, existing_digest: String) -> DeployError {
    DeployError::Conflict { kind, name: name.to_owned(), version: version.to_owned(), existing_digest }
}
