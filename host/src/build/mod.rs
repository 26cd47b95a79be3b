//! Agents from source: `braid new agent` writes a ready-to-build project in Rust, Python or
//! JavaScript, and `braid build` turns a project folder into one `.wasm` component — cargo
//! for Rust, componentize-py for Python, esbuild + ComponentizeJS for JavaScript.
//!
//! The SDKs and the WIT travel inside the binary (the files of `guest-sdk/`), so a project
//! needs nothing from this repository: a Rust project gets its own copy of `braid-sdk`, and
//! a Python or JavaScript build is given the SDK and the WIT in a scratch folder. The build
//! tools themselves (cargo with the `wasm32-wasip2` target, componentize-py, npm's
//! `componentize-js` and `esbuild`) are the user's; where each is looked for is documented
//! on [`Language::build`]. Loading, running and recording agents is not this module's.

pub mod commands;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The WIT every agent targets.
const WIT: &str = include_str!("../../../guest-sdk/wit/agent.wit");
const PY_SDK_INIT: &str = include_str!("../../../guest-sdk/python/braid_sdk/__init__.py");
const PY_SDK_LOG: &str = include_str!("../../../guest-sdk/python/braid_sdk/log.py");
const PY_REQUIREMENTS: &str = include_str!("../../../guest-sdk/python/requirements.txt");
const JS_SDK: &str = include_str!("../../../guest-sdk/js/index.js");
const JS_SDK_TYPES: &str = include_str!("../../../guest-sdk/js/index.d.ts");
const JS_PACKAGE_LOCK: &str = include_str!("../../../guest-sdk/js/package-lock.json");
const RUST_SDK_LIB: &str = include_str!("../../../guest-sdk/src/lib.rs");
const RUST_SDK_HTTP: &str = include_str!("../../../guest-sdk/src/http.rs");

/// The language of an agent project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    #[value(alias = "javascript", alias = "ts")]
    Js,
}

/// Why a project could not be written or built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} already exists; choose another name or remove it")]
    Exists(PathBuf),
    #[error("{} is not an agent project: no Cargo.toml, app.py or agent.js in it", .0.display())]
    UnknownProject(PathBuf),
    #[error("{name:?} is not an agent name (letters, digits, '-' and '_', starting with a letter)")]
    BadName { name: String },
    #[error("could not write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not run {tool} ({hint}): {source}")]
    Tool {
        tool: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}); its output is above")]
    Failed { tool: String, status: std::process::ExitStatus },
}

/// The new project's README: what it is and how to build it (`setup`: what that needs).
fn write_readme(dir: &Path, name: &str, language: &str, setup: &str) -> Result<(), BuildError> {
    let build = format!("braid build {name}   # writes {name}/{name}.wasm");
    write(
        &dir.join("README.md"),
        &format!("# {name}\n\nA Braid agent in {language}. Build it with `{build}`\n({setup}).\n"),
    )
}

fn write(path: &Path, text: &str) -> Result<(), BuildError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| BuildError::Write { path: parent.to_owned(), source })?;
    }
    std::fs::write(path, text).map_err(|source| BuildError::Write { path: path.to_owned(), source })
}

fn check_name(name: &str) -> Result<(), BuildError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(BuildError::BadName { name: name.to_owned() }) }
}

/// Writes a new agent project `parent/name` in `language`; returns its folder.
pub fn new_agent(parent: &Path, name: &str, language: Language) -> Result<PathBuf, BuildError> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(BuildError::Exists(dir));
    }
    match language {
        Language::Rust => {
            let crate_name = name.replace('-', "_");
            write(
                &dir.join("Cargo.toml"),
                &format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
                     [dependencies]\nbraid-sdk = {{ path = \"braid-sdk\" }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
                     # An agent is its own workspace, wherever it sits.\n[workspace]\n\n\
                     [profile.release]\nopt-level = \"s\"\nstrip = \"debuginfo\"\n"
                ),
            )?;
            write(&dir.join("src/lib.rs"), &rust_template(&crate_name))?;
            write_rust_sdk(&dir.join("braid-sdk"))?;
            write(&dir.join(".gitignore"), "/target\n*.wasm\n")?;
            write_readme(&dir, name, "Rust", "needs `rustup target add wasm32-wasip2`")?;
        }
        Language::Python => {
            write(&dir.join("app.py"), PYTHON_TEMPLATE)?;
            write(&dir.join("requirements.txt"), PY_REQUIREMENTS)?;
            write_readme(
                &dir,
                name,
                "Python",
                "needs componentize-py: `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`",
            )?;
        }
        Language::Js => {
            write(&dir.join("agent.js"), JS_TEMPLATE)?;
            write(&dir.join("package.json"), &js_package(name))?;
            write(&dir.join("package-lock.json"), &JS_PACKAGE_LOCK.replace("\"braid-sdk\"", &format!("\"{name}\"")))?;
            write(&dir.join("braid-sdk.d.ts"), JS_SDK_TYPES)?;
            write(&dir.join(".gitignore"), "/node_modules\n*.wasm\n")?;
            write_readme(&dir, name, "JavaScript", "after `npm ci` in this folder")?;
        }
    }
    Ok(dir)
}

fn rust_template(crate_name: &str) -> String {
    format!(
        r#"//! A Braid agent: `{crate_name}`.

use braid_sdk::{{Context, Error}};
use serde::{{Deserialize, Serialize}};

#[derive(Deserialize)]
struct Input {{
    text: String,
}}

#[derive(Serialize)]
struct Output {{
    words: usize,
}}

fn run(ctx: Context, input: Input) -> Result<Output, Error> {{
    braid_sdk::log::info(&format!("step {{}}, attempt {{}}", ctx.step_id, ctx.attempt));
    if input.text.is_empty() {{
        return Err(Error::fatal("text is empty"));
    }}
    Ok(Output {{ words: input.text.split_whitespace().count() }})
}}

braid_sdk::export_agent!(run);
"#
    )
}

const PYTHON_TEMPLATE: &str = r#""""A Braid agent in Python."""

from braid_sdk import agent, Context, Error, log


@agent
def run(ctx: Context, input: dict) -> dict:
    log.info(f"step {ctx.step_id}, attempt {ctx.attempt}")
    text = input.get("text") if isinstance(input, dict) else None
    if not isinstance(text, str) or not text:
        raise Error.fatal("the input needs a non-empty string field 'text'")
    return {"words": len(text.split())}
"#;

const JS_TEMPLATE: &str = r#"// A Braid agent in JavaScript (types: braid-sdk.d.ts).
import { agent, Error, log } from 'braid-sdk';

export const run = agent((ctx, input) => {
  log.info(`step ${ctx.stepId}, attempt ${ctx.attempt}`);
  if (typeof input?.text !== 'string' || input.text === '') {
    throw Error.fatal("the input needs a non-empty string field 'text'");
  }
  return { words: input.text.split(/\s+/).filter(Boolean).length };
});
"#;

/// The project's `package.json`: the SDK's build tools, pinned as in `guest-sdk/js`.
fn js_package(name: &str) -> String {
    let sdk: serde_json::Value =
        serde_json::from_str(include_str!("../../../guest-sdk/js/package.json")).expect("guest-sdk/js/package.json");
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "type": "module",
        "private": true,
        "license": sdk["license"],
        "devDependencies": sdk["devDependencies"],
    });
    serde_json::to_string_pretty(&package).expect("JSON") + "\n"
}

/// A copy of the Rust SDK, as a path dependency of the project.
fn write_rust_sdk(dir: &Path) -> Result<(), BuildError> {
    write(
        &dir.join("Cargo.toml"),
        "[package]\nname = \"braid-sdk\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[features]\nhttp = [\"dep:wstd\"]\n\n\
         [dependencies]\nwit-bindgen = \"0.61\"\nserde = { version = \"1\", features = [\"derive\"] }\nserde_json = \"1\"\n\
         wstd = { version = \"0.6\", optional = true, default-features = false }\n",
    )?;
    write(&dir.join("src/lib.rs"), RUST_SDK_LIB)?;
    write(&dir.join("src/http.rs"), RUST_SDK_HTTP)?;
    write(&dir.join("wit/agent.wit"), WIT)
}

impl Language {
    /// The language of the project in `dir`: `Cargo.toml` (Rust), `app.py` (Python) or
    /// `agent.js` (JavaScript).
    pub fn of(dir: &Path) -> Result<Language, BuildError> {
        if dir.join("Cargo.toml").is_file() {
            Ok(Language::Rust)
        } else if dir.join("app.py").is_file() {
            Ok(Language::Python)
        } else if dir.join("agent.js").is_file() {
            Ok(Language::Js)
        } else {
            Err(BuildError::UnknownProject(dir.to_owned()))
        }
    }

    /// Builds the project in `dir` into `output`. Tools: Rust — `cargo` (with the
    /// `wasm32-wasip2` target); Python — `componentize-py` from `dir/.venv/bin`, else PATH;
    /// JavaScript — `esbuild` and `componentize-js` from `dir/node_modules/.bin`, else PATH.
    pub fn build(self, dir: &Path, output: &Path) -> Result<(), BuildError> {
        let scratch = tempfile::tempdir().map_err(|source| BuildError::Write { path: std::env::temp_dir(), source })?;
        match self {
            Language::Rust => {
                let target = dir.join("target");
                run(Command::new("cargo")
                    .current_dir(dir)
                    .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
                    .arg(&target))?;
                let name = package_name(dir)?.replace('-', "_");
                let built = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
                std::fs::copy(&built, output)
                    .map_err(|source| BuildError::Write { path: output.to_owned(), source })?;
            }
            Language::Python => {
                let sdk = scratch.path().join("python");
                write(&sdk.join("braid_sdk/__init__.py"), PY_SDK_INIT)?;
                write(&sdk.join("braid_sdk/log.py"), PY_SDK_LOG)?;
                write(&scratch.path().join("wit/agent.wit"), WIT)?;
                let wit = scratch.path().join("wit");
                run(&mut commands::componentize_py(
                    &tool(dir, ".venv/bin", "componentize-py"),
                    dir,
                    &wit,
                    &sdk,
                    output,
                ))?;
            }
            Language::Js => {
                let sdk = scratch.path().join("braid-sdk.js");
                write(&sdk, JS_SDK)?;
                write(&scratch.path().join("wit/agent.wit"), WIT)?;
                let bundle = scratch.path().join("bundle.js");
                let wit = scratch.path().join("wit");
                run(&mut commands::esbuild(&tool(dir, "node_modules/.bin", "esbuild"), dir, &sdk, &bundle))?;
                let componentize_js = tool(dir, "node_modules/.bin", "componentize-js");
                run(&mut commands::componentize_js(&componentize_js, &bundle, &wit, output))?;
            }
        }
        Ok(())
    }
}

/// `dir/local/name` when the project has it, else `name` (from PATH).
fn tool(dir: &Path, local: &str, name: &str) -> PathBuf {
    let path = dir.join(local).join(name);
    if path.is_file() { path } else { PathBuf::from(name) }
}

fn run(command: &mut Command) -> Result<(), BuildError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let hint = match Path::new(&tool).file_name().and_then(|n| n.to_str()) {
        Some("cargo") => "is Rust installed?",
        Some("componentize-py") => "pip install componentize-py into the project's .venv, or put it on PATH",
        _ => "run `npm ci` in the project folder",
    };
    let status = command.status().map_err(|source| BuildError::Tool { tool: tool.clone(), hint, source })?;
    if status.success() { Ok(()) } else { Err(BuildError::Failed { tool, status }) }
}

/// The `name` of the `[package]` in `dir/Cargo.toml`.
fn package_name(dir: &Path) -> Result<String, BuildError> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .map_err(|source| BuildError::Write { path: dir.join("Cargo.toml"), source })?;
    manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("name = \"")?.strip_suffix('"').map(str::to_owned))
        .ok_or_else(|| BuildError::UnknownProject(dir.to_owned()))
}
