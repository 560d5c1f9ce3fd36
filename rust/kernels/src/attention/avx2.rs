//! AVX2+FMA tile kernels of the attention module (see `tile.rs` for the
//! contract of each function; pointers are bounds-checked there).

use std::arch::x86_64::*;

use super::tile::{Lhs, Out};

/// Rows of C per register tile: 6 rows x 2 ymm = 12 of the 16 registers
/// hold accumulators, 2 hold the B row and one the broadcast.
const MR: usize = 6;

/// C (m, n) (+)= A (m, k) · B (k, n), B row p at `b[p*ldb..]`;
/// `n % 16 == 0`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm((m, n, k): (usize, usize, usize), a: Lhs, b: *const f32, ldb: usize, c: Out) {
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

/// The micro-kernel: an `R x 16` block of C in registers.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(k: usize, a: Lhs, b: *const f32, ldb: usize, c: Out) {
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

/// 2^x per lane; exactly 0 below -125 (and for -inf, never subnormal);
/// saturates at 2^127; NaN for NaN. Same series as the AVX-512 version, with 2^n put
/// into the exponent bits directly.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp2(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-126.0));
    // The constants first: `max`/`min` return their second operand for
    // NaN, so a NaN lane stays NaN (and `tiny` is false for it).
    let x = _mm256_min_ps(
        _mm256_set1_ps(127.0),
        _mm256_max_ps(_mm256_set1_ps(-126.0), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm256_sub_ps(x, n);
    let mut p = _mm256_set1_ps(super::tile::EXP2_POLY[6]);
    for &c in super::tile::EXP2_POLY[..6].iter().rev() {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
    let y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    _mm256_andnot_ps(tiny, y)
}

/// See `avx512::exp2_cols`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp2_cols(
    s: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    shift: *const f32,
    colsum: *mut f32,
) {
    for c in (0..cols).step_by(8) {
        let sh = _mm256_loadu_ps(shift.add(c));
        let mut sum = _mm256_loadu_ps(colsum.add(c));
        for j in 0..rows {
            let p = s.add(j * ld + c);
            let e = exp2(_mm256_sub_ps(_mm256_loadu_ps(p), sh));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(colsum.add(c), sum);
    }
}

/// See `avx512::col_max`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn col_max(s: *const f32, rows: usize, cols: usize, ld: usize, colmax: *mut f32) {
    for c in (0..cols).step_by(8) {
        let mut m = _mm256_loadu_ps(colmax.add(c));
        for j in 0..rows {
            m = _mm256_max_ps(m, _mm256_loadu_ps(s.add(j * ld + c)));
        }
        _mm256_storeu_ps(colmax.add(c), m);
    }
}

/// See `avx512::exp2_rows`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp2_rows(
    s: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    mul: f32,
    shift: *const f32,
) {
    let mv = _mm256_set1_ps(mul);
    for r in 0..rows {
        let sh = _mm256_set1_ps(*shift.add(r));
        for c in (0..cols).step_by(8) {
            let p = s.add(r * ld + c);
            _mm256_storeu_ps(p, exp2(_mm256_fmsub_ps(_mm256_loadu_ps(p), mv, sh)));
        }
    }
}

/// See `avx512::softmax_grad_rows`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax_grad_rows(
    p: *mut f32,
    dp: *const f32,
    rows: usize,
    cols: usize,
    ld: usize,
    delta: *const f32,
    scale: f32,
) {
    let sc = _mm256_set1_ps(scale);
    for r in 0..rows {
        let dl = _mm256_set1_ps(*delta.add(r));
        for c in (0..cols).step_by(8) {
            let pp = p.add(r * ld + c);
            let g = _mm256_sub_ps(_mm256_loadu_ps(dp.add(r * ld + c)), dl);
            _mm256_storeu_ps(pp, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(pp), g), sc));
        }
    }
}

/// See `avx512::dot`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut s0 = _mm256_setzero_ps();
    let mut s1 = _mm256_setzero_ps();
    for i in (0..n).step_by(16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
        s1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.add(i + 8)),
            _mm256_loadu_ps(b.add(i + 8)),
            s1,
        );
    }
    let s = _mm256_add_ps(s0, s1);
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}
