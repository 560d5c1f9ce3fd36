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

/// What a product does with the C it lands on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Acc<'a> {
    /// C = AB.
    No,
    /// C += AB.
    Add,
    /// C = C·scale[r] + AB, row by row (the online softmax's rescale).
    ScaleRows(&'a [f32]),
}

/// The left operand of a product as the SIMD bodies see it: A(r, p) at
/// `ptr + r*rs + p*cs`.
#[derive(Clone, Copy)]
pub(super) struct Lhs {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl Lhs {
    /// The operand starting `rows` rows further down.
    ///
    /// # Safety
    /// The result must stay inside the slice the pointer came from.
    pub unsafe fn offset(self, rows: usize) -> Lhs {
        Lhs {
            ptr: self.ptr.add(rows * self.rs),
            ..self
        }
    }
}

/// The C side of a product as the SIMD bodies see it: row r at
/// `ptr + r*ld`; with `accumulate`, C is added (scaled by
/// `row_scale[r]` unless that is null).
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub ptr: *mut f32,
    pub ld: usize,
    pub accumulate: bool,
    pub row_scale: *const f32,
}

impl Out {
    /// The block starting `rows` rows down and `cols` columns right.
    ///
    /// # Safety
    /// The result must stay inside the slice the pointer came from.
    pub unsafe fn offset(self, rows: usize, cols: usize) -> Out {
        let row_scale = if self.row_scale.is_null() {
            self.row_scale
        } else {
            self.row_scale.add(rows)
        };
        Out {
            ptr: self.ptr.add(rows * self.ld + cols),
            row_scale,
            ..self
        }
    }
}

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

    /// C (m, n) = A (m, k) · B (k, n) plus, by `acc`, nothing, C, or C
    /// with row r scaled by `scale[r]`. A(r, p) is `a[r*rsa + p*csa]` (so
    /// A may be read transposed), B row p is `b[p*ldb..]`, C row r is
    /// `c[r*ldc..]`. `n` must be a multiple of 16.
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
        acc: Acc<'_>,
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
        let row_scale = match acc {
            Acc::ScaleRows(s) => {
                assert!(s.len() >= m);
                s.as_ptr()
            }
            _ => std::ptr::null(),
        };
        let lhs = Lhs {
            ptr: a.as_ptr(),
            rs: rsa,
            cs: csa,
        };
        let out = Out {
            ptr: c.as_mut_ptr(),
            ld: ldc,
            accumulate: !matches!(acc, Acc::No),
            row_scale,
        };
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
            Level::Avx512 => unsafe { super::avx512::gemm((m, n, k), lhs, b.as_ptr(), ldb, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
            Level::Avx2Fma => unsafe { super::avx2::gemm((m, n, k), lhs, b.as_ptr(), ldb, out) },
            _ => {
                for r in 0..m {
                    let row = &mut c[r * ldc..r * ldc + n];
                    match acc {
                        Acc::No => row.fill(0.0),
                        Acc::Add => {}
                        Acc::ScaleRows(s) => row.iter_mut().for_each(|x| *x *= s[r]),
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
            Level::Avx512 => unsafe {
                super::avx512::col_max(s.as_ptr(), rows, cols, ld, colmax.as_mut_ptr())
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
            Level::Avx512 => unsafe {
                super::avx512::exp2_rows(s.as_mut_ptr(), rows, cols, ld, mul, shift.as_ptr())
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
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
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
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

    /// Packs `src (rows, cols)` (row stride `ld`) transposed and scaled
    /// into `dst (cols, ldd)`: `dst[d][c] = src[c][d]·scale`, with the
    /// columns from `rows` up to the next multiple of 16 set to 0.
    pub fn pack_transposed(
        self,
        src: &[f32],
        (rows, cols, ld): (usize, usize, usize),
        scale: f32,
        dst: &mut [f32],
        ldd: usize,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        let width = rows.div_ceil(16) * 16;
        assert!(cols <= ld && width <= ldd && ld * 16 <= i32::MAX as usize);
        assert!(src.len() >= (rows - 1) * ld + cols && dst.len() >= (cols - 1) * ldd + width);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
            Level::Avx512 => unsafe {
                super::avx512::pack_transposed(
                    src.as_ptr(),
                    (rows, cols, ld),
                    scale,
                    dst.as_mut_ptr(),
                    ldd,
                )
            },
            _ => {
                for (d, col) in dst.chunks_mut(ldd).take(cols).enumerate() {
                    for (c, y) in col[..width].iter_mut().enumerate() {
                        *y = if c < rows {
                            src[c * ld + d] * scale
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }

    /// `Σ a[i]·b[i]`; `a.len() == b.len()`, a multiple of 16.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX-512F; the asserts above keep every pointer the body forms
            // inside the slices it came from.
            Level::Avx512 => unsafe { super::avx512::dot(a.as_ptr(), b.as_ptr(), a.len()) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `self.level` never exceeds `simd::level()`, so the CPU has
            // AVX2 and FMA; the asserts above keep every pointer the body
            // forms inside the slices it came from.
            Level::Avx2Fma => unsafe { super::avx2::dot(a.as_ptr(), b.as_ptr(), a.len()) },
            _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        }
    }
}
