//! A few rows of A against a B whose columns are contiguous: `y = x @ W.T`
//! with `W (n, k)` row-major and `x` of 1 to [`MAX_M`] rows, which is how
//! a linear layer (or the vocabulary head) decodes a token or a handful.
//!
//! The product is bound by reading W once: each task streams its
//! contiguous range of W's rows, four rows at a time, and every vector of
//! W loaded is multiplied with all rows of `x` (at most four at a time; a
//! block of four W rows, 4 x k floats, stays in L1 for the next group of
//! x rows). Packing W, as the GEMM would, reads and writes it once more.

use rayon::prelude::*;

use super::kernel::Epilogue;
use crate::simd::{Portable, Simd};

/// Most rows of A that take this path; from about here on the GEMM's
/// reuse of packed panels beats reading W's rows once per four rows of A
/// (2 threads, AVX-512: at k = 768, 32 rows run 1.25x faster here, 64
/// rows 1.2x slower).
pub const MAX_M: usize = 32;
/// Above [`ALWAYS_M`] rows, the depth from which this path is taken: each
/// dot product ends in a reduction across lanes, which short rows cannot
/// pay for (m = 32, k = 64 runs 0.9x the GEMM's speed).
pub const MIN_K: usize = 256;
/// Up to this many rows, this path always: the GEMM would compute whole
/// MR-row tiles for them.
pub const ALWAYS_M: usize = 4;

/// Whether an `(m, k) x (k, n)` product with B's columns contiguous along
/// k should take this path.
pub fn wanted(m: usize, n: usize, k: usize) -> bool {
    n > 1 && (m <= ALWAYS_M || (m <= MAX_M && k >= MIN_K))
}
/// Rows of W per step: their dot products with up to [`XG`] rows of x
/// share every load.
const R: usize = 4;
/// Rows of x per step.
const XG: usize = 4;
/// How far ahead of its loads each of the R row streams of W is
/// prefetched (floats): 4 x 2 KiB in flight per thread. With W out of
/// cache (decoding GPT-2-small reads 0.5 GB per token) this took one-row
/// `x @ W.T` from about 0.8x to 0.95x NumPy's speed on 2 threads (20-26
/// GB/s, the memory's limit); 256 to 2048 measured alike.
const PREFETCH_FLOATS: usize = 512;
/// W rows per parallel task, at least: 64 x k floats is enough work to
/// cover a task's start.
const MIN_TASK_ROWS: usize = 64;

/// `c[g, j] = ep(alpha * x[g] . w[j], c[g, j], bias[j])` for `g < m`,
/// `j < n`: `x (m, k)` with row stride `ldx`, `w (n, k)` with row stride
/// `ldw`, contiguous along k, and `c (m, n)` with row stride `ldc`.
#[derive(Clone, Copy)]
pub struct SmallArgs {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: *const f32,
    pub ldx: usize,
    pub w: *const f32,
    pub ldw: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub ep: Epilogue,
}

// SAFETY: tasks read x, w and bias, and write disjoint columns of c.
unsafe impl Send for SmallArgs {}
// SAFETY: as for Send: tasks share only what they read.
unsafe impl Sync for SmallArgs {}

/// Dot products of `M` rows of x with `R` rows of W: `out[g][r]`.
type Dots<const M: usize> = [[f32; R]; M];

/// The register-blocked dot products, one body per SIMD token.
pub trait RowDots: Simd {
    /// Dot products of the `M` rows of `x (M, k)` (row stride `ldx`) with
    /// the R rows `w`; the next group of W rows starts `ahead` floats after
    /// these (where the prefetches run on to).
    ///
    /// # Safety
    /// `x` covers `M` rows of `k` floats, each `w[r]` `k` floats.
    unsafe fn dots<const M: usize>(
        self,
        k: usize,
        x: *const f32,
        ldx: usize,
        w: [*const f32; R],
        ahead: usize,
    ) -> Dots<M>;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Dots, RowDots, PREFETCH_FLOATS, R};
    use crate::simd::{Avx2, Avx512};
    use std::arch::x86_64::*;

    impl RowDots for Avx512 {
        #[inline(always)]
        unsafe fn dots<const M: usize>(
            self,
            k: usize,
            x: *const f32,
            ldx: usize,
            w: [*const f32; R],
            ahead: usize,
        ) -> Dots<M> {
            // SAFETY: the token proves AVX-512F; the pointers are the
            // contract of `dots`.
            unsafe { dots_avx512::<M>(k, x, ldx, w, ahead) }
        }
    }

    impl RowDots for Avx2 {
        #[inline(always)]
        unsafe fn dots<const M: usize>(
            self,
            k: usize,
            x: *const f32,
            ldx: usize,
            w: [*const f32; R],
            _ahead: usize,
        ) -> Dots<M> {
            // SAFETY: the token proves AVX2 and FMA; the pointers are the
            // contract of `dots`.
            unsafe { dots_avx2::<M>(k, x, ldx, w) }
        }
    }

    /// AVX-512: 16 lanes per step, the last partial step masked.
    ///
    /// # Safety
    /// As [`RowDots::dots`]'s, on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn dots_avx512<const M: usize>(
        k: usize,
        x: *const f32,
        ldx: usize,
        w: [*const f32; R],
        ahead: usize,
    ) -> Dots<M> {
        let mut acc = [[_mm512_setzero_ps(); R]; M];
        let body = k / 16 * 16;
        let mut p = 0;
        while p < body {
            // Each row's stream a fixed distance ahead, continuing into
            // the same row of the next group once this row ends.
            let q = p + PREFETCH_FLOATS;
            let off = if q < k { q } else { q - k + ahead };
            for &wr in &w {
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(off).cast());
            }
            // SAFETY: floats p..p + 16 <= k of every row of x and w.
            unsafe {
                let wv: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(w[r].add(p)));
                for (g, row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(x.add(g * ldx + p));
                    for r in 0..R {
                        row[r] = _mm512_fmadd_ps(xv, wv[r], row[r]);
                    }
                }
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = (1u32 << (k - p)) as u16 - 1;
            // SAFETY: the mask reads only floats p..k of every row.
            unsafe {
                let wv: [__m512; R] =
                    std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, w[r].add(p)));
                for (g, row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, x.add(g * ldx + p));
                    for r in 0..R {
                        row[r] = _mm512_fmadd_ps(xv, wv[r], row[r]);
                    }
                }
            }
        }
        // All 4M sums at once: a transposing reduction tree over 16
        // vectors (the missing ones zero) leaves sum i in lane i.
        let mut v = [_mm512_setzero_ps(); 16];
        for (g, row) in acc.iter().enumerate() {
            for r in 0..R {
                v[LANE_OF[g * R + r]] = row[r];
            }
        }
        let mut sums = [0.0f32; 16];
        // SAFETY: `sums` holds 16 floats.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), reduce16(v)) };
        std::array::from_fn(|g| std::array::from_fn(|r| sums[g * R + r]))
    }

    /// The input slot of [`reduce16`] whose sum lands in lane `i`.
    const LANE_OF: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];

    /// Lane `i` of the result is the sum of the lanes of `v[LANE_OF[i]]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn reduce16(v: [__m512; 16]) -> __m512 {
        // 512 -> 256: halves of v[i] and v[i + 8] side by side.
        let t: [__m512; 8] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(v[i], v[i + 8]),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(v[i], v[i + 8]),
            )
        });
        // 256 -> 128.
        let u: [__m512; 4] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(t[i], t[i + 4]),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(t[i], t[i + 4]),
            )
        });
        // 128 -> 64 inside each 128-bit block.
        let w: [__m512; 2] = std::array::from_fn(|i| {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(u[i], u[i + 2]),
                _mm512_shuffle_ps::<0xEE>(u[i], u[i + 2]),
            )
        });
        // 64 -> 32.
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(w[0], w[1]),
            _mm512_shuffle_ps::<0xDD>(w[0], w[1]),
        )
    }

    /// AVX2 + FMA: 8 lanes per step, the tail in scalars.
    ///
    /// # Safety
    /// As [`RowDots::dots`]'s, on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2<const M: usize>(
        k: usize,
        x: *const f32,
        ldx: usize,
        w: [*const f32; R],
    ) -> Dots<M> {
        let mut acc = [[_mm256_setzero_ps(); R]; M];
        let body = k / 8 * 8;
        let mut p = 0;
        while p < body {
            // SAFETY: floats p..p + 8 <= k of every row of x and w.
            unsafe {
                let wv: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(w[r].add(p)));
                for (g, row) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(g * ldx + p));
                    for r in 0..R {
                        row[r] = _mm256_fmadd_ps(xv, wv[r], row[r]);
                    }
                }
            }
            p += 8;
        }
        let mut out = [[0.0; R]; M];
        for (g, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
            for r in 0..R {
                let v = a[r];
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                let mut t = _mm_cvtss_f32(s);
                for q in body..k {
                    // SAFETY: q < k.
                    t += unsafe { *x.add(g * ldx + q) * *w[r].add(q) };
                }
                o[r] = t;
            }
        }
        out
    }
}

impl RowDots for Portable {
    /// Fixed-width lane arrays, which the compiler vectorizes.
    #[inline(always)]
    unsafe fn dots<const M: usize>(
        self,
        k: usize,
        x: *const f32,
        ldx: usize,
        w: [*const f32; R],
        _ahead: usize,
    ) -> Dots<M> {
        const L: usize = 8;
        // SAFETY: `x` covers M rows of k floats at stride `ldx`, each `w[r]`
        // k floats (the contract of `dots`).
        let (xs, ws): ([&[f32]; M], [&[f32]; R]) = unsafe {
            (
                std::array::from_fn(|g| std::slice::from_raw_parts(x.add(g * ldx), k)),
                std::array::from_fn(|r| std::slice::from_raw_parts(w[r], k)),
            )
        };
        let mut acc = [[[0.0f32; L]; R]; M];
        let body = k / L * L;
        for p in (0..body).step_by(L) {
            for (row, xg) in acc.iter_mut().zip(&xs) {
                for (lanes, wr) in row.iter_mut().zip(&ws) {
                    for (l, v) in lanes.iter_mut().enumerate() {
                        *v += xg[p + l] * wr[p + l];
                    }
                }
            }
        }
        let mut out = [[0.0; R]; M];
        for ((o, a), xg) in out.iter_mut().zip(&acc).zip(&xs) {
            for (r, wr) in ws.iter().enumerate() {
                let mut t: f32 = a[r].iter().sum();
                for q in body..k {
                    t += xg[q] * wr[q];
                }
                o[r] = t;
            }
        }
        out
    }
}

/// Writes `M` x rows (from row `g0`) against W rows `j..j + rows` into C.
///
/// # Safety
/// As [`small_m`]'s, with rows `g0..g0 + M` of x and `j..j + rows` of W
/// inside the product, and `w` R readable rows of W.
#[inline(always)]
unsafe fn group<const M: usize, D: RowDots>(
    dots: D,
    s: &SmallArgs,
    g0: usize,
    j: usize,
    rows: usize,
    w: [*const f32; R],
) {
    // SAFETY: rows g0..g0 + M of x, the R rows `w`, and the elements
    // (g0 + g, j + r) of C for r < rows (and bias j + r) lie inside.
    unsafe {
        let d = dots.dots::<M>(s.k, s.x.add(g0 * s.ldx), s.ldx, w, R * s.ldw);
        for (g, dg) in d.iter().enumerate() {
            for (r, &v) in dg.iter().enumerate().take(rows) {
                let cp = s.c.add((g0 + g) * s.ldc + j + r);
                let bias = if s.ep.bias.is_null() {
                    0.0
                } else {
                    *s.ep.bias.add(j + r)
                };
                *cp = s.ep.apply(v, *cp, bias);
            }
        }
    }
}

/// Columns `[j0, j1)` of C.
///
/// # Safety
/// As [`small_m`]'s, with `j0 <= j1 <= n`.
#[inline(always)]
unsafe fn columns<D: RowDots>(dots: D, s: &SmallArgs, j0: usize, j1: usize) {
    let mut j = j0;
    while j < j1 {
        let rows = R.min(j1 - j);
        // Past the last row, repeat it: the extra sums are dropped.
        let w: [*const f32; R] =
            std::array::from_fn(|r| s.w.wrapping_add((j + r.min(rows - 1)) * s.ldw));
        let mut g0 = 0;
        while g0 < s.m {
            // SAFETY: W rows j..j + rows <= j1 <= n and x rows from g0 < m.
            unsafe {
                match s.m - g0 {
                    1 => group::<1, D>(dots, s, g0, j, rows, w),
                    2 => group::<2, D>(dots, s, g0, j, rows, w),
                    3 => group::<3, D>(dots, s, g0, j, rows, w),
                    _ => group::<XG, D>(dots, s, g0, j, rows, w),
                }
            }
            g0 += XG;
        }
        j += R;
    }
}

/// Runs the product with the dot products of token `dots` on `threads`
/// threads.
///
/// # Safety
/// `x`, `w` and `c` cover the shapes in `s` (and `bias`, when not null,
/// `n` floats); `1 <= m <= MAX_M`, `k >= 1`.
pub unsafe fn small_m<D: RowDots>(dots: D, s: &SmallArgs, threads: usize) {
    debug_assert!(s.m >= 1 && s.m <= MAX_M && s.k >= 1);
    // Two tasks per thread, in whole steps of R rows, so that a thread
    // slowed by another job, or slow to wake, is helped out. (One fixed
    // range per thread, with rayon::broadcast, kept each thread's share of
    // a small W in its L2 but measured no faster: it waits for every
    // thread to wake.)
    let tasks = if threads > 1 {
        (2 * threads).min(s.n.div_ceil(MIN_TASK_ROWS)).max(1)
    } else {
        1
    };
    let per = s.n.div_ceil(tasks).div_ceil(R) * R;
    let run_range = |j0: usize, j1: usize| {
        // The loops compiled with the token's features, so that the dot
        // products inline into them.
        dots.vectorize(
            #[inline(always)]
            || {
                // SAFETY: the caller's contract; tasks write disjoint columns.
                unsafe { columns(dots, s, j0, j1) }
            },
        )
    };
    if tasks > 1 {
        (0..tasks)
            .into_par_iter()
            .for_each(|t| run_range((t * per).min(s.n), ((t + 1) * per).min(s.n)));
    } else {
        run_range(0, s.n);
    }
}
