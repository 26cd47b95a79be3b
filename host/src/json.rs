//! `JsonDoc`: a JSON document as Braid passes it from where it comes in to where it is
//! stored and read — an agent's output, a rendered input, a block's gathered outputs, a
//! run's input and output. It is shared, not copied (cloning is a reference count), and it
//! keeps whichever form it arrived in: text that was checked once at the door is stored and
//! handed to the next agent as it is, never parsed into a tree and serialised again, and a
//! tree built by Braid is serialised only when something needs its text. The other form is
//! made on first use and kept.
//!
//! This module owns the document type and the fast checks of text (syntax, the depth and
//! NUL rules of [`crate::limits`], without building a tree). The rules themselves, and the
//! precise messages naming where a value breaks them, stay in `limits`.

use crate::limits::{JsonProblem, MAX_JSON_DEPTH};
use serde::de::Deserializer;
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// A JSON document, held as text, as a parsed value, or both (see the module docs).
#[derive(Clone)]
pub struct JsonDoc(Arc<Inner>);

struct Inner {
    /// Compact JSON text (what is stored and sent).
    text: OnceLock<Box<str>>,
    /// The parsed value (what expressions and callers read).
    value: OnceLock<Value>,
    /// Checked against the door's rules (depth, no NUL): when it came in, or by
    /// [`JsonDoc::check`] (a run's input is checked once, not by every branch).
    checked: AtomicBool,
}

impl JsonDoc {
    fn with(text: Option<Box<str>>, value: Option<Value>, checked: bool) -> JsonDoc {
        let inner = Inner { text: OnceLock::new(), value: OnceLock::new(), checked: AtomicBool::new(checked) };
        if let Some(text) = text {
            let _ = inner.text.set(text);
        }
        if let Some(value) = value {
            let _ = inner.value.set(value);
        }
        JsonDoc(Arc::new(inner))
    }

    /// `null`.
    pub fn null() -> JsonDoc {
        JsonDoc::from_value(Value::Null)
    }

    /// A document of a value built in memory; its text is made when first asked for.
    pub fn from_value(value: Value) -> JsonDoc {
        JsonDoc::with(None, Some(value), false)
    }

    /// Text that comes in from outside (an agent's answer, a request body), named `what` in
    /// errors: checked for syntax, depth and NUL characters without building a tree, and
    /// kept compact. It accepts and refuses exactly what [`crate::limits::parse_json`] does,
    /// with the same messages.
    pub fn parse(text: &str, what: &str) -> Result<JsonDoc, JsonProblem> {
        JsonDoc::parse_cow(std::borrow::Cow::Borrowed(text), what)
    }

    /// [`JsonDoc::parse`] of text the caller owns (kept, not copied, when compact).
    pub fn parse_owned(text: String, what: &str) -> Result<JsonDoc, JsonProblem> {
        JsonDoc::parse_cow(std::borrow::Cow::Owned(text), what)
    }

    fn parse_cow(text: std::borrow::Cow<'_, str>, what: &str) -> Result<JsonDoc, JsonProblem> {
        // The everyday document in one pass; anything out of the ordinary takes the full
        // check below.
        let checked = match quick_check(text.as_bytes()) {
            Some(spaced) => Ok(spaced),
            None => check_text(&text, Some(MAX_JSON_DEPTH)),
        };
        match checked {
            Ok(false) => return Ok(JsonDoc::with(Some(text.into_owned().into_boxed_str()), None, true)),
            Ok(true) => return Ok(JsonDoc::with(Some(compact(&text).into_boxed_str()), None, true)),
            Err(_) => {}
        }
        let text = text.as_ref();
        // The precise reader decides, and names where the problem is. What it accepts that
        // the text check did not (a NUL inside a member that a later duplicate key
        // replaces) is kept as the value it reads.
        let value = crate::limits::parse_json(text, what)?;
        Ok(JsonDoc::with(None, Some(value), true))
    }

    /// Text Braid stored itself, read back at any depth (Braid's own documents nest the
    /// values it accepted a few levels deeper). Its syntax is checked now, so that a
    /// damaged row is found where it is read.
    pub fn stored(text: String) -> Result<JsonDoc, DamagedJson> {
        check_text(&text, None).map_err(|err| DamagedJson(err.to_string()))?;
        Ok(JsonDoc::with(Some(text.into_boxed_str()), None, false))
    }

    /// The document as compact JSON text.
    pub fn text(&self) -> &str {
        self.0.text.get_or_init(|| {
            let value = self.0.value.get().expect("a document holds its text or its value");
            serde_json::to_string(value).expect("a JSON value serialises").into_boxed_str()
        })
    }

    /// The document's value, parsed on first use.
    pub fn value(&self) -> &Value {
        self.0.value.get_or_init(|| {
            let text = self.0.text.get().expect("a document holds its text or its value");
            // Every text a document is made of was checked when it was made.
            crate::limits::read_stored_json(text).expect("a document's text was checked when it was made")
        })
    }

    /// The value, taken out (copied only when the document is shared).
    pub fn into_value(self) -> Value {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => match inner.value.take() {
                Some(value) => value,
                None => JsonDoc(Arc::new(inner)).value().clone(),
            },
            Err(shared) => JsonDoc(shared).value().clone(),
        }
    }

    /// Bytes of its compact text.
    pub fn text_len(&self) -> usize {
        self.text().len()
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        match self.0.value.get() {
            Some(value) => value.is_null(),
            None => self.text() == "null",
        }
    }

    /// Checks the document against the door's rules (depth, no NUL), naming `what` in the
    /// error: for documents Braid composed or computed (a rendered input, say). Documents
    /// that were checked as they came in pass at once.
    pub fn check(&self, what: &str) -> Result<(), JsonProblem> {
        if self.0.checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let checked = match self.0.value.get() {
            Some(value) => crate::limits::check_json(value, what),
            None if check_text(self.text(), Some(MAX_JSON_DEPTH)).is_ok() => Ok(()),
            None => match crate::limits::read_stored_json(self.text()) {
                Ok(value) => crate::limits::check_json(&value, what),
                Err(err) => Err(JsonProblem::Syntax(what.to_owned(), err.to_string())),
            },
        };
        if checked.is_ok() {
            self.0.checked.store(true, Ordering::Relaxed);
        }
        checked
    }

    /// An object of the given members, written as text from the members' own texts (a
    /// block's gathered outputs: nothing is parsed or copied as a tree). `None` is `null`.
    pub fn object<'a>(members: impl IntoIterator<Item = (&'a str, Option<&'a JsonDoc>)> + Clone) -> JsonDoc {
        // Sized up front: a wide block's outputs are megabytes, copied once.
        let size = members
            .clone()
            .into_iter()
            .map(|(key, member)| key.len() + 4 + member.map_or(4, JsonDoc::text_len))
            .sum::<usize>();
        let mut text = String::with_capacity(size + 2);
        text.push('{');
        for (index, (key, member)) in members.into_iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            push_string(&mut text, key);
            text.push(':');
            text.push_str(member.map_or("null", JsonDoc::text));
        }
        text.push('}');
        JsonDoc::with(Some(text.into_boxed_str()), None, false)
    }

    /// An array of the given items, written as text from theirs (a map's outputs, in item
    /// order). `None` is `null`.
    pub fn array<'a>(items: impl IntoIterator<Item = Option<&'a JsonDoc>> + Clone) -> JsonDoc {
        let size = items.clone().into_iter().map(|item| 1 + item.map_or(4, JsonDoc::text_len)).sum::<usize>();
        let mut text = String::with_capacity(size + 2);
        text.push('[');
        for (index, item) in items.into_iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push_str(item.map_or("null", JsonDoc::text));
        }
        text.push(']');
        JsonDoc::with(Some(text.into_boxed_str()), None, false)
    }
}

impl From<Value> for JsonDoc {
    fn from(value: Value) -> Self {
        JsonDoc::from_value(value)
    }
}

impl Default for JsonDoc {
    fn default() -> Self {
        JsonDoc::null()
    }
}

/// A document reads as its value (`doc["field"]`, `doc.as_object()`).
impl std::ops::Deref for JsonDoc {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq for JsonDoc {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.value() == other.value()
    }
}

impl PartialEq<Value> for JsonDoc {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl fmt::Debug for JsonDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl fmt::Display for JsonDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Serialised as its text, embedded as it is (serde_json writes it through unparsed).
impl serde::Serialize for JsonDoc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(self.text()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for JsonDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(JsonDoc::from_value)
    }
}

/// Appends `text` as a JSON string.
fn push_string(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    // Writing a string into a String cannot fail.
    let _ = write!(out, "{}", Value::String(text.to_owned()));
}

/// Stored text that is not a JSON document Braid could have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged JSON: {0}")]
pub struct DamagedJson(String);

/// One pass over JSON text for the everyday document: `Some` (whether there is whitespace
/// between tokens) only for text that is valid JSON within the door's rules (at most
/// [`MAX_JSON_DEPTH`] levels, no NUL) and that serde_json reads to the same value; `None`
/// for anything it is not sure of — an exponent or more than 15 digits in a number, a
/// surrogate escape, a control character, any syntax error — which [`check_text`] then
/// decides. It never accepts what the full check refuses (a property test holds it to that).
fn quick_check(bytes: &[u8]) -> Option<bool> {
    #[derive(Clone, Copy)]
    enum Next {
        Value,
        Key,
        AfterValue,
    }
    let mut open = [0u8; MAX_JSON_DEPTH];
    let (mut depth, mut at, mut spaced, mut next) = (0usize, 0usize, false, Next::Value);
    let skip_space = |at: &mut usize, spaced: &mut bool| {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(*at) {
            *at += 1;
            *spaced = true;
        }
    };
    loop {
        skip_space(&mut at, &mut spaced);
        match next {
            Next::Value => match *bytes.get(at)? {
                open_byte @ (b'{' | b'[') => {
                    *open.get_mut(depth)? = open_byte;
                    depth += 1;
                    at += 1;
                    skip_space(&mut at, &mut spaced);
                    let close = if open_byte == b'{' { b'}' } else { b']' };
                    if bytes.get(at) == Some(&close) {
                        depth -= 1;
                        at += 1;
                        next = Next::AfterValue;
                    } else {
                        next = if open_byte == b'{' { Next::Key } else { Next::Value };
                    }
                }
                b'"' => {
                    at = quick_string(bytes, at)?;
                    next = Next::AfterValue;
                }
                b'-' | b'0'..=b'9' => {
                    at = quick_number(bytes, at)?;
                    next = Next::AfterValue;
                }
                _ => {
                    let literal: &[u8] = [b"true".as_slice(), b"false", b"null"]
                        .into_iter()
                        .find(|literal| bytes[at..].starts_with(literal))?;
                    at += literal.len();
                    next = Next::AfterValue;
                }
            },
            Next::Key => {
                if bytes.get(at) != Some(&b'"') {
                    return None;
                }
                at = quick_string(bytes, at)?;
                skip_space(&mut at, &mut spaced);
                if bytes.get(at) != Some(&b':') {
                    return None;
                }
                at += 1;
                next = Next::Value;
            }
            Next::AfterValue => {
                if depth == 0 {
                    return (at == bytes.len()).then_some(spaced);
                }
                let inside = open[depth - 1];
                match (bytes.get(at)?, inside) {
                    (b',', b'{') => next = Next::Key,
                    (b',', _) => next = Next::Value,
                    (b'}', b'{') | (b']', b'[') => depth -= 1,
                    _ => return None,
                }
                at += 1;
            }
        }
    }
}

/// The end of the string that starts at `at` (its opening quote), if it holds no control
/// character, no NUL and no surrogate escape.
fn quick_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut at = at + 1;
    loop {
        let found = at + string_stop(bytes.get(at..)?)?;
        match bytes[found] {
            b'"' => return Some(found + 1),
            b'\\' => {}
            // Control characters must be escaped in JSON strings.
            _ => return None,
        }
        at = found + 2;
        match *bytes.get(found + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
            b'u' => {
                let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
                let unit = u32::from_str_radix(digits, 16).ok()?;
                if unit == 0 || (0xD800..0xE000).contains(&unit) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                at += 4;
            }
            _ => return None,
        }
    }
}

/// The offset of the first byte in `bytes` that ends a plain run of string text: a quote,
/// a backslash or a control character. Eight bytes at a time (SWAR): most strings of a
/// document are short keys and values, where a SIMD search's set-up per call costs more
/// than the search.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `word` below `limit` (at most 0x80). Exact up to and
    // including the lowest such byte (the borrow only spoils the bytes above it), which is
    // all `trailing_zeros` below reads.
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS;
    let stops = |word: u64| {
        below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20)
    };
    let mut offset = 0;
    while let Some(chunk) = bytes.get(offset..offset + 8) {
        let found = stops(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    // The last few bytes, padded with a byte that stops nothing.
    let mut last = [b'a'; 8];
    last[..bytes.len() - offset].copy_from_slice(&bytes[offset..]);
    let found = stops(u64::from_le_bytes(last));
    let at = offset + (found.trailing_zeros() / 8) as usize;
    (found != 0).then_some(at)
}

/// The end of the number that starts at `at`, if it is a plain one: an integer part, maybe
/// a fraction, no exponent, at most 15 digits in all (always a value serde_json reads).
fn quick_number(bytes: &[u8], at: usize) -> Option<usize> {
    let digits_from = |from: usize| bytes[from..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    let mut end = at + usize::from(bytes[at] == b'-');
    let integer = digits_from(end);
    if integer == 0 || (integer > 1 && bytes[end] == b'0') {
        return None;
    }
    end += integer;
    let mut digits = integer;
    if bytes.get(end) == Some(&b'.') {
        let fraction = digits_from(end + 1);
        if fraction == 0 {
            return None;
        }
        end += 1 + fraction;
        digits += fraction;
    }
    if digits > 15 || matches!(bytes.get(end), Some(b'e' | b'E' | b'.')) {
        return None;
    }
    Some(end)
}

/// What the door refuses in JSON text beyond its syntax, found by [`scan`].
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// More levels of arrays and objects than allowed.
    TooDeep,
    /// A NUL character (`\u0000`) in a string or a key.
    Nul,
    /// A `\uD800`-`\uDFFF` escape that is not half of a surrogate pair (serde_json refuses
    /// it as a string; its syntax check alone does not).
    LoneSurrogate,
    /// A number too large for a double (serde_json refuses it as a value).
    NumberOutOfRange,
}

/// Checks JSON text without building a tree: its syntax (serde_json's, which reads any
/// depth without recursing), then one scan for what the syntax allows and the door does
/// not (see [`scan`]). With `max_depth`, at most that many levels of arrays and objects and
/// no NUL character. Returns whether there is whitespace between tokens.
fn check_text(text: &str, max_depth: Option<usize>) -> Result<bool, CheckError> {
    let _: &RawValue = serde_json::from_str(text).map_err(CheckError::Syntax)?;
    scan(text.as_bytes(), max_depth).map_err(CheckError::Refused)
}

#[derive(Debug)]
enum CheckError {
    Syntax(serde_json::Error),
    Refused(Refused),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Syntax(err) => err.fmt(f),
            CheckError::Refused(refused) => write!(f, "{refused:?}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Scans JSON text whose syntax is valid, skipping through strings to their escapes: the
/// depth of arrays and objects (refused past `max_depth`, when given), NUL escapes (refused
/// when a depth is given: the door's rules), unpaired surrogate escapes (always refused),
/// and whether any whitespace lies between tokens.
fn scan(bytes: &[u8], max_depth: Option<usize>) -> Result<bool, Refused> {
    let hex = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let (mut depth, mut spaced, mut at) = (0usize, false, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at += 1;
                // To the closing quote, looking only at escapes on the way.
                while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                    at += found;
                    if bytes[at] == b'"' {
                        break;
                    }
                    if bytes.get(at + 1) != Some(&b'u') {
                        at += 2;
                        continue;
                    }
                    let unit = hex(at + 2).unwrap_or(0);
                    if unit == 0 && max_depth.is_some() {
                        return Err(Refused::Nul);
                    }
                    at += 6;
                    if (0xDC00..0xE000).contains(&unit) {
                        return Err(Refused::LoneSurrogate);
                    }
                    if (0xD800..0xDC00).contains(&unit) {
                        let low = (bytes.get(at..at + 2) == Some(b"\\u")).then(|| hex(at + 2)).flatten();
                        if !low.is_some_and(|low| (0xDC00..0xE000).contains(&low)) {
                            return Err(Refused::LoneSurrogate);
                        }
                        at += 6;
                    }
                }
                at += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if max_depth.is_some_and(|max| depth > max) {
                    return Err(Refused::TooDeep);
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                spaced = true;
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                let length = bytes[at..]
                    .iter()
                    .position(|byte| !matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .unwrap_or(bytes.len() - at);
                let number = &bytes[at..at + length];
                // A plain integer of up to 18 digits always fits; anything else is read as
                // serde_json reads it when it makes a value.
                let plain = number.len() <= 19 && number.iter().all(|byte| matches!(byte, b'-' | b'0'..=b'9'));
                if !plain
                    && std::str::from_utf8(number).ok().and_then(|n| serde_json::from_str::<Value>(n).ok()).is_none()
                {
                    return Err(Refused::NumberOutOfRange);
                }
                at += length;
            }
            _ => at += 1,
        }
    }
    Ok(spaced)
}

/// `text` without the whitespace between tokens (the text of a checked document).
fn compact(text: &str) -> String {
    let is_space = |byte: u8| matches!(byte, b' ' | b'\n' | b'\r' | b'\t');
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in bytes {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
            out.push(byte);
        } else if !is_space(byte) {
            out.push(byte);
        }
    }
    // Only ASCII whitespace outside strings was removed: still UTF-8.
    String::from_utf8(out).expect("removing ASCII whitespace keeps UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_eight_byte_string_scan_stops_where_a_byte_by_byte_scan_does() {
        // Every kind of byte: the three that stop a string, the other controls, ASCII,
        // DEL, and the bytes of multi-byte UTF-8 (which the word arithmetic must not take
        // for controls), at every position of every length around the eight-byte words.
        let kinds: [u8; 12] = [b'"', b'\\', 0x00, 0x1f, 0x09, b' ', b'a', 0x7f, 0x80, 0xc3, 0xff, 0x21];
        let naive = |bytes: &[u8]| bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        for len in 0..=33 {
            assert_eq!(string_stop(&vec![b'a'; len]), None, "{len} plain bytes");
            for at in 0..len {
                for &stop in &kinds {
                    for &before in &[b'a', 0x80, 0xff, 0x20, 0x7f] {
                        let mut bytes = vec![before; len];
                        bytes[at] = stop;
                        if at + 1 < len {
                            bytes[at + 1] = 0x00; // a later stop must not win
                        }
                        assert_eq!(string_stop(&bytes), naive(&bytes), "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn text_that_comes_in_is_checked_as_the_door_checks_and_kept_compact() {
        let doc = JsonDoc::parse("{ \"b\": [1, 2.5e3, \"x y\"],\n \"a\": {} }", "the output").unwrap();
        assert_eq!(doc.text(), r#"{"b":[1,2.5e3,"x y"],"a":{}}"#, "the agent's own order and numbers are kept");
        assert_eq!(doc.value(), &json!({ "a": {}, "b": [1, 2500.0, "x y"] }));
        for bad in ["{", "[1,]", r#""\ud800""#, "nul", "1 2", r#"{"a":"\u0000"}"#, r#"{"\u0000":1}"#] {
            let expected = crate::limits::parse_json(bad, "the output").unwrap_err();
            assert_eq!(JsonDoc::parse(bad, "the output").unwrap_err(), expected, "{bad}");
        }
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(JsonDoc::parse(&deep(MAX_JSON_DEPTH), "x").is_ok());
        assert_eq!(
            JsonDoc::parse(&deep(MAX_JSON_DEPTH + 1), "x").unwrap_err(),
            crate::limits::parse_json(&deep(MAX_JSON_DEPTH + 1), "x").unwrap_err()
        );
        assert!(matches!(JsonDoc::parse(&deep(10_000), "x"), Err(JsonProblem::TooDeep(_))));
        // A NUL in a member that a later duplicate replaces is not in the value read.
        let shadowed = JsonDoc::parse(r#"{"a":{"\u0000":1},"a":2}"#, "x").unwrap();
        assert_eq!(shadowed.text(), r#"{"a":2}"#);
    }

    #[test]
    fn stored_text_reads_at_any_depth_and_damage_is_found_where_it_is_read() {
        let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        let doc = JsonDoc::stored(deep.clone()).unwrap();
        assert_eq!(doc.text(), deep);
        assert!(JsonDoc::stored("{\"a\":".to_owned()).is_err());
        assert!(JsonDoc::stored(r#""\udc00""#.to_owned()).is_err(), "a lone surrogate is damage too");
    }

    #[test]
    fn gathered_documents_are_written_from_their_members_texts() {
        let a = JsonDoc::parse(r#"{"n":1}"#, "a").unwrap();
        let b = JsonDoc::from_value(json!([true]));
        let object = JsonDoc::object([("first", Some(&a)), ("odd \"key\"", Some(&b)), ("none", None)]);
        assert_eq!(object.value(), &json!({ "first": { "n": 1 }, "odd \"key\"": [true], "none": null }));
        assert_eq!(JsonDoc::array([Some(&a), None]).text(), r#"[{"n":1},null]"#);
        assert_eq!(JsonDoc::object([]).text(), "{}");
    }

    #[test]
    fn a_composed_document_is_checked_when_it_must_be() {
        let mut deep = JsonDoc::from_value(json!(1));
        for _ in 0..MAX_JSON_DEPTH {
            deep = JsonDoc::array([Some(&deep)]);
        }
        assert!(deep.check("input").is_ok());
        let deeper = JsonDoc::array([Some(&deep)]);
        assert!(matches!(deeper.check("input"), Err(JsonProblem::TooDeep(_))));
        let nul = JsonDoc::object([("x", Some(&JsonDoc::from_value(json!("a\u{0}"))))]);
        assert_eq!(nul.check("input").unwrap_err(), JsonProblem::Nul("input.x".into()));
    }

    #[test]
    fn a_document_serialises_as_its_text_and_compares_by_value() {
        let doc = JsonDoc::parse(r#"{"z":1,"a":2}"#, "x").unwrap();
        assert_eq!(serde_json::to_string(&json!({ "out": doc })).unwrap(), r#"{"out":{"a":2,"z":1}}"#);
        assert_eq!(serde_json::to_string(&vec![doc.clone()]).unwrap(), r#"[{"z":1,"a":2}]"#);
        assert_eq!(doc, JsonDoc::from_value(json!({ "a": 2, "z": 1 })));
        assert_eq!(doc, json!({ "a": 2, "z": 1 }));
        assert_eq!(doc["z"], 1);
        let back: JsonDoc = serde_json::from_str(r#"{"a":[1]}"#).unwrap();
        assert_eq!(back.text(), r#"{"a":[1]}"#);
        assert_eq!(JsonDoc::null().into_value(), Value::Null);
    }

    /// Texts built from pieces that sit on the edges of what serde_json accepts (numbers at
    /// the limits of a double, escapes, surrogates, NULs, control characters, whitespace,
    /// duplicate keys, depth): the fast check accepts and refuses exactly what the precise
    /// reader does, with the same message, and reads back the same value.
    #[test]
    fn the_fast_check_agrees_with_the_precise_reader_on_edge_cases() {
        const PIECES: &[&str] = &[
            "0",
            "-0",
            "1e308",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "1e309",
            "-1e400",
            "1e-400",
            "123456789012345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "0.1",
            "1E+2",
            "01",
            "1.",
            "-",
            "\"a\"",
            "\"\\u0000\"",
            "\"\\u0001\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\\\u0000\"",
            "\"\u{1}\"",
            "\"tab\there\"",
            "\"é ü\"",
            "true",
            "null",
            "nul",
            " ",
            "\n",
            "\r\n",
            "\t",
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "{\"k\":",
            "{\"\\u0000\":1}",
            "{\"a\":1,\"a\":2}",
            "[[[[[[[[",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut quick = 0;
        for _ in 0..50_000 {
            let mut text = String::new();
            for _ in 0..(next() % 8 + 1) {
                text.push_str(PIECES[usize::try_from(next() % PIECES.len() as u64).expect("an index")]);
            }
            // Wrapped in containers sometimes, so that pieces land inside arrays and objects.
            if next() % 3 == 0 {
                text = format!("[{text}]");
            } else if next() % 3 == 0 {
                text = format!("{{\"x\": {text}}}");
            }
            let precise = crate::limits::parse_json(&text, "value");
            let fast = JsonDoc::parse(&text, "value");
            assert_eq!(
                fast.as_ref().map(JsonDoc::value).map_err(Clone::clone),
                precise.as_ref().map_err(Clone::clone),
                "{text:?}"
            );
            if let Ok(doc) = fast {
                assert_eq!(
                    crate::limits::read_stored_json(doc.text()).ok().as_ref(),
                    precise.as_ref().ok(),
                    "{text:?}"
                );
            }
            let stored = JsonDoc::stored(text.clone());
            assert_eq!(stored.is_ok(), crate::limits::read_stored_json(&text).is_ok(), "{text:?}");
            if quick_check(text.as_bytes()).is_some() {
                assert!(precise.is_ok(), "the quick check accepted what the door refuses: {text:?}");
                quick += 1;
            }
        }
        assert!(quick > 1_000, "the quick check took only {quick} of the cases: the test no longer tests it");
    }
}
