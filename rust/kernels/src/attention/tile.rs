//! The tile operations every attention loop is built from, one entry point
//! each, dispatched on the SIMD level. Each entry checks its slices against
//! the sizes it is given, so the `unsafe` SIMD bodies only ever touch
//! memory inside them. The portable bodies here are the slow twins the
//! tests hold the SIMD ones to.

use crate::simd::Level;

/// Taylor coefficients of 2^f = e^(f·ln2): (ln2)^i / i!.
pub(super) const EXP2_POLY: [f32; 7] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// The SIMD level a set of tile operations runs at; never above what the
/// CPU offers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiles {
    level: Level,
}

impl Tiles {
    /// `level` lowered to what this CPU supports.
    pub fn new(level: Level) -> Self {
        Tiles {
            level: level.min(crate::simd::level()),
        }
    }

    /// C (m, n) = [C +] A (m, k) · B (k, n), with A(r, p) at
    /// `a[r*rsa + p*csa]` (so A may be read transposed), B row p at
    /// `b[p*ldb..]`, C row r at `c[r*ldc..]`. `n` must be a multiple of 16.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        self,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        assert!(n % 16 == 0 && n <= ldb && n <= ldc);
        assert!(c.len() >= (m - 1) * ldc + n);
        if k > 0 {
            assert!(a.len() > (m - 1) * rsa + (k - 1) * csa);
            assert!(b.len() >= (k - 1) * ldb + n);
        }
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                super::avx512::gemm(m, n, k, ap, rsa, csa, bp, ldb, cp, ldc, accumulate)
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe {
                super::avx2::gemm(m, n, k, ap, rsa, csa, bp, ldb, cp, ldc, accumulate)
            },
            _ => {
                for r in 0..m {
                    let row = &mut c[r * ldc..r * ldc + n];
                    if !accumulate {
                        row.fill(0.0);
                    }
                    for p in 0..k {
                        let x = a[r * rsa + p * csa];
                        for (y, &bv) in row.iter_mut().zip(&b[p * ldb..p * ldb + n]) {
                            *y += x * bv;
                        }
                    }
                }
            }
        }
    }

    /// `s[j][c] = 2^(s[j][c] - shift[c])`, `colsum[c] += Σ_j s[j][c]` over a
    /// (rows, cols) tile with row stride `ld`; `cols % 16 == 0`.
    pub fn exp2_cols(
        self,
        s: &mut [f32],
        (rows, cols, ld): (usize, usize, usize),
        shift: &[f32],
        colsum: &mut [f32],
    ) {
        if rows == 0 {
            return;
        }
        assert!(cols % 16 == 0 && cols <= ld && s.len() >= (rows - 1) * ld + cols);
        assert!(shift.len() >= cols && colsum.len() >= cols);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                super::avx512::exp2_cols(
                    s.as_mut_ptr(),
                    rows,
                    cols,
                    ld,
                    shift.as_ptr(),
                    colsum.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe {
                super::avx2::exp2_cols(
                    s.as_mut_ptr(),
                    rows,
                    cols,
                    ld,
                    shift.as_ptr(),
                    colsum.as_mut_ptr(),
                )
            },
            _ => {
                for row in s.chunks_mut(ld).take(rows) {
                    for ((x, &sh), sum) in row[..cols].iter_mut().zip(shift).zip(colsum.iter_mut())
                    {
                        *x = (*x - sh).exp2();
                        *sum += *x;
                    }
                }
            }
        }
    }

    /// `colmax[c] = max(colmax[c], max_j s[j][c])`; `cols % 16 == 0`.
    pub fn col_max(self, s: &[f32], (rows, cols, ld): (usize, usize, usize), colmax: &mut [f32]) {
        if rows == 0 {
            return;
        }
        assert!(cols % 16 == 0 && cols <= ld && s.len() >= (rows - 1) * ld + cols);
        assert!(colmax.len() >= cols);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                super::avx512::col_max(s.as_ptr(), rows, cols, ld, colmax.as_mut_ptr())
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe {
                super::avx2::col_max(s.as_ptr(), rows, cols, ld, colmax.as_mut_ptr())
            },
            _ => {
                for row in s.chunks(ld).take(rows) {
                    for (m, &x) in colmax.iter_mut().zip(&row[..cols]) {
                        *m = m.max(x);
                    }
                }
            }
        }
    }

    /// `s[r][c] = 2^(s[r][c]·mul - shift[r])`; `cols % 16 == 0`.
    pub fn exp2_rows(
        self,
        s: &mut [f32],
        (rows, cols, ld): (usize, usize, usize),
        mul: f32,
        shift: &[f32],
    ) {
        if rows == 0 {
            return;
        }
        assert!(cols % 16 == 0 && cols <= ld && s.len() >= (rows - 1) * ld + cols);
        assert!(shift.len() >= rows);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                super::avx512::exp2_rows(s.as_mut_ptr(), rows, cols, ld, mul, shift.as_ptr())
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe {
                super::avx2::exp2_rows(s.as_mut_ptr(), rows, cols, ld, mul, shift.as_ptr())
            },
            _ => {
                for (row, &sh) in s.chunks_mut(ld).take(rows).zip(shift) {
                    for x in &mut row[..cols] {
                        *x = (*x * mul - sh).exp2();
                    }
                }
            }
        }
    }

    /// `p[r][c] = p[r][c]·(dp[r][c] - delta[r])·scale`, turning the
    /// probabilities P into the score gradient dS; `cols % 16 == 0`.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_grad_rows(
        self,
        p: &mut [f32],
        dp: &[f32],
        (rows, cols, ld): (usize, usize, usize),
        delta: &[f32],
        scale: f32,
    ) {
        if rows == 0 {
            return;
        }
        let need = (rows - 1) * ld + cols;
        assert!(cols % 16 == 0 && cols <= ld && p.len() >= need && dp.len() >= need);
        assert!(delta.len() >= rows);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                super::avx512::softmax_grad_rows(
                    p.as_mut_ptr(),
                    dp.as_ptr(),
                    rows,
                    cols,
                    ld,
                    delta.as_ptr(),
                    scale,
                )
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe {
                super::avx2::softmax_grad_rows(
                    p.as_mut_ptr(),
                    dp.as_ptr(),
                    rows,
                    cols,
                    ld,
                    delta.as_ptr(),
                    scale,
                )
            },
            _ => {
                for r in 0..rows {
                    let (pr, dr) = (&mut p[r * ld..r * ld + cols], &dp[r * ld..r * ld + cols]);
                    for (x, &g) in pr.iter_mut().zip(dr) {
                        *x = *x * (g - delta[r]) * scale;
                    }
                }
            }
        }
    }

    /// `Σ a[i]·b[i]`; `a.len() == b.len()`, a multiple of 16.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len() % 16 == 0);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { super::avx512::dot(a.as_ptr(), b.as_ptr(), a.len()) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => unsafe { super::avx2::dot(a.as_ptr(), b.as_ptr(), a.len()) },
            _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        }
    }
}
