//! The tile operations every attention loop is built from, one entry point
//! each, on the SIMD token layer (`crate::simd`). Each entry checks its
//! slices against the sizes it is given; the lane loops (exponentials,
//! maxima, the softmax gradient, dot products) are then written once over
//! the token's register type, and only the register-blocked product (and
//! AVX-512's gathering transpose) is written per instruction set, in
//! `avx2.rs` and `avx512.rs`, behind [`TileKernels`].

use crate::simd::{dispatch, Arch, Portable, Simd};
use crate::vec_math::{exp2, exp2_nonpositive, Vf32};

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
            // SAFETY: the caller keeps the result inside the slice (above).
            ptr: unsafe { self.ptr.add(rows * self.rs) },
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
            // SAFETY: the caller keeps the result inside the slice (above).
            unsafe { self.row_scale.add(rows) }
        };
        Out {
            // SAFETY: the caller keeps the result inside the slice (above).
            ptr: unsafe { self.ptr.add(rows * self.ld + cols) },
            row_scale,
            ..self
        }
    }
}

/// The products and packs that differ per instruction set; every token
/// type has them. The lane loops of [`Tiles`] need no such trait: they are
/// generic over the token's register type.
pub(super) trait TileKernels: Simd {
    /// C (m, n) = A (m, k) · B (k, n) as [`Tiles::gemm`] describes.
    ///
    /// # Safety
    /// The slices must hold what [`Tiles::gemm`] asserts: `n % 16 == 0`,
    /// `n <= ldb, ldc`, and every A, B and C element the product indexes
    /// inside `a`, `b` and `c` (the SIMD bodies do not check again).
    #[allow(clippy::too_many_arguments)]
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
    );

    /// `dst[d][c] = src[c][d]·scale` as [`Tiles::pack_transposed`]
    /// describes, zero up to the next multiple of 16 rows.
    ///
    /// # Safety
    /// The slices and sizes must pass what [`Tiles::pack_transposed`]
    /// asserts (the SIMD body does not check again; this default indexes
    /// the slices, so it is safe in itself).
    unsafe fn pack_transposed(
        self,
        src: &[f32],
        (rows, cols, ld): (usize, usize, usize),
        scale: f32,
        dst: &mut [f32],
        ldd: usize,
    ) {
        let width = rows.div_ceil(16) * 16;
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

impl TileKernels for Portable {
    unsafe fn gemm(
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

impl<'a> Acc<'a> {
    /// The operands of a SIMD product: A as a pointer with strides, C with
    /// its accumulate mode and row scales (null unless `ScaleRows`).
    pub(super) fn operands(
        self,
        a: &[f32],
        (rs, cs): (usize, usize),
        c: &mut [f32],
        ld: usize,
    ) -> (Lhs, Out) {
        let row_scale = match self {
            Acc::ScaleRows(s) => s.as_ptr(),
            _ => std::ptr::null(),
        };
        let lhs = Lhs {
            ptr: a.as_ptr(),
            rs,
            cs,
        };
        let out = Out {
            ptr: c.as_mut_ptr(),
            ld,
            accumulate: !matches!(self, Acc::No),
            row_scale,
        };
        (lhs, out)
    }
}

/// The token a set of tile operations runs with: the best this CPU has
/// (or, in tests, the one `Arch::forced` names).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tiles {
    arch: Arch,
}

impl Tiles {
    /// The tiles of `Arch::best()`.
    pub fn new() -> Self {
        Tiles { arch: Arch::best() }
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
        if let Acc::ScaleRows(s) = acc {
            assert!(s.len() >= m);
        }
        let dims = (m, n, k);
        // SAFETY: the asserts above are the contract of `TileKernels::gemm`.
        dispatch!(self.arch, |t| unsafe {
            t.gemm(dims, a, (rsa, csa), b, ldb, c, ldc, acc)
        })
    }

    /// `s[j][c] = 2^(s[j][c] - shift[c])`, `colsum[c] += Σ_j s[j][c]` over a
    /// (rows, cols) tile of whole rows of `ld` floats; `cols % 16 == 0`.
    /// The shift is the column's maximum, so `s - shift <= 0` (or NaN): an
    /// exponent above 0 happens only in a column with a NaN score, which
    /// the forward sends to the exact path, and its value is unspecified.
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
        assert!(cols % 16 == 0 && cols <= ld && s.len() >= rows * ld);
        assert!(shift.len() >= cols && colsum.len() >= cols);
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || exp2_cols(t, s, (rows, cols, ld), shift, colsum)
        ))
    }

    /// `colmax[c] = max(colmax[c], max_j s[j][c])` over whole rows of `ld`
    /// floats; `cols % 16 == 0`.
    pub fn col_max(self, s: &[f32], (rows, cols, ld): (usize, usize, usize), colmax: &mut [f32]) {
        if rows == 0 {
            return;
        }
        assert!(cols % 16 == 0 && cols <= ld && s.len() >= rows * ld);
        assert!(colmax.len() >= cols);
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || col_max(t, s, (rows, cols, ld), colmax)
        ))
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
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || exp2_rows(t, s, (rows, cols, ld), mul, shift)
        ))
    }

    /// `p[r][c] = p[r][c]·(dp[r][c] - delta[r])·scale`, turning the
    /// probabilities P into the score gradient dS; `cols % 16 == 0`.
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
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || softmax_grad_rows(t, p, dp, (rows, cols, ld), delta, scale)
        ))
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
        // SAFETY: the asserts above are the contract of
        // `TileKernels::pack_transposed`.
        dispatch!(self.arch, |t| unsafe {
            t.pack_transposed(src, (rows, cols, ld), scale, dst, ldd)
        })
    }

    /// Whether every value of `x` is finite (`super::all_finite`, compiled
    /// with the token's features).
    pub fn all_finite(self, x: &[f32]) -> bool {
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || super::all_finite(x)
        ))
    }

    /// `out[j] = Σ_i q[i]·rows[j·d + i]` with `d = q.len()`, a multiple of
    /// 16: the query against each of `out.len()` rows.
    pub fn dots(self, q: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = q.len();
        assert!(d.is_multiple_of(16) && rows.len() >= out.len() * d);
        if d == 0 {
            out.fill(0.0);
            return;
        }
        dispatch!(self.arch, |t| t.vectorize(
            #[inline(always)]
            move || {
                for (y, k) in out.iter_mut().zip(rows.chunks_exact(d)) {
                    *y = dot(t, q, k);
                }
            }
        ))
    }
}

// The lane loops, once over the token's register type `S::V`. Widths are
// multiples of 16, so the row loops walk blocks of 16 lanes (one AVX-512
// register, two AVX2 ones): a block is a slice of known length, so the
// register loads inside it need no bounds check of their own. The column
// loops walk whole rows instead (`chunks_exact` of `ld`), where a register's
// column range is the same in every row and is checked once.

/// Lanes per block.
const W: usize = 16;

#[inline(always)]
fn exp2_cols<S: Simd>(
    _: S,
    s: &mut [f32],
    (rows, cols, ld): (usize, usize, usize),
    shift: &[f32],
    colsum: &mut [f32],
) {
    // Whole rows of length `ld`: the column range of a register is then
    // checked once per register, not once per row.
    let (n, s) = (S::V::N, &mut s[..rows * ld]);
    let blocks = shift[..cols]
        .chunks_exact(n)
        .zip(colsum[..cols].chunks_exact_mut(n));
    for (i, (sh, sum)) in blocks.enumerate() {
        let (c, sh) = (i * n, S::V::load(sh));
        let mut acc = S::V::load(sum);
        for row in s.chunks_exact_mut(ld) {
            let x = &mut row[c..c + n];
            let e = exp2_nonpositive(S::V::load(x) - sh);
            e.store(x);
            acc = acc + e;
        }
        acc.store(sum);
    }
}

#[inline(always)]
fn col_max<S: Simd>(_: S, s: &[f32], (rows, cols, ld): (usize, usize, usize), colmax: &mut [f32]) {
    let (n, s) = (S::V::N, &s[..rows * ld]);
    for (i, out) in colmax[..cols].chunks_exact_mut(n).enumerate() {
        let c = i * n;
        let mut m = S::V::load(out);
        for row in s.chunks_exact(ld) {
            m = m.max(S::V::load(&row[c..c + n]));
        }
        m.store(out);
    }
}

#[inline(always)]
fn exp2_rows<S: Simd>(
    _: S,
    s: &mut [f32],
    (rows, cols, ld): (usize, usize, usize),
    mul: f32,
    shift: &[f32],
) {
    let (m, n) = (S::V::splat(mul), S::V::N);
    for (row, &sh) in s.chunks_mut(ld).take(rows).zip(shift) {
        let sh = S::V::splat(-sh);
        for x in row[..cols].chunks_exact_mut(W) {
            for r in 0..W / n {
                let x = &mut x[r * n..];
                exp2(S::V::load(x).mul_add(m, sh)).store(x);
            }
        }
    }
}

#[inline(always)]
fn softmax_grad_rows<S: Simd>(
    _: S,
    p: &mut [f32],
    dp: &[f32],
    (rows, cols, ld): (usize, usize, usize),
    delta: &[f32],
    scale: f32,
) {
    let (sc, n) = (S::V::splat(scale), S::V::N);
    for ((pr, dr), &dl) in p.chunks_mut(ld).zip(dp.chunks(ld)).take(rows).zip(delta) {
        let dl = S::V::splat(dl);
        for (x, g) in pr[..cols]
            .chunks_exact_mut(W)
            .zip(dr[..cols].chunks_exact(W))
        {
            for r in 0..W / n {
                let (x, g) = (&mut x[r * n..], &g[r * n..]);
                (S::V::load(x) * (S::V::load(g) - dl) * sc).store(x);
            }
        }
    }
}

#[inline(always)]
fn dot<S: Simd>(_: S, a: &[f32], b: &[f32]) -> f32 {
    // Two accumulators, alternating by register over blocks of 2W, so that
    // the adds of one overlap those of the other; then the one block of W
    // that may be left.
    let n = S::V::N;
    let mut acc = [S::V::zero(); 2];
    let (mut xs, mut ys) = (a.chunks_exact(2 * W), b.chunks_exact(2 * W));
    for (x, y) in (&mut xs).zip(&mut ys) {
        for r in 0..2 * W / n {
            acc[r % 2] = S::V::load(&x[r * n..]).mul_add(S::V::load(&y[r * n..]), acc[r % 2]);
        }
    }
    for (x, y) in xs
        .remainder()
        .chunks_exact(W)
        .zip(ys.remainder().chunks_exact(W))
    {
        for r in 0..W / n {
            acc[r % 2] = S::V::load(&x[r * n..]).mul_add(S::V::load(&y[r * n..]), acc[r % 2]);
        }
    }
    (acc[0] + acc[1]).reduce_sum()
}
