//! Matrix-vector products: the `m == 1` or `n == 1` case of GEMM (decoding
//! one token through a linear layer, say). Packing would copy the whole
//! matrix for one use, so these stream it once instead and are bound by
//! memory bandwidth.

use rayon::prelude::*;

use super::kernel::Epilogue;
use super::packing::View;
use crate::simd::Simd;

/// `y[i] = ep(alpha * sum_p M(i, p) x[p], y[i], bias[i * bias_stride])`
/// for `i < len`, with `M (len, k)` a view, `x (k,)` contiguous and `y`
/// strided by `incy`. (`bias_stride` is 0 when one bias serves all.)
#[derive(Clone, Copy)]
pub struct GemvArgs {
    pub len: usize,
    pub k: usize,
    pub mat: View,
    pub x: *const f32,
    pub y: *mut f32,
    pub incy: usize,
    pub ep: Epilogue,
    pub bias_stride: usize,
}

// SAFETY: chunks read M and x, and write disjoint ranges of y.
unsafe impl Send for GemvArgs {}
// SAFETY: as for Send: chunks share only what they read.
unsafe impl Sync for GemvArgs {}

/// Outputs per parallel chunk; in the column-streaming form the chunk's
/// partial sums (`CHUNK` floats, 8 KiB) stay in L1.
const CHUNK: usize = 2048;
/// Fewest outputs worth a parallel chunk of their own.
const MIN_CHUNK: usize = 16;
/// Lanes of partial sums per row: one 512-bit register, or two 256-bit.
const LANES: usize = 16;
/// Rows of M summed side by side: independent add chains that share each
/// load of x.
const ROWS: usize = 4;

/// Sum of the lanes, pairwise.
#[inline(always)]
fn lane_sum(mut v: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            v[l] += v[l + w];
        }
        w /= 2;
    }
    v[0]
}

/// `out[r] = rows[r] . x` for `ROWS` rows of length `x.len()`. Written
/// as plain fixed-width lane loops, which the compiler turns into one
/// vector multiply-add per row per step.
#[inline(always)]
fn dot_rows(rows: [&[f32]; ROWS], x: &[f32]) -> [f32; ROWS] {
    let mut acc = [[0.0f32; LANES]; ROWS];
    let steps = x
        .chunks_exact(LANES)
        .zip(rows[0].chunks_exact(LANES))
        .zip(rows[1].chunks_exact(LANES))
        .zip(rows[2].chunks_exact(LANES))
        .zip(rows[3].chunks_exact(LANES));
    for ((((xs, m0), m1), m2), m3) in steps {
        for l in 0..LANES {
            acc[0][l] += m0[l] * xs[l];
            acc[1][l] += m1[l] * xs[l];
            acc[2][l] += m2[l] * xs[l];
            acc[3][l] += m3[l] * xs[l];
        }
    }
    let body = x.len() / LANES * LANES;
    let mut out = [0.0f32; ROWS];
    for ((o, a), row) in out.iter_mut().zip(acc).zip(rows) {
        let tail: f32 = row[body..].iter().zip(&x[body..]).map(|(m, v)| m * v).sum();
        *o = lane_sum(a) + tail;
    }
    out
}

/// Outputs `[i0, i0 + out.len())` when rows of M are contiguous.
///
/// # Safety
/// As [`gemv`]'s, with rows `i0..i0 + out.len()` inside M.
#[inline(always)]
unsafe fn rows_dot(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    // SAFETY: x holds k floats.
    let x = unsafe { std::slice::from_raw_parts(g.x, g.k) };
    // SAFETY: rows i0 + o of M, o < out.len(), hold k contiguous floats.
    let row = |o: usize| unsafe { std::slice::from_raw_parts(g.mat.at(i0 + o, 0).ptr, g.k) };
    let done = out.len() / ROWS * ROWS;
    let mut groups = out.chunks_exact_mut(ROWS);
    for (q, group) in groups.by_ref().enumerate() {
        let o = q * ROWS;
        group.copy_from_slice(&dot_rows([row(o), row(o + 1), row(o + 2), row(o + 3)], x));
    }
    for (o, v) in groups.into_remainder().iter_mut().enumerate() {
        let r = row(done + o);
        *v = dot_rows([r, r, r, r], x)[0];
    }
}

/// Outputs `[i0, i0 + out.len())` when columns of M are contiguous: add
/// `x[p]` times each row segment.
///
/// # Safety
/// As [`rows_dot`]'s.
#[inline(always)]
unsafe fn columns_axpy(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    out.fill(0.0);
    for p in 0..g.k {
        // SAFETY: p < k; elements (i0.., p) of M are contiguous here.
        let (xp, seg) = unsafe {
            (
                *g.x.add(p),
                std::slice::from_raw_parts(g.mat.at(i0, p).ptr, out.len()),
            )
        };
        for (o, &m) in out.iter_mut().zip(seg) {
            *o += xp * m;
        }
    }
}

/// Any strides.
///
/// # Safety
/// As [`rows_dot`]'s.
#[inline(always)]
unsafe fn strided(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    for (o, v) in out.iter_mut().enumerate() {
        // SAFETY: row i0 + o < len of M, p < k.
        *v = (0..g.k)
            .map(|p| unsafe { *g.mat.at(i0 + o, p).ptr * *g.x.add(p) })
            .sum();
    }
}

/// Outputs `[i0, i0 + out.len())`, by the layout of M.
///
/// # Safety
/// As [`rows_dot`]'s.
#[inline(always)]
unsafe fn chunk_body(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    // SAFETY: this function's contract.
    unsafe {
        if g.mat.cs == 1 {
            rows_dot(g, i0, out)
        } else if g.mat.rs == 1 {
            columns_axpy(g, i0, out)
        } else {
            strided(g, i0, out)
        }
    }
}

/// Runs the product with token `simd`'s instructions, on the pool when
/// `threads > 1`.
///
/// # Safety
/// The view, `x` and `y` cover the shapes in `g`.
pub unsafe fn gemv<S: Simd>(simd: S, g: &GemvArgs, threads: usize) {
    // Enough chunks to feed every thread, none longer than `CHUNK`.
    let chunk = CHUNK.min(g.len.div_ceil(threads).max(MIN_CHUNK));
    let run = |c: usize| {
        let i0 = c * chunk;
        let mut out = [0.0f32; CHUNK];
        let out = &mut out[..chunk.min(g.len - i0)];
        simd.vectorize(
            #[inline(always)]
            || {
                // SAFETY: the caller's contract; chunk c's outputs lie inside.
                unsafe { chunk_body(g, i0, out) }
            },
        );
        // SAFETY: outputs i0 + o < len of y (and of bias, when per output).
        unsafe {
            for (o, &v) in out.iter().enumerate() {
                let i = i0 + o;
                let yp = g.y.add(i * g.incy);
                let bias = if g.ep.bias.is_null() {
                    0.0
                } else {
                    *g.ep.bias.add(i * g.bias_stride)
                };
                *yp = g.ep.apply(v, *yp, bias);
            }
        }
    };
    let chunks = g.len.div_ceil(chunk);
    if threads > 1 && chunks > 1 {
        (0..chunks).into_par_iter().for_each(run);
    } else {
        (0..chunks).for_each(run);
    }
}
