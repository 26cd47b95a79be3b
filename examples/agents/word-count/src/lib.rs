//! Counts the words, lines and characters of `{"text": ...}`.

use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    words: usize,
    lines: usize,
    chars: usize,
}

fn count(_ctx: Context, input: Input) -> Result<Output, Error> {
    Ok(Output {
        words: input.text.split_whitespace().count(),
        lines: input.text.lines().count(),
        chars: input.text.chars().count(),
    })
}

braid_sdk::export_agent!(count);
