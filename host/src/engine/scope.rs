//! What later steps see of a finished step, as CEL values in the run's scope:
//! `steps.<id>.output`, `.status`, `.error`, and for a parallel block also
//! `.branches.<name>.{status, output, error}`.

use super::Ended;
use crate::workflow::json_to_cel;
use serde_json::{Map, Value, json};

/// A finished step's view.
pub(super) fn view(ended: &Ended) -> cel::Value {
    json_to_cel(&view_json(ended))
}

/// A finished block's view: its own, plus each branch's status, output and error.
pub(super) fn block_view(ended: &Ended, branches: Map<String, Value>) -> cel::Value {
    let mut view = view_json(ended);
    view["branches"] = Value::Object(branches);
    json_to_cel(&view)
}

fn view_json(ended: &Ended) -> Value {
    json!({
        "output": ended.output.clone().unwrap_or(Value::Null),
        "status": ended.status.as_str(),
        "error": ended.error,
    })
}

/// Binds `name` (`item`, `index`, `iteration`) in `scope`, replacing an outer binding.
pub(super) fn bind(scope: &mut crate::workflow::Scope, name: &str, value: cel::Value) {
    scope.extra.retain(|(bound, _)| bound != name);
    scope.extra.push((name.to_owned(), value));
}
