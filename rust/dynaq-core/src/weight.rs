//! `PackedWeight`: a float weight quantized once to symmetric int8, packed for the kernels, and its
//! versioned, ISA-independent serialization.
//!
//! Serialized format, version 1 (all integers little-endian):
//!
//! ```text
//! offset  size        field
//! 0       8           magic b"DYNAQPW\0"
//! 8       4           version (u32) = 1
//! 12      4           flags (u32): bit 0 = per-channel scales; other bits must be 0
//! 16      8           n, out_features (u64)
//! 24      8           k, in_features (u64); with k = 0, n is at most 2^24 (MAX_K)
//! 32      4 * s       scales (f32), s = n when per-channel, else 1; finite and > 0
//! ..      n * k       int8 values, row-major (n, k), each in [-127, 127]
//! ..      4           CRC-32 (IEEE) of every byte before it
//! ```
//!
//! The packed panels are not stored: loading packs the values again, into the one layout every
//! path reads.

use crate::error::{try_zeroed, Error, Result};
use crate::pack::{PackedB, MAX_K};
use crate::quant::{quantize_i8_rows, Granularity, Matrix};
use crate::Isa;

const MAGIC: &[u8; 8] = b"DYNAQPW\0";
/// The serialization version this build writes (and the only one it reads).
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 32;

/// A quantized, packed `torch.nn.Linear`-style weight (`out_features x in_features`).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeight {
    per_channel: bool,
    scales: Vec<f32>,
    scales_full: Vec<f32>,
    packed: PackedB,
}

impl PackedWeight {
    /// Quantizes a float weight (`n x k`, row-major): symmetric int8 in `[-127, 127]`, one scale
    /// per output channel or one in total. A NaN or infinity is always refused (the check runs
    /// once, offline, and a non-finite weight would poison every later call).
    pub fn from_float(isa: Isa, w: &[f32], n: usize, k: usize, per_channel: bool) -> Result<Self> {
        if n.checked_mul(k) != Some(w.len()) {
            return Err(Error::Shape(format!(
                "weight of {} elements does not have shape ({n}, {k})",
                w.len()
            )));
        }
        check_k(k)?;
        let mut q: Vec<i8> = try_zeroed(w.len(), "quantized weight")?;
        let mut scales: Vec<f32> = try_zeroed(if per_channel { n } else { 1 }, "weight scales")?;
        let gran = if per_channel {
            Granularity::Row
        } else {
            Granularity::Tensor
        };
        quantize_i8_rows(isa, Matrix::new(w, n, k)?, gran, true, &mut q, &mut scales)?;
        Self::from_quantized(&q, &scales, n, k, per_channel)
    }

    /// Wraps already-quantized values (`n x k`, row-major, in `[-127, 127]`) and their scales
    /// (`n` of them when `per_channel`, else 1).
    pub fn from_quantized(
        values: &[i8],
        scales: &[f32],
        n: usize,
        k: usize,
        per_channel: bool,
    ) -> Result<Self> {
        if n.checked_mul(k) != Some(values.len()) {
            return Err(Error::Shape(format!(
                "values of {} elements do not have shape ({n}, {k})",
                values.len()
            )));
        }
        check_k(k)?;
        let want = if per_channel { n } else { 1 };
        if scales.len() != want {
            return Err(Error::Shape(format!(
                "scales has {} elements; expected {want} ({})",
                scales.len(),
                if per_channel {
                    "one per output channel"
                } else {
                    "per tensor"
                }
            )));
        }
        if let Some(i) = values.iter().position(|&v| v == i8::MIN) {
            return Err(Error::Value(format!(
                "values[{}, {}] is -128; weights must lie in [-127, 127] (symmetric int8)",
                i / k.max(1),
                i % k.max(1)
            )));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Value(format!(
                "scales must be finite and positive, found {s}"
            )));
        }
        // `n` is not bounded by the input when `k = 0` (a 40-byte serialized weight can claim
        // 2^40 output channels): the allocation must fail as an error, not abort.
        let scales_full = if per_channel {
            scales.to_vec()
        } else {
            let mut full: Vec<f32> = try_zeroed(n, "weight scales")?;
            full.fill(scales[0]);
            full
        };
        Ok(PackedWeight {
            per_channel,
            scales: scales.to_vec(),
            scales_full,
            packed: PackedB::from_nk(values, n, k)?,
        })
    }

    /// `out_features`.
    pub fn n(&self) -> usize {
        self.packed.n()
    }
    /// `in_features`.
    pub fn k(&self) -> usize {
        self.packed.k()
    }
    /// Whether there is one scale per output channel.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }
    /// The scales as stored (`n` or 1).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// One scale per output channel.
    pub fn scales_full(&self) -> &[f32] {
        &self.scales_full
    }
    /// The packed panels.
    pub fn packed(&self) -> &PackedB {
        &self.packed
    }
    /// Bytes held in memory.
    pub fn nbytes(&self) -> usize {
        self.packed.nbytes() + 4 * (self.scales.len() + self.scales_full.len())
    }
    /// The int8 values, row-major `(n, k)`.
    pub fn values(&self) -> Vec<i8> {
        self.packed.unpack_nk()
    }
    /// `values * scale`, row-major `(n, k)`.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.k();
        self.values()
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * self.scales_full[i / k.max(1)])
            .collect()
    }

    /// The serialized form (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (n, k) = (self.n(), self.k());
        let mut out = Vec::with_capacity(HEADER + 4 * self.scales.len() + n * k + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.per_channel as u32).to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(k as u64).to_le_bytes());
        for s in &self.scales {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend(self.values().iter().map(|&v| v as u8));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads the serialized form, checking every field, and packs the values.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |m: String| Err(Error::Corrupt(format!("PackedWeight bytes: {m}")));
        if bytes.len() < HEADER + 4 {
            return corrupt(format!(
                "{} bytes is shorter than the {}-byte header and checksum",
                bytes.len(),
                HEADER + 4
            ));
        }
        if &bytes[..8] != MAGIC {
            return corrupt("bad magic (not a dynaq PackedWeight)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return corrupt(format!(
                "format version {version} is not supported (this build reads version \
                 {FORMAT_VERSION})"
            ));
        }
        let flags = u32_at(12);
        if flags & !1 != 0 {
            return corrupt(format!("unknown flags {flags:#x}"));
        }
        let per_channel = flags & 1 == 1;
        let (n, k) = (u64_at(16), u64_at(24));
        if k == 0 && n > MAX_K as u64 {
            // Every other shape is bounded by the bytes it needs; one with no values is not, and
            // a 40-byte header could make the loader allocate (and zero) gigabytes.
            return corrupt(format!(
                "{n} out_features with in_features = 0 is implausible (at most {MAX_K} without \
                 values)"
            ));
        }
        let ns = if per_channel { n } else { 1 };
        let expected = n
            .checked_mul(k)
            .and_then(|nk| nk.checked_add(ns.checked_mul(4)?))
            .and_then(|v| v.checked_add((HEADER + 4) as u64));
        match expected {
            Some(e) if e == bytes.len() as u64 => {}
            Some(e) => {
                return corrupt(format!(
                    "length {} does not match the header ({n} x {k} needs {e}): truncated or \
                     padded",
                    bytes.len()
                ))
            }
            None => return corrupt(format!("impossible shape {n} x {k}")),
        }
        let body = &bytes[..bytes.len() - 4];
        let stored = u32_at(bytes.len() - 4);
        if crc32fast::hash(body) != stored {
            return corrupt("checksum mismatch: the bytes were altered".into());
        }
        let (n, k, ns) = (n as usize, k as usize, ns as usize);
        let scales: Vec<f32> = body[HEADER..HEADER + 4 * ns]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let values: Vec<i8> = body[HEADER + 4 * ns..].iter().map(|&b| b as i8).collect();
        Self::from_quantized(&values, &scales, n, k, per_channel).map_err(|e| match e {
            Error::Memory(_) => e,
            e => Error::Corrupt(format!("PackedWeight bytes: {e}")),
        })
    }
}

fn check_k(k: usize) -> Result<()> {
    if k > MAX_K {
        return Err(Error::Shape(format!(
            "in_features = {k} exceeds the supported maximum {MAX_K}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialized bytes of a weight with the given header fields, scales and values, with a
    /// valid checksum.
    fn blob(per_channel: bool, n: u64, k: u64, scales: &[f32], values: &[i8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(per_channel as u32).to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&k.to_le_bytes());
        for s in scales {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b.extend(values.iter().map(|&v| v as u8));
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn round_trip() {
        let w = PackedWeight::from_quantized(&[1, -2, 3, 127, -127, 0], &[0.5, 2.0], 2, 3, true)
            .unwrap();
        assert_eq!(PackedWeight::from_bytes(&w.to_bytes()).unwrap(), w);
        assert_eq!(
            PackedWeight::from_bytes(&blob(true, 2, 3, &[0.5, 2.0], &[1, -2, 3, 127, -127, 0]))
                .unwrap(),
            w
        );
    }

    /// Found by the guard-page tests (a flipped top bit of `n`): the count of per-channel scales
    /// times 4 overflowed u64 (a panic in debug builds, a wrapped length in
    /// release builds) instead of being refused.
    #[test]
    fn scale_count_overflow_is_corrupt() {
        for n in [(1u64 << 62) + 2, (1 << 63) + 2, u64::MAX] {
            let r = PackedWeight::from_bytes(&blob(true, n, 1, &[1.0, 1.0], &[]));
            assert!(matches!(r, Err(Error::Corrupt(_))), "n = {n}: {r:?}");
        }
    }

    /// Found while reviewing `from_bytes` against hostile headers: a 40-byte weight of
    /// `2^40 x 0` (per tensor) aborted the process allocating one scale per output channel. It
    /// is refused as corrupt now (more than `MAX_K` outputs without values), and the same shape
    /// through the constructors is a `Memory` error, as every impossible allocation.
    #[test]
    fn huge_n_with_zero_k_is_an_error_not_an_abort() {
        let r = PackedWeight::from_bytes(&blob(false, 1 << 40, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
        // The bound on a shape without values: 2^24 loads, one more does not.
        let w = PackedWeight::from_bytes(&blob(false, MAX_K as u64, 0, &[1.0], &[])).unwrap();
        assert_eq!((w.n(), w.k()), (MAX_K, 0));
        let r = PackedWeight::from_bytes(&blob(false, MAX_K as u64 + 1, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
        // Per channel, the scales themselves must be in the bytes: a length error.
        let r = PackedWeight::from_bytes(&blob(true, 1 << 40, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
        let r = PackedWeight::from_quantized(&[], &[1.0], 1 << 40, 0, false);
        assert!(matches!(r, Err(Error::Memory(_))), "{r:?}");
        let r = PackedWeight::from_float(Isa::Scalar, &[], 1 << 40, 0, true);
        assert!(matches!(r, Err(Error::Memory(_))), "{r:?}");
    }
}
