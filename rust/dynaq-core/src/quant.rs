//! The quantization front end: ranges, parameters and values, per tensor or per row, on the
//! kernels of a chosen path, split over threads for large inputs.

use crate::error::{Error, Result};
use crate::kernels::{quant_kernels, QuantKernels};
use crate::reference::{self, MinMax};
use crate::Isa;
use rayon::prelude::*;

/// One scale (and zero point) for the whole tensor, or one per row (the last axis reduced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for everything.
    Tensor,
    /// One scale per row: a row's values never depend on the other rows.
    Row,
}

/// How asymmetric uint8 parameters are chosen from a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Exactly ONNX Runtime's `DynamicQuantizeLinear` ([`reference::dql_params`]).
    Onnx,
    /// Ours: the same where meaningful, repaired at float32 overflow/underflow
    /// ([`reference::asym_params`]).
    Robust,
}

impl Scheme {
    fn params(self, mm: MinMax) -> (f32, u8) {
        match self {
            Scheme::Onnx => reference::dql_params(mm.min, mm.max),
            Scheme::Robust => reference::asym_params(mm.min, mm.max),
        }
    }
}

/// One row of a per-row uint8 quantization: (index, (((input, output), scale), zero point)).
type RowU8<'a> = (
    usize,
    (((&'a [f32], &'a mut [u8]), &'a mut f32), &'a mut u8),
);
/// One row of a per-row int8 quantization: (index, ((input, output), scale)).
type RowI8<'a> = (usize, ((&'a [f32], &'a mut [i8]), &'a mut f32));

/// Below this many elements, quantization stays on the calling thread (thread hand-off costs
/// more than it saves: ~5 us against ~1 GB/s-per-core-us of work).
const PARALLEL_MIN: usize = 1 << 18;

fn nonfinite(what: &str, row: Option<usize>) -> Error {
    let at = row.map_or(String::new(), |r| format!(" (row {r})"));
    Error::NonFinite(format!(
        "{what} contains NaN or infinity{at}; their quantization is meaningless (pass \
         check_finite=False to skip this check at your own risk)"
    ))
}

/// Min/max of all of `x`, in parallel for large inputs.
pub fn minmax_all(q: &QuantKernels, x: &[f32]) -> MinMax {
    if x.len() < PARALLEL_MIN {
        return q.minmax(x);
    }
    crate::threads::install(|_| {
        x.par_chunks(PARALLEL_MIN / 4)
            .map(|c| q.minmax(c))
            .reduce(|| MinMax::EMPTY, MinMax::merge)
    })
}

/// Quantizes `x` (`rows x cols`, row-major) to uint8 into `out` (row `i` at `i * out_stride`,
/// `out_stride >= cols`; the rest of each stride is left alone), writing one scale and zero
/// point per row (`Row`) or one in total (`Tensor`).
#[allow(clippy::too_many_arguments)]
pub fn quantize_u8_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    cols: usize,
    gran: Granularity,
    scheme: Scheme,
    check_finite: bool,
    what: &str,
    out: &mut [u8],
    out_stride: usize,
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<()> {
    assert_eq!(x.len(), rows * cols);
    assert!(out_stride >= cols && out.len() >= rows * out_stride);
    if rows == 0 {
        if gran == Granularity::Tensor {
            // An empty tensor: the range [0, 0] gives scale 1 and zero point 0.
            scales[0] = 1.0;
            zero_points[0] = 0;
        }
        return Ok(());
    }
    let q = quant_kernels(isa);
    let big = x.len() >= PARALLEL_MIN;
    match gran {
        Granularity::Tensor => {
            assert!(scales.len() == 1 && zero_points.len() == 1);
            let mm = minmax_all(q, x);
            if check_finite && mm.nonfinite {
                return Err(nonfinite(what, None));
            }
            let (s, z) = scheme.params(mm);
            scales[0] = s;
            zero_points[0] = z;
            let body = |(xr, or): (&[f32], &mut [u8])| q.quantize_u8(xr, s, z, &mut or[..cols]);
            if big && cols > 0 {
                crate::threads::install(|_| {
                    x.par_chunks(cols)
                        .zip(out.par_chunks_mut(out_stride))
                        .for_each(body)
                });
            } else if cols > 0 {
                x.chunks(cols)
                    .zip(out.chunks_mut(out_stride))
                    .for_each(body);
            } else {
                // No values: the parameters alone describe the (empty) tensor.
            }
            Ok(())
        }
        Granularity::Row => {
            assert!(scales.len() == rows && zero_points.len() == rows);
            if cols == 0 {
                scales.fill(1.0);
                zero_points.fill(0);
                return Ok(());
            }
            let body = |(i, (((xr, or), s), z)): RowU8<'_>| {
                let mm = q.minmax(xr);
                if check_finite && mm.nonfinite {
                    return Err(nonfinite(what, Some(i)));
                }
                let (sc, zp) = scheme.params(mm);
                *s = sc;
                *z = zp;
                q.quantize_u8(xr, sc, zp, &mut or[..cols]);
                Ok(())
            };
            if big {
                crate::threads::install(|_| {
                    x.par_chunks(cols)
                        .zip(out.par_chunks_mut(out_stride))
                        .zip(scales.par_iter_mut())
                        .zip(zero_points.par_iter_mut())
                        .enumerate()
                        .try_for_each(body)
                })
            } else {
                x.chunks(cols)
                    .zip(out.chunks_mut(out_stride))
                    .zip(scales.iter_mut())
                    .zip(zero_points.iter_mut())
                    .enumerate()
                    .try_for_each(body)
            }
        }
    }
}

/// Symmetric int8 quantization (values in `[-127, 127]`, zero point 0) of `x` (`rows x cols`)
/// into `out` (same shape), one scale per row or in total.
#[allow(clippy::too_many_arguments)]
pub fn quantize_i8_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    cols: usize,
    gran: Granularity,
    check_finite: bool,
    what: &str,
    out: &mut [i8],
    scales: &mut [f32],
) -> Result<()> {
    assert_eq!(x.len(), rows * cols);
    assert_eq!(out.len(), rows * cols);
    if x.is_empty() {
        // No values: every group's range is empty, and its scale is 1 (as for all zeros).
        scales.fill(1.0);
        return Ok(());
    }
    let q = quant_kernels(isa);
    match gran {
        Granularity::Tensor => {
            assert_eq!(scales.len(), 1);
            let mm = minmax_all(q, x);
            if check_finite && mm.nonfinite {
                return Err(nonfinite(what, None));
            }
            let s = reference::sym_scale(mm.absmax());
            scales[0] = s;
            if x.len() >= PARALLEL_MIN {
                crate::threads::install(|_| {
                    x.par_chunks(PARALLEL_MIN / 4)
                        .zip(out.par_chunks_mut(PARALLEL_MIN / 4))
                        .for_each(|(xc, oc)| q.quantize_i8(xc, s, oc))
                });
            } else {
                q.quantize_i8(x, s, out);
            }
            Ok(())
        }
        Granularity::Row => {
            assert_eq!(scales.len(), rows);
            if cols == 0 {
                scales.fill(1.0);
                return Ok(());
            }
            let body = |(i, ((xr, or), s)): RowI8<'_>| {
                let mm = q.minmax(xr);
                if check_finite && mm.nonfinite {
                    return Err(nonfinite(what, Some(i)));
                }
                *s = reference::sym_scale(mm.absmax());
                q.quantize_i8(xr, *s, or);
                Ok(())
            };
            if x.len() >= PARALLEL_MIN {
                crate::threads::install(|_| {
                    x.par_chunks(cols)
                        .zip(out.par_chunks_mut(cols))
                        .zip(scales.par_iter_mut())
                        .enumerate()
                        .try_for_each(body)
                })
            } else {
                x.chunks(cols)
                    .zip(out.chunks_mut(cols))
                    .zip(scales.iter_mut())
                    .enumerate()
                    .try_for_each(body)
            }
        }
    }
}
