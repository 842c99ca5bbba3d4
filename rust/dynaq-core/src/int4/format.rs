//! A 4-bit weight as plain named tensors (`README.md`, "On disk"): `W` (U8, two rows' levels
//! per byte, shape `(ceil(N/2), K)`), `W_scale` (F32 `(N,)`), `W_min` (F32 `(N,)`, absent when
//! symmetric), `W_gscale` and `W_gmin` (U8 `(N, K/G)`, absent per channel; `W_gmin` absent when
//! symmetric). The tensors describe themselves: N is `len(W_scale)`, K is `W.shape[1]`, G is
//! `K / W_gscale.shape[1]`. The blobs ([`crate::format`]) store 4-bit weights this way.

use super::weight::{Int4Weight, GROUP_SIZES};
use crate::error::{Error, Result};
use crate::format::{scale_name, Tensor};
use crate::safetensors::Dtype;

/// What a 4-bit weight's row minima factors are called: `W_min`.
pub const MIN_SUFFIX: &str = "_min";
/// What its group scale codes are called: `W_gscale`.
pub const GSCALE_SUFFIX: &str = "_gscale";
/// What its group minimum codes are called: `W_gmin`.
pub const GMIN_SUFFIX: &str = "_gmin";

/// The name of a 4-bit weight's row minima factors: `W_min`.
pub fn min_name(weight: &str) -> String {
    format!("{weight}{MIN_SUFFIX}")
}
/// The name of its group scale codes: `W_gscale`.
pub fn gscale_name(weight: &str) -> String {
    format!("{weight}{GSCALE_SUFFIX}")
}
/// The name of its group minimum codes: `W_gmin`.
pub fn gmin_name(weight: &str) -> String {
    format!("{weight}{GMIN_SUFFIX}")
}

/// One stored tensor as a reader hands it over: dtype, shape, bytes.
pub type Stored<'a> = (Dtype, &'a [usize], &'a [u8]);

impl Int4Weight {
    /// The tensors that store this weight under `name`.
    pub fn tensors(&self, name: &str) -> Vec<Tensor> {
        let (n, k) = self.shape();
        let values = self.values();
        let mut packed = vec![0u8; n.div_ceil(2) * k];
        for (col, row) in values.chunks(k.max(1)).take(n).enumerate() {
            let dst = &mut packed[(col / 2) * k..(col / 2 + 1) * k];
            for (b, &q) in dst.iter_mut().zip(row) {
                *b |= if col % 2 == 1 { q << 4 } else { q };
            }
        }
        let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (mut fd, mut fm, mut cd, mut cm) = (vec![], vec![], vec![], vec![]);
        for col in 0..n {
            let (d, m, c, cmin) = self.codes(col);
            fd.push(d);
            fm.push(m);
            cd.extend_from_slice(&c);
            cm.extend_from_slice(&cmin);
        }
        let groups = self.groups();
        let mut out = vec![
            Tensor {
                name: name.into(),
                dtype: Dtype::U8,
                shape: vec![n.div_ceil(2), k],
                data: packed,
            },
            Tensor {
                name: scale_name(name),
                dtype: Dtype::F32,
                shape: vec![n],
                data: f32s(fd),
            },
        ];
        if !self.symmetric() {
            out.push(Tensor {
                name: min_name(name),
                dtype: Dtype::F32,
                shape: vec![n],
                data: f32s(fm),
            });
        }
        if !self.per_channel() {
            out.push(Tensor {
                name: gscale_name(name),
                dtype: Dtype::U8,
                shape: vec![n, groups],
                data: cd,
            });
            if !self.symmetric() {
                out.push(Tensor {
                    name: gmin_name(name),
                    dtype: Dtype::U8,
                    shape: vec![n, groups],
                    data: cm,
                });
            }
        }
        out
    }

    /// The weight stored under `name`, every tensor checked; `find` gives a stored tensor by
    /// name. Errors are [`Error::Corrupt`] naming the tensor at fault.
    pub fn from_tensors<'a>(
        name: &str,
        find: impl Fn(&str) -> Option<Stored<'a>>,
    ) -> Result<Int4Weight> {
        let corrupt = |t: &str, m: String| Error::Corrupt(format!("{t}: {m}"));
        let get = |t: &str, dtype: Dtype, rank: usize| -> Result<Option<(Vec<usize>, &'a [u8])>> {
            let Some((dt, shape, bytes)) = find(t) else {
                return Ok(None);
            };
            if dt != dtype || shape.len() != rank {
                return Err(corrupt(
                    t,
                    format!(
                        "must be a {rank}-D {} tensor, got {} of shape {shape:?}",
                        dtype.name(),
                        dt.name()
                    ),
                ));
            }
            Ok(Some((shape.to_vec(), bytes)))
        };
        let (wshape, wbytes) =
            get(name, Dtype::U8, 2)?.ok_or_else(|| corrupt(name, "missing".into()))?;
        let sname = scale_name(name);
        let (sshape, sbytes) =
            get(&sname, Dtype::F32, 1)?.ok_or_else(|| corrupt(&sname, "missing".into()))?;
        let (n, k) = (sshape[0], wshape[1]);
        if wshape[0] != n.div_ceil(2) {
            return Err(corrupt(
                name,
                format!(
                    "has {} rows of level pairs; {n} output channels ({sname}) need {}",
                    wshape[0],
                    n.div_ceil(2)
                ),
            ));
        }
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let fd = floats(sbytes);
        let mname = min_name(name);
        let fm = get(&mname, Dtype::F32, 1)?;
        let symmetric = fm.is_none();
        let fm = match fm {
            Some((shape, b)) if shape == [n] => floats(b),
            Some((shape, _)) => {
                return Err(corrupt(&mname, format!("has shape {shape:?}, not ({n},)")))
            }
            None => fd.iter().map(|d| -8.0 * d).collect(),
        };
        let (gname, mcname) = (gscale_name(name), gmin_name(name));
        let gs = get(&gname, Dtype::U8, 2)?;
        let gm = get(&mcname, Dtype::U8, 2)?;
        let (group, cd, cm) = match (gs, gm) {
            (None, None) => (None, vec![1u8; n], vec![1u8; n]),
            (Some((shape, cd)), gm) => {
                let groups = shape[1];
                if shape[0] != n
                    || groups == 0
                    || k % groups != 0
                    || !GROUP_SIZES.contains(&(k / groups))
                {
                    return Err(corrupt(&gname, format!("has shape {shape:?}: for ({n}, {k}) it must be ({n}, K/G), G one of 32, 64, 128")));
                }
                let cm = match (gm, symmetric) {
                    (Some((s, cm)), false) if s == shape => cm.to_vec(),
                    (Some((s, _)), false) => {
                        return Err(corrupt(&mcname, format!("has shape {s:?}, not {shape:?}")))
                    }
                    (None, false) => {
                        return Err(corrupt(&mcname, "missing (the weight has minima)".into()))
                    }
                    (Some(_), true) => {
                        return Err(corrupt(&mcname, format!("present without {mname}")))
                    }
                    (None, true) => cd.to_vec(),
                };
                (Some(k / groups), cd.to_vec(), cm)
            }
            (None, Some(_)) => return Err(corrupt(&mcname, format!("present without {gname}"))),
        };
        let mut levels = vec![0u8; n * k];
        for (col, row) in levels.chunks_mut(k.max(1)).take(n).enumerate() {
            let src = &wbytes[(col / 2) * k..(col / 2 + 1) * k];
            for (q, &b) in row.iter_mut().zip(src) {
                *q = if col % 2 == 1 { b >> 4 } else { b & 0x0F };
            }
        }
        if n % 2 == 1 && wbytes[(n / 2) * k..].iter().any(|b| b >> 4 != 0) {
            return Err(corrupt(
                name,
                "the unused high nibbles of its last row must be 0".into(),
            ));
        }
        Int4Weight::from_parts(n, k, group, symmetric, &levels, fd, fm, cd, cm).map_err(|e| match e
        {
            Error::Memory(_) => e,
            e => corrupt(name, e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests;
