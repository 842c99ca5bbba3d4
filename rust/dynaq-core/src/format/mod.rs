//! dynaq's one on-disk form: quantized weights as what they are, plain named tensors in the
//! safetensors layout ([`crate::safetensors`]), under one format version, [`FORMAT_VERSION`].
//!
//! An int8 weight stored under the name `W` is two tensors: `W`, the int8 values (`I8`, shape
//! `(out_features, in_features)`, each in `[-127, 127]`), and `W_scale` ([`scale_name`]), the
//! float32 scales (`F32`, shape `(out_features,)` per channel or `()` per tensor). A 4-bit
//! weight is `W` as `U8` (two rows' levels per byte) and `W_scale`, with `W_min`, `W_gscale`
//! and `W_gmin` as it needs them ([`crate::int4::format`]). Anything else (biases, calibrated
//! input scales) is a tensor of its own. The same names serve every
//! container: `PackedWeight.to_bytes()` (a blob holding `weight` and `weight_scale`), the layers'
//! bytes, the torch modules' state dicts (`weight`, `weight_scale`, `bias` as ordinary tensors)
//! and the files `python -m dynaq quantize` writes.
//!
//! Blobs (weights, layers) are safetensors buffers whose metadata says what they hold:
//! [`FORMAT_KEY`] (the version), [`KIND_KEY`] (`PackedWeight`, `Linear`, `LSTM`, ...),
//! [`QUANTIZED_KEY`] (a JSON list of the weights' names), any extra the kind needs (a layer's
//! configuration), and a checksum ([`crate::safetensors::write_sealed`]), so that truncated,
//! padded or altered bytes are refused. [`legacy`] reads what the release before version 2
//! wrote (`DYNAQPW` weights).

pub mod legacy;

use crate::error::{Error, Result};
use crate::int4::format as int4_format;
use crate::int4::Int4Weight;
use crate::json::{self, Value};
use crate::pack::MAX_K;
use crate::safetensors::{self, Dtype, Header, TensorInfo};
use crate::weight::PackedWeight;

/// The version of every form dynaq writes (blobs, state dicts, files) while it holds int8
/// weights only. Version 1 was the release before it: `DYNAQPW`/`DYNAQLY` blobs, one opaque
/// `uint8` tensor per torch module, `.dynaq_scale` tensors in files.
pub const FORMAT_VERSION: u32 = 2;
/// The version written when some weight is 4-bit (a reader of version 2 would not know the
/// `U8` form of `W`). Readers take versions 2 and 3 alike: the tensors say what they hold.
pub const FORMAT_VERSION_INT4: u32 = 3;

/// The version to write for these weights: [`FORMAT_VERSION_INT4`] when one is 4-bit.
pub fn version_for<'a>(weights: impl IntoIterator<Item = &'a PackedWeight>) -> u32 {
    if weights.into_iter().any(|w| w.bits() == 4) {
        FORMAT_VERSION_INT4
    } else {
        FORMAT_VERSION
    }
}
/// The metadata key of the format version.
pub const FORMAT_KEY: &str = "dynaq.format";
/// The metadata key of what a blob holds.
pub const KIND_KEY: &str = "dynaq.kind";
/// The metadata key of the names of the quantized weights (a JSON list of strings).
pub const QUANTIZED_KEY: &str = "dynaq.quantized";
/// What the scales of the weight `W` are called: `W_scale`.
pub const SCALE_SUFFIX: &str = "_scale";

/// The name of the scales of the weight `weight`.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}{SCALE_SUFFIX}")
}

/// A tensor to store: name, dtype, shape and its bytes (little-endian, C order).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name in the container.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// The elements' bytes.
    pub data: Vec<u8>,
}

impl PackedWeight {
    /// The shape its scales are stored with: `(out_features,)` per channel, `()` per tensor.
    pub fn scale_shape(&self) -> Vec<usize> {
        if self.per_channel() {
            vec![self.n()]
        } else {
            Vec::new()
        }
    }

    /// The tensors that store this weight under `name`: its values and its scales (and, for
    /// a 4-bit weight, its minima and group codes).
    pub fn tensors(&self, name: &str) -> Vec<Tensor> {
        let w = match (self.int8(), self.int4()) {
            (Some(w), _) => w,
            (None, Some(w4)) => return w4.tensors(name),
            (None, None) => unreachable!("a weight is int8 or 4-bit"),
        };
        let values: Vec<u8> = w.values().iter().map(|&v| v as u8).collect();
        let scales: Vec<u8> = w.scales().iter().flat_map(|s| s.to_le_bytes()).collect();
        vec![
            Tensor {
                name: name.to_string(),
                dtype: Dtype::I8,
                shape: vec![self.n(), self.k()],
                data: values,
            },
            Tensor {
                name: scale_name(name),
                dtype: Dtype::F32,
                shape: self.scale_shape(),
                data: scales,
            },
        ]
    }

    /// A weight from its stored values `(n, k)` and scales of shape `scale_shape`: `(n,)` per
    /// channel, `()` per tensor (or `(1,)`, as version 1 files stored it, when `n != 1`).
    pub fn from_stored(
        values: &[i8],
        n: usize,
        k: usize,
        scales: &[f32],
        scale_shape: &[usize],
    ) -> Result<Self> {
        let per_channel = match scale_shape {
            [] => false,
            [1] if n != 1 => false,
            [c] if *c == n => true,
            other => {
                return Err(Error::Shape(format!(
                    "scales of shape {other:?} do not fit a weight of shape ({n}, {k}): one per \
                     output channel ({n},) or one in all ()"
                )))
            }
        };
        if k == 0 && n > MAX_K {
            // Every other shape is bounded by the bytes it needs; one with no values is not,
            // and a few bytes of header could make the loader allocate (and zero) gigabytes.
            return Err(Error::Corrupt(format!(
                "{n} out_features with in_features = 0 is implausible (at most {MAX_K} without \
                 values)"
            )));
        }
        PackedWeight::from_quantized(values, scales, n, k, per_channel)
    }
}

/// Writes a sealed blob of `kind` holding `weights` (each as its two tensors) and `tensors`,
/// with `extra` metadata (e.g. a layer's configuration).
pub fn write_blob(
    kind: &str,
    weights: &[(&str, &PackedWeight)],
    tensors: &[Tensor],
    extra: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut all: Vec<Tensor> = Vec::with_capacity(2 * weights.len() + tensors.len());
    for (name, w) in weights {
        all.extend(w.tensors(name));
    }
    all.extend(tensors.iter().cloned());
    let names: Vec<&str> = weights.iter().map(|(n, _)| *n).collect();
    let version = version_for(weights.iter().map(|(_, w)| *w)).to_string();
    let quantized = json_string_list(&names);
    let mut metadata = vec![
        (FORMAT_KEY, version.as_str()),
        (KIND_KEY, kind),
        (QUANTIZED_KEY, quantized.as_str()),
    ];
    metadata.extend_from_slice(extra);
    let items: Vec<(&str, Dtype, &[usize], &[u8])> = all
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.dtype,
                t.shape.as_slice(),
                t.data.as_slice(),
            )
        })
        .collect();
    safetensors::write_sealed(&items, &metadata)
}

/// `["a","b"]`: names as a compact JSON list.
pub fn json_string_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| safetensors::json_str(n)).collect();
    format!("[{}]", quoted.join(","))
}

/// A blob read and checked by [`read_blob`].
pub struct Blob<'a> {
    header: Header,
    version: u32,
    data: &'a [u8],
    quantized: Vec<String>,
    what: String,
}

/// Reads a blob that [`write_blob`] wrote for `kind`: the seal, the format version, the kind and
/// the list of quantized weights are checked here, each weight's tensors by [`Blob::weight`].
/// Errors are [`Error::Corrupt`] prefixed with `"{kind} bytes: "`.
pub fn read_blob<'a>(bytes: &'a [u8], kind: &str) -> Result<Blob<'a>> {
    let what = format!("{kind} bytes");
    let prefix = |e: Error| match e {
        Error::Memory(_) => e,
        e => Error::Corrupt(format!("{what}: {e}")),
    };
    let (header, data) = safetensors::read_sealed(bytes).map_err(prefix)?;
    let corrupt = |m: String| Error::Corrupt(format!("{what}: {m}"));
    let version = header
        .get_metadata(FORMAT_KEY)
        .ok_or_else(|| corrupt(format!("no {FORMAT_KEY} metadata (not a dynaq blob)")))?;
    let version = check_version(version).map_err(&corrupt)?;
    match header.get_metadata(KIND_KEY) {
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(corrupt(format!(
                "holds a {}, not a {}",
                json::py_str_repr(k),
                json::py_str_repr(kind)
            )))
        }
        None => return Err(corrupt(format!("no {KIND_KEY} metadata"))),
    }
    let quantized =
        quantized_names(header.get_metadata(QUANTIZED_KEY).unwrap_or("[]")).map_err(&corrupt)?;
    Ok(Blob {
        header,
        version,
        data,
        quantized,
        what,
    })
}

/// The version, when it is one this build writes (2, and 3 with 4-bit weights); the message
/// otherwise.
pub fn check_version(text: &str) -> std::result::Result<u32, String> {
    match text.parse::<u32>() {
        Ok(v) if v == FORMAT_VERSION || v == FORMAT_VERSION_INT4 => Ok(v),
        Ok(v) => Err(format!(
            "format version {v} is not supported (this build reads versions {FORMAT_VERSION} and \
             {FORMAT_VERSION_INT4}, and the DYNAQPW/DYNAQLY bytes of version 1)"
        )),
        Err(_) => Err(format!("bad {FORMAT_KEY} metadata {text:?}")),
    }
}

/// The names in a [`QUANTIZED_KEY`] value (a JSON list of distinct strings).
pub fn quantized_names(text: &str) -> std::result::Result<Vec<String>, String> {
    let bad = || format!("bad {QUANTIZED_KEY} metadata (a JSON list of names)");
    let value = json::parse(text).map_err(|_| bad())?;
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in &items {
        let name = item.as_str().ok_or_else(bad)?;
        if names.iter().any(|n| n == name) {
            return Err(format!("{QUANTIZED_KEY} names {name:?} twice"));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

impl<'a> Blob<'a> {
    /// The names of the quantized weights, as listed.
    pub fn quantized(&self) -> &[String] {
        &self.quantized
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.header.get_metadata(key)
    }

    /// Every tensor with its bytes, in data order (the two tensors of each weight included).
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorInfo, &'a [u8])> + '_ {
        self.header.tensors.iter().map(|t| (t, t.bytes(self.data)))
    }

    /// Whether `name` is one of the tensors that store a quantized weight.
    pub fn is_weight_part(&self, name: &str) -> bool {
        self.quantized
            .iter()
            .any(|w| weight_part_names(w).iter().any(|p| p == name))
    }

    /// The quantized weight stored under `name`, every field checked.
    pub fn weight(&self, name: &str) -> Result<PackedWeight> {
        let corrupt = |m: String| Error::Corrupt(format!("{}: weight {name:?}: {m}", self.what));
        let values = self
            .header
            .tensor(name)
            .ok_or_else(|| corrupt("missing".into()))?;
        if values.dtype == Dtype::U8 && self.version >= FORMAT_VERSION_INT4 {
            let find = |t: &str| {
                self.header
                    .tensor(t)
                    .map(|i| (i.dtype, i.shape.as_slice(), i.bytes(self.data)))
            };
            return Int4Weight::from_tensors(name, find)
                .map(PackedWeight::from_int4)
                .map_err(|e| match e {
                    Error::Memory(_) => e,
                    e => corrupt(e.to_string()),
                });
        }
        let scale = scale_name(name);
        let scales = self
            .header
            .tensor(&scale)
            .ok_or_else(|| corrupt(format!("its scales {scale:?} are missing")))?;
        weight_from_tensors(
            values,
            values.bytes(self.data),
            scales,
            scales.bytes(self.data),
        )
        .map_err(|e| match e {
            Error::Memory(_) => e,
            e => corrupt(e.to_string()),
        })
    }
}

/// The suffixes of the tensors that store a weight `W` beside `W` itself: `W_scale` (every
/// weight), `W_min`, `W_gscale`, `W_gmin` (4-bit weights that need them).
pub const WEIGHT_PART_SUFFIXES: [&str; 4] = [
    SCALE_SUFFIX,
    int4_format::MIN_SUFFIX,
    int4_format::GSCALE_SUFFIX,
    int4_format::GMIN_SUFFIX,
];

/// Every tensor name a weight stored under `name` may use (int8: the first two).
pub fn weight_part_names(name: &str) -> [String; 5] {
    let [a, b, c, d] = WEIGHT_PART_SUFFIXES.map(|s| format!("{name}{s}"));
    [name.to_string(), a, b, c, d]
}

/// A weight from its two stored tensors (dtypes and shapes checked).
pub fn weight_from_tensors(
    values: &TensorInfo,
    value_bytes: &[u8],
    scales: &TensorInfo,
    scale_bytes: &[u8],
) -> Result<PackedWeight> {
    let &[n, k] = values.shape.as_slice() else {
        return Err(Error::Corrupt(format!(
            "values must be a 2-D I8 tensor, got shape {:?}",
            values.shape
        )));
    };
    if values.dtype != Dtype::I8 {
        return Err(Error::Corrupt(format!(
            "values must be I8, got {}",
            values.dtype.name()
        )));
    }
    if scales.dtype != Dtype::F32 {
        return Err(Error::Corrupt(format!(
            "scales must be F32, got {}",
            scales.dtype.name()
        )));
    }
    let v: Vec<i8> = value_bytes.iter().map(|&b| b as i8).collect();
    let s: Vec<f32> = scale_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    PackedWeight::from_stored(&v, n, k, &s, &scales.shape)
}

impl PackedWeight {
    /// The serialized form: a sealed blob of kind `PackedWeight` holding `weight` and
    /// `weight_scale` (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        write_blob("PackedWeight", &[("weight", self)], &[], &[])
            .expect("a packed weight's own tensors always fit their shapes")
    }

    /// Reads bytes written by [`PackedWeight::to_bytes`] (or, by [`legacy`], by the release
    /// before format version 2), checking every field.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.starts_with(legacy::WEIGHT_MAGIC) {
            return legacy::packed_weight(bytes);
        }
        let blob = read_blob(bytes, "PackedWeight")?;
        let extra: Vec<&str> = blob
            .tensors()
            .map(|(t, _)| t.name.as_str())
            .filter(|n| !blob.is_weight_part(n))
            .collect();
        if blob.quantized() != ["weight"] || !extra.is_empty() {
            return Err(Error::Corrupt(format!(
                "PackedWeight bytes: must hold exactly the weight \"weight\" and its scales, got \
                 quantized {:?} and other tensors {extra:?}",
                blob.quantized()
            )));
        }
        blob.weight("weight")
    }
}
