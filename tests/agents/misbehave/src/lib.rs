//! A test agent that misbehaves on request, to prove each limit and each denial of the
//! sandbox. Input: `{"action": "...", ...}`; see `run` for the actions and their fields.
//!
//! It implements the WIT world directly (through braid-sdk's hidden bindings) rather than
//! with `export_agent!`, because some actions must break the contract the SDK upholds
//! (answering text that is not JSON).

use braid_sdk::bindings::braid::agent::host::{self, LogLevel};
use braid_sdk::bindings::braid::agent::types::{StepContext, StepError};
use serde_json::{Value, json};
use std::io::Write;

struct Misbehave;

fn field_u64(input: &Value, name: &str, default: u64) -> u64 {
    input.get(name).and_then(Value::as_u64).unwrap_or(default)
}

fn field_str<'a>(input: &'a Value, name: &str, default: &'a str) -> &'a str {
    input.get(name).and_then(Value::as_str).unwrap_or(default)
}

fn fail(message: String) -> Result<String, StepError> {
    Err(StepError { message, retryable: false })
}

/// What `remnants` flips the seed's bytes with to make its marker.
const FLIP: u8 = 0x5a;

/// Where in linear memory the marker of `seed` occurs (volatile reads of every byte:
/// memory the program never wrote is still memory the host handed over). Compared byte by
/// byte, so that the marker itself need not be in memory while it is looked for.
fn scan_memory(seed: &[u8]) -> Vec<usize> {
    let size = core::arch::wasm32::memory_size(0) * 65536;
    let mut found = Vec::new();
    let mut at = 1; // address 0 is the null pointer
    while at + seed.len() <= size {
        // SAFETY: every address below `memory_size` is in bounds of linear memory.
        let matches = seed
            .iter()
            .enumerate()
            .all(|(i, &b)| unsafe { core::ptr::read_volatile((at + i) as *const u8) } ^ FLIP == b);
        if matches {
            found.push(at);
        }
        at += 1;
    }
    found
}

static mut REMNANT: [u8; 4096] = [0; 4096];

/// Writes `marker` into static data, a stack frame and a heap allocation, and makes sure
/// the writes happen.
fn leave_everywhere(marker: &[u8]) {
    let mut on_stack = [0u8; 16 * 1024];
    for chunk in on_stack.chunks_mut(marker.len()) {
        chunk.copy_from_slice(&marker[..chunk.len()]);
    }
    std::hint::black_box(&on_stack);
    let on_heap: Vec<u8> = marker.iter().copied().cycle().take(256 * 1024).collect();
    std::hint::black_box(&on_heap);
    // SAFETY: one call at a time: a component instance is single-threaded.
    unsafe {
        let remnant = &mut *core::ptr::addr_of_mut!(REMNANT);
        remnant[..marker.len()].copy_from_slice(marker);
        std::hint::black_box(remnant);
    }
}

/// Recurses `limit` levels deep with 256 bytes of stack per level (`u64::MAX`: until the
/// stack runs out).
#[inline(never)]
fn recurse(depth: u64, limit: u64, pad: &mut [u8; 256]) -> u64 {
    if depth >= limit {
        return depth;
    }
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    next.copy_from_slice(pad);
    recurse(depth + 1, limit, &mut next) + u64::from(next[0])
}

impl braid_sdk::bindings::Guest for Misbehave {
    fn run(ctx: StepContext, input: String) -> Result<String, StepError> {
        let input: Value = match serde_json::from_str(&input) {
            Ok(value) => value,
            Err(err) => return fail(format!("malformed input: {err}")),
        };
        match field_str(&input, "action", "ok") {
            // Succeeds, echoing what it was given: context, input and one config value.
            "ok" => {
                let key = field_str(&input, "config_key", "key");
                Ok(json!({
                    "run_id": ctx.run_id, "step_id": ctx.step_id, "branch": ctx.branch,
                    "item_index": ctx.item_index, "attempt": ctx.attempt,
                    "config": host::config(key), "idempotency_key": host::idempotency_key(), "input": input,
                })
                .to_string())
            }
            // Returns a step error; `retryable` says whether a retry could help.
            "error" => Err(StepError {
                message: field_str(&input, "message", "asked to fail").to_owned(),
                retryable: input.get("retryable").and_then(Value::as_bool).unwrap_or(false),
            }),
            // Fails with a retryable error until attempt `succeed_on`, then succeeds.
            "flaky" => {
                let succeed_on = field_u64(&input, "succeed_on", 2);
                if u64::from(ctx.attempt) < succeed_on {
                    Err(StepError { message: format!("flaky: attempt {} failed", ctx.attempt), retryable: true })
                } else {
                    Ok(json!({ "attempt": ctx.attempt }).to_string())
                }
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // Burns a known amount of CPU: `iterations` loop turns, then succeeds.
            "spin" => {
                let mut n: u64 = 0;
                for i in 0..field_u64(&input, "iterations", 1_000_000) {
                    n = std::hint::black_box(n.wrapping_add(i));
                }
                Ok(json!({ "sum": n }).to_string())
            }
            // Sleeps in a host call (blocked in WASI, not spinning), then succeeds.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(field_u64(&input, "ms", 1000)));
                let slept_ms = field_u64(&input, "ms", 1000);
                // With `"report": true`, also which attempt this was and its idempotency key.
                if input.get("report").and_then(Value::as_bool) == Some(true) {
                    let key = host::idempotency_key();
                    Ok(json!({ "slept_ms": slept_ms, "attempt": ctx.attempt, "idempotency_key": key }).to_string())
                } else {
                    Ok(json!({ "slept_ms": slept_ms }).to_string())
                }
            }
            // Grows memory in 1 MiB chunks until something stops it.
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let mut pad = [0u8; 256];
                Ok(json!({ "depth": recurse(0, field_u64(&input, "depth", u64::MAX), &mut pad) }).to_string())
            }
            "panic" => panic!("{}", field_str(&input, "message", "asked to panic")),
            "unreachable" => std::process::abort(),
            // Answers a JSON string of `bytes` bytes.
            "big_output" => Ok(Value::String("x".repeat(field_u64(&input, "bytes", 1 << 20) as usize)).to_string()),
            // Answers text that is not JSON.
            "not_json" => Ok("this is not JSON".to_owned()),
            // Answers `text` as the output, exactly: any JSON the host should refuse.
            "raw" => Ok(field_str(&input, "text", "").to_owned()),
            // Writes `lines` lines to stdout and to stderr, then succeeds.
            "flood" => {
                let lines = field_u64(&input, "lines", 100_000);
                for i in 0..lines {
                    println!("stdout line {i} of a flood that the host must cap without failing the step");
                    eprintln!("stderr line {i}");
                }
                std::io::stdout().flush().ok();
                Ok(json!({ "printed": lines }).to_string())
            }
            // Logs `lines` lines through host.log, then succeeds.
            "log" => {
                let lines = field_u64(&input, "lines", 10);
                for i in 0..lines {
                    host::log(LogLevel::Info, &format!("log line {i}"));
                }
                Ok(json!({ "logged": lines }).to_string())
            }
            // Looks through all of its linear memory for what an earlier instance would
            // have left (the marker `seed` makes, bytes flipped so that the input holding
            // the seed does not match), then leaves it itself in static data, on the stack
            // and on the heap. A host that resets instance memory correctly never lets the
            // next instance find it.
            "remnants" => {
                let seed = field_str(&input, "seed", "braid-remnant-seed").as_bytes();
                let marker = || seed.iter().map(|b| b ^ FLIP).collect::<Vec<u8>>();
                // `"leave_first": true` proves the scan: it then finds this instance's own.
                if input.get("leave_first").and_then(Value::as_bool) == Some(true) {
                    leave_everywhere(&marker());
                }
                let found = scan_memory(seed);
                leave_everywhere(&marker());
                Ok(json!({ "found": found }).to_string())
            }
            "read_file" => {
                let path = field_str(&input, "path", "/etc/passwd");
                match std::fs::read_to_string(path) {
                    Ok(text) => Ok(json!({ "read": text.len() }).to_string()),
                    Err(err) => fail(format!("read {path}: {err}")),
                }
            }
            "list_dir" => {
                let path = field_str(&input, "path", "/");
                match std::fs::read_dir(path) {
                    Ok(entries) => {
                        let names: Vec<String> =
                            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                        Ok(json!({ "entries": names }).to_string())
                    }
                    Err(err) => fail(format!("list {path}: {err}")),
                }
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let args: Vec<String> = std::env::args().collect();
                let mut stdin = String::new();
                let stdin_result = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin);
                Ok(json!({ "vars": vars, "args": args, "stdin": stdin, "stdin_ok": stdin_result.is_ok() }).to_string())
            }
            "tcp" => {
                let addr = field_str(&input, "addr", "127.0.0.1:80");
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => Ok(json!({ "connected": addr }).to_string()),
                    Err(err) => fail(format!("connect {addr}: {err}")),
                }
            }
            // Leaks config value `config_key` (a secret, say) every way it can: host.log,
            // stdout, stderr, then its error (or, with `"succeed": true`, its output).
            "leak" => {
                let value = host::config(field_str(&input, "config_key", "key")).unwrap_or_default();
                host::log(LogLevel::Info, &format!("the key is {value}"));
                println!("stdout has {value}");
                eprintln!("stderr has {value}");
                if input.get("succeed").and_then(Value::as_bool).unwrap_or(false) {
                    Ok(json!({ "leaked": value, value.clone(): "as a key" }).to_string())
                } else {
                    fail(format!("failed holding {value}"))
                }
            }
            other => fail(format!("unknown action {other:?}")),
        }
    }
}

braid_sdk::bindings::__export_agent_world!(Misbehave with_types_in braid_sdk::bindings);
