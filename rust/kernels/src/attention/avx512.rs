//! AVX-512 tile kernels of the attention module: the register-blocked
//! product and the gathering transpose (see `tile.rs` for the contract of
//! each; the slices are bounds-checked there).

use std::arch::x86_64::*;

use super::tile::{Acc, Lhs, Out, TileKernels};
use crate::simd::Avx512;

impl TileKernels for Avx512 {
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
        // SAFETY: the token proves AVX-512F; the caller keeps every element
        // the product indexes inside the slices (`TileKernels::gemm`).
        unsafe { gemm(mnk, lhs, b.as_ptr(), ldb, out) }
    }

    unsafe fn pack_transposed(
        self,
        src: &[f32],
        (rows, cols, ld): (usize, usize, usize),
        scale: f32,
        dst: &mut [f32],
        ldd: usize,
    ) {
        // SAFETY: the token proves AVX-512F, and the caller passed the sizes
        // `Tiles::pack_transposed` asserts: every gather is masked to the rows
        // that exist and every store lands inside `dst`.
        unsafe { pack_transposed(src.as_ptr(), (rows, cols, ld), scale, dst.as_mut_ptr(), ldd) }
    }
}

/// Rows of C per register tile: 6 rows x 4 vectors = 24 of the 32 zmm
/// registers hold accumulators; per step of k that is 4 loads of B and 6
/// broadcasts of A for 24 FMAs, which keeps both FMA ports busy.
const MR: usize = 6;

/// C (m, n) (+)= A (m, k) · B (k, n), B row p at `b[p*ldb..]`;
/// `n % 16 == 0`.
///
/// # Safety
/// AVX-512F, and A, B, C hold every element the product indexes.
#[target_feature(enable = "avx512f")]
unsafe fn gemm((m, n, k): (usize, usize, usize), a: Lhs, b: *const f32, ldb: usize, c: Out) {
    // SAFETY: the caller (the `TileKernels` impl above) holds the token, so the CPU has AVX-512F,
    // and `Tiles::gemm` asserted that A, B and C hold every element this product indexes; every
    // pointer below stays inside them.
    unsafe {
        let mut j = 0;
        while j + 64 <= n {
            row_tiles::<4>(m, k, a, b.add(j), ldb, c.offset(0, j));
            j += 64;
        }
        let (b, c) = (b.add(j), c.offset(0, j));
        match (n - j) / 16 {
            0 => {}
            1 => row_tiles::<1>(m, k, a, b, ldb, c),
            2 => row_tiles::<2>(m, k, a, b, ldb, c),
            _ => row_tiles::<3>(m, k, a, b, ldb, c),
        }
    }
}

/// One column panel of `NV` vectors, all rows: full `MR`-row tiles, then a
/// tail tile whose row count is a compile-time constant too, so that its
/// accumulators stay in registers.
///
/// # Safety
/// AVX-512F; A holds `m` rows of `k`, B `k` rows of `16 * NV` and C `m`
/// rows of `16 * NV` at the operands' pointers and strides.
#[target_feature(enable = "avx512f")]
unsafe fn row_tiles<const NV: usize>(
    m: usize,
    k: usize,
    a: Lhs,
    b: *const f32,
    ldb: usize,
    c: Out,
) {
    // SAFETY: as for `gemm`: the rows and the column panel passed in lie inside C, and the tiles
    // cover exactly them.
    unsafe {
        let mut i = 0;
        while i + MR <= m {
            tile::<MR, NV>(k, a.offset(i), b, ldb, c.offset(i, 0));
            i += MR;
        }
        let (a, c) = (a.offset(i), c.offset(i, 0));
        match m - i {
            0 => {}
            1 => tile::<1, NV>(k, a, b, ldb, c),
            2 => tile::<2, NV>(k, a, b, ldb, c),
            3 => tile::<3, NV>(k, a, b, ldb, c),
            4 => tile::<4, NV>(k, a, b, ldb, c),
            _ => tile::<5, NV>(k, a, b, ldb, c),
        }
    }
}

/// The micro-kernel: an `R x 16*NV` block of C in registers, one rank-1
/// update per step of k (NV loads of B, R broadcasts of A).
///
/// # Safety
/// AVX-512F; A holds `R` rows of `k`, B `k` rows of `16 * NV` and C `R`
/// rows of `16 * NV` at the operands' pointers and strides.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const NV: usize>(
    k: usize,
    a: Lhs,
    b: *const f32,
    ldb: usize,
    c: Out,
) {
    // SAFETY: as for `gemm`, which calls this (through `row_tiles`) only for rows and columns
    // inside C: each load and store stays inside the checked slices.
    unsafe {
        let mut s = [[_mm512_setzero_ps(); NV]; R];
        for p in 0..k {
            let bp = b.add(p * ldb);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * v));
            }
            let ap = a.ptr.add(p * a.cs);
            for (r, row) in s.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * a.rs));
                for (acc, bx) in row.iter_mut().zip(bv.iter()) {
                    *acc = _mm512_fmadd_ps(x, *bx, *acc);
                }
            }
        }
        for (r, row) in s.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let cp = c.ptr.add(r * c.ld + 16 * v);
                let y = if !c.accumulate {
                    *x
                } else if c.row_scale.is_null() {
                    _mm512_add_ps(*x, _mm512_loadu_ps(cp))
                } else {
                    _mm512_fmadd_ps(_mm512_loadu_ps(cp), _mm512_set1_ps(*c.row_scale.add(r)), *x)
                };
                _mm512_storeu_ps(cp, y);
            }
        }
    }
}

/// `dst[d*ldd + c] = src[c*ld + d]·scale` for c < rows, d < cols, and 0 for
/// rows <= c < rows rounded up to 16: one gather per 16 rows of a column.
///
/// # Safety
/// AVX-512F, and `src`, `dst` hold every element read and written.
#[target_feature(enable = "avx512f")]
unsafe fn pack_transposed(
    src: *const f32,
    (rows, cols, ld): (usize, usize, usize),
    scale: f32,
    dst: *mut f32,
    ldd: usize,
) {
    // SAFETY: the caller holds the token (AVX-512F) and asserted the sizes: every gather is masked
    // to rows below `rows` and reads `src` at `c*ld + d < src.len()`, every store writes 16 lanes
    // at `d*ldd + c0`, inside `dst`.
    unsafe {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(ld as i32));
        let sc = _mm512_set1_ps(scale);
        for c0 in (0..rows).step_by(16) {
            let mask = (u32::MAX >> (32 - (rows - c0).min(16))) as __mmask16;
            for d in 0..cols {
                let base = src.add(c0 * ld + d);
                let x = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, base);
                _mm512_storeu_ps(dst.add(d * ldd + c0), _mm512_mul_ps(x, sc));
            }
        }
    }
}
