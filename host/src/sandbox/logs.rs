//! Capturing what a guest says: lines logged through `host.log` and whatever it writes to
//! stdout and stderr, all into one bounded buffer per execution.
//!
//! A chatty agent is not a failing agent: once the byte cap is reached further output is
//! dropped and counted, and the streams keep accepting writes (a pipe that reported
//! "closed" would make Rust's `println!` panic inside the guest). The last few KiB of
//! stderr are kept aside whatever the cap, because that is where a panic message lands.

use serde::Serialize;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much of stderr's end is kept for error messages, whatever the log cap.
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest single line kept; longer lines are cut (and the cut bytes counted as dropped).
const MAX_LINE_BYTES: usize = 8192;

/// The severity of a log line (the WIT `log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// `host.log` (the SDK's `braid_sdk::log`).
    Host,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// Braid itself, about the capture (for example how much was dropped).
    Braid,
}

/// One line of an execution's logs.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    #[serde(with = "system_time_micros")]
    pub logged_at: SystemTime,
}

/// The bounded log buffer of one execution, shared by `host.log` and both output pipes.
#[derive(Clone)]
pub(crate) struct LogCapture {
    inner: Arc<Mutex<Captured>>,
}

struct Captured {
    lines: Vec<LogLine>,
    retained_bytes: usize,
    cap_bytes: usize,
    dropped_bytes: u64,
    dropped_lines: u64,
    /// Bytes of an unfinished line, per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    stderr_tail: VecDeque<u8>,
}

impl LogCapture {
    pub(crate) fn new(cap_bytes: usize) -> Self {
        LogCapture {
            inner: Arc::new(Mutex::new(Captured {
                lines: Vec::new(),
                retained_bytes: 0,
                cap_bytes,
                dropped_bytes: 0,
                dropped_lines: 0,
                partial: [Vec::new(), Vec::new()],
                // Grown only if the guest writes to stderr.
                stderr_tail: VecDeque::new(),
            })),
        }
    }

    /// Records a line logged through `host.log`.
    pub(crate) fn log(&self, level: LogLevel, message: String) {
        self.lock().push(level, LogSource::Host, message);
    }

    /// Records a line from Braid itself about the execution (source `braid`).
    pub(crate) fn note(&self, level: LogLevel, message: String) {
        self.lock().push(level, LogSource::Braid, message);
    }

    /// A pipe for the guest's stdout or stderr that feeds this buffer.
    pub(crate) fn pipe(&self, source: LogSource) -> CapturePipe {
        debug_assert!(matches!(source, LogSource::Stdout | LogSource::Stderr));
        CapturePipe { capture: self.clone(), source }
    }

    /// The last lines of stderr (up to a few KiB), for explaining a trap.
    pub(crate) fn stderr_tail(&self) -> String {
        let captured = self.lock();
        let bytes: Vec<u8> = captured.stderr_tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// Ends the capture: flushes unfinished lines and, if anything was dropped, adds a
    /// line saying how much.
    pub(crate) fn finish(&self) -> Vec<LogLine> {
        let mut captured = self.lock();
        for (index, source) in [LogSource::Stdout, LogSource::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut captured.partial[index]);
            if !rest.is_empty() {
                captured.push(level_of(source), source, String::from_utf8_lossy(&rest).into_owned());
            }
        }
        let mut lines = std::mem::take(&mut captured.lines);
        if captured.dropped_bytes > 0 {
            lines.push(LogLine {
                level: LogLevel::Warn,
                source: LogSource::Braid,
                message: format!(
                    "dropped {} bytes of logs ({} lines) over the cap of {} bytes",
                    captured.dropped_bytes, captured.dropped_lines, captured.cap_bytes
                ),
                logged_at: SystemTime::now(),
            });
        }
        lines
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        // A panic while holding this lock cannot leave the buffer inconsistent in a way
        // that matters for logs; keep going rather than poisoning every later write.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn level_of(source: LogSource) -> LogLevel {
    match source {
        LogSource::Stderr => LogLevel::Warn,
        _ => LogLevel::Info,
    }
}

impl Captured {
    fn push(&mut self, level: LogLevel, source: LogSource, mut message: String) {
        if message.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            self.dropped_bytes += (message.len() - end) as u64;
            message.truncate(end);
        }
        if self.retained_bytes + message.len() > self.cap_bytes {
            self.dropped_bytes += message.len() as u64;
            self.dropped_lines += 1;
            return;
        }
        self.retained_bytes += message.len();
        // Postgres cannot store a NUL in text: the one character that cannot be kept as is.
        let message = crate::limits::storable_text(message);
        self.lines.push(LogLine { level, source, message, logged_at: SystemTime::now() });
    }

    fn write(&mut self, source: LogSource, bytes: &[u8]) {
        let index = usize::from(source == LogSource::Stderr);
        if source == LogSource::Stderr {
            for &byte in bytes {
                if self.stderr_tail.len() == STDERR_TAIL_BYTES {
                    self.stderr_tail.pop_front();
                }
                self.stderr_tail.push_back(byte);
            }
        }
        // Past the cap, skip the line splitting: count and drop.
        if self.retained_bytes >= self.cap_bytes {
            self.dropped_bytes += bytes.len() as u64;
            self.dropped_lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            return;
        }
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[index]);
            line.extend_from_slice(&rest[..newline]);
            self.push(level_of(source), source, String::from_utf8_lossy(&line).into_owned());
            rest = &rest[newline + 1..];
        }
        let partial = &mut self.partial[index];
        let room = MAX_LINE_BYTES.saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
        self.dropped_bytes += rest.len().saturating_sub(room) as u64;
    }
}

/// The guest's stdout or stderr: always writable, never full, never closed.
#[derive(Clone)]
pub(crate) struct CapturePipe {
    capture: LogCapture,
    source: LogSource,
}

/// How much the guest may write per `check-write`: any size works, this keeps copies small.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.capture.lock().write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.capture.lock().write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Timestamps as microseconds since the Unix epoch in JSON.
mod system_time_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        let micros = time.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        serializer.serialize_u64(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_micros(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stream_output_into_lines_and_keeps_the_unfinished_one() {
        let capture = LogCapture::new(1024);
        let mut pipe = capture.pipe(LogSource::Stdout);
        pipe.write(bytes::Bytes::from_static(b"one\ntw")).unwrap();
        pipe.write(bytes::Bytes::from_static(b"o\nthree")).unwrap();
        let lines = capture.finish();
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["one", "two", "three"]);
    }

    #[test]
    fn drops_and_counts_past_the_cap_without_failing_writes() {
        let capture = LogCapture::new(10);
        let mut pipe = capture.pipe(LogSource::Stdout);
        for _ in 0..100 {
            pipe.write(bytes::Bytes::from_static(b"12345\n")).unwrap();
            assert!(pipe.check_write().unwrap() > 0, "the pipe never reports itself full");
        }
        let lines = capture.finish();
        assert_eq!(lines.iter().filter(|l| l.source == LogSource::Stdout).count(), 2);
        let note = lines.last().unwrap();
        assert_eq!(note.source, LogSource::Braid);
        assert!(note.message.contains("dropped 588 bytes of logs (98 lines)"), "{}", note.message);
    }

    #[test]
    fn keeps_the_end_of_stderr_whatever_the_cap() {
        let capture = LogCapture::new(0);
        let mut pipe = capture.pipe(LogSource::Stderr);
        pipe.write(bytes::Bytes::from(vec![b'x'; 10_000])).unwrap();
        pipe.write(bytes::Bytes::from_static(b"\npanicked at boom\n")).unwrap();
        assert!(capture.stderr_tail().ends_with("panicked at boom"));
        assert!(capture.stderr_tail().len() <= STDERR_TAIL_BYTES);
    }
}
