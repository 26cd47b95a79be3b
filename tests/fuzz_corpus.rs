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

/// The fuzz crate compiles host sources by `#[path]` under its own manifest, so a
/// dependency the host gains (and those files use) must be declared there too; CI's fuzz
/// smoke failed once when it was not. Checked here, on stable, where `cargo test` sees it.
#[test]
fn the_fuzz_crate_builds_with_its_own_dependencies() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["check", "--quiet", "--lib", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-check"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "the fuzz crate does not build on its own (a dependency missing from fuzz/Cargo.toml?):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
