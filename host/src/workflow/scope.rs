//! What expressions see: the run's input, the views of the steps that have run, and what a
//! step type binds (`item`, `index`, `iteration`). Each is a [`Binding`]: JSON as it came
//! (shared, not copied), turned into CEL only when an expression needs CEL, once. A plain
//! reference such as `${ input }` or `${ steps.a.output.total }` is answered from the JSON
//! directly ([`Binding::resolve`]), so the documents a workflow passes along are neither
//! converted nor copied.
//!
//! The engine decides what a step's view holds ([`View`]); this module only reads it.

use super::expr::json_to_cel;
use crate::json::JsonDoc;
use cel::Value as Cel;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// What expressions see (see the module docs).
#[derive(Debug, Clone)]
pub struct Scope {
    pub input: Binding,
    pub steps: HashMap<String, Binding>,
    /// Further variables (`item`, `index`, ...), for step types that bind them.
    pub extra: Vec<(String, Binding)>,
}

impl Scope {
    /// A scope with the run's input and no steps yet.
    pub fn new(input: JsonDoc) -> Self {
        Scope { input: Binding::json(input), steps: HashMap::new(), extra: Vec::new() }
    }

    /// The binding a plain reference starts from: `input`, `steps.<id>`, or a bound name.
    /// Returns it with the fields left to follow.
    fn root<'a>(&'a self, root: &str, fields: &'a [String]) -> Option<(&'a Binding, &'a [String])> {
        match root {
            "input" => Some((&self.input, fields)),
            "steps" => {
                let (id, rest) = fields.split_first()?;
                Some((self.steps.get(id)?, rest))
            }
            name => self.extra.iter().rev().find(|(bound, _)| bound == name).map(|(_, binding)| (binding, fields)),
        }
    }

    /// The value of `root.fields...` read straight from the JSON, or `None` when the path
    /// does not lead to a value (CEL then evaluates it, and says why).
    pub(super) fn resolve(&self, root: &str, fields: &[String]) -> Option<JsonDoc> {
        let (binding, fields) = self.root(root, fields)?;
        binding.resolve(fields)
    }
}

/// A value expressions may read (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Binding(Arc<Bound>);

struct Bound {
    value: BoundValue,
    cel: OnceLock<Cel>,
}

enum BoundValue {
    Json(JsonDoc),
    View(View),
}

impl Binding {
    /// A JSON value (the run's input, a map's item).
    pub fn json(doc: JsonDoc) -> Binding {
        Binding(Arc::new(Bound { value: BoundValue::Json(doc), cel: OnceLock::new() }))
    }

    /// A step's view.
    pub fn view(view: View) -> Binding {
        Binding(Arc::new(Bound { value: BoundValue::View(view), cel: OnceLock::new() }))
    }

    /// The value as CEL, converted on first use.
    pub(super) fn cel(&self) -> &Cel {
        self.0.cel.get_or_init(|| match &self.0.value {
            BoundValue::Json(doc) => json_to_cel(doc.value()),
            BoundValue::View(view) => json_to_cel(&view.to_json()),
        })
    }

    /// The value at `fields` below this one, read from the JSON; `None` when there is none.
    pub fn resolve(&self, fields: &[String]) -> Option<JsonDoc> {
        match &self.0.value {
            BoundValue::Json(doc) => follow(doc, fields),
            BoundValue::View(view) => view.resolve(fields),
        }
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.value {
            BoundValue::Json(doc) => write!(f, "{doc:?}"),
            BoundValue::View(view) => write!(f, "{view:?}"),
        }
    }
}

/// `doc` itself for no fields (shared, not copied); else the member at `fields`, which
/// must be object members all the way down.
fn follow(doc: &JsonDoc, fields: &[String]) -> Option<JsonDoc> {
    if fields.is_empty() {
        return Some(doc.clone());
    }
    let mut value = doc.value();
    for field in fields {
        value = value.as_object()?.get(field)?;
    }
    Some(JsonDoc::from_value(value.clone()))
}

/// What later steps see of a finished step: `steps.<id>.output`, `.status`, `.error`; a
/// parallel block's `.branches.<name>.{status, output, error}`; a switch's `.case`.
#[derive(Debug, Clone)]
pub struct View {
    pub status: &'static str,
    pub output: Option<JsonDoc>,
    pub error: Option<String>,
    /// A parallel block's branches, in definition order.
    pub branches: Option<Vec<(String, View)>>,
    /// Which case of a switch ran (`cases[1]`, `default`, `none`).
    pub case: Option<String>,
}

impl View {
    /// The view as one JSON object (what CEL sees).
    pub fn to_json(&self) -> Value {
        let mut view = Map::new();
        view.insert("output".into(), self.output.as_ref().map_or(Value::Null, |doc| doc.value().clone()));
        view.insert("status".into(), Value::String(self.status.to_owned()));
        view.insert("error".into(), self.error.clone().map_or(Value::Null, Value::String));
        if let Some(branches) = &self.branches {
            let branches = branches.iter().map(|(name, branch)| (name.clone(), branch.to_json())).collect();
            view.insert("branches".into(), Value::Object(branches));
        }
        if let Some(case) = &self.case {
            view.insert("case".into(), Value::String(case.clone()));
        }
        Value::Object(view)
    }

    fn resolve(&self, fields: &[String]) -> Option<JsonDoc> {
        let Some((first, rest)) = fields.split_first() else {
            return Some(JsonDoc::from_value(self.to_json()));
        };
        let text = |text: &str| rest.is_empty().then(|| JsonDoc::from_value(Value::String(text.to_owned())));
        match first.as_str() {
            "output" => match &self.output {
                Some(output) => follow(output, rest),
                None => rest.is_empty().then(JsonDoc::null),
            },
            "status" => text(self.status),
            "error" => match &self.error {
                Some(error) => text(error),
                None => rest.is_empty().then(JsonDoc::null),
            },
            "branches" => {
                let (name, rest) = rest.split_first()?;
                let (_, branch) = self.branches.as_ref()?.iter().find(|(branch, _)| branch == name)?;
                branch.resolve(rest)
            }
            "case" => text(self.case.as_deref()?),
            _ => None,
        }
    }
}
