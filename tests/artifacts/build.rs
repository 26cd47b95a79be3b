//! Builds every guest crate (the example agents in `examples/agents/` and the test agents in
//! `tests/agents/`) for `wasm32-wasip2` with the `agent` profile, the way wasmtime's
//! test-programs crate does, and tells the library where the `.wasm` files are. Python
//! agents there (a folder with an `app.py`) are built with componentize-py, installed at the
//! version `guest-sdk/python/requirements.txt` pins into a virtual environment of its own
//! (`target/agents/python-venv`), into the same folder; JavaScript agents (a folder with an
//! `agent.js`) are bundled with esbuild and built with ComponentizeJS, both installed with
//! `npm ci` from `guest-sdk/js`'s lock file into `target/agents/js-tools`.
//!
//! The nested cargo uses its own target directory (`target/agents`), so it never waits on
//! the lock of the build that runs this script. `examples/quickstart.sh` builds into the
//! same directory, so each reuses the other's work.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The build tools' command lines, the same as `braid build`'s.
#[path = "../../host/src/build/commands.rs"]
mod commands;

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
    let mut command = guest_cargo(&cargo, &root, &target_dir, &["--profile", "agent"]);
    for guest in &guests {
        command.args(["-p", guest]);
    }
    let status = command.status().expect("could not run cargo to build the guest agents");
    assert!(
        status.success(),
        "building the guest agents failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    build_as_users_do(&cargo, &root, &target_dir);
    let wasm_dir = target_dir.join("wasm32-wasip2/agent");
    build_python_agents(&root, &target_dir, &wasm_dir);
    build_javascript_agents(&root, &target_dir, &wasm_dir);
    println!("cargo:rustc-env=BRAID_AGENTS_DIR={}", wasm_dir.display());
}

/// The agents the benchmarks also measure built exactly as the README tells users to build
/// one: `cargo build --release --target wasm32-wasip2`, no flags of ours (not the `agent`
/// profile, not `.cargo/config.toml`'s small shadow stack), into
/// `target_dir/wasm32-wasip2/release`; and once more with only a 64 KiB shadow stack added,
/// into `target_dir/small-stack/wasm32-wasip2/release`, to measure that lever alone.
const BUILT_AS_USERS_DO: &[&str] = &["price-order"];

fn build_as_users_do(cargo: &str, root: &Path, target_dir: &Path) {
    // Set (even empty), RUSTFLAGS replaces the target's rustflags in `.cargo/config.toml`.
    for (dir, rustflags) in
        [(target_dir.to_owned(), ""), (target_dir.join("small-stack"), "-C link-arg=-zstack-size=65536")]
    {
        let mut command = guest_cargo(cargo, root, &dir, &["--release"]);
        command.env("RUSTFLAGS", rustflags);
        for guest in BUILT_AS_USERS_DO {
            command.args(["-p", guest]);
        }
        let status = command.status().expect("could not run cargo to build the agents as users do");
        assert!(status.success(), "building {BUILT_AS_USERS_DO:?} with `cargo build --release` failed");
    }
}

/// `cargo build PROFILE --target wasm32-wasip2 --target-dir TARGET_DIR` in the workspace.
fn guest_cargo(cargo: &str, root: &Path, target_dir: &Path, profile: &[&str]) -> Command {
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .arg("build")
        .args(profile)
        .args(["--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir);
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
    command
}

/// Builds every Python agent (a folder under `examples/agents` or `tests/agents` holding an
/// `app.py`) into `wasm_dir/<name>.wasm` (underscores for hyphens), in parallel, skipping
/// those whose component is newer than every input.
fn build_python_agents(root: &Path, target_dir: &Path, wasm_dir: &Path) {
    let agents = agents_with(root, "app.py");
    if agents.is_empty() {
        return;
    }
    let sdk = root.join("guest-sdk/python");
    let wit = root.join("guest-sdk/wit");
    let componentize = python_tools(target_dir, &sdk.join("requirements.txt"));
    let sdk_changed = newest(&sdk).max(newest(&wit));
    std::thread::scope(|scope| {
        for agent in &agents {
            let output = output_of(agent, wasm_dir);
            if is_fresh(&output, sdk_changed.max(newest(agent))) {
                continue;
            }
            let (componentize, sdk, wit) = (&componentize, &sdk, &wit);
            scope.spawn(move || {
                std::fs::create_dir_all(output.parent().unwrap()).unwrap();
                let status = commands::componentize_py(componentize, agent, wit, sdk, &output)
                    .status()
                    .expect("could not run componentize-py");
                assert!(status.success(), "building the Python agent {} failed", agent.display());
            });
        }
    });
}

/// Bundles (esbuild, `braid-sdk` resolved to `guest-sdk/js`) and builds (ComponentizeJS)
/// every JavaScript agent (a folder under `examples/agents` or `tests/agents` holding an
/// `agent.js`) into `wasm_dir/<name>.wasm`, in parallel, skipping those up to date.
fn build_javascript_agents(root: &Path, target_dir: &Path, wasm_dir: &Path) {
    let agents = agents_with(root, "agent.js");
    if agents.is_empty() {
        return;
    }
    let sdk = root.join("guest-sdk/js");
    let wit = root.join("guest-sdk/wit");
    let tools = javascript_tools(target_dir, &sdk);
    let bundles = target_dir.join("js-bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let sdk_changed = newest(&sdk.join("index.js")).max(newest(&wit));
    std::thread::scope(|scope| {
        for agent in &agents {
            let output = output_of(agent, wasm_dir);
            if is_fresh(&output, sdk_changed.max(newest(agent))) {
                continue;
            }
            let bundle = bundles.join(format!("{}.js", agent.file_name().unwrap().to_string_lossy()));
            let (tools, sdk, wit) = (&tools, &sdk, &wit);
            scope.spawn(move || {
                std::fs::create_dir_all(output.parent().unwrap()).unwrap();
                let status =
                    commands::esbuild(&tools.join("node_modules/.bin/esbuild"), agent, &sdk.join("index.js"), &bundle)
                        .status()
                        .expect("could not run esbuild");
                assert!(status.success(), "bundling the JavaScript agent {} failed", agent.display());
                let status =
                    commands::componentize_js(&tools.join("node_modules/.bin/componentize-js"), &bundle, wit, &output)
                        .status()
                        .expect("could not run componentize-js");
                assert!(status.success(), "building the JavaScript agent {} failed", agent.display());
            });
        }
    });
}

/// esbuild and ComponentizeJS, installed with `npm ci` from `sdk`'s lock file into a folder
/// under `target_dir` (again when the lock file changes).
fn javascript_tools(target_dir: &Path, sdk: &Path) -> PathBuf {
    let tools = target_dir.join("js-tools");
    let lock = std::fs::read_to_string(sdk.join("package-lock.json")).expect("guest-sdk/js/package-lock.json");
    let stamp = tools.join("installed-lock.json");
    if tools.join("node_modules/.bin/componentize-js").is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == lock)
    {
        return tools;
    }
    std::fs::create_dir_all(&tools).unwrap();
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(sdk.join(file), tools.join(file)).unwrap();
    }
    let status =
        Command::new("npm").current_dir(&tools).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "could not install ComponentizeJS with `npm ci` (Node.js 20 and npm are needed; see guest-sdk/js)"
    );
    std::fs::write(&stamp, lock).unwrap();
    tools
}

/// The folders under `examples/agents` and `tests/agents` that hold `marker`.
fn agents_with(root: &Path, marker: &str) -> Vec<PathBuf> {
    ["examples/agents", "tests/agents"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .filter(|path| path.join(marker).is_file())
        .collect()
}

/// Where the component of the agent in `folder` goes (underscores for hyphens).
fn output_of(folder: &Path, wasm_dir: &Path) -> PathBuf {
    wasm_dir.join(format!("{}.wasm", folder.file_name().unwrap().to_string_lossy().replace('-', "_")))
}

/// Whether `output` exists and is newer than `inputs_changed`.
fn is_fresh(output: &Path, inputs_changed: std::time::SystemTime) -> bool {
    std::fs::metadata(output).and_then(|m| m.modified()).is_ok_and(|built| built > inputs_changed)
}

/// componentize-py in a virtual environment under `target_dir`, installed (again) when the
/// pinned requirements change.
fn python_tools(target_dir: &Path, requirements: &Path) -> PathBuf {
    let venv = target_dir.join("python-venv");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(requirements).expect("guest-sdk/python/requirements.txt");
    if tool.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return tool;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let status = Command::new(&python).args(["-m", "venv"]).arg(&venv).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "could not create a Python virtual environment with `{python} -m venv` (Debian: apt-get install python3-venv)"
    );
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .status()
        .expect("could not run pip");
    assert!(status.success(), "could not install componentize-py (see guest-sdk/python/requirements.txt)");
    std::fs::write(&stamp, wanted).unwrap();
    tool
}

/// The newest modification time of any file under `path`.
fn newest(path: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut pending = vec![path.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    newest
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
