//! AVX-512 tile kernels of the attention module (see `tile.rs` for the
//! contract of each function; pointers are bounds-checked there).

use std::arch::x86_64::*;

use super::tile::{Lhs, Out};

/// Rows of C per register tile: 6 rows x 4 vectors = 24 of the 32 zmm
/// registers hold accumulators; per step of k that is 4 loads of B and 6
/// broadcasts of A for 24 FMAs, which keeps both FMA ports busy.
const MR: usize = 6;

/// C (m, n) (+)= A (m, k) · B (k, n), B row p at `b[p*ldb..]`;
/// `n % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn gemm((m, n, k): (usize, usize, usize), a: Lhs, b: *const f32, ldb: usize, c: Out) {
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

/// One column panel of `NV` vectors, all rows: full `MR`-row tiles, then a
/// tail tile whose row count is a compile-time constant too, so that its
/// accumulators stay in registers.
#[target_feature(enable = "avx512f")]
unsafe fn row_tiles<const NV: usize>(
    m: usize,
    k: usize,
    a: Lhs,
    b: *const f32,
    ldb: usize,
    c: Out,
) {
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

/// The micro-kernel: an `R x 16*NV` block of C in registers, one rank-1
/// update per step of k (NV loads of B, R broadcasts of A).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const NV: usize>(
    k: usize,
    a: Lhs,
    b: *const f32,
    ldb: usize,
    c: Out,
) {
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

/// `dst[d*ldd + c] = src[c*ld + d]·scale` for c < rows, d < cols, and 0 for
/// rows <= c < rows rounded up to 16: one gather per 16 rows of a column.
#[target_feature(enable = "avx512f")]
pub unsafe fn pack_transposed(
    src: *const f32,
    (rows, cols, ld): (usize, usize, usize),
    scale: f32,
    dst: *mut f32,
    ldd: usize,
) {
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

/// 2^x per lane; exactly 0 below -125 (and for -inf), +inf above 128,
/// NaN for NaN (and for +inf, which no caller relies on).
/// 2^x = 2^n · 2^f with n = round(x), |f| <= 1/2, 2^f by its Taylor
/// series in f·ln2 to degree 6 (relative error about 1e-7). Results that
/// would be subnormal are flushed to 0 by the mask rather than by scalef:
/// an underflowing scalef takes a microcode assist that costs ~50x.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp2(x: __m512) -> __m512 {
    // `!(x < -125)` and the constant first in `max`: a NaN lane stays NaN.
    let normal = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(-125.0));
    let x = _mm512_max_ps(_mm512_set1_ps(-125.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(super::tile::EXP2_POLY[6]);
    for &c in super::tile::EXP2_POLY[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_maskz_scalef_ps(normal, p, n)
}

/// `s[j][c] = 2^(s[j][c] - shift[c])` and `colsum[c] += Σ_j s[j][c]` over a
/// (rows, cols) tile with row stride `ld`; `cols % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp2_cols(
    s: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    shift: *const f32,
    colsum: *mut f32,
) {
    for c in (0..cols).step_by(16) {
        let sh = _mm512_loadu_ps(shift.add(c));
        let mut sum = _mm512_loadu_ps(colsum.add(c));
        for j in 0..rows {
            let p = s.add(j * ld + c);
            let e = exp2(_mm512_sub_ps(_mm512_loadu_ps(p), sh));
            _mm512_storeu_ps(p, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(colsum.add(c), sum);
    }
}

/// `colmax[c] = max(colmax[c], max_j s[j][c])`; `cols % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn col_max(s: *const f32, rows: usize, cols: usize, ld: usize, colmax: *mut f32) {
    for c in (0..cols).step_by(16) {
        let mut m = _mm512_loadu_ps(colmax.add(c));
        for j in 0..rows {
            m = _mm512_max_ps(m, _mm512_loadu_ps(s.add(j * ld + c)));
        }
        _mm512_storeu_ps(colmax.add(c), m);
    }
}

/// `s[r][c] = 2^(s[r][c]·mul - shift[r])`; `cols % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp2_rows(
    s: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    mul: f32,
    shift: *const f32,
) {
    let mv = _mm512_set1_ps(mul);
    for r in 0..rows {
        let sh = _mm512_set1_ps(*shift.add(r));
        for c in (0..cols).step_by(16) {
            let p = s.add(r * ld + c);
            _mm512_storeu_ps(p, exp2(_mm512_fmsub_ps(_mm512_loadu_ps(p), mv, sh)));
        }
    }
}

/// `p[r][c] = p[r][c] · (dp[r][c] - delta[r]) · scale` (P becomes dS);
/// `cols % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax_grad_rows(
    p: *mut f32,
    dp: *const f32,
    rows: usize,
    cols: usize,
    ld: usize,
    delta: *const f32,
    scale: f32,
) {
    let sc = _mm512_set1_ps(scale);
    for r in 0..rows {
        let dl = _mm512_set1_ps(*delta.add(r));
        for c in (0..cols).step_by(16) {
            let pp = p.add(r * ld + c);
            let g = _mm512_sub_ps(_mm512_loadu_ps(dp.add(r * ld + c)), dl);
            _mm512_storeu_ps(pp, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(pp), g), sc));
        }
    }
}

/// `Σ_i a[i]·b[i]` over `n % 16 == 0` elements.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut s0 = _mm512_setzero_ps();
    let mut s1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
        s1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(i + 16)),
            _mm512_loadu_ps(b.add(i + 16)),
            s1,
        );
        i += 32;
    }
    if i < n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}
