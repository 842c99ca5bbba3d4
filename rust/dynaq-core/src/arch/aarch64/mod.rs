//! aarch64 kernels: plain NEON (every ARMv8 CPU), dotprod (`sdot`, ARMv8.2) and i8mm (`usdot`,
//! ARMv8.6). See `README.md` in this folder for the design and the exactness argument.
//!
//! Every kernel is compiled with `#[target_feature]` and chosen at run time by
//! `is_aarch64_feature_detected!` (in [`crate::isa`]); nothing depends on the features the
//! crate is compiled for, so a wheel built for the ARMv8.0 baseline runs the best path each CPU
//! has. The dot-product instructions are not stable intrinsics in Rust yet, so they are emitted
//! with `asm!`, one instruction per statement, leaving register allocation to the compiler.
//!
//! The min/max and quantization kernels are the NEON ones on all three paths: the dot-product
//! extensions add nothing to them.

/// Defines a path's `gemm_entry`, the kernel-table function of its 4 x 16 tiles: it checks
/// nothing more (`GemmKernel::run` asserted every bound) and calls the module's `tile::<R>` for
/// the tile's `rows` (`1..=4`), on the tile's raw pointers.
macro_rules! gemm_entry_4x16 {
    ($path:literal) => {
        /// # Safety
        /// The CPU must have this path's features, and `t` must satisfy the bounds asserted by
        /// [`GemmKernel::run`] (the only caller).
        unsafe fn gemm_entry(t: &mut Tile<'_>) {
            let AData::U8(a) = t.a else {
                unreachable!(concat!("the ", $path, " kernel reads u8 activations"))
            };
            debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels == 1);
            let f: unsafe fn(*const u8, usize, *const i8, usize, *mut i32, usize) = match t.rows {
                1 => tile::<1>,
                2 => tile::<2>,
                3 => tile::<3>,
                4 => tile::<4>,
                _ => unreachable!("tile rows out of range"),
            };
            // SAFETY: `GemmKernel::run` asserted that the CPU supports this path, that the
            // `rows` rows of A hold `4 * k4` values from `r * lda`, that panel 0 holds `64 * k4`
            // bytes and that C has `rows` rows of `16 * panels >= 16` columns at `r * ldc`.
            unsafe {
                f(
                    a.as_ptr(),
                    t.lda,
                    t.b.as_ptr(),
                    t.k4,
                    t.c.as_mut_ptr(),
                    t.ldc,
                )
            }
        }
    };
}

/// `acc + sdot/udot(x, y[LANE])` (`$op` the mnemonic, `$ty` the accumulator's type): `y`'s
/// 32-bit element `LANE` (4 bytes) against each lane of `x`.
macro_rules! dot_lane {
    ($op:literal, $ty:ty, $acc:expr, $x:expr, $y:expr, $lane:literal) => {{
        let mut acc: $ty = $acc;
        // SAFETY: only used in `#[target_feature(enable = "neon,dotprod")]` functions, which
        // run only where dotprod was detected; the instruction touches registers only, and
        // `$lane < 4` is checked by the assembler.
        unsafe {
            ::core::arch::asm!(
                concat!($op, " {acc:v}.4s, {x:v}.16b, {y:v}.4b[{lane}]"),
                acc = inout(vreg) acc,
                x = in(vreg) $x,
                y = in(vreg) $y,
                lane = const $lane,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }};
}

/// `acc + usmmla/ummla(x, y)` (`$op` the mnemonic, `$ty` the accumulator's type): the 2 x 2
/// block `acc[i][j] + sum_k x[i][k] y[j][k]` over 8 k, with `x` two rows and `y` two columns of
/// 8 bytes each (`usmmla`: `x` unsigned, `y` signed, i32 sums; `ummla`: both unsigned, u32).
macro_rules! mmla {
    ($op:literal, $ty:ty, $acc:expr, $x:expr, $y:expr) => {{
        let mut acc: $ty = $acc;
        // SAFETY: only used in `#[target_feature(enable = "neon,i8mm")]` functions, which run
        // only where i8mm was detected; the instruction touches registers only.
        unsafe {
            ::core::arch::asm!(
                concat!($op, " {acc:v}.4s, {x:v}.16b, {y:v}.16b"),
                acc = inout(vreg) acc,
                x = in(vreg) $x,
                y = in(vreg) $y,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }};
}

/// Defines a 4-bit path's `gemm_entry`: it calls the module's `panel::<R>` for the tile's `rows`
/// (each of `$rows`, up to the module's `MR`) and stores the sums.
macro_rules! int4_gemm_entry {
    ($($rows:literal),+) => {
        /// # Safety
        /// The CPU must have this path's features, and `t` must satisfy the bounds asserted by
        /// [`Int4Kernel::run`] (the only caller).
        unsafe fn gemm_entry(t: &mut Int4Tile<'_>) {
            debug_assert!(t.rows >= 1 && t.rows <= MR && t.panels == 1);
            let f: unsafe fn(&Int4Ptrs) -> [[[uint32x4_t; 4]; 2]; MR] = match t.rows {
                $($rows => panel::<$rows>,)+
                _ => unreachable!("tile rows out of range"),
            };
            let p = t.ptrs();
            // SAFETY: `Int4Kernel::run` asserted that the CPU supports this path and every
            // range `panel` reads: rows `r < rows` of `a` hold `8·groups·group_blocks` bytes
            // from `r·lda`, of `asum` `groups` sums from `r·lds`; the panel holds 64 bytes per
            // block; each group's codes are 16 bytes at `g·code_step`.
            let out = unsafe { f(&p) };
            super::store_int4(t, &out);
        }
    };
}

/// The 16 codes of a 4-bit panel's group at `p`, widened to u32, 4 columns per vector.
///
/// # Safety
/// The CPU must have NEON (every aarch64 CPU); `p .. p + 16` is readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn int4_codes(p: *const u8) -> [core::arch::aarch64::uint32x4_t; 4] {
    use core::arch::aarch64::*;
    // SAFETY: 16 readable bytes (contract above).
    let v = unsafe { vld1q_u8(p) };
    let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_u8(vget_high_u8(v)));
    [
        vmovl_u16(vget_low_u16(lo)),
        vmovl_u16(vget_high_u16(lo)),
        vmovl_u16(vget_low_u16(hi)),
        vmovl_u16(vget_high_u16(hi)),
    ]
}

/// The sums of a 4-bit tile (`[Σ cd·P, Σ cm·A]` per row, 4 columns per vector) stored to its
/// two outputs.
fn store_int4<const MR: usize>(
    t: &mut crate::int4::kernel::Int4Tile<'_>,
    out: &[[[core::arch::aarch64::uint32x4_t; 4]; 2]; MR],
) {
    use core::arch::aarch64::*;
    for (r, [x1, x2]) in out.iter().enumerate().take(t.rows) {
        for (q, (v1, v2)) in x1.iter().zip(x2).enumerate() {
            let at = r * t.ldc + 4 * q;
            assert!(at + 4 <= t.c1.len() && at + 4 <= t.c2.len());
            // SAFETY: `at .. at + 4` lies inside both outputs (asserted above; row `r < rows`,
            // columns `4q .. 4q + 4 <= 16` of the tile `Int4Kernel::run` checked); NEON is
            // always present on aarch64. The sums are below 2^31 (the driver's chunks).
            unsafe {
                vst1q_s32(t.c1.as_mut_ptr().add(at), vreinterpretq_s32_u32(*v1));
                vst1q_s32(t.c2.as_mut_ptr().add(at), vreinterpretq_s32_u32(*v2));
            }
        }
    }
}

pub mod dotprod;
pub mod dotprod_int4;
pub mod i8mm;
pub mod i8mm_int4;
pub mod neon;
pub mod neon_int4;
