//! Parsing a JSON definition into the model. Structural problems (missing or mistyped
//! fields, unknown fields and step types, expressions that do not parse) are collected,
//! not returned one at a time, each with the JSON path of the field it is about.

use super::model::{
    AgentStep, Branch, Case, Grants, InputSchema, JoinPolicy, LoopBlock, MapBlock, ParallelBlock, RetryPolicy, Step,
    StepKind, SwitchBlock, Workflow,
};
use super::{InvalidWorkflow, Problem, Template};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;

const WORKFLOW_FIELDS: &[&str] =
    &["name", "version", "description", "input_schema", "retry", "timeout_ms", "allowed_hosts", "steps", "output"];
const STEP_FIELDS: &[&str] = &["id", "type", "if"];
/// A branch in its short form is a step with a name.
const BRANCH_STEP_FIELDS: &[&str] = &["id", "type", "if", "name"];
const AGENT_FIELDS: &[&str] =
    &["agent", "input", "timeout_ms", "memory_mb", "fuel", "config", "secrets", "retry", "allowed_hosts"];
const RETRY_FIELDS: &[&str] = &["max_attempts", "initial_backoff_ms", "max_backoff_ms", "jitter"];
const PARALLEL_FIELDS: &[&str] = &["max_parallelism", "join_policy", "tolerated_failures", "branches", "timeout_ms"];
const MAP_FIELDS: &[&str] = &[
    "items",
    "max_parallelism",
    "max_items",
    "join_policy",
    "tolerated_failures",
    "step",
    "timeout_ms",
    "allowed_hosts",
];
const SWITCH_FIELDS: &[&str] = &["cases", "default", "timeout_ms"];
const LOOP_FIELDS: &[&str] = &["steps", "until", "max_iterations", "on_max_iterations", "timeout_ms"];
const STEP_TYPES: &[&str] = &["agent", "parallel", "map", "switch", "loop"];
/// A map runs this many items at once unless it says otherwise.
const DEFAULT_MAP_PARALLELISM: u32 = 16;
/// Longest `timeout_ms`: a week.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u64 = 100;
/// Longest backoff between attempts: an hour.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Largest `max_parallelism` of a block or map.
pub const MAX_PARALLELISM: u64 = 10_000;
/// Largest `tolerated_failures` and quorum.
pub const MAX_COUNT: u64 = 1_000_000;
/// Largest `max_iterations` of a loop.
pub const MAX_ITERATIONS: u64 = 100_000;
/// Largest `max_items` a map may declare (the host's `--max-map-items` may be lower).
pub const MAX_MAP_ITEMS: u64 = 10_000_000;

/// Whether `text` can name an agent or a version: what deploys accept, and nothing that
/// could reach outside an agents folder.
fn is_agent_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !text.starts_with('.')
}

/// Parses a definition (JSON text), then validates its structure; see also [`super::validate`].
pub fn parse(text: &str) -> Result<Workflow, InvalidWorkflow> {
    let partial = parse_partial(text);
    match partial.workflow {
        Some(workflow) if partial.problems.is_empty() => Ok(workflow),
        _ => Err(InvalidWorkflow { problems: partial.problems }),
    }
}

/// What parsing found: the structural problems, and the workflow without the steps that
/// could not be parsed (so that validation can still report what it finds in the rest).
pub(super) struct Partial {
    pub workflow: Option<Workflow>,
    pub problems: Vec<Problem>,
    /// Ids of the steps left out: references to them are not reported as unknown.
    pub left_out: BTreeSet<String>,
}

pub(super) fn parse_partial(text: &str) -> Partial {
    let document: Value = match crate::limits::parse_json(text, "$") {
        Ok(document) => document,
        Err(problem) => {
            let problems = vec![Problem { path: problem.path().to_owned(), message: problem.reason() }];
            return Partial { workflow: None, problems, left_out: BTreeSet::new() };
        }
    };
    let mut parser =
        Parser { problems: Vec::new(), default_retry: None, default_grants: Arc::default(), left_out: BTreeSet::new() };
    let workflow = parser.workflow(&document);
    Partial { workflow, problems: parser.problems, left_out: parser.left_out }
}

struct Parser {
    problems: Vec<Problem>,
    /// The workflow's `retry`, for agent steps without their own.
    default_retry: Option<RetryPolicy>,
    /// The nearest enclosing `allowed_hosts` (workflow, branch or map), for agent steps
    /// without their own.
    default_grants: Arc<Grants>,
    /// Ids of steps that could not be parsed.
    left_out: BTreeSet<String>,
}

/// Reads the fields of one JSON object, remembering which were used so that the rest can
/// be reported as unknown.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl Parser {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn object<'a>(&mut self, value: &'a Value, path: &str, what: &str) -> Option<Fields<'a>> {
        match value {
            Value::Object(map) => Some(Fields { map, path: path.to_owned() }),
            other => {
                self.problem(path, format!("{what} must be an object, not {}", kind(other)));
                None
            }
        }
    }

    fn unknown_fields(&mut self, fields: &Fields, allowed: &[&[&str]], what: &str) {
        for key in fields.map.keys() {
            if !allowed.iter().any(|set| set.contains(&key.as_str())) {
                let expected: Vec<&str> = allowed.iter().flat_map(|set| set.iter().copied()).collect();
                self.problem(
                    fields.at(key),
                    format!("unknown field in {what} (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }

    fn string(&mut self, fields: &Fields, key: &str, required: bool) -> Option<String> {
        match fields.map.get(key) {
            Some(Value::String(text)) if !text.trim().is_empty() => Some(text.clone()),
            Some(Value::String(_)) => {
                self.problem(fields.at(key), "must not be empty");
                None
            }
            Some(other) => {
                self.problem(fields.at(key), format!("must be a string, not {}", kind(other)));
                None
            }
            None if required => {
                self.problem(fields.at(key), "is required");
                None
            }
            None => None,
        }
    }

    /// A whole number within `range`, or a problem naming the field: nothing is silently
    /// truncated or clamped (`4294967296` is not a `max_parallelism` of 0).
    fn leave_out(&mut self, item: &Value) {
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            self.left_out.insert(id.to_owned());
        }
    }

    fn integer<T: TryFrom<u64>>(&mut self, fields: &Fields, key: &str, range: RangeInclusive<u64>) -> Option<T> {
        let value = fields.map.get(key)?;
        self.whole_number(value, &fields.at(key), range)
    }

    fn whole_number<T: TryFrom<u64>>(&mut self, value: &Value, path: &str, range: RangeInclusive<u64>) -> Option<T> {
        let (min, max) = (*range.start(), *range.end());
        match value.as_u64() {
            Some(n) if range.contains(&n) => T::try_from(n).ok(),
            Some(n) if n < min => {
                self.problem(path, format!("must be at least {min}, not {n}"));
                None
            }
            Some(n) => {
                self.problem(path, format!("must be at most {max}, not {n}"));
                None
            }
            None => {
                self.problem(path, format!("must be a whole number from {min} to {max}, not {value}"));
                None
            }
        }
    }

    fn template(&mut self, value: &Value, path: &str) -> Option<Template> {
        match Template::compile(value) {
            Ok(template) => Some(template),
            Err(errors) => {
                for error in errors {
                    self.problem(format!("{path}{}", error.subpath), error.message);
                }
                None
            }
        }
    }

    fn workflow(&mut self, document: &Value) -> Option<Workflow> {
        let fields = self.object(document, "$", "a workflow")?;
        self.unknown_fields(&fields, &[WORKFLOW_FIELDS], "a workflow");
        let name = self.string(&fields, "name", true);
        // Versions are strings; a bare number is accepted as its text ("version": 2).
        let version = match fields.map.get("version") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => self.string(&fields, "version", true),
        };
        self.string(&fields, "description", false);
        self.default_retry = fields.map.get("retry").and_then(|value| self.retry(value, "retry"));
        let steps = self.with_grants(&fields, |parser| parser.steps(fields.map.get("steps"), "steps"));
        let output = fields.map.get("output").and_then(|value| self.template(value, "output"));
        let input_schema = match fields.map.get("input_schema") {
            None => None,
            Some(schema) => match jsonschema::validator_for(schema) {
                Ok(validator) => Some(InputSchema(Arc::new(validator))),
                Err(err) => {
                    self.problem("input_schema", format!("not a valid JSON Schema: {err}"));
                    None
                }
            },
        };
        let timeout_ms = self.integer(&fields, "timeout_ms", 1..=MAX_TIMEOUT_MS);
        Some(Workflow {
            name: name?,
            version: version?,
            steps: steps?,
            output,
            input_schema,
            timeout_ms,
            source: document.clone(),
        })
    }

    fn steps(&mut self, value: Option<&Value>, path: &str) -> Option<Arc<[Step]>> {
        let Some(value) = value else {
            self.problem(path, "is required");
            return None;
        };
        let Value::Array(items) = value else {
            self.problem(path, format!("must be a list of steps, not {}", kind(value)));
            return None;
        };
        if items.is_empty() {
            self.problem(path, "must hold at least one step");
            return None;
        }
        // A step that cannot be parsed is left out (its problems are recorded), so that the
        // rest can still be validated and every problem reported at once.
        let mut steps = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.step(item, &format!("{path}[{i}]"), None, None) {
                Some(step) => steps.push(step),
                None => self.leave_out(item),
            }
        }
        Some(Arc::from(steps))
    }

    /// One step. `branch_name` is set for a branch's short form, whose name is also the
    /// step's id unless it has its own.
    fn step(&mut self, value: &Value, path: &str, branch_name: Option<&str>, default_id: Option<&str>) -> Option<Step> {
        let fields = self.object(value, path, "a step")?;
        let default_id = default_id.or(branch_name);
        let common = if branch_name.is_some() { BRANCH_STEP_FIELDS } else { STEP_FIELDS };
        let id = match (fields.map.get("id"), default_id) {
            (None, Some(default)) => Some(default.to_owned()),
            _ => self.string(&fields, "id", true),
        };
        let step_type = match fields.map.get("type") {
            None => "agent".to_owned(),
            Some(_) => self.string(&fields, "type", true)?,
        };
        let kind = match step_type.as_str() {
            "agent" => {
                self.unknown_fields(&fields, &[common, AGENT_FIELDS], "an agent step");
                self.agent_step(&fields).map(StepKind::Agent)
            }
            "parallel" => {
                self.unknown_fields(&fields, &[common, PARALLEL_FIELDS], "a parallel step");
                self.parallel_block(&fields).map(StepKind::Parallel)
            }
            "map" => {
                self.unknown_fields(&fields, &[common, MAP_FIELDS], "a map step");
                let id = fields.map.get("id").and_then(Value::as_str).or(default_id).unwrap_or("map").to_owned();
                self.map_block(&fields, &id).map(StepKind::Map)
            }
            "switch" => {
                self.unknown_fields(&fields, &[common, SWITCH_FIELDS], "a switch step");
                self.switch_block(&fields).map(StepKind::Switch)
            }
            "loop" => {
                self.unknown_fields(&fields, &[common, LOOP_FIELDS], "a loop step");
                self.loop_block(&fields).map(StepKind::Loop)
            }
            other => {
                self.problem(
                    fields.at("type"),
                    format!("unknown step type {other:?} (expected one of: {})", STEP_TYPES.join(", ")),
                );
                None
            }
        };
        let condition = fields.map.get("if").and_then(|value| self.condition(value, &fields.at("if")));
        // An agent step's timeout_ms is its sandbox deadline (read with its fields).
        let timeout_ms =
            if step_type == "agent" { None } else { self.integer(&fields, "timeout_ms", 1..=MAX_TIMEOUT_MS) };
        Some(Step { id: id?, path: path.to_owned(), condition, timeout_ms, kind: kind? })
    }

    fn agent_step(&mut self, fields: &Fields) -> Option<AgentStep> {
        let agent = self.string(fields, "agent", true).filter(|agent| {
            // A reference names an agent (`name` or `name@version`), never a path: with
            // `--agents DIR`, `../x` or `/etc/x` must not load a file outside DIR.
            let ok = agent
                .split_once('@')
                .map_or(is_agent_name(agent), |(name, version)| is_agent_name(name) && is_agent_name(version));
            if !ok {
                self.problem(
                    fields.at("agent"),
                    format!("{agent:?} is not an agent name (letters, digits, '.', '_', '-', optionally @version)"),
                );
            }
            ok
        });
        let input = match fields.map.get("input") {
            Some(value) => self.template(value, &fields.at("input")),
            None => Template::compile(&Value::Object(Map::new())).ok(),
        };
        let timeout_ms = self.integer(fields, "timeout_ms", 1..=MAX_TIMEOUT_MS);
        let memory_mb = self.integer(fields, "memory_mb", 1..=crate::limits::MAX_STEP_MEMORY_MB);
        let fuel = self.integer(fields, "fuel", 1..=i64::MAX as u64);
        let config = self.config(fields)?;
        let secrets = self.secrets(fields, &config);
        let retry = match fields.map.get("retry") {
            Some(value) => Some(self.retry(value, &fields.at("retry"))?),
            None => self.default_retry,
        };
        let allowed_hosts = self.grants(fields).unwrap_or_else(|| self.default_grants.clone());
        Some(AgentStep {
            agent: agent?,
            input: input?,
            timeout_ms,
            memory_mb,
            fuel,
            config,
            secrets: secrets?,
            retry,
            allowed_hosts,
        })
    }

    /// The object's own `allowed_hosts`, if it has one (every bad entry reported).
    fn grants(&mut self, fields: &Fields) -> Option<Arc<Grants>> {
        let value = fields.map.get("allowed_hosts")?;
        let path = fields.at("allowed_hosts");
        let Value::Array(items) = value else {
            self.problem(&path, format!("must be a list of \"scheme://host[:port]\" strings, not {}", kind(value)));
            return Some(Arc::default());
        };
        let mut entries = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(entry) => entries.push(entry.clone()),
                other => self.problem(format!("{path}[{i}]"), format!("must be a string, not {}", kind(other))),
            }
        }
        match crate::outbound::HostPatterns::parse(&entries) {
            Ok(patterns) => Some(Arc::new(Grants { patterns: Arc::new(patterns), path })),
            Err(errors) => {
                for error in errors {
                    let index = entries.iter().position(|entry| *entry == error.entry).unwrap_or_default();
                    self.problem(format!("{path}[{index}]"), error.to_string());
                }
                Some(Arc::default())
            }
        }
    }

    /// Parses what `inside` parses with the object's `allowed_hosts` (if any) as the
    /// default for the agent steps in it.
    fn with_grants<T>(&mut self, fields: &Fields, inside: impl FnOnce(&mut Self) -> T) -> T {
        let Some(grants) = self.grants(fields) else { return inside(self) };
        let outer = std::mem::replace(&mut self.default_grants, grants);
        let result = inside(self);
        self.default_grants = outer;
        result
    }

    /// `secrets`: config keys mapped to the names of the host's secrets. A key may not be
    /// both a secret and plain config.
    fn secrets(&mut self, fields: &Fields, config: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
        let Some(value) = fields.map.get("secrets") else { return Some(BTreeMap::new()) };
        let path = fields.at("secrets");
        let Value::Object(map) = value else {
            self.problem(path, format!("must be an object of config key → secret name, not {}", kind(value)));
            return None;
        };
        let mut secrets = BTreeMap::new();
        for (key, value) in map {
            let at = format!("{path}.{key}");
            match value {
                Value::String(name) if crate::secrets::is_secret_name(name) => {
                    if config.contains_key(key) {
                        self.problem(at, format!("{key:?} is also in config; a key is either config or a secret"));
                    } else {
                        secrets.insert(key.clone(), name.clone());
                    }
                }
                Value::String(name) => {
                    self.problem(at, format!("{name:?} is not a secret name (letters, digits and '_', at most 128)"))
                }
                other => self.problem(at, format!("must be a secret's name, not {}", kind(other))),
            }
        }
        Some(secrets)
    }

    /// A CEL condition: bare (`"input.n > 1"`) or wrapped (`"${ input.n > 1 }"`).
    fn condition(&mut self, value: &Value, path: &str) -> Option<Template> {
        let Value::String(text) = value else {
            self.problem(path, format!("must be a CEL condition (a string), not {}", kind(value)));
            return None;
        };
        let trimmed = text.trim();
        let source = trimmed.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')).unwrap_or(trimmed);
        match Template::expression(source) {
            Ok(template) => Some(template),
            Err(errors) => {
                for error in errors {
                    self.problem(path, error.message);
                }
                None
            }
        }
    }

    fn retry(&mut self, value: &Value, path: &str) -> Option<RetryPolicy> {
        let fields = self.object(value, path, "a retry policy")?;
        self.unknown_fields(&fields, &[RETRY_FIELDS], "a retry policy");
        let defaults = RetryPolicy::default();
        let max_attempts = self.integer(&fields, "max_attempts", 1..=MAX_ATTEMPTS).unwrap_or(defaults.max_attempts);
        let initial_backoff_ms =
            self.integer(&fields, "initial_backoff_ms", 0..=MAX_BACKOFF_MS).unwrap_or(defaults.initial_backoff_ms);
        let max_backoff_ms = self
            .integer(&fields, "max_backoff_ms", 0..=MAX_BACKOFF_MS)
            .unwrap_or(defaults.max_backoff_ms.max(initial_backoff_ms));
        let jitter = match fields.map.get("jitter") {
            None => defaults.jitter,
            Some(Value::Bool(jitter)) => *jitter,
            Some(other) => {
                self.problem(fields.at("jitter"), format!("must be true or false, not {other}"));
                defaults.jitter
            }
        };
        if max_backoff_ms < initial_backoff_ms {
            self.problem(fields.at("max_backoff_ms"), "must be at least initial_backoff_ms");
        }
        Some(RetryPolicy { max_attempts, initial_backoff_ms, max_backoff_ms, jitter })
    }

    fn config(&mut self, fields: &Fields) -> Option<BTreeMap<String, String>> {
        let Some(value) = fields.map.get("config") else { return Some(BTreeMap::new()) };
        let Value::Object(map) = value else {
            self.problem(fields.at("config"), format!("must be an object of strings, not {}", kind(value)));
            return None;
        };
        let mut config = BTreeMap::new();
        for (key, value) in map {
            match value {
                Value::String(text) => config.insert(key.clone(), text.clone()),
                // Numbers and booleans are granted as their JSON text.
                Value::Number(_) | Value::Bool(_) => config.insert(key.clone(), value.to_string()),
                other => {
                    self.problem(
                        format!("{}.{key}", fields.at("config")),
                        format!("must be a string, not {}", kind(other)),
                    );
                    continue;
                }
            };
        }
        Some(config)
    }

    fn parallel_block(&mut self, fields: &Fields) -> Option<ParallelBlock> {
        let join_policy = self.join_policy(fields);
        let tolerated_failures = self.integer(fields, "tolerated_failures", 0..=MAX_COUNT).unwrap_or(0);
        let branches = self.branches(fields);
        let max_parallelism = match fields.map.get("max_parallelism") {
            None => branches.as_ref().map_or(1, |b| u32::try_from(b.len()).unwrap_or(u32::MAX)),
            Some(_) => self.integer(fields, "max_parallelism", 1..=MAX_PARALLELISM)?,
        };
        Some(ParallelBlock { max_parallelism, join_policy: join_policy?, tolerated_failures, branches: branches? })
    }

    fn map_block(&mut self, fields: &Fields, id: &str) -> Option<MapBlock> {
        let items = match fields.map.get("items") {
            Some(value @ Value::String(_)) => self.template(value, &fields.at("items")),
            Some(other) => {
                self.problem(fields.at("items"), format!("must be an expression giving a list, not {}", kind(other)));
                None
            }
            None => {
                self.problem(fields.at("items"), "is required");
                None
            }
        };
        let max_parallelism = match fields.map.get("max_parallelism") {
            None => Some(DEFAULT_MAP_PARALLELISM),
            Some(_) => self.integer(fields, "max_parallelism", 1..=MAX_PARALLELISM),
        };
        let max_items = self.integer(fields, "max_items", 1..=MAX_MAP_ITEMS);
        let join_policy = self.join_policy(fields);
        let tolerated_failures = self.integer(fields, "tolerated_failures", 0..=MAX_COUNT).unwrap_or(0);
        // `step` is one agent step (its id defaults to `<map id>_item`) or `{ "steps": [...] }`.
        let path = fields.at("step");
        let body = self.with_grants(fields, |parser| parser.map_body(fields, &path, id));
        Some(MapBlock {
            items: items?,
            max_parallelism: max_parallelism?,
            max_items,
            join_policy: join_policy?,
            tolerated_failures,
            body: body?,
        })
    }

    /// A map's `step`: one step, or `{ "steps": [...] }`.
    fn map_body(&mut self, fields: &Fields, path: &str, id: &str) -> Option<Arc<[Step]>> {
        match fields.map.get("step") {
            None => {
                self.problem(path, "is required");
                None
            }
            Some(Value::Object(step)) if step.contains_key("steps") => {
                let inner = Fields { map: step, path: path.to_owned() };
                self.unknown_fields(&inner, &[&["steps"]], "a map's step list");
                self.steps(step.get("steps"), &inner.at("steps"))
            }
            Some(value) => {
                let default_id = format!("{id}_item");
                self.step(value, path, None, Some(&default_id)).map(|step| Arc::from(vec![step]))
            }
        }
    }

    fn switch_block(&mut self, fields: &Fields) -> Option<SwitchBlock> {
        let path = fields.at("cases");
        let Some(Value::Array(items)) = fields.map.get("cases") else {
            self.problem(&path, "is required: a list of { \"when\": <CEL>, \"steps\": [...] }");
            return None;
        };
        let mut cases = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let case_path = format!("{path}[{i}]");
            let Some(case) = self.object(item, &case_path, "a case") else { continue };
            self.unknown_fields(&case, &[&["when", "steps"]], "a case");
            let when = match case.map.get("when") {
                Some(value) => self.condition(value, &case.at("when")),
                None => {
                    self.problem(case.at("when"), "is required");
                    None
                }
            };
            let steps = self.steps(case.map.get("steps"), &case.at("steps"));
            if let (Some(when), Some(steps)) = (when, steps) {
                cases.push(Case { when, steps });
            }
        }
        let default = match fields.map.get("default") {
            None => None,
            Some(value) => Some(self.steps(Some(value), &fields.at("default"))?),
        };
        if cases.len() != items.len() {
            return None;
        }
        Some(SwitchBlock { cases: Arc::from(cases), default })
    }

    fn loop_block(&mut self, fields: &Fields) -> Option<LoopBlock> {
        let body = self.steps(fields.map.get("steps"), &fields.at("steps"));
        let until = match fields.map.get("until") {
            Some(value) => self.condition(value, &fields.at("until")),
            None => {
                self.problem(fields.at("until"), "is required");
                None
            }
        };
        let max_iterations = match fields.map.get("max_iterations") {
            None => Some(10),
            Some(_) => self.integer(fields, "max_iterations", 1..=MAX_ITERATIONS),
        };
        let fail_at_max = match fields.map.get("on_max_iterations").map(|v| v.as_str()) {
            None | Some(Some("fail")) => true,
            Some(Some("succeed")) => false,
            Some(_) => {
                self.problem(fields.at("on_max_iterations"), "must be \"fail\" (the default) or \"succeed\"");
                true
            }
        };
        Some(LoopBlock { body: body?, until: until?, max_iterations: max_iterations?.min(100_000) as u32, fail_at_max })
    }

    fn join_policy(&mut self, fields: &Fields) -> Option<JoinPolicy> {
        let path = fields.at("join_policy");
        match fields.map.get("join_policy") {
            None => Some(JoinPolicy::All),
            Some(Value::String(name)) => match name.as_str() {
                "all" => Some(JoinPolicy::All),
                "fail_fast" => Some(JoinPolicy::FailFast),
                "any" => Some(JoinPolicy::Any),
                other => {
                    self.problem(path, format!("unknown join policy {other:?} (expected \"all\", \"fail_fast\", \"any\" or {{\"quorum\": N}})"));
                    None
                }
            },
            Some(Value::Object(map)) if map.len() == 1 && map.contains_key("quorum") => {
                self.whole_number(&map["quorum"], &format!("{path}.quorum"), 1..=MAX_COUNT).map(JoinPolicy::Quorum)
            }
            Some(other) => {
                self.problem(
                    path,
                    format!("must be \"all\", \"fail_fast\", \"any\" or {{\"quorum\": N}}, not {other}"),
                );
                None
            }
        }
    }

    fn branches(&mut self, fields: &Fields) -> Option<Arc<[Branch]>> {
        let path = fields.at("branches");
        let value = fields.map.get("branches");
        let Some(Value::Array(items)) = value else {
            match value {
                None => self.problem(path, "is required"),
                Some(other) => self.problem(path, format!("must be a list of branches, not {}", kind(other))),
            }
            return None;
        };
        if items.is_empty() {
            self.problem(path, "must hold at least one branch");
            return None;
        }
        let branches: Vec<Option<Branch>> =
            items.iter().enumerate().map(|(i, item)| self.branch(item, &format!("{path}[{i}]"))).collect();
        branches.into_iter().collect::<Option<Vec<_>>>().map(Arc::from)
    }

    /// A branch: `{ "name", "steps": [...] }`, or one step with a `name` (its id defaults
    /// to the name).
    fn branch(&mut self, value: &Value, path: &str) -> Option<Branch> {
        let fields = self.object(value, path, "a branch")?;
        let name = self.string(&fields, "name", true);
        if fields.map.contains_key("steps") {
            self.unknown_fields(&fields, &[&["name", "steps", "allowed_hosts"]], "a branch with steps");
            let steps = self.with_grants(&fields, |parser| parser.steps(fields.map.get("steps"), &fields.at("steps")));
            return Some(Branch { name: name?, steps: steps? });
        }
        let step = self.step(value, path, name.as_deref(), None);
        Some(Branch { name: name?, steps: Arc::from(vec![step?]) })
    }
}

impl Fields<'_> {
    /// The path of `key` in this object: `steps[0].agent`, or for the workflow's own fields
    /// `name`; an odd key is quoted (`$[""]`), so that every path names its place.
    fn at(&self, key: &str) -> String {
        let mut path = self.path.clone();
        crate::limits::push_key(&mut path, key);
        match path.strip_prefix("$.") {
            Some(top) => top.to_owned(),
            None => path,
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
