//! Workflow definitions: the model, parsing JSON documents into it with precise errors,
//! validation, and the `${ ... }` expression templates (CEL) that wire steps together.
//!
//! Everything here happens before a run starts: a definition that parses and validates is
//! guaranteed to name only known step types, fields and agents, to reference only steps
//! that have run by the time each expression is evaluated, and to hold only expressions
//! that parse. Running it is the engine's job; this module knows nothing of wasmtime or SQL.

pub mod cost;
mod expr;
mod model;
mod parse;
mod scope;
mod validate;

pub use expr::{ExprError, Template, cel_to_json, json_to_cel};
pub use model::{
    AgentStep, Branch, Case, Grants, InputSchema, InvalidInput, JoinPolicy, LoopBlock, MapBlock, ParallelBlock,
    RetryPolicy, Step, StepKind, SwitchBlock, Workflow,
};
pub use parse::parse;
pub use scope::{Binding, Scope, View};
pub use validate::{check, check_grants, check_on_host, validate};

use std::fmt;

/// One thing wrong with a definition: where (a JSON path such as
/// `steps[0].branches[1].steps[0].agent`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a definition, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidWorkflow {
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidWorkflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "invalid workflow ({count} problem{}):", if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}
