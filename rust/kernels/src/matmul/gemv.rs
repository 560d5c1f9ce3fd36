//! Matrix-vector products: the `m == 1` or `n == 1` case of GEMM (decoding
//! one token through a linear layer, say). Packing would copy the whole
//! matrix for one use, so these stream it once instead and are bound by
//! memory bandwidth.

use rayon::prelude::*;

use super::kernel::Epilogue;
use super::packing::View;
use crate::simd::Level;

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
unsafe impl Sync for GemvArgs {}

/// Outputs per parallel chunk; in the column-streaming form the chunk's
/// partial sums (`CHUNK` floats, 8 KiB) stay in L1.
const CHUNK: usize = 2048;
/// Fewest outputs worth a parallel chunk of their own.
const MIN_CHUNK: usize = 16;
/// Lanes of independent partial sums in a dot product, so that the
/// compiler fills whole vector registers without reassociating.
const LANES: usize = 32;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Outputs `[i0, i0 + out.len())` when rows of M are contiguous.
#[inline(always)]
unsafe fn rows_dot(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    let x = std::slice::from_raw_parts(g.x, g.k);
    for (o, v) in out.iter_mut().enumerate() {
        let row = std::slice::from_raw_parts(g.mat.at(i0 + o, 0).ptr, g.k);
        *v = dot(row, x);
    }
}

/// Outputs `[i0, i0 + out.len())` when columns of M are contiguous: add
/// `x[p]` times each row segment.
#[inline(always)]
unsafe fn columns_axpy(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    out.fill(0.0);
    for p in 0..g.k {
        let xp = *g.x.add(p);
        let seg = std::slice::from_raw_parts(g.mat.at(i0, p).ptr, out.len());
        for (o, &m) in out.iter_mut().zip(seg) {
            *o += xp * m;
        }
    }
}

/// Any strides.
#[inline(always)]
unsafe fn strided(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    for (o, v) in out.iter_mut().enumerate() {
        *v = (0..g.k)
            .map(|p| *g.mat.at(i0 + o, p).ptr * *g.x.add(p))
            .sum();
    }
}

#[inline(always)]
unsafe fn chunk_body(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    if g.mat.cs == 1 {
        rows_dot(g, i0, out)
    } else if g.mat.rs == 1 {
        columns_axpy(g, i0, out)
    } else {
        strided(g, i0, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    chunk_body(g, i0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(g: &GemvArgs, i0: usize, out: &mut [f32]) {
    chunk_body(g, i0, out)
}

/// Runs the product at SIMD `level`, on the pool when `threads > 1`.
///
/// # Safety
/// The view, `x` and `y` cover the shapes in `g`; the CPU supports `level`.
pub unsafe fn gemv(level: Level, g: &GemvArgs, threads: usize) {
    // Enough chunks to feed every thread, none longer than `CHUNK`.
    let chunk = CHUNK.min(g.len.div_ceil(threads).max(MIN_CHUNK));
    let run = |c: usize| {
        let i0 = c * chunk;
        let mut out = [0.0f32; CHUNK];
        let out = &mut out[..chunk.min(g.len - i0)];
        // SAFETY: the caller's contract, and `level` is supported.
        unsafe {
            match level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => chunk_avx512(g, i0, out),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2Fma => chunk_avx2(g, i0, out),
                _ => chunk_body(g, i0, out),
            }
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
