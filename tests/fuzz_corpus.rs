//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/`) through the same checks the fuzz
//! targets make (`fuzz/src/checks.rs`), on stable Rust: every input the fuzzers kept for
//! the coverage it reached stays a regression test.

// The checks are written against `crate::{json, limits, store, workflow}`; alias them here.
use braid::{json, limits, store, workflow};

#[path = "../fuzz/src/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&str)) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
        let path = entry.unwrap().path();
        // libFuzzer hands the targets valid UTF-8 only; so does the replay.
        if let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap()) {
            check(&text);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus in {}", dir.display());
}

#[test]
fn the_definition_corpus_parses_or_names_its_problems() {
    replay("definition", checks::definition);
}

#[test]
fn the_template_corpus_renders_or_fails_within_budget() {
    replay("template", checks::template);
}

#[test]
fn the_run_document_corpus_reads_back() {
    replay("run_document", checks::run_document_reader);
}
