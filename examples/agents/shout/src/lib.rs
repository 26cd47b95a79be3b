//! Transforms `{"text": ...}`: upper case by default; the config value `mode` picks
//! `upper`, `lower` or `title`.

use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    text: String,
}

fn shout(_ctx: Context, input: Input) -> Result<Output, Error> {
    let text = match braid_sdk::config("mode").as_deref().unwrap_or("upper") {
        "upper" => input.text.to_uppercase(),
        "lower" => input.text.to_lowercase(),
        "title" => input.text.split(' ').map(capitalize).collect::<Vec<_>>().join(" "),
        other => return Err(Error::fatal(format!("unknown mode {other:?}: expected upper, lower or title"))),
    };
    Ok(Output { text })
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

braid_sdk::export_agent!(shout);
