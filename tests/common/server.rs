//! A real `braid serve` on an ephemeral port, and the HTTP calls tests make to it.

use super::braid;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `braid serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(database_url: &str, cache_dir: &Path, token: Option<&str>, extra: &[&str]) -> Server {
        Server::start_with_env(database_url, cache_dir, token, extra, &[])
    }

    /// `start`, with these environment variables set for the server.
    pub fn start_with_env(
        database_url: &str,
        cache_dir: &Path,
        token: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut command = braid();
        command.envs(env.iter().copied());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", database_url])
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(extra)
            .env_remove("BRAID_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            command.env("BRAID_API_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("braid listening on ")
            .unwrap_or_else(|| panic!("unexpected: {line:?}"))
            .to_owned();
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `kill -9`: the host dies at once, wherever it is.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub async fn put_agent(
    client: &Client,
    server: &Server,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = client.put(server.url(&format!("/v1/agents/{name}/{version}"))).body(bytes).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Deploys the `misbehave` test agent as `misbehave@1` and `workflow` (by its own name and
/// version) to `server`.
pub async fn deploy_with_misbehave(client: &Client, server: &Server, workflow: &Value) {
    let bytes = braid_test_artifacts::agent_bytes("misbehave");
    let (status, body) = put_agent(client, server, "misbehave", "1", bytes).await;
    assert!(status.is_success(), "{body}");
    let (name, version) = (workflow["name"].as_str().unwrap(), workflow["version"].as_str().unwrap());
    let (status, body) = put_workflow(client, server, name, version, workflow).await;
    assert!(status.is_success(), "{body}");
}

pub async fn put_workflow(
    client: &Client,
    server: &Server,
    name: &str,
    version: &str,
    definition: &Value,
) -> (StatusCode, Value) {
    let response = client
        .put(server.url(&format!("/v1/workflows/{name}/{version}")))
        .body(definition.to_string())
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

pub async fn start_run(
    client: &Client,
    server: &Server,
    workflow: &str,
    body: Value,
    wait: bool,
) -> (StatusCode, Value) {
    let query = if wait { "?wait=true" } else { "" };
    let response =
        client.post(server.url(&format!("/v1/workflows/{workflow}/runs{query}"))).json(&body).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

pub async fn get_json(client: &Client, server: &Server, path: &str) -> Value {
    client.get(server.url(path)).send().await.unwrap().json().await.unwrap()
}

/// Polls `GET /v1/runs/{id}` until `done` holds (or 20 s pass).
pub async fn wait_for_run(client: &Client, server: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = get_json(client, server, &format!("/v1/runs/{id}")).await;
        if done(&run) || Instant::now() > deadline {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn step<'a>(run: &'a Value, id: &str) -> Vec<&'a Value> {
    run["steps"].as_array().unwrap().iter().filter(|s| s["step_id"] == id).collect()
}

/// A `/proc/PID/status` field in KiB (`VmRSS:` now, `VmHWM:` the peak).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
