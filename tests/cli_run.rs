//! `braid run`, `braid runs` and `braid migrate`, the real binary, on the embedded SQLite
//! default and on Postgres.

mod common;

use braid_test_artifacts::agents_dir;
use common::{TestDb, braid, examples_dir};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn run_example(name: &str, database: Option<&str>, cwd: &Path) -> Output {
    let mut command = braid();
    command
        .current_dir(cwd)
        .arg("run")
        .arg(examples_dir().join(name))
        .args(["--agents", agents_dir().to_str().unwrap(), "--output", "json"])
        .args(["--input", r#"{"text": "the quick brown fox"}"#])
        .env_remove("BRAID_DATABASE_URL");
    if let Some(url) = database {
        command.args(["--database-url", url]);
    }
    command.output().unwrap()
}

/// Writes `definition` into `cwd` and runs it there with the built agents.
fn run_definition(cwd: &Path, definition: &Value, extra: &[&str]) -> Output {
    let workflow = cwd.join("workflow.json");
    std::fs::write(&workflow, definition.to_string()).unwrap();
    braid()
        .current_dir(cwd)
        .args(["run", workflow.to_str().unwrap(), "--agents", agents_dir().to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn the_parallel_example_runs_end_to_end_and_reads_back_on_both_databases() {
    for db in TestDb::both().await {
        let cwd = scratch_dir();
        let output = run_example("parallel.json", Some(&db.url), cwd.path());
        assert_eq!(output.status.code(), Some(0), "{}: {}", db.kind, String::from_utf8_lossy(&output.stderr));
        let doc = stdout_json(&output);
        assert_eq!(doc["status"], "succeeded");
        assert_eq!(doc["error"], Value::Null);
        assert_eq!(doc["output"]["parts"], 3);
        let report = doc["output"]["report"].as_str().unwrap();
        assert!(
            report.contains("loud: text=THE QUICK BROWN FOX") && report.contains("words: chars=19, lines=1, words=4"),
            "{report}"
        );
        let steps = doc["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 5, "the block, three branches and the report");
        let block = steps.iter().find(|s| s["step_id"] == "research").unwrap();
        assert_eq!(block["step_type"], "parallel");
        let branches: Vec<_> = steps.iter().filter(|s| s["parent_step_id"] == block["id"]).collect();
        assert_eq!(branches.len(), 3);
        assert!(
            branches
                .iter()
                .all(|b| b["status"] == "succeeded" && b["outcome"] == "succeeded" && b["branch_name"].is_string())
        );

        let run_id = doc["run_id"].as_str().unwrap();
        let shown =
            braid().args(["runs", "show", run_id, "--output", "json", "--database-url", &db.url]).output().unwrap();
        assert_eq!(shown.status.code(), Some(0));
        let shown = stdout_json(&shown);
        assert_eq!(shown["output"], doc["output"]);
        assert_eq!(shown["steps"], doc["steps"]);

        let listed =
            braid().args(["runs", "list", "--output", "json"]).env("BRAID_DATABASE_URL", &db.url).output().unwrap();
        let listed = stdout_json(&listed);
        assert_eq!(listed["runs"][0]["id"], run_id);
        assert_eq!(listed["runs"][0]["workflow_name"], "report");
        let filtered = braid()
            .args(["runs", "list", "--status", "failed", "--output", "json", "--database-url", &db.url])
            .output()
            .unwrap();
        assert_eq!(stdout_json(&filtered)["runs"], json!([]));
        db.drop_database().await;
    }
}

#[test]
fn without_a_database_url_runs_are_recorded_in_braid_db_in_the_current_directory() {
    let cwd = scratch_dir();
    let output = run_example("partial.json", None, cwd.path());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let doc = stdout_json(&output);
    let sideways = doc["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "sideways").unwrap().clone();
    assert_eq!(sideways["status"], "failed");
    assert_eq!(sideways["outcome"], "guest_error");
    assert!(doc["output"]["report"].as_str().unwrap().contains("missing"));
    assert!(cwd.path().join("braid.db").is_file());

    let text =
        braid().current_dir(cwd.path()).args(["runs", "show", doc["run_id"].as_str().unwrap()]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("research  parallel (all)  succeeded"), "{text}");
    assert!(text.contains("[sideways] sideways  agent shout  failed (guest_error)"), "{text}");
    // People read the output pretty-printed (the records keep the agent's compact text).
    let expected = serde_json::to_string_pretty(&doc["output"]).unwrap();
    assert!(expected.contains('\n') && text.contains(&format!("output: {expected}\n")), "{text}");
}

#[test]
fn a_failed_run_exits_1() {
    let cwd = scratch_dir();
    let fails = json!({ "name": "fails", "version": "1", "steps": [
        { "id": "boom", "agent": "misbehave", "input": { "action": "panic", "message": "kaboom" } } ] });
    let output = run_definition(cwd.path(), &fails, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let doc = stdout_json(&output);
    assert_eq!(doc["status"], "failed");
    assert!(doc["error"].as_str().unwrap().contains("kaboom"), "{}", doc["error"]);
    assert_eq!(doc["steps"][0]["outcome"], "trap");
}

#[test]
fn an_invalid_definition_exits_2_listing_every_problem_and_runs_nothing() {
    let cwd = scratch_dir();
    let structurally_wrong = json!({ "name": "invalid", "version": "1", "steps": [
        { "id": "a", "agent": "no-such-agent" },
        { "id": "a", "type": "parallel", "max_parallelism": 0, "branches": [ { "name": "x", "agent": "word-count", "input": "${ steps.later.output }" } ] },
        { "id": "later", "agent": "word-count", "typo": true } ] });
    let output = run_definition(cwd.path(), &structurally_wrong, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["steps[1].max_parallelism: must be at least 1", "steps[2].typo: unknown field"] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
    assert!(!cwd.path().join("braid.db").exists(), "nothing may run (or be recorded) for an invalid definition");

    // Structure fixed, semantics still wrong: again every problem at once.
    let semantically_wrong = json!({ "name": "invalid", "version": "1", "steps": [
        { "id": "a", "agent": "no-such-agent" },
        { "id": "a", "type": "parallel", "branches": [ { "name": "x", "agent": "word-count", "input": "${ steps.later.output }" } ] },
        { "id": "later", "agent": "word-count" } ] });
    let output = run_definition(cwd.path(), &semantically_wrong, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "steps[1].id: duplicate step id \"a\"",
        "steps[0].agent: unknown agent \"no-such-agent\"",
        "steps[1].branches[0].input: refers to step \"later\" (at steps[2]), which has not run by then",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
    assert!(!cwd.path().join("braid.db").exists());
}

async fn table_count(url: &str) -> i64 {
    let query = if url.starts_with("sqlite") {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('workflow_runs', 'step_executions', 'step_logs')"
    } else {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN ('workflow_runs', 'step_executions', 'step_logs')"
    };
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let count: i64 = sqlx::query_scalar(query).fetch_one(&pool).await.unwrap();
    pool.close().await;
    count
}

#[tokio::test]
async fn migrations_go_up_and_down_on_both_databases() {
    sqlx::any::install_default_drivers();
    for db in TestDb::both().await {
        let migrate = |revert: bool| {
            let mut command = braid();
            command.args(["migrate", "--database-url", &db.url]);
            if revert {
                command.arg("--revert");
            }
            command.output().unwrap()
        };
        assert!(migrate(false).status.success());
        assert_eq!(table_count(&db.url).await, 3, "{}", db.kind);
        let reverted = migrate(true);
        assert!(reverted.status.success(), "{}", String::from_utf8_lossy(&reverted.stderr));
        assert_eq!(table_count(&db.url).await, 0, "{}", db.kind);
        assert!(migrate(false).status.success());
        assert_eq!(table_count(&db.url).await, 3, "{}", db.kind);
        if db.url.starts_with("postgres") {
            // Stored inputs and outputs compress with lz4 (this machine's Postgres has it).
            let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
            let compression: Vec<String> = sqlx::query_scalar(
                "SELECT attcompression::text FROM pg_attribute WHERE attname IN ('input', 'output') \
                 AND attrelid IN ('step_executions'::regclass, 'workflow_runs'::regclass)",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            pool.close().await;
            assert_eq!(compression, ["l", "l", "l", "l"]);
        }
        db.drop_database().await;
    }
}

/// A run carries a live lease from its first commit, whoever writes it: otherwise another
/// host would take it over while it runs. (A writer statement prepared with the parameter
/// types Postgres inferred once turned the lease's length into garbage: expired at once.)
#[tokio::test]
async fn a_running_run_holds_a_lease_into_the_future_on_both_databases() {
    sqlx::any::install_default_drivers();
    for db in TestDb::both().await {
        let cwd = scratch_dir();
        let workflow = cwd.path().join("sleepy.json");
        let sleepy = json!({ "name": "sleepy", "version": "1", "steps": [
            { "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 1500 } } ] });
        std::fs::write(&workflow, sleepy.to_string()).unwrap();
        // Migrated beforehand, as a database a host starts on usually is (the writer then
        // prepares its statements on tables that exist).
        assert!(braid().args(["migrate", "--database-url", &db.url]).status().unwrap().success());
        let mut child = braid()
            .args(["run", workflow.to_str().unwrap(), "--agents", agents_dir().to_str().unwrap()])
            .args(["--database-url", &db.url, "--lease-ms", "15000", "--output", "json"])
            .current_dir(cwd.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let running =
            wait_for_value(&db.url, "SELECT status FROM workflow_runs", "running", std::time::Duration::from_secs(10))
                .await;
        assert_eq!(running.as_deref(), Some("running"), "{}", db.kind);
        let lease_left_ms = if db.kind == "postgres" {
            "SELECT CAST(CAST(EXTRACT(EPOCH FROM lease_expires_at - clock_timestamp()) * 1000 AS BIGINT) AS TEXT) \
             FROM workflow_runs"
        } else {
            "SELECT CAST(lease_expires_at - CAST(unixepoch('subsec') * 1000 AS INTEGER) AS TEXT) FROM workflow_runs"
        };
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let left: String = sqlx::query_scalar(lease_left_ms).fetch_one(&pool).await.unwrap();
        pool.close().await;
        let left: i64 = left.parse().unwrap();
        assert!((5_000..=15_000).contains(&left), "{}: the lease runs out in {left} ms, not ~15 s", db.kind);
        assert!(child.wait().unwrap().success(), "{}", db.kind);
        db.drop_database().await;
    }
}

/// Polls `query` (one row, one column) until `expected` appears or `within` passes.
async fn wait_for_value(url: &str, query: &str, expected: &str, within: std::time::Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        // The database may not exist yet: the run creates it.
        if let Ok(pool) = sqlx::AnyPool::connect(url).await {
            last = sqlx::query_scalar::<_, String>(query).fetch_optional(&pool).await.ok().flatten();
            pool.close().await;
            if last.as_deref() == Some(expected) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    last
}

fn slow_workflow(dir: &Path) -> std::path::PathBuf {
    let workflow = dir.join("slow.json");
    std::fs::write(
        &workflow,
        json!({ "name": "slow", "version": "1", "steps": [
            { "id": "first", "agent": "word-count", "input": { "text": "done before the host dies" } },
            { "id": "second", "agent": "misbehave", "input": { "action": "sleep", "ms": 60_000 } } ] })
        .to_string(),
    )
    .unwrap();
    workflow
}

#[tokio::test]
async fn a_finished_step_is_committed_before_the_next_and_survives_the_host_being_killed() {
    sqlx::any::install_default_drivers();
    for db in TestDb::both().await {
        let cwd = scratch_dir();
        let mut child = braid()
            .args(["run", slow_workflow(cwd.path()).to_str().unwrap(), "--agents", agents_dir().to_str().unwrap()])
            .args(["--database-url", &db.url])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let timeout = std::time::Duration::from_secs(20);
        // While the second step runs, the first is already recorded as succeeded, and the
        // second shows as running.
        let first =
            wait_for_value(&db.url, "SELECT status FROM step_executions WHERE step_id = 'first'", "succeeded", timeout)
                .await;
        assert_eq!(first.as_deref(), Some("succeeded"), "{}", db.kind);
        let second =
            wait_for_value(&db.url, "SELECT status FROM step_executions WHERE step_id = 'second'", "running", timeout)
                .await;
        assert_eq!(second.as_deref(), Some("running"), "{}", db.kind);
        child.kill().unwrap();
        child.wait().unwrap();
        // Nothing it reported is lost.
        let first =
            wait_for_value(&db.url, "SELECT status FROM step_executions WHERE step_id = 'first'", "succeeded", timeout)
                .await;
        assert_eq!(first.as_deref(), Some("succeeded"), "{}", db.kind);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn ctrl_c_cancels_the_run_and_records_what_was_stopped() {
    let db = TestDb::sqlite();
    let cwd = scratch_dir();
    let child = braid()
        .args(["run", slow_workflow(cwd.path()).to_str().unwrap(), "--agents", agents_dir().to_str().unwrap()])
        .args(["--database-url", &db.url, "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sqlx::any::install_default_drivers();
    let running = wait_for_value(
        &db.url,
        "SELECT status FROM step_executions WHERE step_id = 'second'",
        "running",
        std::time::Duration::from_secs(20),
    )
    .await;
    assert_eq!(running.as_deref(), Some("running"));
    let interrupted = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let started = std::time::Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "cancelling took {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let doc = stdout_json(&output);
    assert_eq!(doc["status"], "cancelled");
    let second = doc["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "second").unwrap().clone();
    assert_eq!(second["status"], "cancelled");
    assert_eq!(second["outcome"], "cancelled");
}

#[tokio::test]
async fn braid_runs_cancel_stops_a_run_in_another_process() {
    sqlx::any::install_default_drivers();
    for db in TestDb::both().await {
        let cwd = scratch_dir();
        let child = braid()
            .args(["run", slow_workflow(cwd.path()).to_str().unwrap(), "--agents", agents_dir().to_str().unwrap()])
            .args(["--database-url", &db.url, "--output", "json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let timeout = std::time::Duration::from_secs(20);
        let running =
            wait_for_value(&db.url, "SELECT status FROM step_executions WHERE step_id = 'second'", "running", timeout)
                .await;
        assert_eq!(running.as_deref(), Some("running"), "{}", db.kind);
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let id: String =
            sqlx::query_scalar("SELECT CAST(id AS TEXT) FROM workflow_runs").fetch_one(&pool).await.unwrap();
        pool.close().await;

        let started = std::time::Instant::now();
        let cancel = braid().args(["runs", "cancel", &id, "--database-url", &db.url]).output().unwrap();
        assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
        assert_eq!(String::from_utf8_lossy(&cancel.stdout).trim(), format!("run {id} cancelled"));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        let doc = stdout_json(&output);
        assert_eq!(doc["status"], "cancelled");
        let again = braid().args(["runs", "cancel", &id, "--database-url", &db.url]).output().unwrap();
        assert_eq!(again.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
        db.drop_database().await;
    }
}

#[test]
fn the_tour_example_exercises_every_step_type() {
    let cwd = scratch_dir();
    let output = braid()
        .current_dir(cwd.path())
        .arg("run")
        .arg(examples_dir().join("tour.json"))
        .args(["--agents", agents_dir().to_str().unwrap(), "--output", "json"])
        .args(["--input", r#"{"docs": ["one two three", "four five"]}"#])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let doc = stdout_json(&output);
    assert_eq!(doc["output"]["case"], "default");
    assert_eq!(doc["output"]["counts"][1]["words"], 2);
    let types: std::collections::BTreeSet<&str> =
        doc["steps"].as_array().unwrap().iter().map(|s| s["step_type"].as_str().unwrap()).collect();
    assert_eq!(types.into_iter().collect::<Vec<_>>(), ["agent", "loop", "map", "parallel", "switch"]);
    let skipped = doc["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "only-if-long").unwrap().clone();
    assert_eq!(skipped["status"], "skipped");

    let refused = braid()
        .current_dir(cwd.path())
        .arg("run")
        .arg(examples_dir().join("tour.json"))
        .args(["--agents", agents_dir().to_str().unwrap(), "--input", r#"{"docs": 5}"#])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("input/docs: 5 is not of type \"array\""));
}

/// A run that takes about a second: a map of 8 items that sleep 250 ms, two at a time.
fn a_second_long(dir: &Path) -> std::path::PathBuf {
    let workflow = dir.join("long.json");
    let definition = json!({ "name": "long", "version": "1", "steps": [
        { "id": "items", "type": "map", "items": "${ input.items }", "max_parallelism": 2,
          "step": { "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 250 } } } ] });
    std::fs::write(&workflow, definition.to_string()).unwrap();
    workflow
}

#[test]
fn braid_run_shows_progress_on_a_terminal_and_none_when_piped() {
    let dir = scratch_dir();
    let workflow = a_second_long(dir.path());
    let braid_path = std::env::var("CARGO_BIN_EXE_braid").unwrap();
    let args = format!(
        "{braid_path} run {} --agents {} --database-url sqlite://{}/braid.db --input '{{\"items\": [1,2,3,4,5,6,7,8]}}'",
        workflow.display(),
        agents_dir().display(),
        dir.path().display()
    );
    // `script` gives the command a pseudo-terminal and copies everything it draws.
    let on_terminal = std::process::Command::new("script")
        .args(["-qefc", &args, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("BRAID_DATABASE_URL")
        .output()
        .unwrap();
    let drawn = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{drawn}");
    assert!(drawn.contains("done · ") && drawn.contains(" running · "), "progress was drawn: {drawn:?}");
    assert!(drawn.contains("items (map)  "), "the map has a line of its own: {drawn:?}");
    assert!(drawn.contains("succeeded"), "then the run's tree: {drawn:?}");

    let piped = std::process::Command::new("sh").args(["-c", &args]).env_remove("BRAID_DATABASE_URL").output().unwrap();
    assert!(piped.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&piped.stdout), String::from_utf8_lossy(&piped.stderr));
    assert!(!stdout.contains(" running · ") && !stderr.contains(" running · "), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("run "), "plain output: {stdout}");
}
