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
mod tests;
