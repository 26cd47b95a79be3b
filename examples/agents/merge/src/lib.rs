//! Merges several inputs into one report: `{"parts": {name: value, ...}}` (or a list)
//! becomes a text report with one line per part. The config value `style` is `short`
//! (the default: a summary per part) or `long` (each part's full JSON).

use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
struct Input {
    parts: Value,
}

#[derive(Serialize)]
struct Output {
    report: String,
    parts: usize,
}

fn merge(ctx: Context, input: Input) -> Result<Output, Error> {
    let parts: Vec<(String, Value)> = match input.parts {
        Value::Object(map) => map.into_iter().collect(),
        Value::Array(items) => items.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        other => return Err(Error::fatal(format!("parts must be an object or a list, not {other}"))),
    };
    let long = match braid_sdk::config("style").as_deref().unwrap_or("short") {
        "short" => false,
        "long" => true,
        other => return Err(Error::fatal(format!("unknown style {other:?}: expected short or long"))),
    };
    braid_sdk::log::info(&format!("merging {} parts for step {}", parts.len(), ctx.step_id));
    let lines: Vec<String> = parts
        .iter()
        .map(|(name, value)| format!("{name}: {}", if long { value.to_string() } else { summary(value) }))
        .collect();
    Ok(Output { report: lines.join("\n"), parts: parts.len() })
}

/// One short line for a value: scalars as they are, objects as their scalar fields.
fn summary(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array())
            .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) => format!("{} items", items.len()),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

braid_sdk::export_agent!(merge);
