//! The quantization front end: ranges, parameters and values, per tensor or per row, on the
//! kernels of a chosen path, split over threads for large inputs.

use crate::dispatch::quant_kernels;
use crate::error::{Error, Result};
use crate::kernel::QuantKernels;
use crate::reference::{self, MinMax};
use crate::threads::for_each_item;
use crate::Isa;

/// One scale (and zero point) for the whole tensor, or one per row (the last axis reduced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for everything.
    Tensor,
    /// One scale per row: a row's values never depend on the other rows.
    Row,
}

/// How asymmetric uint8 parameters are chosen from a range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme {
    /// Exactly ONNX Runtime's `DynamicQuantizeLinear` ([`reference::dql_params`]).
    Onnx,
    /// Ours: the same where meaningful, repaired at float32 overflow/underflow
    /// ([`reference::asym_params`]).
    Robust,
    /// Fixed parameters, e.g. from calibration (static quantization): the data's range is only
    /// checked for NaN and infinity, and values outside the range saturate.
    Fixed {
        /// Scale, finite and positive.
        scale: f32,
        /// Zero point.
        zero_point: u8,
    },
}

impl Scheme {
    fn params(self, mm: MinMax) -> (f32, u8) {
        match self {
            Scheme::Onnx => reference::dql_params(mm.min, mm.max),
            Scheme::Robust => reference::asym_params(mm.min, mm.max),
            Scheme::Fixed { scale, zero_point } => (scale, zero_point),
        }
    }
}

/// Below this many elements, quantization stays on the calling thread: 256 Ki floats take
/// ~30 us, about what waking a worker can cost on a busy machine.
const PARALLEL_MIN: usize = 1 << 18;
/// Elements per work item when quantization is split over threads (256 KiB of floats).
const CHUNK: usize = 1 << 16;

fn nonfinite(what: &str, row: Option<usize>) -> Error {
    let at = row.map_or(String::new(), |r| format!(" (row {r})"));
    Error::NonFinite(format!(
        "{what} contains NaN or infinity{at}; their quantization is meaningless (pass \
         check_finite=False to skip this check at your own risk)"
    ))
}

/// From this many elements (2 MiB, ~50 us on one core) the parallel loops may run on a shared
/// OpenMP team ([`crate::threads::share_openmp_team`]), whose closing barrier waits for a
/// sleeping thread to wake (~30 us).
const TEAM_MIN: usize = 1 << 19;

/// Worker threads to add for `len` elements (0 below [`PARALLEL_MIN`]).
fn helpers_for(len: usize) -> usize {
    if len < PARALLEL_MIN {
        0
    } else {
        crate::threads::num_threads() - 1
    }
}

/// Rows per work item: whole rows, about [`CHUNK`] elements.
fn rows_per_item(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

/// Min/max of all of `x`, split over threads for large inputs.
pub fn minmax_all(q: &QuantKernels, x: &[f32]) -> MinMax {
    let helpers = helpers_for(x.len());
    if helpers == 0 {
        return q.minmax(x);
    }
    let mut parts = vec![MinMax::EMPTY; x.len().div_ceil(CHUNK)];
    let items = x.chunks(CHUNK).zip(parts.iter_mut());
    let r: std::result::Result<(), ()> =
        for_each_item(items, helpers, x.len() >= TEAM_MIN, |_, (c, out)| {
            *out = q.minmax(c);
            Ok(())
        });
    debug_assert!(r.is_ok());
    parts.into_iter().fold(MinMax::EMPTY, MinMax::merge)
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
    if rows == 0 || cols == 0 {
        // Empty rows: the range [0, 0] gives scale 1 and zero point 0.
        scales.fill(1.0);
        zero_points.fill(0);
        return Ok(());
    }
    let q = quant_kernels(isa);
    let helpers = helpers_for(x.len());
    let rpi = rows_per_item(cols);
    let x_rows = x.chunks(rpi * cols);
    let out_rows = out.chunks_mut(rpi * out_stride);
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
            let items = x_rows.zip(out_rows);
            for_each_item(
                items,
                helpers,
                x.len() >= TEAM_MIN,
                |_, (xs, os): (&[f32], &mut [u8])| {
                    for (xr, or) in xs.chunks(cols).zip(os.chunks_mut(out_stride)) {
                        q.quantize_u8(xr, s, z, &mut or[..cols]);
                    }
                    Ok(())
                },
            )
        }
        Granularity::Row => {
            assert!(scales.len() == rows && zero_points.len() == rows);
            let items = x_rows
                .zip(out_rows)
                .zip(scales.chunks_mut(rpi).zip(zero_points.chunks_mut(rpi)));
            for_each_item(
                items,
                helpers,
                x.len() >= TEAM_MIN,
                |item, ((xs, os), (ss, zs))| {
                    let rows = xs.chunks(cols).zip(os.chunks_mut(out_stride));
                    for (r, ((xr, or), (s, z))) in rows.zip(ss.iter_mut().zip(zs)).enumerate() {
                        let mm = q.minmax(xr);
                        if check_finite && mm.nonfinite {
                            return Err(nonfinite(what, Some(item * rpi + r)));
                        }
                        let (sc, zp) = scheme.params(mm);
                        *s = sc;
                        *z = zp;
                        q.quantize_u8(xr, sc, zp, &mut or[..cols]);
                    }
                    Ok(())
                },
            )
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
    let helpers = helpers_for(x.len());
    let rpi = rows_per_item(cols);
    match gran {
        Granularity::Tensor => {
            assert_eq!(scales.len(), 1);
            let mm = minmax_all(q, x);
            if check_finite && mm.nonfinite {
                return Err(nonfinite(what, None));
            }
            let s = reference::sym_scale(mm.absmax());
            scales[0] = s;
            let items = x.chunks(CHUNK).zip(out.chunks_mut(CHUNK));
            for_each_item(
                items,
                helpers,
                x.len() >= TEAM_MIN,
                |_, (xc, oc): (&[f32], &mut [i8])| {
                    q.quantize_i8(xc, s, oc);
                    Ok(())
                },
            )
        }
        Granularity::Row => {
            assert_eq!(scales.len(), rows);
            let items = x
                .chunks(rpi * cols)
                .zip(out.chunks_mut(rpi * cols))
                .zip(scales.chunks_mut(rpi));
            for_each_item(
                items,
                helpers,
                x.len() >= TEAM_MIN,
                |item, ((xs, os), ss)| {
                    let rows = xs.chunks(cols).zip(os.chunks_mut(cols)).zip(ss.iter_mut());
                    for (r, ((xr, or), s)) in rows.enumerate() {
                        let mm = q.minmax(xr);
                        if check_finite && mm.nonfinite {
                            return Err(nonfinite(what, Some(item * rpi + r)));
                        }
                        *s = reference::sym_scale(mm.absmax());
                        q.quantize_i8(xr, *s, or);
                    }
                    Ok(())
                },
            )
        }
    }
}
