//! The AVX2+FMA register-blocked product of the attention module (see
//! `tile.rs` for its contract; the slices are bounds-checked there).

use std::arch::x86_64::*;

use super::tile::{Acc, Lhs, Out, TileKernels};
use crate::simd::Avx2;

impl TileKernels for Avx2 {
    unsafe fn gemm(
        self,
        mnk: (usize, usize, usize),
        a: &[f32],
        strides: (usize, usize),
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        acc: Acc<'_>,
    ) {
        let (lhs, out) = acc.operands(a, strides, c, ldc);
        // SAFETY: the token proves AVX2 and FMA; the caller keeps every
        // element the product indexes inside the slices (`TileKernels::gemm`).
        unsafe { gemm(mnk, lhs, b.as_ptr(), ldb, out) }
    }
}

/// Rows of C per register tile: 6 rows x 2 ymm = 12 of the 16 registers
/// hold accumulators, 2 hold the B row and one the broadcast.
const MR: usize = 6;

/// C (m, n) (+)= A (m, k) · B (k, n), B row p at `b[p*ldb..]`;
/// `n % 16 == 0`.
///
/// # Safety
/// AVX2 and FMA, and A, B, C hold every element the product indexes.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm((m, n, k): (usize, usize, usize), a: Lhs, b: *const f32, ldb: usize, c: Out) {
    // SAFETY: the caller (the `TileKernels` impl above) holds the token, so the CPU has AVX2 and
    // FMA, and `Tiles::gemm` asserted that A, B and C hold every element this product indexes;
    // every pointer below stays inside them.
    unsafe {
        for j in (0..n).step_by(16) {
            let (b, c) = (b.add(j), c.offset(0, j));
            let mut i = 0;
            while i + MR <= m {
                tile::<MR>(k, a.offset(i), b, ldb, c.offset(i, 0));
                i += MR;
            }
            let (a, c) = (a.offset(i), c.offset(i, 0));
            match m - i {
                0 => {}
                1 => tile::<1>(k, a, b, ldb, c),
                2 => tile::<2>(k, a, b, ldb, c),
                3 => tile::<3>(k, a, b, ldb, c),
                4 => tile::<4>(k, a, b, ldb, c),
                _ => tile::<5>(k, a, b, ldb, c),
            }
        }
    }
}

/// The micro-kernel: an `R x 16` block of C in registers.
///
/// # Safety
/// AVX2 and FMA; A holds `R` rows of `k`, B `k` rows of 16 and C `R` rows
/// of 16 at the operands' pointers and strides.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(k: usize, a: Lhs, b: *const f32, ldb: usize, c: Out) {
    // SAFETY: as for `gemm`, which calls this only for rows and columns inside C: each load and
    // store stays inside the slices `Tiles::gemm` checked.
    unsafe {
        let mut s = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            let bp = b.add(p * ldb);
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            let ap = a.ptr.add(p * a.cs);
            for (r, row) in s.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*ap.add(r * a.rs));
                row[0] = _mm256_fmadd_ps(x, b0, row[0]);
                row[1] = _mm256_fmadd_ps(x, b1, row[1]);
            }
        }
        for (r, row) in s.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let cp = c.ptr.add(r * c.ld + 8 * v);
                let y = if !c.accumulate {
                    *x
                } else if c.row_scale.is_null() {
                    _mm256_add_ps(*x, _mm256_loadu_ps(cp))
                } else {
                    _mm256_fmadd_ps(_mm256_loadu_ps(cp), _mm256_set1_ps(*c.row_scale.add(r)), *x)
                };
                _mm256_storeu_ps(cp, y);
            }
        }
    }
}
