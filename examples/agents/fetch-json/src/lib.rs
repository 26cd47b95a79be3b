//! Example agent: calls a JSON endpoint and picks a field of the answer.
//!
//! Input: `{"url": "...", "method": "GET" | "POST", "body": <JSON>, "field": "/a/b", "repeat": 1}`
//! (`method` defaults to GET, or POST when a body is given; `field` is a JSON pointer;
//! `repeat` sends the same request that many times and keeps the last answer).
//! Output: `{"status": 200, "value": <the field, or the whole answer>}`.
//!
//! When the step maps the config key `api_key` to a secret, it is sent as
//! `Authorization: Bearer <key>`. The step must grant the URL's host in `allowed_hosts`.

use braid_sdk::http::Request;
use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
struct Input {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default = "one")]
    repeat: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize)]
struct Output {
    status: u16,
    value: Value,
}

fn fetch(_ctx: Context, input: Input) -> Result<Output, Error> {
    let method = input.method.clone().unwrap_or_else(|| if input.body.is_some() { "POST" } else { "GET" }.to_owned());
    let mut last = None;
    for _ in 0..input.repeat.max(1) {
        let mut request = Request::new(&method, &input.url);
        if let Some(key) = braid_sdk::config("api_key") {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        if let Some(body) = &input.body {
            request = request.json(body)?;
        }
        last = Some(request.send()?.error_for_status()?);
    }
    let response = last.expect("at least one request");
    let answer: Value = response.json()?;
    let value = match &input.field {
        Some(pointer) => answer
            .pointer(pointer)
            .cloned()
            .ok_or_else(|| Error::fatal(format!("the answer has no field {pointer:?}")))?,
        None => answer,
    };
    Ok(Output { status: response.status, value })
}

braid_sdk::export_agent!(fetch);
