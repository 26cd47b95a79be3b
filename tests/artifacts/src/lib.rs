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

/// The component of the guest crate `name` built as the README tells users to build an
/// agent (`cargo build --release --target wasm32-wasip2`, no flags): only the crates
/// `build.rs` lists in `BUILT_AS_USERS_DO`.
pub fn agent_path_as_users_build(name: &str) -> PathBuf {
    agents_dir().join("../release").join(format!("{}.wasm", name.replace('-', "_")))
}

/// [`agent_path_as_users_build`], linked with a 64 KiB shadow stack instead of Rust's 1 MiB
/// (`-C link-arg=-zstack-size=65536`), nothing else changed.
pub fn agent_path_small_stack(name: &str) -> PathBuf {
    agents_dir().join("../../small-stack/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")))
}

/// The bytes of the guest crate `name`'s component.
pub fn agent_bytes(name: &str) -> Vec<u8> {
    let path = agent_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
