//! Secrets: named values the host holds for agents — never the workflow. They come from
//! environment variables `BRAID_SECRET_<NAME>` and from `--secrets-file` (a TOML or JSON map
//! of name → value; the environment wins on a clash). A step maps config keys to secret
//! names (`"secrets": {"api_key": "OPENAI_KEY"}`) and the agent reads them with
//! `host.config`, like any config.
//!
//! A value is never written down: [`Redactor`] replaces it with `[redacted]` in whatever an
//! execution hands back to be recorded (output, error, logs, request paths). Loading and
//! redaction live here; deciding which step gets which secret is the engine's.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The prefix of environment variables that hold secrets.
pub const ENV_PREFIX: &str = "BRAID_SECRET_";
/// What a secret's value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Whether `name` can name a secret: what an environment variable's suffix can be.
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why the secrets could not be loaded. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("could not read the secrets file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets file {path} is not a TOML or JSON map of name → string value: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("the secrets file {path} names {name:?}, which is not a secret name (letters, digits and '_')")]
    BadName { path: PathBuf, name: String },
}

/// The host's secrets, by name.
#[derive(Default, Clone)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl Secrets {
    /// The secrets of `file` (if given), then of the environment.
    pub fn load(file: Option<&Path>) -> Result<Secrets, SecretsError> {
        let mut values = match file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        for (key, value) in std::env::vars_os() {
            if let (Some(key), Ok(value)) = (key.to_str(), value.into_string())
                && let Some(name) = key.strip_prefix(ENV_PREFIX)
                && is_secret_name(name)
            {
                values.insert(name.to_owned(), value);
            }
        }
        Ok(Secrets { values })
    }

    /// Secrets given directly (for embedding and tests).
    pub fn from_map(values: BTreeMap<String, String>) -> Secrets {
        Secrets { values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read { path: path.to_owned(), source })?;
    let format = |reason: String| SecretsError::Format { path: path.to_owned(), reason };
    // JSON when it looks like JSON, TOML otherwise. Parse errors never quote the text.
    let values: BTreeMap<String, String> = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|err| format(format!("line {}, column {}", err.line(), err.column())))?
    } else {
        toml::from_str(&text).map_err(|err| {
            format(err.span().map_or_else(|| "not TOML".to_owned(), |span| format!("at byte {}", span.start)))
        })?
    };
    if let Some(name) = values.keys().find(|name| !is_secret_name(name)) {
        return Err(SecretsError::BadName { path: path.to_owned(), name: name.clone() });
    }
    Ok(values)
}

/// Replaces the values of some secrets with `[redacted]`.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).map(str::to_owned).collect();
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        values.dedup();
        Redactor { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        self.in_place(&mut text);
        text
    }

    /// Replaces every secret value in `text`.
    pub fn in_place(&self, text: &mut String) {
        for value in &self.values {
            if text.contains(value.as_str()) {
                *text = text.replace(value.as_str(), REDACTED);
            }
        }
    }

    /// Replaces every secret value in the strings (and keys) of `value`.
    pub fn json(&self, value: &mut Value) {
        let mut pending = vec![value];
        while let Some(value) = pending.pop() {
            match value {
                Value::String(text) => self.in_place(text),
                Value::Array(items) => pending.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|key| self.values.iter().any(|v| key.contains(v.as_str()))) {
                        let entries = std::mem::take(map);
                        *map = entries.into_iter().map(|(key, value)| (self.text(&key), value)).collect();
                    }
                    pending.extend(map.values_mut());
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_redacted_in_text_and_json() {
        let redactor = Redactor::new(["sk-123", "sk-1234567"]);
        assert_eq!(redactor.text("key sk-1234567 and sk-123"), "key [redacted] and [redacted]");
        let mut value = serde_json::json!({ "a": ["x sk-123 y", { "sk-123": 1 }], "n": 5 });
        redactor.json(&mut value);
        assert_eq!(value, serde_json::json!({ "a": ["x [redacted] y", { "[redacted]": 1 }], "n": 5 }));
    }

    #[test]
    fn a_secrets_file_is_toml_or_json_and_its_errors_hold_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("s.toml");
        std::fs::write(&toml_path, "OPENAI_KEY = \"sk-abc\"\n").unwrap();
        assert_eq!(read_file(&toml_path).unwrap()["OPENAI_KEY"], "sk-abc");
        let json_path = dir.path().join("s.json");
        std::fs::write(&json_path, r#"{"A_B": "v"}"#).unwrap();
        assert_eq!(read_file(&json_path).unwrap()["A_B"], "v");
        std::fs::write(&toml_path, "KEY = sk-unquoted-secret\n").unwrap();
        let err = read_file(&toml_path).unwrap_err().to_string();
        assert!(!err.contains("sk-unquoted-secret"), "{err}");
        std::fs::write(&json_path, r#"{"bad name": "v"}"#).unwrap();
        assert!(read_file(&json_path).unwrap_err().to_string().contains("\"bad name\""));
    }
}
