//! The on-disk cache of precompiled agents, shared by every command that loads agents
//! (`braid serve`, `braid run`, `braid call`, …): an artifact per component digest and
//! engine (`<sha256>-<engine key>.cwasm`; plain and fuel-metered code have different
//! engines, so different keys), so that a component is compiled once per machine and later
//! processes load it in milliseconds. Written then renamed, so that a
//! reader never sees half an artifact; a damaged or foreign artifact is ignored and
//! replaced. The cache only saves time: a host that cannot write it still works.
//!
//! Where agents come from, and which digest a component has, are the registries' concern.

use crate::sandbox::{Agent, LoadError, Metering, Sandbox};
use std::path::{Path, PathBuf};

/// A folder of precompiled agents.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// Where an agent came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its precompiled artifact, without compiling.
    Cache,
    /// Compiled now (and cached, if the cache could be written).
    Compiled,
}

/// The default cache folder: `$XDG_CACHE_HOME/braid`, else `~/.cache/braid`, else
/// `.braid-cache` in the current directory.
pub fn default_cache_dir() -> PathBuf {
    let from_env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    from_env("XDG_CACHE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
        .map_or_else(|| PathBuf::from(".braid-cache"), |base| base.join("braid"))
}

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact of the component with `digest` for `sandbox`'s `metering` engine.
    pub fn path(&self, sandbox: &Sandbox, digest: &str, metering: Metering) -> Result<PathBuf, LoadError> {
        Ok(self.dir.join(format!("{digest}-{}.cwasm", sandbox.artifact_key(metering)?)))
    }

    /// The cached `metering` code of the agent with `digest`, if there is a usable artifact
    /// (CPU work: call from a blocking context).
    pub fn cached(&self, sandbox: &Sandbox, digest: &str, metering: Metering) -> Option<Agent> {
        let path = self.path(sandbox, digest, metering).ok()?;
        if !path.is_file() {
            return None;
        }
        match sandbox.load_precompiled(&path, metering) {
            Ok(agent) => Some(agent),
            Err(err) => {
                tracing::warn!("ignoring cached artifact {}: {err}", path.display());
                None
            }
        }
    }

    /// Compiles and links `wasm` (whose digest is `digest`) for `metering` and caches the
    /// artifact (CPU-heavy: call from a blocking context).
    pub fn compile(
        &self,
        sandbox: &Sandbox,
        digest: &str,
        wasm: &[u8],
        metering: Metering,
    ) -> Result<Agent, LoadError> {
        let agent = sandbox.load_for(wasm, metering)?;
        match agent.precompiled(metering) {
            Ok(artifact) => {
                if let Err(err) = self.write(&self.path(sandbox, digest, metering)?, &artifact) {
                    tracing::warn!("could not cache the precompiled agent {digest} in {}: {err}", self.dir.display());
                }
            }
            Err(err) => tracing::warn!("could not precompile the agent {digest}: {err}"),
        }
        Ok(agent)
    }

    /// The `metering` code of the agent with `digest`: cached, or compiled from `wasm` and
    /// cached.
    pub fn load(
        &self,
        sandbox: &Sandbox,
        digest: &str,
        wasm: &[u8],
        metering: Metering,
    ) -> Result<(Agent, Source), LoadError> {
        match self.cached(sandbox, digest, metering) {
            Some(agent) => {
                tracing::debug!(digest, ?metering, "agent loaded precompiled from the cache");
                Ok((agent, Source::Cache))
            }
            None => {
                let agent = self.compile(sandbox, digest, wasm, metering)?;
                tracing::debug!(digest, ?metering, "agent compiled and cached");
                Ok((agent, Source::Compiled))
            }
        }
    }

    fn write(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Unique per write: two writers of one artifact must not rename each other's file.
        let partial = path.with_extension(format!("partial-{}", uuid::Uuid::now_v7().simple()));
        std::fs::write(&partial, artifact)?;
        std::fs::rename(&partial, path)
    }
}
