//! AVX-512 tile kernels of the attention module (see `tile.rs` for the
//! contract of each function; pointers are bounds-checked there).

use std::arch::x86_64::*;

/// Rows of C per register tile: 8 rows x 2 vectors = 16 of the 32 zmm
/// registers hold accumulators, leaving room for the B row and broadcasts.
const MR: usize = 8;

/// C (m, n) (+)= A (m, k) · B (k, n); A(r, p) at `a[r*rsa + p*csa]`, B row p
/// at `b[p*ldb..]`, C row r at `c[r*ldc..]`; `n % 16 == 0`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut j = 0;
    while j + 32 <= n {
        row_tiles::<2>(m, k, a, rsa, csa, b.add(j), ldb, c.add(j), ldc, accumulate);
        j += 32;
    }
    if j < n {
        row_tiles::<1>(m, k, a, rsa, csa, b.add(j), ldb, c.add(j), ldc, accumulate);
    }
}

/// One column panel of `NV` vectors, all rows: full `MR`-row tiles, then a
/// tail tile whose row count is a compile-time constant too, so that its
/// accumulators stay in registers.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_tiles<const NV: usize>(
    m: usize,
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut i = 0;
    while i + MR <= m {
        tile::<MR, NV>(
            k,
            a.add(i * rsa),
            rsa,
            csa,
            b,
            ldb,
            c.add(i * ldc),
            ldc,
            acc,
        );
        i += MR;
    }
    let (a, c) = (a.add(i * rsa), c.add(i * ldc));
    match m - i {
        0 => {}
        1 => tile::<1, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        2 => tile::<2, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        3 => tile::<3, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        4 => tile::<4, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        5 => tile::<5, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        6 => tile::<6, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
        _ => tile::<7, NV>(k, a, rsa, csa, b, ldb, c, ldc, acc),
    }
}

/// The micro-kernel: an `R x 16*NV` block of C in registers, one rank-1
/// update per step of k (NV loads of B, R broadcasts of A).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile<const R: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut s = [[_mm512_setzero_ps(); NV]; R];
    for p in 0..k {
        let bp = b.add(p * ldb);
        let mut bv = [_mm512_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(bp.add(16 * v));
        }
        let ap = a.add(p * csa);
        for (r, row) in s.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*ap.add(r * rsa));
            for (acc, bx) in row.iter_mut().zip(bv.iter()) {
                *acc = _mm512_fmadd_ps(x, *bx, *acc);
            }
        }
    }
    for (r, row) in s.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            let cp = c.add(r * ldc + 16 * v);
            let y = if acc {
                _mm512_add_ps(*x, _mm512_loadu_ps(cp))
            } else {
                *x
            };
            _mm512_storeu_ps(cp, y);
        }
    }
}

/// 2^x per lane; exactly 0 for x <= -150 (and for -inf), +inf above 128.
/// 2^x = 2^n · 2^f with n = round(x), |f| <= 1/2, 2^f by its Taylor
/// series in f·ln2 to degree 6 (relative error about 1e-7).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp2(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-200.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(super::tile::EXP2_POLY[6]);
    for &c in super::tile::EXP2_POLY[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
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
