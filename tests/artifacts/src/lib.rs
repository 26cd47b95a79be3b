//! Where the guest components built by `build.rs` are: the example agents and the test
//! agents, compiled for `wasm32-wasip2`. Tests and benches depend on this crate.

use std::path::{Path, PathBuf};

/// The folder holding every built guest as `<crate_name>.wasm` (underscores for hyphens).
pub fn agents_dir() -> &'static Path {
    Path::new(env!("BRAID_AGENTS_DIR"))
}

/// The built component of the guest crate `name` (`"word-count"`, `"misbehave"`, ...).
pub fn agent_path(name: &str) -> PathBuf {
    agents_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// The bytes of the guest crate `name`'s component.
pub fn agent_bytes(name: &str) -> Vec<u8> {
    let path = agent_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
