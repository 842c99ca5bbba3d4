//! `PackedWeight`: a float weight quantized once and packed for the kernels, to symmetric int8
//! ([`Int8Weight`]) or to 4 bits ([`Int4Weight`], groups along K or per channel).
//!
//! The packed layouts (`K4N16` panels with column sums, [`crate::pack`]; `K8N16` nibbles,
//! [`crate::int4`]) are the same on every CPU and path; they are never stored: [`crate::format`]
//! stores the values and the scales as plain tensors, and loading packs them again.

use crate::error::{try_zeroed, Error, Result};
use crate::int4::quant::Method;
use crate::int4::Int4Weight;
use crate::pack::{PackedB, MAX_K};
use crate::quant::{quantize_i8_rows, Granularity, Matrix};
use crate::Isa;

/// A quantized, packed `torch.nn.Linear`-style weight (`out_features x in_features`): int8 or
/// 4-bit.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeight {
    inner: Inner,
}

#[derive(Clone, Debug, PartialEq)]
enum Inner {
    Int8(Int8Weight),
    Int4(Int4Weight),
}

/// A symmetric int8 weight: values in `[-127, 127]`, one scale per output channel or one in
/// all, packed `K4N16` with column sums.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Weight {
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
        check_scales(scales, n, per_channel)?;
        if let Some(i) = values.iter().position(|&v| v == i8::MIN) {
            return Err(Error::Value(format!(
                "values[{}, {}] is -128; weights must lie in [-127, 127] (symmetric int8)",
                i / k.max(1),
                i % k.max(1)
            )));
        }
        Self::with_scales(PackedB::from_nk(values, n, k)?, scales, per_channel)
    }

    /// Takes panels already in the packed layout (as [`PackedB::data`] of another weight gave
    /// them, e.g. kept in a torch buffer), with the scales as
    /// [`PackedWeight::from_quantized`] takes them.
    pub fn from_panels(
        panels: Vec<i8>,
        scales: &[f32],
        n: usize,
        k: usize,
        per_channel: bool,
    ) -> Result<Self> {
        check_k(k)?;
        check_scales(scales, n, per_channel)?;
        if panels.contains(&i8::MIN) {
            return Err(Error::Value(
                "packed panels hold -128; weights must lie in [-127, 127] (symmetric int8)".into(),
            ));
        }
        Self::with_scales(PackedB::from_panels(panels, n, k)?, scales, per_channel)
    }

    /// Quantizes a float weight (`n x k`, row-major) to 4 bits: groups of `group` (32, 64 or
    /// 128, dividing `k`) along K or per channel (`None`), asymmetric or symmetric, grids by
    /// `method` ([`crate::int4::quant`]), the search weighted by a calibration `importance` per
    /// column when given ([`Int4Weight::from_float`]). A NaN or infinity is refused.
    pub fn from_float_int4(
        w: &[f32],
        n: usize,
        k: usize,
        group: Option<usize>,
        symmetric: bool,
        method: Method,
        importance: Option<&[f32]>,
    ) -> Result<Self> {
        check_k(k)?;
        Int4Weight::from_float(w, n, k, group, symmetric, method, importance).map(Self::from_int4)
    }

    /// A 4-bit weight.
    pub fn from_int4(w: Int4Weight) -> Self {
        PackedWeight {
            inner: Inner::Int4(w),
        }
    }

    /// The int8 weight, when it is one.
    pub fn int8(&self) -> Option<&Int8Weight> {
        match &self.inner {
            Inner::Int8(w) => Some(w),
            Inner::Int4(_) => None,
        }
    }

    /// The 4-bit weight, when it is one.
    pub fn int4(&self) -> Option<&Int4Weight> {
        match &self.inner {
            Inner::Int4(w) => Some(w),
            Inner::Int8(_) => None,
        }
    }

    /// 8 or 4.
    pub fn bits(&self) -> u32 {
        match &self.inner {
            Inner::Int8(_) => 8,
            Inner::Int4(_) => 4,
        }
    }

    /// The group size along K of a group-wise 4-bit weight; `None` per channel (or per
    /// tensor) and for int8.
    pub fn group_size(&self) -> Option<usize> {
        match &self.inner {
            Inner::Int4(w) if !w.per_channel() => Some(w.group()),
            _ => None,
        }
    }

    /// Whether the grid is symmetric about zero (always so for int8).
    pub fn symmetric(&self) -> bool {
        match &self.inner {
            Inner::Int8(_) => true,
            Inner::Int4(w) => w.symmetric(),
        }
    }

    /// `out_features`.
    pub fn n(&self) -> usize {
        match &self.inner {
            Inner::Int8(w) => w.packed.n(),
            Inner::Int4(w) => w.shape().0,
        }
    }
    /// `in_features`.
    pub fn k(&self) -> usize {
        match &self.inner {
            Inner::Int8(w) => w.packed.k(),
            Inner::Int4(w) => w.shape().1,
        }
    }
    /// Whether the scales are per output channel or finer (int8 may have one per tensor;
    /// 4-bit weights always have one per channel or per group).
    pub fn per_channel(&self) -> bool {
        match &self.inner {
            Inner::Int8(w) => w.per_channel,
            Inner::Int4(_) => true,
        }
    }
    /// Bytes held in memory.
    pub fn nbytes(&self) -> usize {
        match &self.inner {
            Inner::Int8(w) => w.nbytes(),
            Inner::Int4(w) => w.nbytes(),
        }
    }
    /// The weight as the kernels see it, row-major `(n, k)` float32.
    pub fn dequantize(&self) -> Vec<f32> {
        match &self.inner {
            Inner::Int8(w) => w.dequantize(),
            Inner::Int4(w) => w.dequantize(),
        }
    }

    /// The weight of `packed` with `scales` (checked by [`check_scales`]).
    fn with_scales(packed: PackedB, scales: &[f32], per_channel: bool) -> Result<Self> {
        let n = packed.n();
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
            inner: Inner::Int8(Int8Weight {
                per_channel,
                scales: scales.to_vec(),
                scales_full,
                packed,
            }),
        })
    }
}

impl Int8Weight {
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
}

/// `n` scales per channel or one per tensor, each finite and positive.
fn check_scales(scales: &[f32], n: usize, per_channel: bool) -> Result<()> {
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
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::Value(format!(
            "scales must be finite and positive, found {s}"
        )));
    }
    Ok(())
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
    use crate::Isa;

    #[test]
    fn round_trip() {
        let w = PackedWeight::from_quantized(&[1, -2, 3, 127, -127, 0], &[0.5, 2.0], 2, 3, true)
            .unwrap();
        assert_eq!(PackedWeight::from_bytes(&w.to_bytes()).unwrap(), w);
        let t =
            PackedWeight::from_quantized(&[1, -2, 3, 127, -127, 0], &[0.5], 2, 3, false).unwrap();
        let back = PackedWeight::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(back, t);
        assert!(!back.per_channel());
    }

    #[test]
    fn from_panels_round_trips_and_checks() {
        let w = PackedWeight::from_quantized(&[1, -2, 3, 127, -127, 0], &[0.5, 2.0], 2, 3, true)
            .unwrap();
        let data = w.int8().unwrap().packed().data().to_vec();
        let back = PackedWeight::from_panels(data.clone(), &[0.5, 2.0], 2, 3, true).unwrap();
        assert_eq!(back, w);
        let mut bad = data.clone();
        bad[0] = i8::MIN;
        assert!(PackedWeight::from_panels(bad, &[0.5, 2.0], 2, 3, true).is_err());
        assert!(PackedWeight::from_panels(data.clone(), &[0.5], 2, 3, true).is_err());
        assert!(PackedWeight::from_panels(data, &[0.5, f32::NAN], 2, 3, true).is_err());
    }

    /// The same shape through the constructors is a `Memory` error, as every impossible
    /// allocation (the serialized forms refuse it as implausible first).
    #[test]
    fn huge_n_with_zero_k_is_a_memory_error() {
        let r = PackedWeight::from_quantized(&[], &[1.0], 1 << 40, 0, false);
        assert!(matches!(r, Err(Error::Memory(_))), "{r:?}");
        let r = PackedWeight::from_float(Isa::Scalar, &[], 1 << 40, 0, true);
        assert!(matches!(r, Err(Error::Memory(_))), "{r:?}");
    }
}
