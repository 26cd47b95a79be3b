//! What Braid accepts from callers and workflow authors, and the checks that hold it to
//! that: the shape of every JSON document that comes in (run inputs, agent outputs,
//! definitions, rendered step inputs), so that nothing Braid stores is unreadable by Braid
//! itself or refused by the database after it was accepted.
//!
//! This module owns the JSON rules (depth, characters the database cannot store) and the
//! reader for JSON Braid stored. Sizes of bodies, inputs and outputs are enforced where
//! they arrive (the API, the sandbox); every limit is listed in the README's "Limits".

use serde_json::Value;
use std::fmt::Write as _;

/// Deepest nesting of arrays and objects accepted in any JSON that comes in. Braid's own
/// documents wrap these values a few levels deeper (a parallel block's output holds each
/// branch's), which the reader of stored JSON allows.
pub const MAX_JSON_DEPTH: usize = 64;

/// Most memory a step may be given (`memory_mb`, `--memory-mb`), in MiB: the pool's slots
/// are sized for it.
pub const MAX_STEP_MEMORY_MB: u64 = 1024;

/// Most items a map takes unless the host says otherwise (`--max-map-items`).
pub const DEFAULT_MAX_MAP_ITEMS: u64 = 100_000;
/// Most bytes of agent step inputs and outputs one run records unless the host says
/// otherwise (`--max-run-mb`).
pub const DEFAULT_MAX_RUN_BYTES: u64 = 256 << 20;
/// Largest run input, as JSON text.
pub const MAX_RUN_INPUT_BYTES: usize = 4 << 20;

/// The length of `value` as compact JSON text, counted without building the text.
pub fn json_len(value: &Value) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len() as u64;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Checks a run's input (named `what`): its size as JSON text, then its shape.
pub fn check_run_input(input: &Value, what: &str) -> Result<(), JsonProblem> {
    let bytes = json_len(input);
    if bytes > MAX_RUN_INPUT_BYTES as u64 {
        return Err(JsonProblem::TooLarge(what.to_owned(), bytes, MAX_RUN_INPUT_BYTES));
    }
    check_json(input, what)
}

/// What is wrong with a JSON value, and where (`input.items[3].name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonProblem {
    #[error("{0} is not valid JSON: {1}")]
    Syntax(String, String),
    #[error("{0} nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects")]
    TooDeep(String),
    #[error("{0} holds a NUL character (\\u0000), which Braid cannot store")]
    Nul(String),
    #[error("{0} is {1} bytes of JSON, over the limit of {2} bytes")]
    TooLarge(String, u64, usize),
}

impl JsonProblem {
    /// What is wrong, without where.
    pub fn reason(&self) -> String {
        match self {
            JsonProblem::Syntax(_, err) => format!("not valid JSON: {err}"),
            JsonProblem::TooDeep(_) => format!("nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects"),
            JsonProblem::Nul(_) => "holds a NUL character (\\u0000), which Braid cannot store".to_owned(),
            JsonProblem::TooLarge(_, bytes, limit) => {
                format!("is {bytes} bytes of JSON, over the limit of {limit} bytes")
            }
        }
    }

    /// Where the problem is.
    pub fn path(&self) -> &str {
        match self {
            JsonProblem::Syntax(path, _)
            | JsonProblem::TooDeep(path)
            | JsonProblem::Nul(path)
            | JsonProblem::TooLarge(path, ..) => path,
        }
    }
}

/// Parses JSON that comes in, named `what` in errors (`input`, `the output`), and checks it.
pub fn parse_json(text: &str, what: &str) -> Result<Value, JsonProblem> {
    parse_json_bytes(text.as_bytes(), what)
}

/// [`parse_json`] over bytes (a request body).
pub fn parse_json_bytes(bytes: &[u8], what: &str) -> Result<Value, JsonProblem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        // serde's own recursion limit (128) is above ours: the value is too deep either way.
        if err.to_string().starts_with("recursion limit exceeded") {
            JsonProblem::TooDeep(what.to_owned())
        } else {
            JsonProblem::Syntax(what.to_owned(), err.to_string())
        }
    })?;
    check_json(&value, what)?;
    Ok(value)
}

/// Checks a JSON value that comes in: at most [`MAX_JSON_DEPTH`] levels, and no NUL in a
/// string or a key (Postgres cannot store one). `what` names the value's root in errors.
/// Walks without recursion, so a hostile value cannot exhaust the stack.
pub fn check_json(value: &Value, what: &str) -> Result<(), JsonProblem> {
    // (value, depth, its key or index in its parent); `trail` holds the path to the value
    // being looked at, and becomes text only for an error.
    let mut stack: Vec<(&Value, usize, Option<PathPart<'_>>)> = vec![(value, 0, None)];
    let mut trail: Vec<PathPart<'_>> = Vec::new();
    while let Some((value, depth, part)) = stack.pop() {
        if let Some(part) = part {
            trail.truncate(depth - 1);
            trail.push(part);
        }
        let nested = matches!(value, Value::Array(_) | Value::Object(_));
        if nested && depth >= MAX_JSON_DEPTH {
            return Err(JsonProblem::TooDeep(path(what, &trail)));
        }
        match value {
            Value::String(text) if text.contains('\0') => return Err(JsonProblem::Nul(path(what, &trail))),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate().rev() {
                    stack.push((item, depth + 1, Some(PathPart::Index(index))));
                }
            }
            Value::Object(fields) => {
                for (key, field) in fields {
                    if key.contains('\0') {
                        trail.truncate(depth);
                        trail.push(PathPart::Key(key));
                        return Err(JsonProblem::Nul(path(what, &trail)));
                    }
                    stack.push((field, depth + 1, Some(PathPart::Key(key))));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces each NUL in text Braid records (an agent's error, a log line) with U+FFFD.
pub fn storable_text(text: String) -> String {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}") } else { text }
}

#[derive(Debug, Clone, Copy)]
enum PathPart<'a> {
    Key(&'a str),
    Index(usize),
}

fn path(root: &str, trail: &[PathPart<'_>]) -> String {
    let mut path = root.to_owned();
    for part in trail {
        match part {
            PathPart::Index(index) => {
                let _ = write!(path, "[{index}]");
            }
            PathPart::Key(key) => push_key(&mut path, key),
        }
    }
    path
}

/// Appends `key` to a JSON path: `.key` for a plain name, `["…"]` (JSON-quoted, so empty,
/// dotted or control-character keys stay visible and unambiguous) otherwise.
pub fn push_key(path: &mut String, key: &str) {
    if !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_') {
        let _ = write!(path, ".{key}");
    } else {
        let _ = write!(path, "[{}]", serde_json::to_string(key).unwrap_or_default());
    }
}

/// Reads JSON that Braid stored, however deep: Braid's documents wrap accepted values in a
/// few levels of their own, and a row Braid wrote must always be readable by Braid. The
/// stack grows on the heap as needed instead of failing at serde's recursion limit.
pub fn read_stored_json(text: &str) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(serde_stacker::Deserializer::new(&mut deserializer))?;
    deserializer.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_is_counted_in_arrays_and_objects_and_named_by_path() {
        assert!(parse_json(&nested(MAX_JSON_DEPTH), "input").is_ok());
        let too_deep = parse_json(&nested(MAX_JSON_DEPTH + 1), "input").unwrap_err();
        assert_eq!(too_deep, JsonProblem::TooDeep(format!("input{}", "[0]".repeat(MAX_JSON_DEPTH))));
        assert_eq!(parse_json(&nested(500), "input").unwrap_err(), JsonProblem::TooDeep("input".into()));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_JSON_DEPTH + 1), "}".repeat(MAX_JSON_DEPTH + 1));
        assert!(matches!(parse_json(&objects, "input"), Err(JsonProblem::TooDeep(_))));
    }

    #[test]
    fn a_nul_in_a_string_or_a_key_is_named() {
        let value = json!({ "items": [{ "name": "ok" }, { "name": "a\u{0}b" }] });
        assert_eq!(check_json(&value, "input").unwrap_err(), JsonProblem::Nul("input.items[1].name".into()));
        let key = json!({ "odd key": { "x\u{0}": 1 } });
        assert_eq!(check_json(&key, "input").unwrap_err(), JsonProblem::Nul(r#"input["odd key"]["x\u0000"]"#.into()));
        assert!(check_json(&json!({ "fine": "\u{1}" }), "input").is_ok());
    }

    #[test]
    fn stored_json_reads_at_any_depth() {
        let deep = nested(1_000);
        assert!(serde_json::from_str::<Value>(&deep).is_err(), "serde alone stops at 128");
        // The store decodes a column as raw text first (StoredJson): that scan has no limit.
        assert!(serde_json::from_str::<Box<serde_json::value::RawValue>>(&deep).is_ok());
        let value = read_stored_json(&deep).unwrap();
        assert_eq!(value.to_string(), deep);
        // Dropping a deep value recurses too; keep it from running out of stack here.
        let mut value = value;
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }
}
