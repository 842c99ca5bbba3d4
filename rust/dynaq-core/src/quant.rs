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

/// How float values become uint8: per row or per tensor, which parameters, and whether NaN and
/// infinity are refused first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantization {
    /// One scale and zero point per row, or one in all.
    pub granularity: Granularity,
    /// How the parameters are chosen.
    pub scheme: Scheme,
    /// Refuse NaN and infinity ([`Error::NonFinite`]); when false they give unspecified (but
    /// memory-safe) values.
    pub check_finite: bool,
}

impl Quantization {
    /// Dynamic quantization as `linear` does it: the robust scheme, finiteness checked.
    pub fn dynamic(granularity: Granularity) -> Self {
        Quantization {
            granularity,
            scheme: Scheme::Robust,
            check_finite: true,
        }
    }
}

/// A row-major matrix of `rows x cols` elements.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T> Matrix<'a, T> {
    /// `data` as `rows x cols`; an [`Error::Shape`] when its length is not `rows * cols`.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape(format!(
                "{} elements are not {rows} rows of {cols}",
                data.len()
            )));
        }
        Ok(Matrix { data, rows, cols })
    }
    /// The elements, row after row.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Where uint8 quantization writes: row `i` of the values at `i * stride` (`stride >= cols`; the
/// rest of each stride is left alone), and one scale and zero point per row or in all.
pub struct U8Out<'a> {
    /// At least `rows * stride` values.
    pub values: &'a mut [u8],
    /// Elements from one row of `values` to the next.
    pub stride: usize,
    /// `rows` scales per row, 1 per tensor.
    pub scales: &'a mut [f32],
    /// As many zero points as scales.
    pub zero_points: &'a mut [u8],
}

fn nonfinite(row: Option<usize>) -> Error {
    Error::NonFinite { row }
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

/// Quantizes the matrix `x` to uint8 into `out`, as `how` says: one scale and zero point per
/// row or one in all.
pub fn quantize_u8_rows(
    isa: Isa,
    x: Matrix<'_, f32>,
    how: Quantization,
    out: U8Out<'_>,
) -> Result<()> {
    let (rows, cols) = (x.rows, x.cols);
    let x = x.data;
    let Quantization {
        granularity: gran,
        scheme,
        check_finite,
    } = how;
    let U8Out {
        values: out,
        stride: out_stride,
        scales,
        zero_points,
    } = out;
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
                return Err(nonfinite(None));
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
                            return Err(nonfinite(Some(item * rpi + r)));
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

/// Symmetric int8 quantization (values in `[-127, 127]`, zero point 0) of the matrix `x` into
/// `out` (same shape), one scale per row or in all; NaN and infinity refused when
/// `check_finite`.
pub fn quantize_i8_rows(
    isa: Isa,
    x: Matrix<'_, f32>,
    gran: Granularity,
    check_finite: bool,
    out: &mut [i8],
    scales: &mut [f32],
) -> Result<()> {
    let (rows, cols) = (x.rows, x.cols);
    let x = x.data;
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
                return Err(nonfinite(None));
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
                            return Err(nonfinite(Some(item * rpi + r)));
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
