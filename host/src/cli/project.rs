//! `braid new agent NAME --lang rust|python|js` and `braid build [DIR]`: the command-line
//! side of [`crate::build`].

use super::Status;
use crate::build::Language;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct NewCommand {
    #[command(subcommand)]
    what: NewWhat,
}

#[derive(Debug, Subcommand)]
enum NewWhat {
    /// A ready-to-build agent project in NAME/ (a Rust crate with its own copy of
    /// braid-sdk, a Python app.py, or a JavaScript agent.js with its package.json).
    Agent {
        /// The agent's name (letters, digits, '-', '_').
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Language,
        /// Where to create it.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

impl NewCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let NewWhat::Agent { name, lang, dir } = self.what;
        let project = crate::build::new_agent(&dir, &name, lang)?;
        println!("created {} ({lang:?}); build it with `braid build {}`", project.display(), project.display());
        Ok(Status::Succeeded)
    }
}

#[derive(Debug, Args)]
pub struct BuildCommand {
    /// The agent project (a folder with Cargo.toml, app.py or agent.js).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component (default: DIR/<folder name>.wasm).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

impl BuildCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let dir = self.dir.canonicalize().with_context(|| format!("no folder {}", self.dir.display()))?;
        let language = Language::of(&dir)?;
        let name = dir.file_name().map_or_else(|| "agent".to_owned(), |n| n.to_string_lossy().into_owned());
        let output = match self.output {
            Some(output) => std::path::absolute(output)?,
            None => dir.join(format!("{name}.wasm")),
        };
        language.build(&dir, &output)?;
        println!("built {}", output.display());
        Ok(Status::Succeeded)
    }
}
