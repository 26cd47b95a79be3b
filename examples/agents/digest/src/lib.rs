//! The SHA-256 digest of `{"text": ...}`, as `{"hex": ..., "bytes": ...}`.

use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    hex: String,
    bytes: usize,
}

fn digest(_ctx: Context, input: Input) -> Result<Output, Error> {
    let hash = Sha256::digest(input.text.as_bytes());
    let hex = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(Output { hex, bytes: input.text.len() })
}

braid_sdk::export_agent!(digest);
