//! One execution's `wasi:http` hooks: every outgoing request is checked against the step's
//! grants and the host's ceiling before any DNS lookup or connection, counted against the
//! per-execution cap, bounded by the step's deadline, sent through the host-wide
//! [`Outbound`] client (which refuses non-public addresses), its response body capped, and
//! recorded as an [`HttpCall`]. A refusal is `HttpRequestDenied` for the guest and a line in
//! the step's logs (source `braid`) naming the URL and the grant that would allow it.
//!
//! The grammar of grants and the client live in `crate::outbound`; this file only applies
//! them to one execution.

use super::logs::{LogCapture, LogLevel};
use crate::outbound::{Destination, HostPatterns, HttpCall, Outbound, network};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The record of an execution's requests, shared with the bodies still streaming.
pub(crate) type CallLog = Arc<Mutex<Vec<HttpCall>>>;

/// What one execution may do over HTTP, and what it did.
pub(crate) struct StepHttp {
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) grants: Arc<HostPatterns>,
    pub(crate) deadline: Instant,
    pub(crate) logs: LogCapture,
    pub(crate) calls: CallLog,
    pub(crate) requests: u32,
}

type SendFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>>
        + Send,
>;

impl StepHttp {
    /// Records a request that never left, and tells the step's logs why. The guest's body
    /// is read (up to the cap) and dropped, so that the guest learns of the refusal from
    /// the response rather than from a failed write.
    fn refuse(&self, call: HttpCall, why: String, body: WasiBody) -> SendFuture {
        self.logs.note(LogLevel::Warn, format!("outbound HTTP refused: {why}"));
        lock(&self.calls).push(HttpCall { error: Some(format!("denied: {why}")), ..call });
        let cap = usize::try_from(self.outbound.config().max_body_bytes).unwrap_or(usize::MAX);
        Box::new(async move {
            let _ = http_body_util::Limited::new(body, cap).collect().await;
            Err(Error::HttpRequestDenied)
        })
    }
}

impl WasiHttpHooks for StepHttp {
    /// Let the client write `Host` from the URL it connects to.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let url = format!(
            "{} {}://{}{}",
            parts.method,
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str()),
            uri.path()
        );
        let call = HttpCall {
            method: parts.method.to_string(),
            scheme: uri.scheme_str().unwrap_or_default().to_owned(),
            host: uri.host().unwrap_or_default().to_owned(),
            port: 0,
            path: uri.path().to_owned(),
            status: None,
            error: None,
            bytes_out: 0,
            bytes_in: 0,
            duration_us: 0,
            started_at: chrono::Utc::now(),
        };
        let Some(to) = Destination::of(&uri) else {
            return self.refuse(call, format!("{url}: only http and https URLs with a host can be granted"), body);
        };
        let call = HttpCall { port: to.port, host: to.host.clone(), ..call };
        let config = self.outbound.config();
        if !self.grants.allows(&to) {
            let why = if self.grants.is_empty() {
                format!(
                    "{url}: the step grants no outbound HTTP; \"allowed_hosts\": [\"{}\"] would allow it",
                    to.origin()
                )
            } else {
                let granted: Vec<&str> = self.grants.iter().map(|g| g.as_str()).collect();
                format!(
                    "{url}: not in the step's allowed_hosts ({}); a grant of \"{}\" would allow it",
                    granted.join(", "),
                    to.origin()
                )
            };
            return self.refuse(call, why, body);
        }
        if !config.ceiling.allows(&to) {
            return self.refuse(call, format!("{url}: beyond the host's --allow-outbound ceiling"), body);
        }
        if !config.allow_private_network
            && let Ok(address) = to.host.parse()
            && let Some(why) = network::non_public(address)
        {
            return self.refuse(
                call,
                format!("{url}: {address} is {why}; the host blocks private networks (--allow-private-network)"),
                body,
            );
        }
        if self.requests >= config.max_requests {
            return self.refuse(
                call,
                format!(
                    "{url}: the step already made {} requests, the host's --max-http-requests",
                    config.max_requests
                ),
                body,
            );
        }
        self.requests += 1;
        let index = {
            let mut calls = lock(&self.calls);
            calls.push(call);
            calls.len() - 1
        };
        let sent = Sent { calls: self.calls.clone(), index, started };
        let (outbound, deadline, logs, cap) =
            (self.outbound.clone(), self.deadline, self.logs.clone(), config.max_body_bytes);
        Box::new(async move {
            match send(&outbound, http::Request::from_parts(parts, body), &to, deadline, cap, &sent).await {
                Ok(response) => Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>)),
                Err((error, why)) => {
                    if matches!(error, Error::HttpRequestDenied) {
                        logs.note(LogLevel::Warn, format!("outbound HTTP refused: {url}: {why}"));
                    }
                    sent.end(|call| call.error = Some(why));
                    Err(error)
                }
            }
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request on its way: where its record is.
struct Sent {
    calls: CallLog,
    index: usize,
    started: Instant,
}

impl Sent {
    fn update(&self, change: impl FnOnce(&mut HttpCall)) {
        if let Some(call) = lock(&self.calls).get_mut(self.index) {
            change(call);
        }
    }

    fn end(&self, change: impl FnOnce(&mut HttpCall)) {
        let elapsed = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.update(|call| {
            change(call);
            call.duration_us = elapsed;
        });
    }
}

async fn send(
    outbound: &Outbound,
    request: http::Request<WasiBody>,
    to: &Destination,
    deadline: Instant,
    cap: u64,
    sent: &Sent,
) -> Result<http::Response<WasiBody>, (Error, String)> {
    let slots = outbound.origin_slots(&to.origin());
    let in_time = |remaining: Option<std::time::Duration>| {
        remaining
            .filter(|left| !left.is_zero())
            .ok_or((Error::ConnectionTimeout, "the step's deadline passed".to_owned()))
    };
    let permit = tokio::time::timeout(in_time(deadline.checked_duration_since(Instant::now()))?, slots.acquire_owned())
        .await
        .map_err(|_| (Error::ConnectionTimeout, "the step's deadline passed waiting for a connection".to_owned()))?
        .map_err(|_| (Error::InternalError(None), "the host is shutting down".to_owned()))?;
    // The guest's body, whole (it may still be writing it): at most `cap` bytes.
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|err| match err.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => (Error::HttpRequestBodySize(None), format!("the request body is over {cap} bytes")),
            Err(err) => (Error::HttpRequestBodySize(None), format!("the request body failed: {err}")),
        })?
        .to_bytes();
    sent.update(|call| call.bytes_out = body.len() as u64);
    let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
    let remaining = in_time(deadline.checked_duration_since(Instant::now()))?;
    let response = tokio::time::timeout(remaining, outbound.client().request(request))
        .await
        .map_err(|_| (Error::ConnectionTimeout, "no response before the step's deadline".to_owned()))?
        .map_err(|err| classify(&err))?;
    sent.update(|call| call.status = Some(response.status().as_u16()));
    Ok(response.map(|body| {
        CappedBody {
            inner: body,
            cap,
            received: 0,
            sent: Some(Sent { calls: sent.calls.clone(), index: sent.index, started: sent.started }),
            _permit: permit,
        }
        .boxed_unsync()
    }))
}

/// What the guest sees when the client fails, and what the record says.
fn classify(err: &hyper_util::client::legacy::Error) -> (Error, String) {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<network::BlockedAddress>() {
            return (
                Error::HttpRequestDenied,
                format!("{blocked}; the host blocks private networks (--allow-private-network)"),
            );
        }
        source = current.source();
    }
    let why = error_chain(err);
    let error = if err.is_connect() { Error::ConnectionRefused } else { Error::HttpProtocolError };
    (error, why)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}

/// A response body that counts what the guest reads, fails past `cap` bytes, holds the
/// origin's slot until it ends, and closes the request's record when it does.
struct CappedBody {
    inner: hyper::body::Incoming,
    cap: u64,
    received: u64,
    sent: Option<Sent>,
    _permit: OwnedSemaphorePermit,
}

impl CappedBody {
    fn finish(&mut self, error: Option<String>) {
        if let Some(sent) = self.sent.take() {
            let received = self.received;
            sent.end(|call| {
                call.bytes_in = received;
                if error.is_some() {
                    call.error = error;
                }
            });
        }
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(Some(format!("the response body failed: {}", error_chain(&err))));
                Poll::Ready(Some(Err(Error::HttpResponseIncomplete)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.cap {
                        let cap = this.cap;
                        this.finish(Some(format!("the response body is over {cap} bytes (--max-http-response-bytes)")));
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(cap)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for CappedBody {
    fn drop(&mut self) {
        // A guest that stops reading: the record ends where it stopped.
        self.finish(None);
    }
}
