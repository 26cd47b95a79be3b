//! Bounds on what an expression may cost. CEL always terminates, but that is no bound:
//! eight nested comprehensions over ten items each make 10^8 steps (34 s of CPU and
//! 3.6 GB from a 238-character expression). Three limits hold instead:
//!
//! * at validation, the expression's length, its bracket nesting (the parser recurses on
//!   it) and how deeply comprehensions (`map`, `filter`, `all`, `exists`, `exists_one`)
//!   nest;
//! * at evaluation, a cost budget: every comprehension charges the size of what it iterates
//!   before it starts, and every element `map` builds charges its own size, so that both
//!   the steps taken and the memory built are bounded. The expression fails, naming the
//!   budget, once it is spent;
//! * templates with a comprehension render on a blocking thread (see
//!   [`super::Template::render_async`]), so that even a budget's worth of work never holds a
//!   thread that serves requests.
//!
//! The budget is charged by a function the compiler wraps around the comprehension's parts
//! (the AST is rewritten once, at compile time); it counts in a thread-local, since one
//! evaluation runs on one thread from start to end.

use cel::ExecutionError;
use cel::common::ast::{Expr, IdedExpr, operators};
use cel::common::types::{CelString, DYN_TYPE};
use cel::common::value::CowVal;
use std::cell::Cell;

/// Longest expression accepted (between `${` and `}`), in characters.
pub const MAX_EXPRESSION_CHARS: usize = 2_000;
/// Deepest nesting of brackets (`(`, `[`, `{`) in an expression.
pub const MAX_EXPRESSION_BRACKETS: usize = 32;
/// Deepest nesting of comprehensions (`list.map(x, list.filter(y, ...))` nests two).
pub const MAX_COMPREHENSION_NESTING: usize = 3;
/// Cost units one render of a template may spend: one per element iterated, one per
/// element built plus one per 64 bytes of each string built.
pub const MAX_EXPRESSION_COST: u64 = 1_000_000;

/// The function the compiler wraps around what a comprehension iterates and builds.
const CHARGE: &str = "__braid_charge";

thread_local! {
    static REMAINING: Cell<u64> = const { Cell::new(MAX_EXPRESSION_COST) };
}

/// Checks an expression's source before it is parsed.
pub fn check_source(source: &str) -> Result<(), String> {
    let chars = source.chars().count();
    if chars > MAX_EXPRESSION_CHARS {
        return Err(format!("is {chars} characters long, over the limit of {MAX_EXPRESSION_CHARS}"));
    }
    // Counted over the whole text, string literals included: conservative, and cheap.
    let mut depth = 0usize;
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_EXPRESSION_BRACKETS {
                    return Err(format!("nests brackets deeper than {MAX_EXPRESSION_BRACKETS} levels"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks how deeply comprehensions nest, and wraps what each one iterates and appends in
/// the charging function. Returns whether the expression has a comprehension at all.
pub fn instrument(expr: &mut IdedExpr) -> Result<bool, String> {
    let mut deepest = 0;
    instrument_at(expr, 0, &mut deepest)?;
    Ok(deepest > 0)
}

fn instrument_at(expr: &mut IdedExpr, nesting: usize, deepest: &mut usize) -> Result<(), String> {
    match &mut expr.expr {
        Expr::Comprehension(comprehension) => {
            let nesting = nesting + 1;
            if nesting > MAX_COMPREHENSION_NESTING {
                return Err(format!("nests comprehensions deeper than {MAX_COMPREHENSION_NESTING} levels"));
            }
            *deepest = (*deepest).max(nesting);
            for part in [
                &mut comprehension.iter_range,
                &mut comprehension.accu_init,
                &mut comprehension.loop_cond,
                &mut comprehension.loop_step,
                &mut comprehension.result,
            ] {
                instrument_at(part, nesting, deepest)?;
            }
            let accu = comprehension.accu_var.clone();
            charge_appended(&mut comprehension.loop_step, &accu);
            wrap(&mut comprehension.iter_range);
        }
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                instrument_at(target, nesting, deepest)?;
            }
            for arg in &mut call.args {
                instrument_at(arg, nesting, deepest)?;
            }
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                instrument_at(element, nesting, deepest)?;
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(entry) = &mut entry.expr {
                    instrument_at(&mut entry.key, nesting, deepest)?;
                    instrument_at(&mut entry.value, nesting, deepest)?;
                }
            }
        }
        Expr::Select(select) => instrument_at(&mut select.operand, nesting, deepest)?,
        Expr::Struct(_) | Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

/// In a step of the shape `accu + [x]` (or `cond ? accu + [x] : accu`), which is how
/// `map` and `filter` build their lists, charges each `x` as it is built.
fn charge_appended(step: &mut IdedExpr, accu: &str) {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == accu);
    match &mut step.expr {
        Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.args.len() == 3 => {
            charge_appended(&mut call.args[1], accu);
        }
        Expr::Call(call) if call.func_name == operators::ADD && call.args.len() == 2 && is_accu(&call.args[0]) => {
            if let Expr::List(list) = &mut call.args[1].expr {
                list.elements.iter_mut().for_each(wrap);
            }
        }
        _ => {}
    }
}

/// Replaces `expr` with `__braid_charge(expr)`, which charges its size and returns it.
fn wrap(expr: &mut IdedExpr) {
    let inner = std::mem::take(expr);
    let id = inner.id;
    *expr = IdedExpr {
        id,
        expr: Expr::Call(cel::common::ast::CallExpr { func_name: CHARGE.to_owned(), target: None, args: vec![inner] }),
    };
}

/// Declares the charging function in `env`.
pub fn declare(env: &mut cel::Env) {
    env.add_overload(CHARGE, "__braid_charge_dyn", vec![DYN_TYPE], charge)
        .expect("the charging function is declared once");
}

fn charge<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = args.remove(0);
    let size = match value.as_sizer() {
        Some(sizer) => u64::try_from(i64::from(sizer.size())).unwrap_or(0),
        None => value.downcast_ref::<CelString>().map_or(0, |text| text.inner().len() as u64 / 64),
    };
    let cost = 1 + size;
    REMAINING.with(|remaining| match remaining.get().checked_sub(cost) {
        Some(left) => {
            remaining.set(left);
            Ok(value)
        }
        None => Err(ExecutionError::function_error(
            "cost",
            format!(
                "its cost budget ran out ({MAX_EXPRESSION_COST} units: one per element iterated or built, one per \
                 64 bytes of text built)"
            ),
        )),
    })
}

/// Runs `render` with a full budget on this thread.
pub fn with_budget<T>(render: impl FnOnce() -> T) -> T {
    REMAINING.with(|remaining| remaining.set(MAX_EXPRESSION_COST));
    render()
}
