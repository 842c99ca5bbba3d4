//! A strict JSON (RFC 8259) parser for safetensors headers, and Python reprs of its values.
//!
//! The safetensors reader must accept and refuse exactly the headers dynaq's Python reader did
//! (`json.loads` with an `object_pairs_hook` that refuses duplicate keys and a `parse_constant`
//! that refuses `NaN`/`Infinity`), with the same messages, so the parser follows CPython's `_json`
//! scanner (3.11) step by step: the same error descriptions ("Expecting ',' delimiter", "Invalid
//! \\escape", ...) at the same positions, written as Python writes them: `line L column C (char
//! P)`, where P counts characters, not bytes. Duplicate keys are reported when their object
//! closes (as the hook sees them), so a syntax error later in the same object wins, as in Python.
//!
//! Where it is stricter than Python (both are refusals Python would not make):
//!
//! * a lone UTF-16 surrogate (`"\ud800"`) is an error: Python builds a string no UTF-8 encoder
//!   can write back, and the reference safetensors library (serde_json) refuses it too;
//! * nesting deeper than [`MAX_DEPTH`] is an error (Python stops near 1000 levels with a
//!   `RecursionError`); no safetensors header nests deeper than 3.
//!
//! Like CPython (by default), an integer literal of more than 4300 digits is an error.
//!
//! Numbers are kept as their source text: the header only ever needs non-negative integers
//! ([`Value::as_u64`]), and the text is what a message should show.

use std::collections::HashSet;
use std::fmt;

/// The deepest nesting of arrays and objects [`parse`] accepts.
pub const MAX_DEPTH: usize = 64;

/// CPython's default limit on the digits of an integer it converts from text
/// (`sys.get_int_max_str_digits()`); `json.loads` refuses longer integer literals.
const MAX_INT_DIGITS: usize = 4300;

/// A parsed JSON value. Strings are owned (escapes are decoded); numbers borrow their text from
/// the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number exactly as written (`12`, `-0`, `1.5e3`).
    Number(&'a str),
    /// A string, escapes decoded.
    String(String),
    /// An array.
    Array(Vec<Value<'a>>),
    /// An object, its members in source order (keys are distinct: duplicates are refused).
    Object(Vec<(String, Value<'a>)>),
}

impl Value<'_> {
    /// The value of a number written as an integer (no fraction, no exponent) that is
    /// non-negative and fits a u64; `-0` counts (it is the integer 0 to Python too). `None` for
    /// everything else, including integers beyond u64 (never a panic).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(t) if is_integer_literal(t) => match t.strip_prefix('-') {
                Some(digits) => digits.bytes().all(|b| b == b'0').then_some(0),
                None => t.parse().ok(),
            },
            _ => None,
        }
    }

    /// [`as_u64`](Self::as_u64), and the value fits a usize on this platform.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_u64().and_then(|v| usize::try_from(v).ok())
    }

    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, when the value is an array.
    pub fn as_array(&self) -> Option<&[Self]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, when the value is an object.
    pub fn as_object(&self) -> Option<&[(String, Self)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Self> {
        self.as_object()?
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The name of the Python type `json.loads` gives this value (`dict`, `list`, `str`, `int`,
    /// `float`, `bool`, `NoneType`), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Number(t) if is_integer_literal(t) => "int",
            Value::Number(_) => "float",
            Value::String(_) => "str",
            Value::Array(_) => "list",
            Value::Object(_) => "dict",
        }
    }

    /// Python's `repr()` of the value `json.loads` gives: `None`, `True`, `12`, `1.5`, `'text'`,
    /// `[1, 2]`, `{'a': 1}`.
    pub fn py_repr(&self) -> String {
        let mut out = String::new();
        self.write_py_repr(&mut out);
        out
    }

    fn write_py_repr(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("None"),
            Value::Bool(true) => out.push_str("True"),
            Value::Bool(false) => out.push_str("False"),
            // Python's int drops the sign of `-0`; JSON allows no other leading zero or `+`.
            Value::Number(t) if is_integer_literal(t) => {
                out.push_str(if t.trim_start_matches('-') == "0" {
                    "0"
                } else {
                    t
                })
            }
            Value::Number(t) => out.push_str(&py_float_repr(t)),
            Value::String(s) => out.push_str(&py_str_repr(s)),
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write_py_repr(out);
                }
                out.push(']');
            }
            Value::Object(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&py_str_repr(k));
                    out.push_str(": ");
                    v.write_py_repr(out);
                }
                out.push('}');
            }
        }
    }
}

/// Whether a number's text (grammatical JSON) is an integer: no fraction, no exponent.
fn is_integer_literal(t: &str) -> bool {
    !t.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// Python's `repr()` of a str: single quotes, or double quotes when the text has a single quote
/// and no double quote; `\\`, the quote, `\t`, `\n`, `\r` escaped; other control characters and
/// non-printable characters as `\xNN`, `\uNNNN` or `\UNNNNNNNN`; printable characters as they are.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_ascii() || py_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// The non-ASCII characters Python's `str.isprintable()` refuses, as inclusive ranges: all the
/// assigned ones (categories Cc, Cf, Co, Zs, Zl and Zp; Unicode 14, Python 3.11) and the large
/// blocks no Unicode version has assigned.
const NOT_PRINTABLE: [(u32, u32); 28] = [
    (0x80, 0xa0),
    (0xad, 0xad),
    (0x600, 0x605),
    (0x61c, 0x61c),
    (0x6dd, 0x6dd),
    (0x70f, 0x70f),
    (0x890, 0x891),
    (0x8e2, 0x8e2),
    (0x1680, 0x1680),
    (0x180e, 0x180e),
    (0x2000, 0x200f),
    (0x2028, 0x202f),
    (0x205f, 0x2064),
    (0x2066, 0x206f),
    (0x3000, 0x3000),
    (0xe000, 0xf8ff),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x13438),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0x2fa1e, 0x2ffff), // unassigned to this day, as are planes 4 to 13
    (0x40000, 0xe00ff), // and the tag characters (Cf) around the unassigned start of plane 14
    (0xe01f0, 0xeffff),
    (0xf0000, 0xffffd),
    (0x100000, 0x10fffd),
];

/// Python's `str.isprintable()` for one non-ASCII character. Exact for assigned characters,
/// noncharacters and the unassigned blocks above; the scattered unassigned code points of planes
/// 0 to 3 (which Python escapes too, per its own Unicode version) count as printable here, since
/// no table of them is kept.
fn py_printable(c: char) -> bool {
    let u = c as u32;
    let noncharacter = (0xfdd0..=0xfdef).contains(&u) || u & 0xfffe == 0xfffe;
    !noncharacter && !NOT_PRINTABLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// Python's `repr()` of the float a JSON number with a fraction or exponent becomes: the
/// shortest digits that read back the same double, in fixed notation when the decimal exponent
/// is in `-4..16` and as `1e+16` otherwise; `inf` when the literal overflows.
fn py_float_repr(text: &str) -> String {
    // The JSON number grammar is a subset of Rust's float syntax; both round correctly.
    let x: f64 = text.parse().unwrap_or(f64::NAN);
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x.is_infinite() {
        return format!("{sign}inf");
    }
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    if x.is_nan() {
        return "nan".into(); // unreachable for grammatical JSON
    }
    // `{:e}` writes the shortest round-trip digits: "1.2345e-7".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let exp: i64 = exp.parse().unwrap_or(0);
    let point = exp + 1; // the value is 0.DIGITS * 10^point
    let n = digits.len() as i64;
    let body = if -4 < point && point <= 16 {
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point < n {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        } else {
            format!("{digits}{}.0", "0".repeat((point - n) as usize))
        }
    } else {
        let rest = if n > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{}{rest}e{esign}{:02}", &digits[..1], exp.abs())
    };
    format!("{sign}{body}")
}

/// A JSON syntax error, or a value the strict rules refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong, in CPython's words where it has some.
    pub message: String,
    /// Byte offset in the text where the problem was found; `None` for problems Python reports
    /// without a position (duplicate keys, non-standard constants, too many digits).
    pub offset: Option<usize>,
    /// `(line, column, char)` as Python counts them, when there is an offset.
    location: Option<(usize, usize, usize)>,
    /// The parser could not allocate memory for the values (not a fault of the text).
    pub out_of_memory: bool,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col, pos)) => {
                write!(f, "{}: line {line} column {col} (char {pos})", self.message)
            }
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for JsonError {}

/// Parses a whole JSON text: one value, with optional whitespace (space, tab, CR, LF) before and
/// after it.
pub fn parse(text: &str) -> Result<Value<'_>, JsonError> {
    let p = Parser {
        text,
        b: text.as_bytes(),
        depth: 0,
    };
    let start = p.skip_ws(0);
    let (value, end) = p.scan_once(start)?;
    let end = p.skip_ws(end);
    if end != p.b.len() {
        return Err(p.err("Extra data", end));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    depth: usize,
}

type Scan<T> = Result<(T, usize), JsonError>;

impl<'a> Parser<'a> {
    /// An error at byte `at`, located the way `json.JSONDecodeError` does it.
    fn err(&self, message: &str, at: usize) -> JsonError {
        // Every error position is at an ASCII byte or the end, so it is a char boundary.
        let before = self.text.get(..at).unwrap_or(self.text);
        let pos = before.chars().count();
        let line = before.matches('\n').count() + 1;
        let col = match before.rfind('\n') {
            Some(nl) => before[nl + 1..].chars().count() + 1,
            None => pos + 1,
        };
        JsonError {
            message: message.into(),
            offset: Some(at),
            location: Some((line, col, pos)),
            out_of_memory: false,
        }
    }

    fn plain(message: String) -> JsonError {
        JsonError {
            message,
            offset: None,
            location: None,
            out_of_memory: false,
        }
    }

    fn out_of_memory(&self, at: usize) -> JsonError {
        JsonError {
            out_of_memory: true,
            ..self.err("out of memory", at)
        }
    }

    /// Appends without aborting the process when memory runs out: a 100 MB header can hold
    /// tens of millions of values.
    fn push<T>(&self, v: &mut Vec<T>, x: T, at: usize) -> Result<(), JsonError> {
        v.try_reserve(1).map_err(|_| self.out_of_memory(at))?;
        v.push(x);
        Ok(())
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while i < self.b.len() && matches!(self.b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    /// One value starting at byte `i` (`scan_once_unicode`); returns it and the byte after it.
    fn scan_once(&self, i: usize) -> Scan<Value<'a>> {
        let b = self.b;
        let rest = &b[i.min(b.len())..];
        let Some(&c) = rest.first() else {
            return Err(self.err("Expecting value", i));
        };
        match c {
            b'"' => {
                let (s, next) = self.scan_string(i + 1)?;
                return Ok((Value::String(s), next));
            }
            b'{' | b'[' => {
                if self.depth >= MAX_DEPTH {
                    let msg = format!("nesting deeper than {MAX_DEPTH} levels");
                    return Err(self.err(&msg, i));
                }
                let inner = Parser {
                    depth: self.depth + 1,
                    ..*self
                };
                return if c == b'{' {
                    inner.parse_object(i + 1)
                } else {
                    inner.parse_array(i + 1)
                };
            }
            _ => {}
        }
        for (word, value) in [
            ("null", Value::Null),
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
        ] {
            if rest.starts_with(word.as_bytes()) {
                return Ok((value, i + word.len()));
            }
        }
        for word in ["NaN", "Infinity", "-Infinity"] {
            if rest.starts_with(word.as_bytes()) {
                return Err(Self::plain(format!("non-standard JSON constant {word}")));
            }
        }
        if c == b'-' || c.is_ascii_digit() {
            return self.match_number(i);
        }
        Err(self.err("Expecting value", i))
    }

    /// The longest number at `i` (`_match_number_unicode`): `-?(0|[1-9][0-9]*)`, then `.[0-9]+`
    /// and `[eE][-+]?[0-9]+` when complete (otherwise they are left for the caller to trip on).
    fn match_number(&self, start: usize) -> Scan<Value<'a>> {
        let b = self.b;
        let digit = |i: usize| i < b.len() && b[i].is_ascii_digit();
        let mut i = start;
        if b[i] == b'-' {
            i += 1;
        }
        let int_start = i;
        if i < b.len() && b[i] == b'0' {
            i += 1;
        } else if digit(i) {
            while digit(i) {
                i += 1;
            }
        } else {
            return Err(self.err("Expecting value", start));
        }
        let int_digits = i - int_start;
        let mut integer = true;
        if i < b.len() && b[i] == b'.' && digit(i + 1) {
            integer = false;
            i += 2;
            while digit(i) {
                i += 1;
            }
        }
        if i < b.len() && matches!(b[i], b'e' | b'E') {
            let mut j = i + 1;
            if j < b.len() && matches!(b[j], b'-' | b'+') {
                j += 1;
            }
            if digit(j) {
                while digit(j) {
                    j += 1;
                }
                integer = false;
                i = j;
            }
        }
        if integer && int_digits > MAX_INT_DIGITS {
            return Err(Self::plain(format!(
                "Exceeds the limit ({MAX_INT_DIGITS} digits) for integer string conversion: \
                 value has {int_digits} digits; use sys.set_int_max_str_digits() to increase \
                 the limit"
            )));
        }
        Ok((Value::Number(&self.text[start..i]), i))
    }

    /// A string whose opening quote is just before byte `end` (`scanstring_unicode`).
    fn scan_string(&self, mut end: usize) -> Scan<String> {
        let (b, len) = (self.b, self.b.len());
        let begin = end - 1;
        let unterminated = || self.err("Unterminated string starting at", begin);
        let mut out = String::new();
        loop {
            let mut next = end;
            while next < len && b[next] != b'"' && b[next] != b'\\' {
                if b[next] <= 0x1f {
                    return Err(self.err("Invalid control character at", next));
                }
                next += 1;
            }
            if next == len {
                return Err(unterminated());
            }
            // `end` and `next` sit at ASCII bytes (or the end), so both are char boundaries.
            let chunk = &self.text[end..next];
            out.try_reserve(chunk.len() + 4)
                .map_err(|_| self.out_of_memory(end))?;
            out.push_str(chunk);
            let c = b[next];
            next += 1;
            if c == b'"' {
                return Ok((out, next));
            }
            if next == len {
                return Err(unterminated());
            }
            if b[next] != b'u' {
                end = next + 1;
                out.push(match b[next] {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    _ => return Err(self.err("Invalid \\escape", end - 2)),
                });
                continue;
            }
            next += 1;
            end = next + 4;
            if end >= len {
                return Err(self.err("Invalid \\uXXXX escape", next - 1));
            }
            let hex4 = |at: usize| -> Result<u32, JsonError> {
                b[at..at + 4]
                    .iter()
                    .try_fold(0u32, |acc, &c| Some(acc << 4 | (c as char).to_digit(16)?))
                    .ok_or_else(|| self.err("Invalid \\uXXXX escape", at - 1))
            };
            let mut u = hex4(next)?;
            let escape_start = next - 2;
            if (0xd800..0xdc00).contains(&u)
                && end + 6 < len
                && b[end] == b'\\'
                && b[end + 1] == b'u'
            {
                let low = hex4(end + 2)?;
                if (0xdc00..0xe000).contains(&low) {
                    u = 0x10000 + ((u - 0xd800) << 10) + (low - 0xdc00);
                    end += 6;
                }
            }
            match char::from_u32(u) {
                Some(ch) => out.push(ch),
                None => {
                    let msg = format!("Lone surrogate \\u{u:04x} in a \\uXXXX escape");
                    return Err(self.err(&msg, escape_start));
                }
            }
        }
    }

    /// An object whose `{` is just before byte `i` (`_parse_object_unicode`).
    fn parse_object(&self, mut i: usize) -> Scan<Value<'a>> {
        let b = self.b;
        let mut pairs: Vec<(String, Value<'a>)> = Vec::new();
        i = self.skip_ws(i);
        if i >= b.len() || b[i] != b'}' {
            loop {
                if i >= b.len() || b[i] != b'"' {
                    return Err(self.err("Expecting property name enclosed in double quotes", i));
                }
                let (key, next) = self.scan_string(i + 1)?;
                i = self.skip_ws(next);
                if i >= b.len() || b[i] != b':' {
                    return Err(self.err("Expecting ':' delimiter", i));
                }
                i = self.skip_ws(i + 1);
                let (value, next) = self.scan_once(i)?;
                self.push(&mut pairs, (key, value), i)?;
                i = self.skip_ws(next);
                if i < b.len() && b[i] == b'}' {
                    break;
                }
                if i >= b.len() || b[i] != b',' {
                    return Err(self.err("Expecting ',' delimiter", i));
                }
                i = self.skip_ws(i + 1);
            }
        }
        // Python's object_pairs_hook sees the pairs once the object is closed: the first key
        // that repeats an earlier one is reported.
        let mut seen = HashSet::new();
        seen.try_reserve(pairs.len())
            .map_err(|_| self.out_of_memory(i))?;
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(Self::plain(format!("duplicate key {}", py_str_repr(k))));
        }
        Ok((Value::Object(pairs), i + 1))
    }

    /// An array whose `[` is just before byte `i` (`_parse_array_unicode`).
    fn parse_array(&self, mut i: usize) -> Scan<Value<'a>> {
        let b = self.b;
        let mut items = Vec::new();
        i = self.skip_ws(i);
        if i >= b.len() || b[i] != b']' {
            loop {
                let (value, next) = self.scan_once(i)?;
                self.push(&mut items, value, i)?;
                i = self.skip_ws(next);
                if i < b.len() && b[i] == b']' {
                    break;
                }
                if i >= b.len() || b[i] != b',' {
                    return Err(self.err("Expecting ',' delimiter", i));
                }
                i = self.skip_ws(i + 1);
            }
        }
        if i >= b.len() {
            return Err(self.err("Expecting value", i));
        }
        Ok((Value::Array(items), i + 1))
    }
}

#[cfg(test)]
mod tests;
