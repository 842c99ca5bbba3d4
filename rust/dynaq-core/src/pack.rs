//! Packed weight panels.
//!
//! Layout `K4N16` (the only one so far; every x86-64 kernel and the scalar kernel read it):
//! columns are grouped in panels of [`PANEL`] = 16; within a panel, K is grouped in fours, and
//! each group stores `16 columns x 4 consecutive k` bytes, column-major within the group:
//!
//! ```text
//! panel p, group g (64 bytes): b[4g..4g+4][16p], b[4g..4g+4][16p+1], ..., b[4g..4g+4][16p+15]
//! ```
//!
//! This is what one `vpdpbusd` wants in a zmm register (16 i32 lanes, each the dot product of 4
//! bytes), and what AVX2 sign-extends 16 bytes at a time (4 columns x 4 k) for `vpmaddwd`.
//! K is padded with zeros to a multiple of 4 and N to a multiple of 16, so kernels never see a
//! ragged edge in B; the zero padding contributes nothing to the sums.

use crate::error::{try_zeroed, Error, Result};

/// Columns per panel.
pub const PANEL: usize = 16;
/// Bytes of one K group of a panel.
pub const GROUP_BYTES: usize = PANEL * 4;
/// The longest reduction supported: column sums are i32 and `128 * 2^24 = 2^31`.
pub const MAX_K: usize = 1 << 24;

/// An int8 matrix `b` of logical shape `k x n` (output column `j` is `sum_k a[k] * b[k][j]`),
/// packed in `K4N16` panels, with its column sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedB {
    n: usize,
    k: usize,
    k4: usize,
    data: Vec<i8>,
    colsums: Vec<i32>,
}

impl PackedB {
    /// Packs from the weight layout: row `j` of `w` (`n x k`, row-major) is column `j` of `b`.
    pub fn from_nk(w: &[i8], n: usize, k: usize) -> Result<PackedB> {
        check_len(w.len(), n, k)?;
        Self::pack(n, k, |j, p| w[j * k + p])
    }

    /// Packs from the matmul layout: `b` is `k x n`, row-major.
    pub fn from_kn(b: &[i8], k: usize, n: usize) -> Result<PackedB> {
        check_len(b.len(), n, k)?;
        // Row by row, so that `b` is read sequentially (column by column it ran at ~1 GB/s).
        let mut packed = Self::zeroed(n, k)?;
        let stride = packed.panel_stride();
        for (p, row) in b.chunks_exact(n.max(1)).take(k).enumerate() {
            let at = (p / 4) * GROUP_BYTES + p % 4;
            for (j, &v) in row.iter().enumerate() {
                packed.data[(j / PANEL) * stride + at + (j % PANEL) * 4] = v;
                packed.colsums[j] += v as i32;
            }
        }
        Ok(packed)
    }

    /// Takes panels already in this layout (as [`PackedB::data`] gave them) for a matrix of `n`
    /// columns and reduction length `k`: the length must be [`PackedB::panels_len`], the
    /// padding (K beyond `k`, columns beyond `n`) zero; the column sums are computed again.
    pub fn from_panels(data: Vec<i8>, n: usize, k: usize) -> Result<PackedB> {
        let want = Self::panels_len(n, k)?;
        if data.len() != want {
            return Err(Error::Shape(format!(
                "panels of {} bytes do not hold a packed {n} x {k} matrix ({want} bytes)",
                data.len()
            )));
        }
        let k4 = k.div_ceil(4);
        let mut packed = PackedB {
            n,
            k,
            k4,
            data,
            colsums: try_zeroed(n, "column sums")?,
        };
        let stride = packed.panel_stride();
        if stride == 0 {
            return Ok(packed);
        }
        for (pi, panel) in packed.data.chunks_exact(stride).enumerate() {
            for c in 0..PANEL {
                let j = pi * PANEL + c;
                let mut sum = 0i32;
                for p in 0..4 * k4 {
                    let v = panel[(p / 4) * GROUP_BYTES + c * 4 + p % 4];
                    if j >= n || p >= k {
                        if v != 0 {
                            return Err(Error::Value(format!(
                                "packed panels hold {v} in the padding (column {j}, k {p}); the \
                                 padding of a {n} x {k} matrix must be zero"
                            )));
                        }
                    } else {
                        sum += v as i32;
                    }
                }
                if j < n {
                    packed.colsums[j] = sum;
                }
            }
        }
        Ok(packed)
    }

    /// Bytes of the panels of an `n`-column matrix of reduction length `k`.
    pub fn panels_len(n: usize, k: usize) -> Result<usize> {
        if k > MAX_K {
            return Err(Error::Shape(format!(
                "K = {k} exceeds the supported maximum {MAX_K}"
            )));
        }
        n.div_ceil(PANEL)
            .checked_mul(k.div_ceil(4))
            .and_then(|v| v.checked_mul(GROUP_BYTES))
            .ok_or_else(|| Error::Memory(format!("packed weight {n} x {k} is too large")))
    }

    /// A zero matrix of `k x n`, ready to be filled.
    fn zeroed(n: usize, k: usize) -> Result<PackedB> {
        let len = Self::panels_len(n, k)?;
        let k4 = k.div_ceil(4);
        Ok(PackedB {
            n,
            k,
            k4,
            data: try_zeroed(len, "packed weight")?,
            colsums: try_zeroed(n, "column sums")?,
        })
    }

    fn pack(n: usize, k: usize, get: impl Fn(usize, usize) -> i8) -> Result<PackedB> {
        let mut packed = Self::zeroed(n, k)?;
        if packed.k4 == 0 {
            // K = 0: no panels to fill; every column sum is the empty sum.
            return Ok(packed);
        }
        let stride = packed.panel_stride();
        for (pi, panel) in packed.data.chunks_exact_mut(stride).enumerate() {
            for c in 0..PANEL {
                let j = pi * PANEL + c;
                if j >= n {
                    break;
                }
                let mut sum = 0i32;
                for p in 0..k {
                    let v = get(j, p);
                    sum += v as i32;
                    panel[(p / 4) * GROUP_BYTES + c * 4 + p % 4] = v;
                }
                packed.colsums[j] = sum;
            }
        }
        Ok(packed)
    }

    /// Number of output columns.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Reduction length in groups of 4 (K rounded up).
    pub fn k4(&self) -> usize {
        self.k4
    }
    /// Number of 16-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
    /// Bytes from one panel to the next.
    pub fn panel_stride(&self) -> usize {
        self.k4 * GROUP_BYTES
    }
    /// All panels, one after another.
    pub fn data(&self) -> &[i8] {
        &self.data
    }
    /// `sum_k b[k][j]` for each column `j`.
    pub fn colsums(&self) -> &[i32] {
        &self.colsums
    }
    /// Bytes held (panels and sums).
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.colsums.len()
    }

    /// Element `b[p][j]` (reduction index `p`, column `j`).
    pub fn get(&self, p: usize, j: usize) -> i8 {
        let (pi, c) = (j / PANEL, j % PANEL);
        self.data[pi * self.panel_stride() + (p / 4) * GROUP_BYTES + c * 4 + p % 4]
    }

    /// The matrix back in the weight layout (`n x k`, row-major).
    pub fn unpack_nk(&self) -> Vec<i8> {
        let mut w = vec![0i8; self.n * self.k];
        for j in 0..self.n {
            for p in 0..self.k {
                w[j * self.k + p] = self.get(p, j);
            }
        }
        w
    }
}

fn check_len(len: usize, n: usize, k: usize) -> Result<()> {
    match n.checked_mul(k) {
        Some(nk) if nk == len => Ok(()),
        _ => Err(Error::Shape(format!(
            "int8 matrix of {len} elements does not have shape {n} x {k}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_layouts() {
        for (n, k) in [
            (0, 3),
            (3, 0),
            (0, 0),
            (1, 1),
            (3, 5),
            (16, 4),
            (17, 9),
            (33, 64),
            (5, 65),
        ] {
            let w: Vec<i8> = (0..n * k)
                .map(|i| (i as i32 * 37 % 255 - 127) as i8)
                .collect();
            let p = PackedB::from_nk(&w, n, k).unwrap();
            assert_eq!(p.unpack_nk(), w);
            let mut kn = vec![0i8; n * k];
            for j in 0..n {
                for q in 0..k {
                    kn[q * n + j] = w[j * k + q];
                }
            }
            assert_eq!(PackedB::from_kn(&kn, k, n).unwrap(), p);
            assert_eq!(PackedB::from_panels(p.data().to_vec(), n, k).unwrap(), p);
            for j in 0..n {
                let s: i32 = (0..k).map(|q| w[j * k + q] as i32).sum();
                assert_eq!(p.colsums()[j], s);
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(PackedB::from_nk(&[0; 5], 2, 3).is_err());
    }

    #[test]
    fn from_panels_refuses_a_wrong_length_or_padding() {
        let w: Vec<i8> = (0..5 * 6).map(|i| (i % 7) as i8 - 3).collect();
        let p = PackedB::from_nk(&w, 5, 6).unwrap();
        let mut data = p.data().to_vec();
        assert!(PackedB::from_panels(data[1..].to_vec(), 5, 6).is_err());
        assert!(PackedB::from_panels(data.clone(), 5, 9).is_err()); // k4 = 3: longer
        data[64 + 4 + 2] = 1; // column 1, k 6: K padding
        assert!(matches!(
            PackedB::from_panels(data, 5, 6),
            Err(Error::Value(_))
        ));
        let mut data = p.data().to_vec();
        data[5 * 4] = 1; // column 5 (beyond n), k 0
        assert!(matches!(
            PackedB::from_panels(data, 5, 6),
            Err(Error::Value(_))
        ));
    }
}
