//! Reading what the release before format version 2 wrote: `DYNAQPW` weights (the layers'
//! `DYNAQLY` container, which holds them, is read by the Python package). Nothing writes these
//! any more.
//!
//! `DYNAQPW` version 1 (all integers little-endian):
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

use crate::error::{Error, Result};
use crate::pack::MAX_K;
use crate::weight::PackedWeight;

/// The first bytes of a version-1 serialized weight.
pub const WEIGHT_MAGIC: &[u8; 8] = b"DYNAQPW\0";
const HEADER: usize = 32;

/// A `DYNAQPW` version-1 weight, every field checked.
pub fn packed_weight(bytes: &[u8]) -> Result<PackedWeight> {
    let corrupt = |m: String| Err(Error::Corrupt(format!("PackedWeight bytes: {m}")));
    if bytes.len() < HEADER + 4 {
        return corrupt(format!(
            "{} bytes is shorter than the {}-byte header and checksum of a version-1 weight",
            bytes.len(),
            HEADER + 4
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != 1 {
        return corrupt(format!(
            "format version {version} is not supported (DYNAQPW bytes are version 1; this build \
             writes version {})",
            super::FORMAT_VERSION
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
                "length {} does not match the header ({n} x {k} needs {e}): truncated or padded",
                bytes.len()
            ))
        }
        None => return corrupt(format!("impossible shape {n} x {k}")),
    }
    let body = &bytes[..bytes.len() - 4];
    if crc32fast::hash(body) != u32_at(bytes.len() - 4) {
        return corrupt("checksum mismatch: the bytes were altered".into());
    }
    let (n, k, ns) = (n as usize, k as usize, ns as usize);
    let scales: Vec<f32> = body[HEADER..HEADER + 4 * ns]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let values: Vec<i8> = body[HEADER + 4 * ns..].iter().map(|&b| b as i8).collect();
    PackedWeight::from_quantized(&values, &scales, n, k, per_channel).map_err(|e| match e {
        Error::Memory(_) => e,
        e => Error::Corrupt(format!("PackedWeight bytes: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version-1 bytes of a weight with the given header fields, scales and values, with a
    /// valid checksum.
    pub(crate) fn blob(
        per_channel: bool,
        n: u64,
        k: u64,
        scales: &[f32],
        values: &[i8],
    ) -> Vec<u8> {
        let mut b = WEIGHT_MAGIC.to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
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
    fn reads_version_1() {
        let w = PackedWeight::from_quantized(&[1, -2, 3, 127, -127, 0], &[0.5, 2.0], 2, 3, true)
            .unwrap();
        let v1 = blob(true, 2, 3, &[0.5, 2.0], &[1, -2, 3, 127, -127, 0]);
        assert_eq!(PackedWeight::from_bytes(&v1).unwrap(), w);
    }

    /// Found by the guard-page tests (a flipped top bit of `n`): the count of per-channel scales
    /// times 4 overflowed u64 (a panic in debug builds, a wrapped length in release builds)
    /// instead of being refused.
    #[test]
    fn scale_count_overflow_is_corrupt() {
        for n in [(1u64 << 62) + 2, (1 << 63) + 2, u64::MAX] {
            let r = PackedWeight::from_bytes(&blob(true, n, 1, &[1.0, 1.0], &[]));
            assert!(matches!(r, Err(Error::Corrupt(_))), "n = {n}: {r:?}");
        }
    }

    /// Found while reviewing `from_bytes` against hostile headers: a 40-byte weight of
    /// `2^40 x 0` (per tensor) aborted the process allocating one scale per output channel.
    #[test]
    fn huge_n_with_zero_k_is_an_error_not_an_abort() {
        let r = PackedWeight::from_bytes(&blob(false, 1 << 40, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
        let w = PackedWeight::from_bytes(&blob(false, MAX_K as u64, 0, &[1.0], &[])).unwrap();
        assert_eq!((w.n(), w.k()), (MAX_K, 0));
        let r = PackedWeight::from_bytes(&blob(false, MAX_K as u64 + 1, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
        let r = PackedWeight::from_bytes(&blob(true, 1 << 40, 0, &[1.0], &[]));
        assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
    }
}
