//! Builds every guest crate (the example agents in `examples/agents/` and the test agents in
//! `tests/agents/`) for `wasm32-wasip2` with the `agent` profile, the way wasmtime's
//! test-programs crate does, and tells the library where the `.wasm` files are.
//!
//! The nested cargo uses its own target directory (`target/agents`), so it never waits on
//! the lock of the build that runs this script. `examples/quickstart.sh` builds into the
//! same directory, so each reuses the other's work.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("agents"),
        None => root.join("target/agents"),
    };
    let guests: Vec<String> = ["examples/agents", "tests/agents"]
        .iter()
        .flat_map(|dir| {
            println!("cargo:rerun-if-changed={}", root.join(dir).display());
            guest_crates(&root.join(dir))
        })
        .collect();
    for path in ["guest-sdk", "Cargo.lock", "Cargo.toml", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--profile", "agent", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for guest in &guests {
        command.args(["-p", guest]);
    }
    // What the outer build was told (flags, wrappers such as clippy's) is not for guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("could not run cargo to build the guest agents");
    assert!(
        status.success(),
        "building the guest agents failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    let wasm_dir = target_dir.join("wasm32-wasip2/agent");
    println!("cargo:rustc-env=BRAID_AGENTS_DIR={}", wasm_dir.display());
}

/// The package names of the crates directly under `dir`.
fn guest_crates(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("Cargo.toml")).ok())
        .map(|manifest| package_name(&manifest))
        .collect();
    names.sort();
    names
}

/// The `name` of a manifest's `[package]` (its first `name = "..."` line).
fn package_name(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("name = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no package name in manifest:\n{manifest}"))
        .to_owned()
}
