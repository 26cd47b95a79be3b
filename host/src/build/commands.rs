//! The command lines of the agent build tools, shared by `braid build` and the test build
//! (`tests/artifacts/build.rs` includes this file), so that both build agents the same way.
//! Only `std`: the test build compiles it on its own.

use std::path::Path;
use std::process::Command;

/// componentize-py building `dir/app.py` against the WIT folder `wit`, with the Python SDK
/// (the folder holding `braid_sdk/`) in `sdk`, into `output`.
pub fn componentize_py(tool: &Path, dir: &Path, wit: &Path, sdk: &Path, output: &Path) -> Command {
    let mut command = Command::new(tool);
    command
        .current_dir(dir)
        // No __pycache__ in the project folder.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-d")
        .arg(wit)
        .args(["-w", "agent", "componentize", "app", "-p", "."])
        .arg("-p")
        .arg(sdk)
        .arg("-o")
        .arg(output);
    command
}

/// esbuild bundling `dir/agent.js` into `bundle`, `braid-sdk` resolved to the SDK file
/// `sdk` and the WIT imports (`braid:*`) left to ComponentizeJS.
pub fn esbuild(tool: &Path, dir: &Path, sdk: &Path, bundle: &Path) -> Command {
    let mut command = Command::new(tool);
    command
        .current_dir(dir)
        .args(["agent.js", "--bundle", "--format=esm", "--platform=neutral", "--log-level=warning"])
        .arg("--external:braid:*")
        .arg(format!("--alias:braid-sdk={}", sdk.display()))
        .arg(format!("--outfile={}", bundle.display()));
    command
}

/// componentize-js building `bundle` against the WIT folder `wit` into `output` (called
/// directly: jco 1.35's `componentize` cannot read a WIT folder).
pub fn componentize_js(tool: &Path, bundle: &Path, wit: &Path, output: &Path) -> Command {
    let mut command = Command::new(tool);
    command.arg(bundle).arg("--wit").arg(wit).args(["--world-name", "agent", "-o"]).arg(output);
    command
}
