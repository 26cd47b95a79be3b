//! The web UI in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` with WebDriver), against a real `braid serve`. Each test saves a screenshot
//! under `target/tmp/ui-screenshots/`.

mod common;

use common::TestDb;
use common::server::{Server, deploy_with_misbehave, scratch, start_run};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time: Chromium is heavy on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium session; the driver process goes with it.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1280,900"] }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser { client, driver }
    }

    /// Saves what the browser shows as `<name>.png` in the tests' output folder.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&folder).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(folder.join(format!("{name}.png")), png).unwrap();
    }

    /// The text of the first element `css` finds, once `done` holds for it (10 s at most).
    async fn wait_text(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
                && done(&text)
            {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} never showed what was expected");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_page_shows_a_run_turn_from_running_to_succeeded_without_a_reload() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let http = reqwest::Client::new();
    let workflow = json!({ "name": "slow", "version": "1",
        "steps": [{ "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 2000 } }] });
    deploy_with_misbehave(&http, &server, &workflow).await;
    let browser = Browser::start().await;
    browser.client.goto(&server.url("/#/runs")).await.unwrap();
    browser.client.wait().for_element(Locator::Css("#runs")).await.unwrap();
    browser.client.execute("window.notReloaded = true; return true;", vec![]).await.unwrap();

    let (status, accepted) = start_run(&http, &server, "slow", json!({}), false).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = accepted["run_id"].as_str().unwrap().to_owned();
    let status_of_run = format!("tr[data-run='{id}'] .status");
    browser.wait_text(&status_of_run, |text| text == "running").await;
    browser.screenshot("runs-running").await;
    browser.wait_text(&status_of_run, |text| text == "succeeded").await;
    let same_page = browser.client.execute("return window.notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(same_page, Value::Bool(true), "the page was not reloaded");
    browser.screenshot("runs-succeeded").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_branch_shows_its_error_and_logs() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let http = reqwest::Client::new();
    let workflow = json!({ "name": "partly", "version": "1", "steps": [{ "id": "fan", "type": "parallel", "branches": [
        { "name": "fine", "agent": "misbehave", "input": { "action": "ok" } },
        { "name": "broken", "agent": "misbehave", "input": { "action": "panic", "message": "broken on purpose" } } ] }] });
    deploy_with_misbehave(&http, &server, &workflow).await;
    let (_, run) = start_run(&http, &server, "partly", json!({}), true).await;
    assert_eq!(run["status"], "failed");
    let id = run["run_id"].as_str().unwrap();

    let browser = Browser::start().await;
    browser.client.goto(&server.url(&format!("/#/runs/{id}"))).await.unwrap();
    // The block is one node with its counts; opened, it shows the failed branch and why.
    let counts = browser.wait_text(".node.block[data-step='fan'] .counts", |t| t.contains("failed")).await;
    assert!(counts.contains("1 succeeded") && counts.contains("1 failed"), "{counts}");
    browser.client.find(Locator::Css(".node.block[data-step='fan'] .fold")).await.unwrap().click().await.unwrap();
    let broken = browser.wait_text(".node[data-step='broken']", |t| t.contains("broken on purpose")).await;
    assert!(broken.contains("[broken]") && broken.contains("failed"), "{broken}");
    browser.screenshot("run-failed-branch").await;
    browser.client.find(Locator::Css(".node[data-step='broken'] a.name")).await.unwrap().click().await.unwrap();
    browser.wait_text("#step-error", |t| t.contains("broken on purpose")).await;
    let logs = browser.wait_text("#logs", |t| !t.is_empty()).await;
    assert!(logs.contains("broken on purpose"), "the panic's stderr is in the logs: {logs}");
    browser.screenshot("execution-failed").await;
    // The agent's version lists the runs that pinned it.
    browser.client.goto(&server.url("/#/agents")).await.unwrap();
    browser
        .client
        .wait()
        .for_element(Locator::Css("a[href='#/agents/misbehave/1']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_text("main", |t| t.contains(id) && t.contains("Recent runs that used it")).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_item_map_loads_in_under_a_second_as_one_node_with_its_counts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let http = reqwest::Client::new();
    let workflow = json!({ "name": "wide", "version": "1", "steps": [{ "id": "items", "type": "map",
        "items": "${ input.items }", "max_parallelism": 64,
        "step": { "id": "each", "agent": "misbehave", "input": { "action": "ok" } } }] });
    deploy_with_misbehave(&http, &server, &workflow).await;
    let (_, run) =
        start_run(&http, &server, "wide", json!({ "input": { "items": (0..10_000).collect::<Vec<u32>>() } }), true)
            .await;
    assert_eq!(run["status"], "succeeded", "{}", run["error"]);
    let id = run["run_id"].as_str().unwrap();

    let browser = Browser::start().await;
    browser.client.goto(&server.url("/#/runs")).await.unwrap();
    browser.client.wait().for_element(Locator::Css("#runs")).await.unwrap();
    // Timed by the browser's clock: from the navigation to the page's first full render
    // (the UI marks it with `performance.mark`), without WebDriver's own round trips.
    let navigate =
        format!("performance.clearMarks(); window.t0 = performance.now(); location.hash = '#/runs/{id}'; return true;");
    browser.client.execute(&navigate, vec![]).await.unwrap();
    let counts = browser.wait_text(".node.block[data-step='items'] .counts", |t| t.contains("10000 succeeded")).await;
    let took = browser
        .client
        .execute(
            "const m = performance.getEntriesByName('braid:run-rendered'); return m[0].startTime - window.t0;",
            vec![],
        )
        .await
        .unwrap();
    let took = took.as_f64().unwrap();
    eprintln!("the 10,000-item map's page rendered in {took:.0} ms");
    assert!(took < 1000.0, "the page took {took:.0} ms");
    assert_eq!(counts.trim(), "10000 succeeded");
    let items = browser.client.find_all(Locator::Css(".node.agent")).await.unwrap();
    assert!(items.is_empty(), "the map is folded: no item is drawn until it is opened");
    // Opened, it draws one page of items (and its waterfall), not ten thousand.
    browser.client.find(Locator::Css(".node.block[data-step='items'] .fold")).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while browser.client.find_all(Locator::Css(".node.agent")).await.unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "the map's first page of items never showed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(browser.client.find_all(Locator::Css(".node.agent")).await.unwrap().len(), 200, "one page, not 10,000");
    // The map's waterfall says how close its items came to the bound.
    let waterfall = browser.wait_text(".nested .nested .waterfall", |t| t.contains("running at once")).await;
    assert!(waterfall.contains("(max_parallelism 64)"), "{waterfall}");
    let peak: usize = waterfall.trim_start_matches("peak ").split(' ').next().unwrap().parse().unwrap();
    assert!((1..=64).contains(&peak), "{waterfall}");
    browser.screenshot("map-10000").await;
    browser.close().await;
    drop(server);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_asked_for_once_per_session() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let token = "a-long-enough-test-token-1234";
    let server = Server::start(&db.url, cache.path(), Some(token), &[]);
    let browser = Browser::start().await;
    browser.client.goto(&server.url("/")).await.unwrap();
    let dialog = browser.client.wait().for_element(Locator::Css("#token-dialog[open]")).await.unwrap();
    browser.screenshot("token-prompt").await;
    dialog.find(Locator::Css("#token-input")).await.unwrap().send_keys(token).await.unwrap();
    dialog.find(Locator::Css("#token-submit")).await.unwrap().click().await.unwrap();
    browser.client.wait().for_element(Locator::Css("#runs")).await.unwrap();
    // The same session again: no prompt, the page works at once; the URL holds no token.
    browser.client.refresh().await.unwrap();
    browser.client.wait().for_element(Locator::Css("#runs")).await.unwrap();
    let prompted = browser.client.find_all(Locator::Css("#token-dialog[open]")).await.unwrap();
    assert!(prompted.is_empty(), "asked only once");
    assert!(!browser.client.current_url().await.unwrap().as_str().contains(token));
    browser.screenshot("runs-with-token").await;
    browser.close().await;
}
