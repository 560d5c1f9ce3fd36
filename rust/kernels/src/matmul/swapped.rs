//! Products of a few dozen to a few hundred rows against a weight matrix
//! read in place: `C = x @ W.T` with `x (m, k)` and `W (n, k)` row-major,
//! as a linear layer runs a prompt (prefill). The GEMM packs all of W on
//! every call, and with few rows of x each packed element is used only m
//! times (at 128 rows packing took a fifth of the product). Here only x is
//! packed, into 32-row panels of x^T shared by all threads; the
//! micro-kernel broadcasts W's elements straight from 14 of its rows, so
//! it computes a 14 x 32 tile of C^T, which is transposed in registers on
//! its way into C. AVX-512 only; elsewhere the GEMM runs.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::gemm::{with_buffer, GemmArgs, PACKED_B};
use super::kernel::Epilogue;
use super::packing::{pack_b, x86::transpose16, View};
use crate::simd::Avx512;

/// Rows of W per tile (rows of C^T).
const JR: usize = 14;
/// Rows of x per tile (packed panel width).
const IR: usize = 32;
/// Fewest rows of x taking this path (below, `small_m` streams W).
pub const MIN_M: usize = super::small_m::MAX_M + 1;
/// Most rows of x taking this path: beyond, the GEMM's packed W is reused
/// often enough to pay for itself (2 threads, k = 768: at 64 rows this path
/// ran 1.3x the GEMM's speed, at 128 rows 1.15x-1.25x, at 256 rows even).
pub const MAX_M: usize = 256;
/// Shallowest depth taking this path.
const MIN_K: usize = 64;
/// W blocks per parallel task, at least.
const MIN_TASK_BLOCKS: usize = 4;

/// Whether `x (m, k) @ W.T` with `W (n, k)` row-major should run here.
pub fn wanted(m: usize, n: usize, k: usize) -> bool {
    (MIN_M..=MAX_M).contains(&m) && n >= 2 * JR && k >= MIN_K
}

/// Runs `g` (op(B) = W.T read in place: `g.b.rs == 1`) on `threads`
/// threads; the token proves AVX-512F.
///
/// # Safety
/// As the GEMM's: the views and C cover the shapes.
pub unsafe fn run(t: Avx512, g: &GemmArgs, threads: usize) {
    let (m, n, k) = (g.m, g.n, g.k);
    let ldw = g.b.cs;
    // x^T as op(B) of the packing: element (p, i) = x[i, p].
    let xt = View {
        ptr: g.a.ptr,
        rs: g.a.cs,
        cs: g.a.rs,
    };
    let panels = m.div_ceil(IR);
    let blocks = n.div_ceil(JR);
    let tasks = if threads > 1 {
        (2 * threads).min(blocks.div_ceil(MIN_TASK_BLOCKS)).max(1)
    } else {
        1
    };
    // The packed x reuses the GEMM's per-thread buffer for packed B (every
    // float is written by the packing, padding included).
    with_buffer(&PACKED_B, panels * k * IR, |xp| {
        for (ip, dst) in xp.chunks_exact_mut(k * IR).enumerate() {
            // SAFETY: rows ip * IR.. of x (columns of x^T) exist; `dst`
            // holds k * IR floats.
            unsafe { pack_b::<IR, _>(t, dst, xt, ip * IR, IR.min(m - ip * IR), k) };
        }
        let xp: &[f32] = xp;
        let one = |task: usize| {
            let (b0, b1) = (task * blocks / tasks, (task + 1) * blocks / tasks);
            // The last block of W, when partial, is copied with zero rows.
            let mut padded = Vec::new();
            for jb in b0..b1 {
                let j0 = jb * JR;
                let rows = JR.min(n - j0);
                let (w, ld) = if rows == JR {
                    (g.b.ptr.wrapping_add(j0 * ldw), ldw)
                } else {
                    padded.resize(JR * k, 0.0f32);
                    for r in 0..rows {
                        // SAFETY: W row j0 + r < n holds k floats.
                        let src =
                            unsafe { std::slice::from_raw_parts(g.b.ptr.add((j0 + r) * ldw), k) };
                        padded[r * k..(r + 1) * k].copy_from_slice(src);
                    }
                    (padded.as_ptr(), k)
                };
                for ip in 0..panels {
                    let i0 = ip * IR;
                    let panel = xp[ip * k * IR..].as_ptr();
                    // SAFETY: 14 readable rows of W at `w` (the partial
                    // block padded), the packed panel of x rows i0.., and
                    // C rows i0.. and columns j0..j0 + rows inside C; the
                    // token proves AVX-512F.
                    unsafe { tile(t, g, k, w, ld, rows, panel, i0, IR.min(m - i0), j0) };
                }
            }
        };
        if tasks > 1 {
            (0..tasks).into_par_iter().for_each(one);
        } else {
            one(0);
        }
    });
}

/// One 14 x 32 tile of C^T: W rows `j0..j0 + rows` (at `w`, row stride
/// `ldw`, 14 readable rows) against the packed panel `xp` of x rows
/// `i0..i0 + cols`, through the epilogue into C.
///
/// # Safety
/// As said, with `k` floats per W row and `k * IR` in the panel; C and
/// bias cover rows `i0..i0 + cols`, columns `j0..j0 + rows`. (The token
/// proves AVX-512F.)
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    t: Avx512,
    g: &GemmArgs,
    k: usize,
    w: *const f32,
    ldw: usize,
    rows: usize,
    mut xp: *const f32,
    i0: usize,
    cols: usize,
    j0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; JR];
    // Rows 3q, 3q + 1, 3q + 2 from one base and the row stride: five base
    // pointers and one stride stay in registers. Written out row by row
    // (a loop over the rows did not unroll).
    let (mut p0, mut p3, mut p6, mut p9, mut p12) = (
        w,
        w.wrapping_add(3 * ldw),
        w.wrapping_add(6 * ldw),
        w.wrapping_add(9 * ldw),
        w.wrapping_add(12 * ldw),
    );
    let (l1, l2) = (ldw, 2 * ldw);
    for _ in 0..k {
        // SAFETY: the 14 W rows and the panel are read for k depths (the
        // contract), and the token proves AVX-512F.
        unsafe {
            let b0 = _mm512_loadu_ps(xp);
            let b1 = _mm512_loadu_ps(xp.add(16));
            macro_rules! row {
                ($jj:expr, $ptr:expr) => {{
                    let a = _mm512_set1_ps(*$ptr);
                    acc[$jj][0] = _mm512_fmadd_ps(a, b0, acc[$jj][0]);
                    acc[$jj][1] = _mm512_fmadd_ps(a, b1, acc[$jj][1]);
                }};
            }
            row!(0, p0);
            row!(1, p0.add(l1));
            row!(2, p0.add(l2));
            row!(3, p3);
            row!(4, p3.add(l1));
            row!(5, p3.add(l2));
            row!(6, p6);
            row!(7, p6.add(l1));
            row!(8, p6.add(l2));
            row!(9, p9);
            row!(10, p9.add(l1));
            row!(11, p9.add(l2));
            row!(12, p12);
            row!(13, p12.add(l1));
            p0 = p0.add(1);
            p3 = p3.add(1);
            p6 = p6.add(1);
            p9 = p9.add(1);
            p12 = p12.add(1);
            xp = xp.add(IR);
        }
    }
    let ep = Epilogue {
        alpha: g.alpha,
        beta: g.beta,
        bias: g.bias,
    };
    let jmask: __mmask16 = ((1u32 << rows) - 1) as u16;
    let alpha = _mm512_set1_ps(ep.alpha);
    let beta = _mm512_set1_ps(ep.beta);
    let bias = if ep.bias.is_null() {
        _mm512_setzero_ps()
    } else {
        // SAFETY: bias holds n floats; the mask reads j0..j0 + rows <= n.
        unsafe { _mm512_maskz_loadu_ps(jmask, ep.bias.add(j0)) }
    };
    // h picks the column half of every row of acc: not a loop over acc.
    #[allow(clippy::needless_range_loop)]
    for h in 0..2 {
        let rows_t: [__m512; 16] = std::array::from_fn(|jj| {
            if jj < JR {
                acc[jj][h]
            } else {
                _mm512_setzero_ps()
            }
        });
        let out = transpose16(t, rows_t);
        for (l, &v) in out.iter().enumerate() {
            let i = 16 * h + l;
            if i >= cols {
                break;
            }
            // SAFETY: C row i0 + i < i0 + cols, columns j0..j0 + rows masked.
            unsafe {
                let cp = g.c.add((i0 + i) * g.ldc + j0);
                let mut y = _mm512_mul_ps(v, alpha);
                if ep.beta != 0.0 {
                    y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(jmask, cp), beta, y);
                }
                y = _mm512_add_ps(y, bias);
                _mm512_mask_storeu_ps(cp, jmask, y);
            }
        }
    }
}
