//! Answers its input unchanged: the trivial agent that benchmarks measure the host with.

use braid_sdk::{Context, Error};
use serde_json::Value;

fn echo(_ctx: Context, input: Value) -> Result<Value, Error> {
    Ok(input)
}

braid_sdk::export_agent!(echo);
