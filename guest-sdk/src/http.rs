//! A small blocking HTTP client for agents, over `wasi:http` (feature `http`).
//!
//! The host refuses every request unless the workflow grants the step its host
//! (`"allowed_hosts": ["https://api.example.com"]`); a refused request is an [`Error`] whose
//! message says so, and the step's logs name the grant that would allow it. Requests are
//! sent by the host, bounded by the step's deadline and the host's caps, and recorded.
//!
//! Built on [`wstd`](https://docs.rs/wstd) (the Bytecode Alliance's async standard library
//! for components), run to completion here so that agents stay plain functions.
//!
//! ```no_run
//! let answer: serde_json::Value = braid_sdk::http::get("https://api.example.com/v1/status")?.json()?;
//! let key = braid_sdk::config("api_key").unwrap_or_default();
//! let reply = braid_sdk::http::Request::post("https://api.example.com/v1/complete")
//!     .header("authorization", &format!("Bearer {key}"))
//!     .json(&serde_json::json!({ "prompt": "hello" }))?
//!     .send()?;
//! # Ok::<(), braid_sdk::Error>(())
//! ```

use crate::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wstd::http::{Body, Client, Method};

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body's bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|err| Error::fatal(format!("the response body is not UTF-8: {err}")))
    }

    /// The body parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|err| {
            Error::fatal(format!("the response body (status {}) is not the JSON expected: {err}", self.status))
        })
    }

    /// `Ok(self)` for a 2xx status; otherwise an error naming the status (retryable for
    /// 408, 429 and 5xx).
    pub fn error_for_status(self) -> Result<Response, Error> {
        if self.is_success() {
            return Ok(self);
        }
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        let message = format!("HTTP {}: {text}", self.status);
        Err(if self.status == 408 || self.status == 429 || self.status >= 500 {
            Error::retryable(message)
        } else {
            Error::fatal(message)
        })
    }
}

/// A request being built.
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request with `method` (`"GET"`, `"POST"`, …) to `url`.
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.to_owned(), url: url.to_owned(), headers: Vec::new(), body: Vec::new() }
    }

    /// A GET request.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its `content-type`.
    pub fn json<T: Serialize>(self, value: &T) -> Result<Request, Error> {
        let body =
            serde_json::to_vec(value).map_err(|err| Error::fatal(format!("cannot encode the request body: {err}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sends it and reads the whole response. A request the host refuses, or that fails
    /// on the way, is an error (retryable when trying again could help).
    pub fn send(self) -> Result<Response, Error> {
        let url = self.url.clone();
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| Error::fatal(format!("{:?} is not an HTTP method", self.method)))?;
        wstd::runtime::block_on(async move {
            let mut builder = wstd::http::Request::builder().method(method).uri(&self.url);
            for (name, value) in &self.headers {
                builder = builder.header(name, value);
            }
            let request = builder
                .body(Body::from(self.body))
                .map_err(|err| Error::fatal(format!("not a valid request to {url}: {err}")))?;
            let response = Client::new().send(request).await.map_err(|err| failed(&url, &err))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                .collect();
            let mut body = response.into_body();
            let body = body.contents().await.map_err(|err| failed(&url, &err))?.to_vec();
            Ok(Response { status, headers, body })
        })
    }
}

/// An error for a request that failed: a refusal by the host is final; the rest may pass.
fn failed(url: &str, err: &wstd::http::Error) -> Error {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<wstd::http::ErrorCode>()
            .is_some_and(|code| matches!(code, wstd::http::ErrorCode::HttpRequestDenied))
    });
    if denied {
        Error::fatal(format!(
            "the host refused the request to {url} (the step's logs say why, and which grant would allow it)"
        ))
    } else {
        Error::retryable(format!("the request to {url} failed: {err:#}"))
    }
}

/// GETs `url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// GETs `url` and parses a 2xx body as JSON.
pub fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, Error> {
    get(url)?.error_for_status()?.json()
}

/// POSTs `body` as JSON to `url` and parses a 2xx answer as JSON.
pub fn post_json<B: Serialize, T: DeserializeOwned>(url: &str, body: &B) -> Result<T, Error> {
    Request::post(url).json(body)?.send()?.error_for_status()?.json()
}
