//! The safetensors layout: one strict reader and one writer, for every file and blob dynaq makes.
//!
//! ```text
//! offset   size  field
//! 0        8     N, the header length (u64, little-endian), at most MAX_HEADER (100 MB)
//! 8        N     header: UTF-8 JSON, padded with spaces so that the data starts 8-aligned
//! 8 + N    ...   data: every tensor's bytes, C order, little-endian, back to back
//! ```
//!
//! The header is an object: `{"__metadata__": {str: str}, NAME: {"dtype": "F32", "shape": [2,
//! 3], "data_offsets": [begin, end]}, ...}`, offsets counted from the start of the data. A
//! tensor needs `end - begin = prod(shape) * bits(dtype) / 8` bytes (a whole number), and sorted
//! by `(begin, end)` the tensors tile the data exactly: no overlap, no gap, no trailing byte.
//!
//! Why one implementation: the Rust serializers (weights, layers) and the Python file reader (which
//! calls [`header_len`] on a file's first 8 bytes and size, then [`parse_header`] on the header,
//! through the bindings) must accept and refuse exactly the same bytes. The rules and messages
//! are those the Python reader had (`dynaq/safetensors.py`, `_read_header`), minus its
//! `"{path}: "` prefix, which the Python caller adds; values are quoted as Python's `repr()`
//! prints them ([`json::Value::py_repr`]). Messages are [`Error::Corrupt`] (`ValueError`).
//!
//! Writing ([`encode_header`], [`write()`]) gives the bytes Python's `_encode_header` gave:
//! `json.dumps(header, separators=(",", ":"), ensure_ascii=False)`, `__metadata__` first when
//! there is any, tensors back to back in [`data_order`] (widest dtype first, then by name).
//!
//! dynaq's own in-memory blobs are sealed ([`write_sealed`], [`verify_seal`]): the metadata entry
//! [`CHECKSUM_KEY`] holds the CRC-32 (IEEE) of the whole buffer as written with that entry's 8 hex
//! digits set to `00000000`, so that every single-bit flip is refused, as the older formats with
//! a trailing CRC-32 did.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::json::{self, py_str_repr, Value};

/// The longest header accepted (the reference safetensors reader's limit too).
pub const MAX_HEADER: u64 = 100_000_000;

/// The metadata key of the checksum of a sealed buffer ([`write_sealed`]).
pub const CHECKSUM_KEY: &str = "dynaq.crc32";

/// What the checksum digits read as while the CRC is computed.
const ZEROS: &str = "00000000";

/// The element types of the safetensors format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `BOOL`, one byte per element.
    Bool,
    /// `U8`.
    U8,
    /// `I8`.
    I8,
    /// `U16`.
    U16,
    /// `I16`.
    I16,
    /// `U32`.
    U32,
    /// `I32`.
    I32,
    /// `U64`.
    U64,
    /// `I64`.
    I64,
    /// `F16` (IEEE half).
    F16,
    /// `BF16` (bfloat16).
    Bf16,
    /// `F32`.
    F32,
    /// `F64`.
    F64,
    /// `C64` (two float32).
    C64,
    /// `F8_E4M3`.
    F8E4M3,
    /// `F8_E5M2`.
    F8E5M2,
    /// `F8_E8M0`.
    F8E8M0,
    /// `F4` (4 bits; two elements a byte).
    F4,
    /// `F6_E2M3` (6 bits).
    F6E2M3,
    /// `F6_E3M2` (6 bits).
    F6E3M2,
}

/// Every dtype with its name and bits per element, in the order of Python's `_DTYPES`.
const DTYPES: [(Dtype, &str, u32); 20] = [
    (Dtype::Bool, "BOOL", 8),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::U16, "U16", 16),
    (Dtype::I16, "I16", 16),
    (Dtype::U32, "U32", 32),
    (Dtype::I32, "I32", 32),
    (Dtype::U64, "U64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::F16, "F16", 16),
    (Dtype::Bf16, "BF16", 16),
    (Dtype::F32, "F32", 32),
    (Dtype::F64, "F64", 64),
    (Dtype::C64, "C64", 64),
    (Dtype::F8E4M3, "F8_E4M3", 8),
    (Dtype::F8E5M2, "F8_E5M2", 8),
    (Dtype::F8E8M0, "F8_E8M0", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6E2M3, "F6_E2M3", 6),
    (Dtype::F6E3M2, "F6_E3M2", 6),
];

impl Dtype {
    /// Every dtype, in the order of Python's `_DTYPES` table.
    pub const ALL: [Dtype; 20] = {
        let mut all = [Dtype::Bool; 20];
        let mut i = 0;
        while i < 20 {
            all[i] = DTYPES[i].0;
            i += 1;
        }
        all
    };

    /// The name in the header (`"F32"`, `"BF16"`, `"F8_E4M3"`, ...).
    pub fn name(self) -> &'static str {
        DTYPES[self as usize].1
    }

    /// The dtype of a header name; `None` for an unknown one (names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        DTYPES.iter().find(|d| d.1 == name).map(|d| d.0)
    }

    /// Bits per element.
    pub fn bits(self) -> u32 {
        DTYPES[self as usize].2
    }

    /// Bytes a tensor of this dtype and shape needs; `None` when its bits do not fill whole
    /// bytes or the count does not fit a usize.
    pub fn nbytes(self, shape: &[usize]) -> Option<usize> {
        match need(self, shape) {
            Need::Bytes(n) => usize::try_from(n).ok(),
            Need::NotWholeBytes | Need::TooLarge => None,
        }
    }
}

/// Python's `', '.join(sorted(_DTYPES))`, for the unsupported-dtype message.
fn known_dtypes() -> String {
    let mut names: Vec<&str> = DTYPES.iter().map(|d| d.1).collect();
    names.sort_unstable();
    names.join(", ")
}

enum Need {
    Bytes(u128),
    NotWholeBytes,
    /// More than u128 bits: no data_offsets can match (Python would print the exact number).
    TooLarge,
}

/// `prod(shape) * bits / 8`, exactly. Whole bytes are decided first, from the product modulo 8,
/// so that the answer is Python's even when the product overflows.
fn need(dtype: Dtype, shape: &[usize]) -> Need {
    let bits = u128::from(dtype.bits());
    let count_mod8 = shape.iter().fold(1u128, |a, &d| a * (d as u128 % 8) % 8);
    if count_mod8 * bits % 8 != 0 {
        return Need::NotWholeBytes;
    }
    // A zero dimension makes the count 0 however large the others are.
    if shape.contains(&0) {
        return Need::Bytes(0);
    }
    shape
        .iter()
        .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
        .and_then(|count| count.checked_mul(bits))
        .map_or(Need::TooLarge, |b| Need::Bytes(b / 8))
}

/// One tensor of a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Where its bytes start, counted from the start of the data.
    pub begin: usize,
    /// Where its bytes end (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Its size in bytes.
    pub fn nbytes(&self) -> usize {
        self.end - self.begin
    }

    /// Its bytes in `data`, the data section the header was checked against (panics on a
    /// shorter slice).
    pub fn bytes<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.begin..self.end]
    }
}

/// A checked header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The tensors in data order (sorted by `(begin, end)`; they tile the data exactly).
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__`, in file order (keys are distinct).
    pub metadata: Vec<(String, String)>,
}

impl Header {
    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The metadata value of `key`.
    pub fn get_metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v.as_str()))
    }
}

fn corrupt<T>(message: String) -> Result<T> {
    Err(Error::Corrupt(message))
}

/// The header length `N` from the first 8 bytes of a file (`prefix`; fewer when the file is
/// shorter, more are ignored) and the file's length: refused when the file is shorter than 8
/// bytes, `N` exceeds [`MAX_HEADER`] or the header runs past the end of the file.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<usize> {
    let Some(first8) = prefix.first_chunk::<8>().filter(|_| file_len >= 8) else {
        let size = file_len.min(prefix.len() as u64);
        return corrupt(format!(
            "not a safetensors file ({size} bytes; the 8-byte header length is missing)"
        ));
    };
    let n = u64::from_le_bytes(*first8);
    if n > MAX_HEADER {
        return corrupt(format!(
            "not a safetensors file (header length {n} is above the 100 MB limit)"
        ));
    }
    if 8 + n > file_len {
        return corrupt(format!(
            "header length {n} runs past the end of the {file_len}-byte file (truncated, or not \
             a safetensors file)"
        ));
    }
    Ok(n as usize) // at most MAX_HEADER
}

/// Checks a header (the `N` bytes after the length) against the `data_len` bytes of data that
/// follow it, as Python's `_read_header` did: UTF-8, a JSON object (strict: no duplicate keys,
/// no `NaN`), `__metadata__` mapping strings to strings, each tensor with exactly the keys
/// `dtype`, `shape` and `data_offsets`, a known dtype, a shape of non-negative integers, offsets
/// `[begin, end]` with `begin <= end` holding exactly the bytes dtype and shape need within the
/// data, and the tensors tiling the data.
///
/// Integers that do not fit a usize (in a shape or the offsets) are refused as a bad shape or
/// bad offsets, as the reference safetensors library does.
pub fn parse_header(header: &[u8], data_len: u64) -> Result<Header> {
    let Ok(text) = std::str::from_utf8(header) else {
        return corrupt("not a safetensors file (header is not UTF-8)".into());
    };
    if !text.starts_with('{') {
        return corrupt("not a safetensors file (header does not start with '{')".into());
    }
    let root = json::parse(text).map_err(|e| {
        if e.out_of_memory {
            Error::Memory(format!(
                "cannot allocate memory to parse a {}-byte safetensors header",
                header.len()
            ))
        } else {
            Error::Corrupt(format!(
                "not a safetensors file (header is not valid JSON: {e})"
            ))
        }
    })?;
    let Some(members) = root.as_object() else {
        return corrupt("header is not a JSON object".into()); // unreachable after '{'
    };
    let mut metadata = Vec::new();
    if let Some(meta) = root.get("__metadata__") {
        let pairs = meta.as_object().and_then(|o| {
            o.iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect::<Option<Vec<_>>>()
        });
        match pairs {
            Some(pairs) => metadata = pairs,
            None => return corrupt("__metadata__ must map strings to strings".into()),
        }
    }
    let mut tensors = Vec::new();
    for (name, info) in members.iter().filter(|(k, _)| k != "__metadata__") {
        tensors.push(tensor_entry(name, info, data_len)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end)); // stable: ties keep file order, as in Python
    let mut pos = 0usize;
    let mut prev: Option<&str> = None;
    for t in &tensors {
        if t.begin != pos {
            let what = if t.begin < pos {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            let after = match prev {
                Some(p) => format!("tensor {}", py_str_repr(p)),
                None => "the start of the data".into(),
            };
            return corrupt(format!(
                "tensor {}: data_offsets [{}, {}] {what} {after} (which ends at {pos})",
                py_str_repr(&t.name),
                t.begin,
                t.end
            ));
        }
        pos = t.end;
        prev = Some(&t.name);
    }
    if pos as u64 != data_len {
        return corrupt(format!(
            "the tensors hold {pos} bytes of data but the file has {data_len} (unexpected \
             trailing bytes)"
        ));
    }
    Ok(Header { tensors, metadata })
}

/// One tensor's entry, checked in the order Python checks it.
fn tensor_entry(name: &str, info: &Value<'_>, data_len: u64) -> Result<TensorInfo> {
    let fail = |m: String| Error::Corrupt(format!("tensor {}: {m}", py_str_repr(name)));
    let keys = ["dtype", "shape", "data_offsets"];
    let has_keys = matches!(info.as_object(), Some(o) if o.len() == 3)
        && keys.iter().all(|k| info.get(k).is_some());
    if !has_keys {
        let got = match info.as_object() {
            Some(o) => {
                let mut names: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable(); // code point order, as Python's sorted()
                let quoted: Vec<String> = names.into_iter().map(py_str_repr).collect();
                format!("[{}]", quoted.join(", "))
            }
            None => info.type_name().into(),
        };
        return Err(fail(format!(
            "needs exactly the keys dtype, shape and data_offsets, got {got}"
        )));
    }
    let field = |k: &str| info.get(k).expect("checked above");
    let dtype_v = field("dtype");
    let Some(dtype) = dtype_v.as_str().and_then(Dtype::from_name) else {
        return Err(fail(format!(
            "unsupported dtype {} (known: {})",
            dtype_v.py_repr(),
            known_dtypes()
        )));
    };
    let shape_v = field("shape");
    let Some(shape) = usizes(shape_v) else {
        return Err(fail(format!(
            "bad shape {} (non-negative ints)",
            shape_v.py_repr()
        )));
    };
    let offsets_v = field("data_offsets");
    let (begin, end) = match usizes(offsets_v).as_deref() {
        Some(&[begin, end]) if begin <= end => (begin, end),
        _ => {
            return Err(fail(format!(
                "bad data_offsets {} (needs [begin, end], 0 <= begin <= end)",
                offsets_v.py_repr()
            )))
        }
    };
    let shape_list = format!("{shape:?}"); // Python's list(shape): "[2, 3]"
    let held = end - begin;
    let need = match need(dtype, &shape) {
        Need::NotWholeBytes => {
            return Err(fail(format!(
                "a {} tensor of shape {shape_list} is not whole bytes",
                dtype.name()
            )))
        }
        Need::TooLarge => "at least 2^125".to_string(),
        Need::Bytes(n) if n == held as u128 => String::new(),
        Need::Bytes(n) => n.to_string(),
    };
    if !need.is_empty() {
        return Err(fail(format!(
            "a {} tensor of shape {shape_list} needs {need} bytes, but its data_offsets \
             [{begin}, {end}] hold {held}",
            dtype.name()
        )));
    }
    if end as u64 > data_len {
        return Err(fail(format!(
            "data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes; the \
             file is truncated)"
        )));
    }
    Ok(TensorInfo {
        name: name.to_owned(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// Python's `_check_shape` for a JSON value: an array of non-negative integers (not booleans,
/// not floats), each fitting a usize.
fn usizes(v: &Value<'_>) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(Value::as_usize).collect()
}

/// Writes `s` as a JSON string the way Python's `json.dumps(..., ensure_ascii=False)` does:
/// `"` and `\` escaped, `\n \r \t \b \f` short, other control characters `\u00xx`, the rest as
/// UTF-8.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string, written as [`encode_header`] writes names.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

/// The header bytes, length prefix included, for tensors `(name, dtype, shape, nbytes)` stored
/// back to back in the order given, exactly as Python's `_encode_header` writes them: compact
/// JSON (`,` and `:`), `__metadata__` first when `metadata` is not empty, padded with spaces to a
/// multiple of 8 bytes so that the data starts aligned.
///
/// Names must be distinct and not `__metadata__`, and metadata keys distinct ([`write()`] checks
/// this); `nbytes` is not checked against dtype and shape.
pub fn encode_header(
    tensors: &[(&str, Dtype, &[usize], usize)],
    metadata: &[(&str, &str)],
) -> Vec<u8> {
    let mut text = String::from("{");
    if !metadata.is_empty() {
        text.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            push_json_str(&mut text, k);
            text.push(':');
            push_json_str(&mut text, v);
        }
        text.push('}');
    }
    let mut pos = 0u128; // no overflow, whatever sizes a caller claims
    for (i, &(name, dtype, shape, nbytes)) in tensors.iter().enumerate() {
        if i > 0 || !metadata.is_empty() {
            text.push(',');
        }
        push_json_str(&mut text, name);
        text.push_str(":{\"dtype\":\"");
        text.push_str(dtype.name());
        text.push_str("\",\"shape\":[");
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        text.push_str(&dims.join(","));
        let end = pos + nbytes as u128;
        text.push_str(&format!("],\"data_offsets\":[{pos},{end}]}}"));
        pos = end;
    }
    text.push('}');
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// The order tensors are stored in (indices into `items`): widest dtype first, then by name, so
/// that every tensor starts aligned to its element size (Python's `_data_order`, the order the
/// safetensors writer uses). Ties keep their order.
pub fn data_order(items: &[(&str, Dtype)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let ((na, da), (nb, db)) = (items[a], items[b]);
        db.bits().cmp(&da.bits()).then_with(|| na.cmp(nb))
    });
    order
}

/// Python's repr of a shape tuple: `()`, `(3,)`, `(2, 3)`.
fn tuple_repr(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// A whole safetensors buffer holding `tensors` (`(name, dtype, shape, bytes)`, bytes in C order,
/// little-endian), stored in [`data_order`], with `metadata`.
///
/// Refused: the name `__metadata__`, repeated tensor names or metadata keys ([`Error::Value`]); a
/// buffer whose length is not what dtype and shape need ([`Error::Shape`]); a total that cannot
/// be allocated ([`Error::Memory`]).
pub fn write(
    tensors: &[(&str, Dtype, &[usize], &[u8])],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut names = HashSet::new();
    for &(name, dtype, shape, data) in tensors {
        if name == "__metadata__" {
            return Err(Error::Value(
                "'__metadata__' is reserved and cannot name a tensor".into(),
            ));
        }
        if !names.insert(name) {
            return Err(Error::Value(format!(
                "tensor name {} appears twice",
                py_str_repr(name)
            )));
        }
        let what = format!(
            "tensor {}: {} tensor of shape {}",
            py_str_repr(name),
            dtype.name(),
            tuple_repr(shape)
        );
        match need(dtype, shape) {
            Need::NotWholeBytes => {
                return Err(Error::Shape(format!("{what} does not fill whole bytes")))
            }
            Need::TooLarge => {
                return Err(Error::Shape(format!(
                    "{what} needs at least 2^125 bytes, got {}",
                    data.len()
                )))
            }
            Need::Bytes(n) if n != data.len() as u128 => {
                return Err(Error::Shape(format!(
                    "{what} needs {n} bytes, got {}",
                    data.len()
                )))
            }
            Need::Bytes(_) => {}
        }
    }
    let mut keys = HashSet::new();
    if let Some((k, _)) = metadata.iter().find(|(k, _)| !keys.insert(*k)) {
        return Err(Error::Value(format!(
            "metadata key {} appears twice",
            py_str_repr(k)
        )));
    }
    let kinds: Vec<(&str, Dtype)> = tensors.iter().map(|t| (t.0, t.1)).collect();
    let order = data_order(&kinds);
    let items: Vec<(&str, Dtype, &[usize], usize)> = order
        .iter()
        .map(|&i| (tensors[i].0, tensors[i].1, tensors[i].2, tensors[i].3.len()))
        .collect();
    let head = encode_header(&items, metadata);
    let total = tensors
        .iter()
        .try_fold(head.len(), |a, t| a.checked_add(t.3.len()));
    let mut out = Vec::new();
    if total.is_none_or(|t| out.try_reserve_exact(t).is_err()) {
        return Err(Error::Memory(format!(
            "cannot allocate a safetensors buffer of {} tensors ({} header bytes and their data)",
            tensors.len(),
            head.len()
        )));
    }
    out.extend_from_slice(&head);
    for &i in &order {
        out.extend_from_slice(tensors[i].3);
    }
    Ok(out)
}

/// Reads a whole safetensors buffer: its checked header and its data section (use
/// [`TensorInfo::bytes`] on it).
pub fn read(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let n = header_len(&bytes[..bytes.len().min(8)], bytes.len() as u64)?;
    let data = &bytes[8 + n..];
    let header = parse_header(&bytes[8..8 + n], data.len() as u64)?;
    Ok((header, data))
}

/// The offset in `haystack` of the only occurrence of `needle`; `Err(count)` otherwise.
fn find_once(haystack: &[u8], needle: &[u8]) -> std::result::Result<usize, usize> {
    let mut hits = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    match (hits.next(), hits.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2),
    }
}

/// The bytes `"dynaq.crc32":"` of the checksum entry, before its digits.
fn seal_prefix() -> String {
    format!("\"{CHECKSUM_KEY}\":\"")
}

/// [`write()`], sealed with a checksum: the metadata gets the entry [`CHECKSUM_KEY`] (after the
/// caller's), holding the CRC-32 (IEEE) of the whole buffer as written with that entry's value
/// `00000000`, as 8 lowercase hex digits. [`verify_seal`] checks it.
///
/// Refused besides what [`write()`] refuses ([`Error::Value`]): metadata that already has the key,
/// or a metadata key ending in `"dynaq.crc32` (it would repeat the entry's bytes in the header).
pub fn write_sealed(
    tensors: &[(&str, Dtype, &[usize], &[u8])],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    if metadata.iter().any(|(k, _)| *k == CHECKSUM_KEY) {
        return Err(Error::Value(format!(
            "metadata key {} is reserved for the checksum",
            py_str_repr(CHECKSUM_KEY)
        )));
    }
    let mut meta = metadata.to_vec();
    meta.push((CHECKSUM_KEY, ZEROS));
    let mut out = write(tensors, &meta)?;
    let n = header_len(&out, out.len() as u64)?;
    let prefix = seal_prefix();
    let at = find_once(&out[8..8 + n], prefix.as_bytes()).map_err(|_| {
        Error::Value(format!(
            "a metadata key ends in '\"{CHECKSUM_KEY}', which would make the checksum entry \
             ambiguous"
        ))
    })?;
    let digits = 8 + at + prefix.len();
    let crc = crc32fast::hash(&out);
    out[digits..digits + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    Ok(out)
}

/// Checks the seal of a buffer [`write_sealed`] wrote, after [`read`] gave its `header`: the
/// checksum entry exists, is 8 lowercase hex digits, appears exactly once in the header as
/// written, and equals the CRC-32 of `bytes` with those digits read as `00000000`.
pub fn verify_seal(bytes: &[u8], header: &Header) -> Result<()> {
    let Some(value) = header.get_metadata(CHECKSUM_KEY) else {
        return corrupt(format!(
            "checksum missing (no {} metadata)",
            py_str_repr(CHECKSUM_KEY)
        ));
    };
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if value.len() != 8 || !value.bytes().all(hex) {
        return corrupt(format!(
            "checksum malformed: {} is not 8 lowercase hex digits",
            py_str_repr(value)
        ));
    }
    let n = header_len(&bytes[..bytes.len().min(8)], bytes.len() as u64)?;
    let prefix = seal_prefix();
    let entry = format!("{prefix}{value}\"");
    let at = match find_once(&bytes[8..8 + n], entry.as_bytes()) {
        Ok(at) => at,
        Err(0) => return corrupt("checksum entry not found as written in the header".into()),
        Err(_) => return corrupt("checksum entry appears more than once in the header".into()),
    };
    let digits = 8 + at + prefix.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..digits]);
    crc.update(ZEROS.as_bytes());
    crc.update(&bytes[digits + 8..]);
    if Ok(crc.finalize()) != u32::from_str_radix(value, 16) {
        return corrupt("checksum mismatch: the bytes were altered".into());
    }
    Ok(())
}

/// [`read`] and [`verify_seal`]: a sealed buffer's header and data section.
pub fn read_sealed(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let (header, data) = read(bytes)?;
    verify_seal(bytes, &header)?;
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of this header text and `data_len` zero bytes of data.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data_len, 0);
        b
    }

    fn message(bytes: &[u8]) -> String {
        match read(bytes) {
            Ok(h) => panic!("accepted: {h:?}"),
            Err(Error::Corrupt(m)) => m,
            Err(e) => panic!("not Corrupt: {e:?}"),
        }
    }

    const KNOWN: &str = "BF16, BOOL, C64, F16, F32, F4, F64, F6_E2M3, F6_E3M2, F8_E4M3, F8_E5M2, \
                         F8_E8M0, I16, I32, I64, I8, U16, U32, U64, U8";

    #[test]
    fn dtype_table() {
        assert_eq!(known_dtypes(), KNOWN);
        for (i, d) in Dtype::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, i);
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("f32"), None);
        assert_eq!((Dtype::Bf16.name(), Dtype::Bf16.bits()), ("BF16", 16));
        assert_eq!((Dtype::F6E3M2.name(), Dtype::F6E3M2.bits()), ("F6_E3M2", 6));
        assert_eq!(Dtype::F4.nbytes(&[3]), None);
        assert_eq!(Dtype::F4.nbytes(&[2, 3]), Some(3));
        assert_eq!(Dtype::F64.nbytes(&[]), Some(8));
        assert_eq!(Dtype::F64.nbytes(&[usize::MAX, usize::MAX, 0]), Some(0));
        assert_eq!(Dtype::U8.nbytes(&[usize::MAX, 2]), None);
        assert_eq!(
            Dtype::F4.nbytes(&[usize::MAX, usize::MAX, usize::MAX]),
            None
        );
    }

    /// `test_not_a_safetensors_file` of tests/test_safetensors.py, and the first BAD_FILES of
    /// tests/test_contract.py.
    #[test]
    fn not_a_safetensors_file() {
        let len = |n: u64| n.to_le_bytes().to_vec();
        let cat = |a: Vec<u8>, b: &[u8]| [a.as_slice(), b].concat();
        for (bytes, want) in [
            (vec![], "not a safetensors file (0 bytes; the 8-byte header length is missing)"),
            (b"abc".to_vec(), "not a safetensors file (3 bytes; the 8-byte header length is missing)"),
            (vec![1, 0, 0], "not a safetensors file (3 bytes; the 8-byte header length is missing)"),
            (len(1_000_000_000), "not a safetensors file (header length 1000000000 is above the 100 MB limit)"),
            (cat(len(1 << 62), b"{}"), "not a safetensors file (header length 4611686018427387904 is above the 100 MB limit)"),
            (cat(len(50), b"{}"), "header length 50 runs past the end of the 10-byte file (truncated, or not a safetensors file)"),
            (cat(len(2), b"\xff\xfe"), "not a safetensors file (header is not UTF-8)"),
            (cat(len(2), b"[]"), "not a safetensors file (header does not start with '{')"),
            (cat(len(3), b"{x}"), "not a safetensors file (header is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
            (len(0), "not a safetensors file (header does not start with '{')"),
            (cat(len(4), b"{abc"), "not a safetensors file (header is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
            (cat(len(3), b" {}"), "not a safetensors file (header does not start with '{')"),
        ] {
            assert_eq!(message(&bytes), want);
        }
        // header_len alone: the prefix may be longer or shorter than 8 bytes.
        assert_eq!(header_len(&cat(len(2), b"{}xx"), 12), Ok(2));
        assert!(header_len(&[2, 0], 12).is_err());
        assert_eq!(
            header_len(&len(MAX_HEADER), 8 + MAX_HEADER),
            Ok(MAX_HEADER as usize)
        );
        assert!(header_len(&len(MAX_HEADER + 1), u64::MAX).is_err());
        assert!(header_len(&len(u64::MAX), u64::MAX).is_err());
    }

    /// `test_header_json_problems`, `test_bad_tensor_entries`,
    /// `test_offsets_truncation_overlap_gap_and_trailing_bytes` (tests/test_safetensors.py) and
    /// BAD_FILES (tests/test_contract.py), with more cases: each message is the one Python's
    /// `_read_header` gives for the same bytes (without its path prefix).
    #[test]
    fn messages_match_python() {
        let known = format!("(known: {KNOWN})");
        let cases: &[(&str, usize, String)] = &[
            // test_header_json_problems
            (r#"{"a": 1, "a": 2}"#, 0, "not a safetensors file (header is not valid JSON: duplicate key 'a')".into()),
            (r#"{"a": NaN}"#, 0, "not a safetensors file (header is not valid JSON: non-standard JSON constant NaN)".into()),
            (r#"{"__metadata__": {"k": 1}}"#, 0, "__metadata__ must map strings to strings".into()),
            (r#"{"__metadata__": ["k"]}"#, 0, "__metadata__ must map strings to strings".into()),
            (r#"{"__metadata__": null}"#, 0, "__metadata__ must map strings to strings".into()),
            // test_bad_tensor_entries
            (r#"{"my.tensor": "nope"}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got str".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2]}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got ['dtype', 'shape']".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got ['data_offsets', 'dtype', 'extra', 'shape']".into()),
            (r#"{"my.tensor": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 'Q4' {known}")),
            (r#"{"my.tensor": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 5 {known}")),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [-2] (non-negative ints)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [2.0] (non-negative ints)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [true], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape [True] (non-negative ints)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape 2 (non-negative ints)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [8, 0] (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0] (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 7]}}"#, 8, "tensor 'my.tensor': bad data_offsets [-1, 7] (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': a F32 tensor of shape [3] needs 12 bytes, but its data_offsets [0, 8] hold 8".into()),
            (r#"{"my.tensor": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}"#, 8, "tensor 'my.tensor': a F4 tensor of shape [3] is not whole bytes".into()),
            // more entries
            (r#"{"my.tensor": null}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got NoneType".into()),
            (r#"{"my.tensor": 1.5}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got float".into()),
            (r#"{"my.tensor": [1]}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got list".into()),
            (r#"{"my.tensor": true}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got bool".into()),
            (r#"{"my.tensor": {}}"#, 8, "tensor 'my.tensor': needs exactly the keys dtype, shape and data_offsets, got []".into()),
            (r#"{"my.tensor": {"dtype": null, "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype None {known}")),
            (r#"{"my.tensor": {"dtype": [1, {"x": "y'"}], "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype [1, {{'x': \"y'\"}}] {known}")),
            (r#"{"my.tensor": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}"#, 8, format!("tensor 'my.tensor': unsupported dtype 'f32' {known}")),
            (r#"{"my.tensor": {"dtype": "F32", "shape": null, "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': bad shape None (non-negative ints)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0, 8.0] (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}"#, 8, "tensor 'my.tensor': bad data_offsets [0, 8, 8] (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F32", "shape": [2], "data_offsets": "0,8"}}"#, 8, "tensor 'my.tensor': bad data_offsets '0,8' (needs [begin, end], 0 <= begin <= end)".into()),
            (r#"{"my.tensor": {"dtype": "F6_E2M3", "shape": [2, 2], "data_offsets": [0, 3]}}"#, 8, "the tensors hold 3 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
            (r#"{"my.tensor": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}"#, 8, "the tensors hold 1 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
            (r#"{"my.tensor": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}}"#, 8, "the tensors hold 2 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
            (r#"{"my.tensor": {"dtype": "U8", "shape": [2, 3, 0], "data_offsets": [0, 0]}}"#, 8, "the tensors hold 0 bytes of data but the file has 8 (unexpected trailing bytes)".into()),
            (r#"{"my.tensor": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}}"#, 8, "tensor 'my.tensor': a F64 tensor of shape [4294967296, 4294967296] needs 147573952589676412928 bytes, but its data_offsets [0, 8] hold 8".into()),
            (r#"{"my.tensor": {"dtype": "C64", "shape": [1], "data_offsets": [0, 16]}}"#, 8, "tensor 'my.tensor': a C64 tensor of shape [1] needs 8 bytes, but its data_offsets [0, 16] hold 16".into()),
            // test_offsets_truncation_overlap_gap_and_trailing_bytes
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#, 13, "tensor 'b': data_offsets [8, 16] run past the end of the data (13 bytes; the file is truncated)".into()),
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, 16, "tensor 'b': data_offsets [4, 12] overlaps tensor 'a' (which ends at 8)".into()),
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}"#, 20, "tensor 'b': data_offsets [12, 20] leaves a gap after tensor 'a' (which ends at 8)".into()),
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, 12, "tensor 'a': data_offsets [4, 12] leaves a gap after the start of the data (which ends at 0)".into()),
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#, 18, "the tensors hold 16 bytes of data but the file has 18 (unexpected trailing bytes)".into()),
            (r#"{}"#, 1, "the tensors hold 0 bytes of data but the file has 1 (unexpected trailing bytes)".into()),
            ("{\"it's\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}, \"say \\\"hi\\\"\\n\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 16, "tensor 'say \"hi\"\\n': data_offsets [4, 12] leaves a gap after the start of the data (which ends at 0)".into()),
            (r#"{"z": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, 17, "the tensors hold 16 bytes of data but the file has 17 (unexpected trailing bytes)".into()),
            // BAD_FILES of tests/test_contract.py
            (r#"{"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}"#, 44, "tensor 'a': data_offsets [0, 48] run past the end of the data (44 bytes; the file is truncated)".into()),
            (r#"{"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 100]}}"#, 100, "tensor 'a': a F32 tensor of shape [4, 3] needs 48 bytes, but its data_offsets [0, 100] hold 100".into()),
            (r#"{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}"#, 4, format!("tensor 'a': unsupported dtype 'Q9' {known}")),
            (r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, 4, "tensor 'a': bad shape [-1] (non-negative ints)".into()),
        ];
        for (header, data_len, want) in cases {
            assert_eq!(&message(&file(header, *data_len)), want, "{header}");
        }
    }

    #[test]
    fn deep_nesting_is_not_valid_json() {
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let m = message(&file(&deep, 0));
        assert!(
            m.starts_with("not a safetensors file (header is not valid JSON: nesting deeper"),
            "{m}"
        );
    }

    /// Where the rules are the reference safetensors library's rather than Python's: integers
    /// beyond u64 are not shapes or offsets (Python accepted them as ints), an element count
    /// beyond u128 bits is refused without printing it, and a lone surrogate is not a string.
    #[test]
    fn huge_integers_and_lone_surrogates() {
        for (header, want) in [
            (
                r#"{"t": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 8]}}"#,
                "tensor 't': bad shape [18446744073709551616] (non-negative ints)",
            ),
            (
                r#"{"t": {"dtype": "F32", "shape": [0, 1000000000000000000000000000000], "data_offsets": [0, 0]}}"#,
                "tensor 't': bad shape [0, 1000000000000000000000000000000] (non-negative ints)",
            ),
            (
                r#"{"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 18446744073709551616]}}"#,
                "tensor 't': bad data_offsets [0, 18446744073709551616] (needs [begin, end], 0 \
                 <= begin <= end)",
            ),
            (
                r#"{"t": {"dtype": "U8", "shape": [18446744073709551615, 18446744073709551615, 2], "data_offsets": [0, 8]}}"#,
                "tensor 't': a U8 tensor of shape [18446744073709551615, 18446744073709551615, 2] \
                 needs at least 2^125 bytes, but its data_offsets [0, 8] hold 8",
            ),
            (
                r#"{"t": {"dtype": "F4", "shape": [18446744073709551615, 18446744073709551615, 3], "data_offsets": [0, 8]}}"#,
                "tensor 't': a F4 tensor of shape [18446744073709551615, 18446744073709551615, 3] \
                 is not whole bytes",
            ),
        ] {
            assert_eq!(message(&file(header, 8)), want);
        }
        // A zero dimension beside huge (u64) ones: zero bytes, as in Python.
        let h = r#"{"t": {"dtype": "F64", "shape": [18446744073709551615, 18446744073709551615, 0], "data_offsets": [0, 0]}}"#;
        let (header, _) = read(&file(h, 0)).unwrap();
        assert_eq!(header.tensors[0].shape, [usize::MAX, usize::MAX, 0]);
        let h = r#"{"\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}"#;
        let m = message(&file(h, 0));
        assert!(
            m.contains("header is not valid JSON: Lone surrogate"),
            "{m}"
        );
    }

    #[test]
    fn valid_headers() {
        // Python's json.dumps spacing, padding spaces, unicode names, `-0`, metadata anywhere.
        let h = r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"format": "pt", "é": "\u00e9"}, "名": {"dtype": "I8", "shape": [-0, 3], "data_offsets": [8, 8]}}   "#;
        let bytes = file(h, 8);
        let (header, data) = read(&bytes).unwrap();
        assert_eq!(data.len(), 8);
        assert_eq!(
            header.metadata,
            [("format".into(), "pt".into()), ("é".into(), "é".into())]
        );
        assert_eq!(header.get_metadata("format"), Some("pt"));
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "名"]);
        let w = header.tensor("w").unwrap();
        assert_eq!(
            (w.dtype, w.shape.as_slice(), w.begin, w.end),
            (Dtype::F32, &[2][..], 0, 8)
        );
        assert_eq!(w.bytes(data), &[0; 8]);
        assert_eq!(header.tensor("名").unwrap().shape, [0, 3]);
        // Ties in (begin, end) keep file order; no tensors and no data is fine.
        let h = r#"{"b": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}"#;
        let (header, _) = read(&file(h, 0)).unwrap();
        assert_eq!(header.tensors[0].name, "b");
        assert_eq!(read(&file("{}", 0)).unwrap().0, Header::default());
    }

    /// Bytes of Python's `_encode_header` for the same arguments.
    #[test]
    fn encode_header_matches_python() {
        type Entry<'a> = (&'a str, Dtype, &'a [usize], usize);
        type Case<'a> = (&'a [Entry<'a>], &'a [(&'a str, &'a str)], &'a [u8]);
        let cases: [Case; 4] = [
            (&[], &[], b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
            (
                &[("a", Dtype::F32, &[2], 8)],
                &[],
                b"8\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  ",
            ),
            (
                &[("w", Dtype::F64, &[2, 3], 48), ("b", Dtype::Bf16, &[], 2), ("s", Dtype::F4, &[0, 4], 0)],
                &[("format", "pt"), ("k\"\\", "v\n\t\r\x08\x0c\x01\x1f\x7f é😀")],
                b"\xf8\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{\"format\":\"pt\",\"k\\\"\\\\\":\"v\\n\\t\\r\\b\\f\\u0001\\u001f\x7f \xc3\xa9\xf0\x9f\x98\x80\"},\"w\":{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[0,48]},\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[48,50]},\"s\":{\"dtype\":\"F4\",\"shape\":[0,4],\"data_offsets\":[50,50]}}       ",
            ),
            (
                &[("名前", Dtype::F8E4M3, &[1], 1), ("x", Dtype::Bool, &[1], 1)],
                &[("a", "")],
                b"\x90\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{\"a\":\"\"},\"\xe5\x90\x8d\xe5\x89\x8d\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]},\"x\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[1,2]}}   ",
            ),
        ];
        for (tensors, metadata, want) in cases {
            let got = encode_header(tensors, metadata);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&got));
            assert_eq!(got.len() % 8, 0);
        }
    }

    /// Python's `_data_order`: widest dtype first, then by name (code points).
    #[test]
    fn data_order_widest_first_then_name() {
        let items = [
            ("b", Dtype::I8),
            ("a", Dtype::F32),
            ("c", Dtype::F64),
            ("é", Dtype::F32),
            ("Z", Dtype::F32),
            ("f4", Dtype::F4),
            ("f6", Dtype::F6E2M3),
            ("a", Dtype::U8),
        ];
        // Python: ['c', 'Z', 'a', 'é', 'a', 'b', 'f6', 'f4']
        assert_eq!(data_order(&items), [2, 4, 1, 3, 7, 0, 6, 5]);
    }

    #[test]
    fn write_then_read() {
        let a: Vec<u8> = (0..24).collect();
        let b = [7u8, 9];
        let bytes = write(
            &[
                ("small", Dtype::U8, &[2], &b),
                ("big", Dtype::F64, &[3], &a),
            ],
            &[("format", "pt")],
        )
        .unwrap();
        let (header, data) = read(&bytes).unwrap();
        assert_eq!(header.metadata, [("format".into(), "pt".into())]);
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["big", "small"]);
        assert_eq!(header.tensor("big").unwrap().bytes(data), a);
        assert_eq!(header.tensor("small").unwrap().bytes(data), b);
        assert_eq!((bytes.len() - data.len()) % 8, 0);
        // Empty.
        let bytes = write(&[], &[]).unwrap();
        assert_eq!(read(&bytes).unwrap().0, Header::default());
    }

    #[test]
    fn write_refuses_bad_arguments() {
        let four = [0u8; 4];
        for (tensors, metadata, want) in [
            (
                vec![("__metadata__", Dtype::U8, &[4][..], &four[..])],
                vec![],
                Error::Value("'__metadata__' is reserved and cannot name a tensor".into()),
            ),
            (
                vec![("x", Dtype::U8, &[4], &four), ("x", Dtype::I8, &[4], &four)],
                vec![],
                Error::Value("tensor name 'x' appears twice".into()),
            ),
            (
                vec![],
                vec![("k", "1"), ("k", "2")],
                Error::Value("metadata key 'k' appears twice".into()),
            ),
            (
                vec![("x", Dtype::F32, &[2], &four)],
                vec![],
                Error::Shape("tensor 'x': F32 tensor of shape (2,) needs 8 bytes, got 4".into()),
            ),
            (
                vec![("x", Dtype::F4, &[3, 1], &four)],
                vec![],
                Error::Shape("tensor 'x': F4 tensor of shape (3, 1) does not fill whole bytes".into()),
            ),
            (
                vec![("x", Dtype::U8, &[usize::MAX, usize::MAX, 2], &four)],
                vec![],
                Error::Shape(format!(
                    "tensor 'x': U8 tensor of shape ({m}, {m}, 2) needs at least 2^125 bytes, got 4",
                    m = usize::MAX
                )),
            ),
            (
                vec![("x", Dtype::U8, &[usize::MAX, 2], &four)],
                vec![],
                Error::Shape(format!(
                    "tensor 'x': U8 tensor of shape ({}, 2) needs {} bytes, got 4",
                    usize::MAX,
                    2 * (usize::MAX as u128)
                )),
            ),
        ] {
            assert_eq!(write(&tensors, &metadata), Err(want.clone()));
            assert_eq!(write_sealed(&tensors, &metadata), Err(want));
        }
    }

    fn sealed() -> Vec<u8> {
        let w: Vec<u8> = (0..12).map(|i| i * 17).collect();
        write_sealed(
            &[
                ("scales", Dtype::F32, &[2], &[0, 0, 128, 63, 0, 0, 0, 64]),
                ("w", Dtype::I8, &[3, 4], &w),
            ],
            &[("dynaq.kind", "weight"), ("dynaq.version", "1")],
        )
        .unwrap()
    }

    #[test]
    fn sealed_round_trip() {
        let bytes = sealed();
        let (header, data) = read_sealed(&bytes).unwrap();
        assert_eq!(header.get_metadata("dynaq.kind"), Some("weight"));
        let crc = header.get_metadata(CHECKSUM_KEY).unwrap();
        assert_eq!(header.metadata.last().unwrap().0, CHECKSUM_KEY);
        assert!(
            crc.len() == 8
                && crc
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let mut zeroed = bytes.clone();
        let at = bytes.windows(8).position(|w| w == crc.as_bytes()).unwrap();
        zeroed[at..at + 8].copy_from_slice(ZEROS.as_bytes());
        assert_eq!(format!("{:08x}", crc32fast::hash(&zeroed)), crc);
        assert_eq!(header.tensor("w").unwrap().bytes(data)[1], 17);
    }

    /// Every single-bit flip of a sealed buffer is refused, by `read` or by `verify_seal`,
    /// without a panic.
    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = sealed();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let r = read(&b).and_then(|(h, _)| verify_seal(&b, &h));
            assert!(matches!(r, Err(Error::Corrupt(_))), "bit {i}: {r:?}");
        }
    }

    #[test]
    fn truncated_or_extended_buffers_are_refused() {
        let bytes = sealed();
        for n in 0..bytes.len() {
            assert!(read_sealed(&bytes[..n]).is_err(), "cut at {n}");
        }
        for extra in [&b"\0"[..], b" ", b"xx", &[0; 8]] {
            let b = [bytes.as_slice(), extra].concat();
            let m = message(&b);
            assert!(m.ends_with("(unexpected trailing bytes)"), "{m}");
        }
    }

    #[test]
    fn seal_problems() {
        let plain = write(&[("x", Dtype::U8, &[1], &[1])], &[("k", "v")]).unwrap();
        let (header, _) = read(&plain).unwrap();
        assert_eq!(
            verify_seal(&plain, &header),
            Err(Error::Corrupt(
                "checksum missing (no 'dynaq.crc32' metadata)".into()
            ))
        );
        for value in ["0000000", "000000000", "0000000A", "0000000g", "é0000000"] {
            let b = write(&[], &[(CHECKSUM_KEY, value)]).unwrap();
            let (h, _) = read(&b).unwrap();
            let want = format!("checksum malformed: '{value}' is not 8 lowercase hex digits");
            assert_eq!(verify_seal(&b, &h), Err(Error::Corrupt(want)));
        }
        // The digits written with an escape: not found as written.
        let h = r#"{"__metadata__":{"dynaq.crc32":"\u00300000000"}}"#;
        let b = file(h, 0);
        let (header, _) = read(&b).unwrap();
        assert_eq!(
            verify_seal(&b, &header),
            Err(Error::Corrupt(
                "checksum entry not found as written in the header".into()
            ))
        );
        // A key ending in `"dynaq.crc32` repeats the entry's bytes.
        let h = r#"{"__metadata__":{"x\"dynaq.crc32":"00000000","dynaq.crc32":"00000000"}}"#;
        let b = file(h, 0);
        let (header, _) = read(&b).unwrap();
        assert_eq!(
            verify_seal(&b, &header),
            Err(Error::Corrupt(
                "checksum entry appears more than once in the header".into()
            ))
        );
        let r = write_sealed(&[], &[("x\"dynaq.crc32", "1")]);
        assert!(matches!(r, Err(Error::Value(m)) if m.contains("ambiguous")));
        let r = write_sealed(&[], &[(CHECKSUM_KEY, "1")]);
        assert_eq!(
            r,
            Err(Error::Value(
                "metadata key 'dynaq.crc32' is reserved for the checksum".into()
            ))
        );
        // A wrong CRC.
        let mut b = sealed();
        let (header, _) = read(&b).unwrap();
        let crc = header.get_metadata(CHECKSUM_KEY).unwrap().to_owned();
        let other = format!("{:08x}", u32::from_str_radix(&crc, 16).unwrap() ^ 1);
        let at = b.windows(8).position(|w| w == crc.as_bytes()).unwrap();
        b[at..at + 8].copy_from_slice(other.as_bytes());
        let (header, _) = read(&b).unwrap();
        assert_eq!(
            verify_seal(&b, &header),
            Err(Error::Corrupt(
                "checksum mismatch: the bytes were altered".into()
            ))
        );
    }
}
