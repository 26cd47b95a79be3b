//! Expression templates: JSON values whose strings may hold `${ expr }` with CEL inside.
//!
//! A string that is exactly one `${ expr }` takes the expression's JSON value (a number, an
//! object, ...); `${ }` inside a longer string interpolates text (strings as they are, other
//! values as JSON). Expressions are CEL (the `cel` crate), bounded in size, nesting and cost
//! (see [`super::cost`]), so an untrusted definition cannot hang the host or exhaust its
//! memory through an expression.
//!
//! Templates are compiled once, when the definition is parsed; compiling also finds which
//! variables and which `steps.<id>` each template reads, for validation and so that
//! rendering converts only what it needs.

use super::scope::Scope;
use crate::json::JsonDoc;
use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::objects::{Key, Map};
use cel::{Context, Value as Cel};
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Variables an expression may use, with what they hold.
pub const VARIABLES: &[&str] = &["input", "steps"];
/// Identifiers CEL itself gives meaning to (type names), never reported as unknown.
const CEL_TYPE_NAMES: &[&str] =
    &["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"];

/// A compiled JSON template.
#[derive(Debug, Clone)]
pub struct Template {
    node: Node,
    /// The variables its expressions read (`input`, `steps`, ...).
    variables: BTreeSet<String>,
    /// The step ids it reads through `steps.<id>` or `steps["<id>"]`.
    steps: BTreeSet<String>,
    /// Whether some expression reads `steps` other than through a literal id.
    reads_all_steps: bool,
    /// Whether some expression has a comprehension (and may cost up to its budget).
    costly: bool,
    /// The top-level input fields read, or `None` when the input is read as a whole.
    input_fields: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone)]
enum Node {
    /// A value with no expression inside.
    Literal(JsonDoc),
    /// A string that is exactly one expression.
    Expr(Arc<Compiled>),
    /// A string with expressions inside text.
    Interpolate(Vec<Part>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Arc<Compiled>),
}

#[derive(Debug)]
struct Compiled {
    source: String,
    ast: IdedExpr,
    /// `root.field.field...` when the expression is nothing more than such a reference:
    /// answered from the JSON without CEL (see [`Scope::resolve`]).
    path: Option<(String, Vec<String>)>,
}

/// Why an expression could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Where inside the template (`.text`, `[2]`), empty at the top.
    pub subpath: String,
    pub message: String,
}

impl Template {
    /// Compiles a JSON value, collecting every expression that does not parse.
    pub fn compile(value: &Json) -> Result<Template, Vec<ExprError>> {
        let mut errors = Vec::new();
        let mut template = Template {
            node: Node::Literal(JsonDoc::null()),
            variables: BTreeSet::new(),
            steps: BTreeSet::new(),
            reads_all_steps: false,
            costly: false,
            input_fields: Some(BTreeSet::new()),
        };
        template.node = template.compile_node(value, String::new(), &mut errors);
        if errors.is_empty() { Ok(template) } else { Err(errors) }
    }

    /// A template that is one expression (`"${ ... }"` without the wrapper).
    pub fn expression(source: &str) -> Result<Template, Vec<ExprError>> {
        Template::compile(&Json::String(format!("${{{source}}}")))
    }

    fn compile_node(&mut self, value: &Json, subpath: String, errors: &mut Vec<ExprError>) -> Node {
        match value {
            Json::String(text) => match split_template(text) {
                Err(message) => {
                    errors.push(ExprError { subpath, message });
                    Node::Literal(JsonDoc::null())
                }
                Ok(pieces) if pieces.iter().all(|p| matches!(p, Piece::Text(_))) => {
                    Node::Literal(JsonDoc::from_value(value.clone()))
                }
                Ok(pieces) => {
                    let mut parts = Vec::new();
                    for piece in pieces {
                        match piece {
                            Piece::Text(text) => parts.push(Part::Text(text)),
                            Piece::Expr(source) => match self.compile_expr(&source) {
                                Ok(compiled) => parts.push(Part::Expr(compiled)),
                                Err(message) => errors.push(ExprError { subpath: subpath.clone(), message }),
                            },
                        }
                    }
                    match parts.as_slice() {
                        [Part::Expr(only)] => Node::Expr(only.clone()),
                        _ => Node::Interpolate(parts),
                    }
                }
            },
            Json::Array(items) => Node::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.compile_node(item, format!("{subpath}[{i}]"), errors))
                    .collect(),
            ),
            Json::Object(map) => Node::Object(
                map.iter()
                    .map(|(key, item)| (key.clone(), self.compile_node(item, format!("{subpath}.{key}"), errors)))
                    .collect(),
            ),
            other => Node::Literal(JsonDoc::from_value(other.clone())),
        }
    }

    fn compile_expr(&mut self, source: &str) -> Result<Arc<Compiled>, String> {
        let shown = || shorten(source.trim());
        super::cost::check_source(source).map_err(|err| format!("expression `{}` {err}", shown()))?;
        let mut ast = cel::parser::Parser::new()
            .parse(source)
            .map_err(|errors| format!("expression `{}` does not parse: {errors}", shown()))?;
        let mut references = References::default();
        references.walk(&ast, &mut Vec::new());
        self.variables.extend(references.variables);
        self.steps.extend(references.steps);
        self.reads_all_steps |= references.whole_steps;
        if references.whole_input {
            self.input_fields = None;
        } else if let Some(fields) = &mut self.input_fields {
            fields.extend(references.input_fields);
        }
        let path = plain_path(&ast);
        self.costly |= super::cost::instrument(&mut ast).map_err(|err| format!("expression `{}` {err}", shown()))?;
        Ok(Arc::new(Compiled { source: source.trim().to_owned(), ast, path }))
    }

    /// The free variables the template's expressions read.
    pub fn variables(&self) -> &BTreeSet<String> {
        &self.variables
    }

    /// The step ids read through `steps.<id>`.
    pub fn step_references(&self) -> &BTreeSet<String> {
        &self.steps
    }

    /// Whether an expression reads `steps` as a whole (or with a computed key), so that
    /// references cannot all be known before running.
    pub fn reads_all_steps(&self) -> bool {
        self.reads_all_steps
    }

    /// Whether the template holds no expression at all.
    pub fn is_literal(&self) -> bool {
        matches!(self.node, Node::Literal(_))
    }

    /// Evaluates the template against `scope`, on a blocking thread when an expression has
    /// a comprehension (whose cost, though bounded, should not hold an async worker).
    pub async fn render_async(&self, scope: &Scope) -> Result<JsonDoc, ExprError> {
        if !self.costly {
            return self.render(scope);
        }
        let (template, scope) = (self.clone(), scope.clone());
        tokio::task::spawn_blocking(move || template.render(&scope)).await.unwrap_or_else(|err| {
            Err(ExprError { subpath: String::new(), message: format!("the expression's evaluation failed: {err}") })
        })
    }

    /// Evaluates the template against `scope`, within one cost budget. A value that is a
    /// plain reference (`${ input }`, `${ steps.a.output }`) is the referenced document
    /// itself, shared rather than copied.
    pub fn render(&self, scope: &Scope) -> Result<JsonDoc, ExprError> {
        if let Node::Literal(value) = &self.node {
            return Ok(value.clone());
        }
        super::cost::with_budget(|| Render { template: self, scope, context: None }.node(&self.node, String::new()))
    }

    /// The CEL context for `scope`: only what the template's expressions read.
    fn context(&self, scope: &Scope) -> Context<'static, 'static> {
        let mut context = Context::with_env(standard_env());
        if self.variables.contains("input") {
            // Binding converts the value deeply: give expressions only the top-level input
            // fields they read (a map over a 10,000-element input reads `input.text`, say).
            let input = match (&self.input_fields, scope.input.cel()) {
                (Some(fields), Cel::Map(map)) => {
                    let wanted = fields.iter().filter_map(|field| {
                        let key = Key::from(field.clone());
                        map.map.get(&key).map(|value| (key, value.clone()))
                    });
                    Cel::Map(Map { map: Arc::new(wanted.collect()) })
                }
                (_, whole) => whole.clone(),
            };
            context.add_variable_from_value("input", input);
        }
        if self.variables.contains("steps") {
            let visible: HashMap<Key, Cel> = scope
                .steps
                .iter()
                .filter(|(id, _)| self.reads_all_steps || self.steps.contains(*id))
                .map(|(id, view)| (Key::from(id.clone()), view.cel().clone()))
                .collect();
            context.add_variable_from_value("steps", Cel::Map(Map { map: Arc::new(visible) }));
        }
        for (name, value) in &scope.extra {
            if self.variables.contains(name) {
                context.add_variable_from_value(name.clone(), value.cel().clone());
            }
        }
        context
    }
}

/// One rendering of a template: the CEL context is built on the first expression that
/// needs CEL, and not at all when every expression is a plain reference.
struct Render<'a> {
    template: &'a Template,
    scope: &'a Scope,
    context: Option<Context<'static, 'static>>,
}

impl Render<'_> {
    fn node(&mut self, node: &Node, subpath: String) -> Result<JsonDoc, ExprError> {
        match node {
            Node::Literal(value) => Ok(value.clone()),
            Node::Expr(compiled) => self.expr(compiled).map_err(|message| ExprError { subpath, message }),
            Node::Interpolate(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(literal) => text.push_str(literal),
                        Part::Expr(compiled) => match self.expr(compiled) {
                            Ok(value) => match value.as_str() {
                                Some(string) => text.push_str(string),
                                None => text.push_str(value.text()),
                            },
                            Err(message) => return Err(ExprError { subpath, message }),
                        },
                    }
                }
                Ok(JsonDoc::from_value(Json::String(text)))
            }
            Node::Array(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, format!("{subpath}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(JsonDoc::array(items.iter().map(Some)))
            }
            Node::Object(entries) => {
                let members = entries
                    .iter()
                    .map(|(key, item)| Ok((key.as_str(), self.node(item, format!("{subpath}.{key}"))?)))
                    .collect::<Result<Vec<_>, ExprError>>()?;
                Ok(JsonDoc::object(members.iter().map(|(key, member)| (*key, Some(member)))))
            }
        }
    }

    fn expr(&mut self, compiled: &Compiled) -> Result<JsonDoc, String> {
        if let Some((root, fields)) = &compiled.path
            && let Some(found) = self.scope.resolve(root, fields)
        {
            return Ok(found);
        }
        let context = self.context.get_or_insert_with(|| self.template.context(self.scope));
        evaluate(compiled, context).map(JsonDoc::from_value)
    }
}

/// CEL's standard library, built once: building it is far more work than most renders.
fn standard_env() -> Arc<cel::Env> {
    static ENV: std::sync::LazyLock<Arc<cel::Env>> = std::sync::LazyLock::new(|| {
        let mut env = cel::Env::stdlib();
        super::cost::declare(&mut env);
        Arc::new(env)
    });
    ENV.clone()
}

fn evaluate(compiled: &Compiled, context: &Context) -> Result<Json, String> {
    let value = Cel::resolve(&compiled.ast, context)
        .map_err(|err| format!("expression `{}` failed: {err}", compiled.source))?;
    cel_to_json(&value).map_err(|err| format!("expression `{}` gave a value with no JSON form: {err}", compiled.source))
}

/// `root.field.field...` when `expr` is only that: an identifier and plain field selects
/// (no `has()`, no index, no call).
fn plain_path(expr: &IdedExpr) -> Option<(String, Vec<String>)> {
    let mut fields = Vec::new();
    let mut at = expr;
    loop {
        match &at.expr {
            Expr::Select(select) if !select.test => {
                fields.push(select.field.clone());
                at = &select.operand;
            }
            Expr::Ident(root) => {
                fields.reverse();
                return Some((root.clone(), fields));
            }
            _ => return None,
        }
    }
}

/// An expression as error messages quote it: at most 120 characters.
fn shorten(source: &str) -> String {
    match source.char_indices().nth(120) {
        Some((end, _)) => format!("{}…", &source[..end]),
        None => source.to_owned(),
    }
}

/// Converts JSON to CEL. Integers become `int` (CEL never mixes `int` and `uint`, and
/// workflow authors write `n + 1`, not `n + 1u`); other numbers become `double`.
pub fn json_to_cel(value: &Json) -> Cel {
    match value {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => match n.as_u64() {
                Some(u) => Cel::UInt(u),
                None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
        },
        Json::String(s) => Cel::String(Arc::new(s.clone())),
        Json::Array(items) => Cel::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(map) => {
            Cel::Map(Map { map: Arc::new(map.iter().map(|(k, v)| (Key::from(k.clone()), json_to_cel(v))).collect()) })
        }
    }
}

/// Converts CEL back to JSON; durations and timestamps become strings, bytes base64.
pub fn cel_to_json(value: &Cel) -> Result<Json, String> {
    value.json().map_err(|err| err.to_string())
}

/// A piece of a template string.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Expr(String),
}

/// Splits `text` into literal text and `${ ... }` expressions. The closing brace is the
/// one that balances the opening, skipping braces inside CEL string literals, so map
/// literals and strings with braces work inside expressions.
fn split_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        literal.push_str(&rest[..start]);
        let body = &rest[start + 2..];
        let end = closing_brace(body).ok_or_else(|| format!("`${{` without a matching `}}` in {text:?}"))?;
        let source = &body[..end];
        if source.trim().is_empty() {
            return Err(format!("empty expression `${{}}` in {text:?}"));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Expr(source.to_owned()));
        rest = &body[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// What an expression reads: its free variables and the step ids it names.
#[derive(Default)]
struct References {
    variables: BTreeSet<String>,
    steps: BTreeSet<String>,
    whole_steps: bool,
    /// The top-level fields read as `input.<field>`.
    input_fields: BTreeSet<String>,
    /// Whether `input` is read other than through `input.<field>`.
    whole_input: bool,
}

impl References {
    fn walk(&mut self, expr: &IdedExpr, bound: &mut Vec<String>) {
        match &expr.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) && !CEL_TYPE_NAMES.contains(&name.as_str()) {
                    self.variables.insert(name.clone());
                    match name.as_str() {
                        "steps" => self.whole_steps = true,
                        "input" => self.whole_input = true,
                        _ => {}
                    }
                }
            }
            Expr::Select(select) => {
                if Self::is_free_steps(&select.operand, bound) {
                    self.note_step(&select.field);
                } else if matches!(&select.operand.expr, Expr::Ident(name) if name == "input" && !bound.contains(name))
                {
                    self.variables.insert("input".to_owned());
                    self.input_fields.insert(select.field.clone());
                } else {
                    self.walk(&select.operand, bound);
                }
            }
            Expr::Call(call) => {
                if let Some(id) = literal_step_index(call, bound) {
                    self.note_step(id);
                    return;
                }
                if let Some(target) = &call.target {
                    self.walk(target, bound);
                }
                for arg in &call.args {
                    self.walk(arg, bound);
                }
            }
            Expr::Comprehension(comp) => {
                self.walk(&comp.iter_range, bound);
                self.walk(&comp.accu_init, bound);
                let pushed = 1 + usize::from(comp.iter_var2.is_some()) + 1;
                bound.push(comp.iter_var.clone());
                if let Some(second) = &comp.iter_var2 {
                    bound.push(second.clone());
                }
                bound.push(comp.accu_var.clone());
                self.walk(&comp.loop_cond, bound);
                self.walk(&comp.loop_step, bound);
                self.walk(&comp.result, bound);
                bound.truncate(bound.len() - pushed);
            }
            Expr::List(list) => list.elements.iter().for_each(|e| self.walk(e, bound)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        self.walk(&entry.key, bound);
                        self.walk(&entry.value, bound);
                    }
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    match &entry.expr {
                        EntryExpr::StructField(field) => self.walk(&field.value, bound),
                        EntryExpr::MapEntry(entry) => {
                            self.walk(&entry.key, bound);
                            self.walk(&entry.value, bound);
                        }
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    /// Whether `operand` is the free variable `steps` (not a comprehension variable).
    fn is_free_steps(operand: &IdedExpr, bound: &[String]) -> bool {
        matches!(&operand.expr, Expr::Ident(name) if name == "steps" && !bound.contains(name))
    }

    fn note_step(&mut self, id: &str) {
        self.variables.insert("steps".to_owned());
        self.steps.insert(id.to_owned());
    }
}

/// The id in `steps["<id>"]` (or `steps[?"<id>"]`), when the key is a literal string.
fn literal_step_index<'a>(call: &'a CallExpr, bound: &[String]) -> Option<&'a str> {
    if call.func_name != operators::INDEX && call.func_name != operators::OPT_INDEX {
        return None;
    }
    match call.args.as_slice() {
        [steps, IdedExpr { expr: Expr::Literal(LiteralValue::String(id)), .. }]
            if References::is_free_steps(steps, bound) =>
        {
            Some(id.inner())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Binding, View};
    use serde_json::json;

    fn scope() -> Scope {
        let mut scope = Scope::new(json!({ "text": "hi", "items": [1, 2, 3] }).into());
        let view = View {
            status: "succeeded",
            output: Some(json!({ "hex": "abc", "n": 41 }).into()),
            error: None,
            branches: None,
            case: None,
        };
        scope.steps.insert("d1".to_owned(), Binding::view(view));
        scope
    }

    fn ten() -> &'static str {
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
    }

    /// `depth` comprehensions nested over ten elements each.
    fn nested_maps(depth: usize) -> String {
        let mut expr = "v0".to_owned();
        for level in (0..depth).rev() {
            expr = format!("{}.map(v{level}, {expr})", ten());
        }
        expr
    }

    #[test]
    fn deeply_nested_comprehensions_are_refused_at_compile_time_naming_the_expression() {
        let bomb = nested_maps(8);
        let errors = Template::expression(&bomb).unwrap_err();
        assert!(errors[0].message.contains("nests comprehensions deeper than 3 levels"), "{errors:?}");
        assert!(errors[0].message.contains("[0, 1, 2"), "the expression is quoted: {errors:?}");
        assert!(Template::expression(&nested_maps(3)).is_ok());
        let long = format!("{}1", "1 + ".repeat(600));
        assert!(Template::expression(&long).unwrap_err()[0].message.contains("over the limit of 2000"));
        let brackets = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert!(Template::expression(&brackets).unwrap_err()[0].message.contains("nests brackets deeper than 32"));
    }

    #[test]
    fn the_cost_budget_stops_expensive_expressions_and_spares_ordinary_ones() {
        let items: Vec<u32> = (0..200).collect();
        let scope = Scope::new(json!({ "items": items, "text": "x".repeat(1 << 20) }).into());
        // 200^3 = 8 million steps: stopped by the budget, fast.
        let cube =
            Template::expression("input.items.map(a, input.items.map(b, input.items.map(c, a + b + c)))").unwrap();
        let started = std::time::Instant::now();
        let err = cube.render(&scope).unwrap_err();
        assert!(err.message.contains("cost budget ran out"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // Text built in a comprehension counts: 200 copies of 2 MiB are refused.
        let text = Template::expression("input.items.map(i, input.text + input.text)").unwrap();
        assert!(text.render(&scope).unwrap_err().message.contains("cost budget ran out"));
        // 200^2 = 40,000 steps and a 10,000-item filter are well within it, and right.
        let square = Template::expression("size(input.items.map(a, input.items.filter(b, b < a)))").unwrap();
        assert_eq!(square.render(&scope).unwrap(), json!(200));
        let big: Vec<u32> = (0..10_000).collect();
        let sum = Template::expression("input.items.filter(x, x % 2 == 0).size()").unwrap();
        assert_eq!(sum.render(&Scope::new(json!({ "items": big }).into())).unwrap(), json!(5_000));
        // Each render has the whole budget again.
        assert_eq!(square.render(&scope).unwrap(), json!(200));
    }

    #[test]
    fn a_lone_expression_keeps_its_json_type() {
        let template =
            Template::compile(&json!({ "n": "${ steps.d1.output.n + 1 }", "items": "${ input.items.map(i, i * 2) }" }))
                .unwrap();
        assert_eq!(template.render(&scope()).unwrap(), json!({ "n": 42, "items": [2, 4, 6] }));
    }

    #[test]
    fn expressions_inside_text_interpolate() {
        let template =
            Template::compile(&json!("say ${ input.text } to ${steps.d1.output.hex} (${ steps.d1.output.n })"))
                .unwrap();
        assert_eq!(template.render(&scope()).unwrap(), json!("say hi to abc (41)"));
    }

    #[test]
    fn braces_inside_expressions_are_balanced() {
        let template = Template::compile(&json!("${ {'a': '}'}.a }")).unwrap();
        assert_eq!(template.render(&scope()).unwrap(), json!("}"));
    }

    #[test]
    fn references_are_found_in_every_form() {
        let template =
            Template::compile(&json!(["${ steps.a.output }", "${ steps['b'].status }", "${ input.x.map(s, s + 1) }"]))
                .unwrap();
        assert_eq!(template.step_references().iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(template.variables().iter().collect::<Vec<_>>(), ["input", "steps"]);
        assert!(!template.reads_all_steps());
        assert!(Template::compile(&json!("${ steps }")).unwrap().reads_all_steps());
    }

    #[test]
    fn only_the_input_fields_read_are_bound_and_whole_reads_still_work() {
        let fields = Template::compile(&json!({ "a": "${ input.text }", "b": "${ has(input.nowhere) }" })).unwrap();
        assert_eq!(fields.render(&scope()).unwrap(), json!({ "a": "hi", "b": false }));
        let whole = Template::compile(&json!("${ input }")).unwrap();
        assert_eq!(whole.render(&scope()).unwrap(), json!({ "text": "hi", "items": [1, 2, 3] }));
        let indexed = Template::compile(&json!("${ input['items'].size() }")).unwrap();
        assert_eq!(indexed.render(&scope()).unwrap(), json!(3));
    }

    #[test]
    fn comprehension_variables_are_not_free() {
        let template = Template::compile(&json!("${ input.items.filter(x, x > 1) }")).unwrap();
        assert_eq!(template.variables().iter().collect::<Vec<_>>(), ["input"]);
    }

    #[test]
    fn bad_expressions_are_reported_with_their_place() {
        let errors = Template::compile(&json!({ "a": "${ 1 + }", "b": ["ok", "${ unclosed"] })).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].subpath, ".a");
        assert!(errors[0].message.contains("does not parse"), "{}", errors[0].message);
        assert_eq!(errors[1].subpath, ".b[1]");
    }

    #[test]
    fn malformed_expressions_are_errors_never_panics() {
        for source in [".", "/", "1 +", ")(", "a[", "{", "steps.", "'unterminated", "a ? b", "[1, 2", "f(,)"] {
            assert!(Template::expression(source).is_err(), "{source:?} compiled");
        }
    }

    #[test]
    fn has_guards_an_optional_field() {
        let template = Template::compile(&json!("${ has(steps.d1.output.nowhere) ? 1 : 2 }")).unwrap();
        assert_eq!(template.render(&scope()).unwrap(), json!(2));
    }

    #[test]
    fn a_missing_key_is_an_evaluation_error_naming_the_expression() {
        let err = Template::compile(&json!("${ steps.d1.output.nowhere }")).unwrap().render(&scope()).unwrap_err();
        assert!(err.message.contains("steps.d1.output.nowhere"), "{}", err.message);
    }
}
