//! Validation beyond structure: unique ids and branch names, sensible block settings,
//! expressions that read only known variables and steps that have run by then, and
//! agents that exist, and grants of outbound HTTP within the host's ceiling. Every problem is reported, each with its path.

use super::expr::VARIABLES;
use super::model::{Grants, JoinPolicy, Step, StepKind, Workflow};
use super::{InvalidWorkflow, Problem, Template};
use crate::outbound::HostPatterns;
use std::collections::{BTreeMap, BTreeSet};

/// Checks `workflow`; `agent_exists` answers whether an agent reference (`name` or
/// `name@version`) can be resolved.
pub fn validate(workflow: &Workflow, agent_exists: &dyn Fn(&str) -> bool) -> Result<(), InvalidWorkflow> {
    validate_assuming(workflow, agent_exists, &HostPatterns::any(), &BTreeSet::new())
}

/// Parses and validates a definition, reporting every problem at once: structural ones
/// and, in the steps that did parse, duplicate ids, unknown agents and references.
pub fn check(text: &str, agent_exists: &dyn Fn(&str) -> bool) -> Result<Workflow, InvalidWorkflow> {
    check_on_host(text, agent_exists, &HostPatterns::any())
}

/// [`check`] on a host whose operator allows outbound HTTP only within `ceiling`
/// (`--allow-outbound`): a grant beyond it is a problem too.
pub fn check_on_host(
    text: &str,
    agent_exists: &dyn Fn(&str) -> bool,
    ceiling: &HostPatterns,
) -> Result<Workflow, InvalidWorkflow> {
    let partial = super::parse::parse_partial(text);
    let mut problems = partial.problems;
    if let Some(workflow) = &partial.workflow
        && let Err(invalid) = validate_assuming(workflow, agent_exists, ceiling, &partial.left_out)
    {
        problems.extend(invalid.problems);
    }
    match partial.workflow {
        Some(workflow) if problems.is_empty() => Ok(workflow),
        _ => Err(InvalidWorkflow { problems }),
    }
}

/// Only the grants of a parsed (and once validated) workflow against a host's `ceiling`: what
/// a host checks of a deployed definition before running it, when another host, maybe with a
/// wider ceiling, validated the rest at deploy.
pub fn check_grants(workflow: &Workflow, ceiling: &HostPatterns) -> Result<(), InvalidWorkflow> {
    let left_out = BTreeSet::new();
    let mut checker = Checker {
        problems: Vec::new(),
        ids: BTreeMap::new(),
        agent_exists: &|_| true,
        ceiling,
        grants_checked: BTreeSet::new(),
        left_out: &left_out,
    };
    checker.grants_in(&workflow.steps);
    if checker.problems.is_empty() { Ok(()) } else { Err(InvalidWorkflow { problems: checker.problems }) }
}

/// [`validate`], taking the steps in `left_out` (which could not be parsed) to exist and
/// to have run wherever they are referenced.
fn validate_assuming(
    workflow: &Workflow,
    agent_exists: &dyn Fn(&str) -> bool,
    ceiling: &HostPatterns,
    left_out: &BTreeSet<String>,
) -> Result<(), InvalidWorkflow> {
    let mut checker = Checker {
        problems: Vec::new(),
        ids: BTreeMap::new(),
        agent_exists,
        ceiling,
        grants_checked: BTreeSet::new(),
        left_out,
    };
    checker.collect_ids(&workflow.steps);
    let mut visible = Vec::new();
    checker.sequence(&workflow.steps, &mut visible, &[]);
    if let Some(output) = &workflow.output {
        checker.template(output, "output", &visible, &[]);
    }
    if checker.problems.is_empty() { Ok(()) } else { Err(InvalidWorkflow { problems: checker.problems }) }
}

struct Checker<'a> {
    problems: Vec<Problem>,
    /// Every step id, with the path of its first definition.
    ids: BTreeMap<String, String>,
    agent_exists: &'a dyn Fn(&str) -> bool,
    /// The host's `--allow-outbound`.
    ceiling: &'a HostPatterns,
    /// The `allowed_hosts` lists already checked against the ceiling, by path (a workflow's
    /// default is shared by many steps, and reported once).
    grants_checked: BTreeSet<String>,
    left_out: &'a BTreeSet<String>,
}

impl Checker<'_> {
    /// The grants of every agent step in `steps`, nested ones included.
    fn grants_in(&mut self, steps: &[Step]) {
        for step in steps {
            if let StepKind::Agent(agent) = &step.kind {
                self.grants(&agent.allowed_hosts);
            }
            for (nested, _) in step.kind.nested() {
                self.grants_in(nested);
            }
        }
    }

    /// Grants beyond the host's ceiling, each named.
    fn grants(&mut self, grants: &Grants) {
        if grants.patterns.is_empty() || !self.grants_checked.insert(grants.path.clone()) {
            return;
        }
        let ceiling: Vec<&str> = self.ceiling.iter().map(|pattern| pattern.as_str()).collect();
        let beyond: Vec<(usize, String)> = grants
            .patterns
            .iter()
            .enumerate()
            .filter(|(_, grant)| !self.ceiling.iter().any(|outer| grant.within(outer)))
            .map(|(i, grant)| (i, grant.to_string()))
            .collect();
        for (i, grant) in beyond {
            self.problem(
                format!("{}[{i}]", grants.path),
                format!("{grant:?} is beyond what this host allows (--allow-outbound {})", ceiling.join(", ")),
            );
        }
    }

    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn collect_ids(&mut self, steps: &[Step]) {
        for step in steps {
            match self.ids.get(&step.id) {
                Some(first) => {
                    let message = format!("duplicate step id {:?} (first defined at {first})", step.id);
                    self.problem(format!("{}.id", step.path), message);
                }
                None => {
                    self.ids.insert(step.id.clone(), step.path.clone());
                }
            }
            for (nested, _) in step.kind.nested() {
                self.collect_ids(nested);
            }
        }
    }

    /// Checks `steps` in order; `visible` holds the ids that have run before the current
    /// step and grows as the sequence goes on.
    /// `vars` are the variables enclosing steps bind (`item`, `index`, `iteration`).
    fn sequence(&mut self, steps: &[Step], visible: &mut Vec<String>, vars: &[&'static str]) {
        for step in steps {
            if let Some(condition) = &step.condition {
                self.template(condition, &format!("{}.if", step.path), visible, vars);
            }
            match &step.kind {
                StepKind::Map(map) => {
                    self.template(&map.items, &format!("{}.items", step.path), visible, vars);
                    self.block_settings(step, map.join_policy, map.tolerated_failures, None);
                    // Each item's steps see their own earlier steps; after the map only the
                    // map's output (a list) is in scope.
                    let inner = [vars, &["item", "index"]].concat();
                    self.sequence(&map.body, &mut visible.clone(), &inner);
                }
                StepKind::Switch(switch) => {
                    let mut inside = Vec::new();
                    for (i, case) in switch.cases.iter().enumerate() {
                        self.template(&case.when, &format!("{}.cases[{i}].when", step.path), visible, vars);
                        let mut case_visible = visible.clone();
                        self.sequence(&case.steps, &mut case_visible, vars);
                        inside.extend(case_visible.into_iter().skip(visible.len()));
                    }
                    if let Some(default) = &switch.default {
                        let mut default_visible = visible.clone();
                        self.sequence(default, &mut default_visible, vars);
                        inside.extend(default_visible.into_iter().skip(visible.len()));
                    }
                    visible.extend(inside);
                }
                StepKind::Loop(repeat) => {
                    let inner = [vars, &["iteration"]].concat();
                    let mut body_visible = visible.clone();
                    self.sequence(&repeat.body, &mut body_visible, &inner);
                    self.template(&repeat.until, &format!("{}.until", step.path), &body_visible, &inner);
                    visible.extend(body_visible.into_iter().skip(visible.len()));
                }
                StepKind::Agent(agent) => {
                    self.template(&agent.input, &format!("{}.input", step.path), visible, vars);
                    if !(self.agent_exists)(&agent.agent) {
                        self.problem(format!("{}.agent", step.path), format!("unknown agent {:?}", agent.agent));
                    }
                    self.grants(&agent.allowed_hosts);
                }
                StepKind::Parallel(block) => {
                    let branch_count = u32::try_from(block.branches.len()).unwrap_or(u32::MAX);
                    let mut names = BTreeSet::new();
                    let mut inside = Vec::new();
                    for (i, branch) in block.branches.iter().enumerate() {
                        if !names.insert(branch.name.as_str()) {
                            self.problem(
                                format!("{}.branches[{i}].name", step.path),
                                format!("duplicate branch name {:?} in block {:?}", branch.name, step.id),
                            );
                        }
                        // A branch sees what ran before the block and its own earlier steps,
                        // never a sibling's.
                        let mut branch_visible = visible.clone();
                        self.sequence(&branch.steps, &mut branch_visible, vars);
                        inside.extend(branch_visible.into_iter().skip(visible.len()));
                    }
                    self.block_settings(step, block.join_policy, block.tolerated_failures, Some(branch_count));
                    visible.extend(inside);
                }
            }
            visible.push(step.id.clone());
        }
    }

    /// Join settings that cannot work; `branches` is known for parallel blocks only (a
    /// map's item count is known at run time).
    fn block_settings(&mut self, step: &Step, policy: JoinPolicy, tolerated: u32, branches: Option<u32>) {
        if tolerated > 0 && policy != JoinPolicy::All {
            self.problem(format!("{}.tolerated_failures", step.path), "applies only to the join policy \"all\"");
        }
        let Some(branch_count) = branches else { return };
        if tolerated > branch_count {
            self.problem(
                format!("{}.tolerated_failures", step.path),
                format!("{tolerated} is more than the block's {branch_count} branches"),
            );
        }
        if let JoinPolicy::Quorum(n) = policy
            && n > branch_count
        {
            self.problem(
                format!("{}.join_policy.quorum", step.path),
                format!("{n} can never be reached with {branch_count} branches"),
            );
        }
    }

    fn template(&mut self, template: &Template, path: &str, visible: &[String], vars: &[&str]) {
        for variable in template.variables() {
            if !VARIABLES.contains(&variable.as_str()) && !vars.contains(&variable.as_str()) {
                let in_scope: Vec<&str> = VARIABLES.iter().chain(vars).copied().collect();
                self.problem(path, format!("unknown variable `{variable}` (in scope: {})", in_scope.join(", ")));
            }
        }
        for id in template.step_references() {
            if visible.contains(id) || self.left_out.contains(id) {
                continue;
            }
            let message = match self.ids.get(id) {
                Some(at) => format!("refers to step {id:?} (at {at}), which has not run by then"),
                None => format!("refers to step {id:?}, which does not exist"),
            };
            self.problem(path, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(definition: &str) -> Vec<String> {
        match check(definition, &|agent| agent != "ghost") {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn an_odd_unknown_key_is_named_by_a_path_that_shows_it() {
        // Found by the `definition` fuzz target: an empty key gave a problem with no path.
        let found = problems(
            r#"{ "name": "x", "version": "1", "": "?", "steps": [{ "id": "a", "agent": "echo", "a.b": 1 }] }"#,
        );
        assert!(found.iter().any(|p| p.starts_with(r#"$[""]: unknown field"#)), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with(r#"steps[0]["a.b"]: unknown field"#)), "{found:?}");
    }

    #[test]
    fn structural_problems_duplicates_and_unknown_references_are_reported_together() {
        let definition = r#"{ "name": "all", "version": "1", "steps": [
            { "id": "a", "agent": "echo" },
            { "id": "a", "agent": "ghost" },
            { "id": "broken", "agent": "echo", "timeout_ms": "soon" },
            { "id": "late", "agent": "echo", "input": "${ steps.nowhere.output } ${ steps.broken.output }" }
        ] }"#;
        let found = problems(definition);
        assert!(found.iter().any(|p| p.starts_with("steps[2].timeout_ms:")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("duplicate step id \"a\"")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("ghost")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("\"nowhere\", which does not exist")), "{found:?}");
        assert!(!found.iter().any(|p| p.contains("\"broken\", which")), "a step left out is not unknown: {found:?}");
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn the_issue_example_is_valid() {
        let definition = r#"{ "name": "report", "version": "1",
          "steps": [
            { "id": "research", "type": "parallel", "max_parallelism": 2, "join_policy": "all", "tolerated_failures": 0,
              "branches": [
                { "name": "words", "agent": "word-count", "input": { "text": "${ input.text }" } },
                { "name": "deep", "steps": [ { "id": "d1", "agent": "digest", "input": { "text": "${ input.text }" } },
                                             { "id": "d2", "agent": "shout", "input": { "text": "${ steps.d1.output.hex }" } } ] } ] },
            { "id": "report", "agent": "merge", "input": { "parts": "${ steps.research.output }" },
              "timeout_ms": 5000, "memory_mb": 64, "fuel": 100000000, "config": { "style": "short" } } ],
          "output": "${ steps.report.output }" }"#;
        assert_eq!(problems(definition), Vec::<String>::new());
    }

    #[test]
    fn every_structural_problem_is_reported_at_once_with_its_path() {
        let found = problems(
            r#"{ "name": "x", "steps": [
                 { "id": "a", "agent": "word-count", "colour": "red" },
                 { "id": "b", "type": "teleport" },
                 { "id": "c", "type": "parallel", "max_parallelism": 0, "branches": [ { "name": "l", "agent": "x", "input": "${ 1 + }" } ] } ] }"#,
        );
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!(found[0], "version: is required");
        assert_eq!(
            found[1],
            "steps[0].colour: unknown field in an agent step (expected one of: id, type, if, agent, input, timeout_ms, memory_mb, fuel, config, secrets, retry, allowed_hosts)"
        );
        assert_eq!(
            found[2],
            "steps[1].type: unknown step type \"teleport\" (expected one of: agent, parallel, map, switch, loop)"
        );
        assert!(found[3].starts_with("steps[2].branches[0].input: expression `1 +` does not parse: "), "{}", found[3]);
        assert_eq!(found[4], "steps[2].max_parallelism: must be at least 1, not 0");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once_with_its_path() {
        let found = problems(
            r#"{ "name": "x", "version": "1", "steps": [
                 { "id": "a", "agent": "ghost", "input": "${ steps.b.output }" },
                 { "id": "b", "type": "parallel", "join_policy": {"quorum": 3}, "branches": [
                     { "name": "l", "agent": "w", "input": "${ steps.r.output }" },
                     { "name": "r", "agent": "w", "input": "${ nonsense }" },
                     { "name": "l", "id": "a", "agent": "w" } ] } ],
               "output": "${ steps.nowhere }" }"#,
        );
        assert_eq!(
            found,
            [
                "steps[1].branches[2].id: duplicate step id \"a\" (first defined at steps[0])",
                "steps[0].input: refers to step \"b\" (at steps[1]), which has not run by then",
                "steps[0].agent: unknown agent \"ghost\"",
                "steps[1].branches[0].input: refers to step \"r\" (at steps[1].branches[1]), which has not run by then",
                "steps[1].branches[1].input: unknown variable `nonsense` (in scope: input, steps)",
                "steps[1].branches[2].name: duplicate branch name \"l\" in block \"b\"",
                "output: refers to step \"nowhere\", which does not exist",
            ]
        );
    }

    #[test]
    fn steps_inside_a_finished_block_are_visible_after_it() {
        let found = problems(
            r#"{ "name": "x", "version": "1", "steps": [
                 { "id": "b", "type": "parallel", "branches": [ { "name": "l", "agent": "w" } ] },
                 { "id": "after", "agent": "w", "input": { "a": "${ steps.l.output }", "b": "${ steps.b.branches.l.status }" } } ] }"#,
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn map_loop_and_switch_scoping_is_checked() {
        let found = problems(
            r#"{ "name": "x", "version": "1", "steps": [
                 { "id": "m", "type": "map", "items": "${ input.list }", "tolerated_failures": 1, "join_policy": "any",
                   "step": { "agent": "w", "input": { "v": "${ item }", "i": "${ index }" } } },
                 { "id": "outside", "agent": "w", "input": { "v": "${ item }", "inner": "${ steps.m_item.output }" } },
                 { "id": "l", "type": "loop", "until": "iteration > 2 && steps.tick.output != null", "steps": [
                     { "id": "tick", "agent": "w", "input": { "n": "${ iteration }" } } ] },
                 { "id": "s", "type": "switch", "cases": [ { "when": "steps.tick.status == 'succeeded'", "steps": [ { "id": "yes", "agent": "w" } ] } ],
                   "default": [ { "id": "no", "agent": "w", "input": "${ iteration }" } ] },
                 { "id": "end", "agent": "w", "input": [ "${ steps.yes.output }", "${ steps.tick.output }", "${ steps.m.output }" ] } ] }"#,
        );
        assert_eq!(
            found,
            [
                "steps[0].tolerated_failures: applies only to the join policy \"all\"",
                "steps[1].input: unknown variable `item` (in scope: input, steps)",
                "steps[1].input: refers to step \"m_item\" (at steps[0].step), which has not run by then",
                "steps[3].default[0].input: unknown variable `iteration` (in scope: input, steps)",
            ]
        );
    }

    #[test]
    fn malformed_json_is_one_clear_problem() {
        assert_eq!(problems("{ nope")[0], "$: not valid JSON: key must be a string at line 1 column 3");
    }
}
