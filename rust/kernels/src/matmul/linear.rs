//! The linear layer `y = x @ w.T + b` and its gradients, on the GEMM.
//! Weights are `(out, in)` as in PyTorch; `w.T` is read by packing, never
//! materialized.

use rayon::prelude::*;

use super::gemm::GemmArgs;
use super::{run, threads_for, Layout};
use crate::error::{check_len, Result};
use crate::simd::dispatch;

/// `y = x @ w.T + b`, with the bias added in the GEMM's epilogue.
///
/// `x (rows, in_f)`, `w (out_f, in_f)`, `b (out_f,)` or None; `y (rows,
/// out_f)` is overwritten.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<()> {
    check_len("linear_forward", "x", x.len(), &[rows, in_f])?;
    check_len("linear_forward", "w", w.len(), &[out_f, in_f])?;
    check_len("linear_forward", "y", y.len(), &[rows, out_f])?;
    if let Some(b) = b {
        check_len("linear_forward", "b", b.len(), &[out_f])?;
    }
    let g = GemmArgs {
        m: rows,
        n: out_f,
        k: in_f,
        alpha: 1.0,
        beta: 0.0,
        a: Layout::normal(in_f).view(x),
        b: Layout::transposed(in_f).view(w),
        c: y.as_mut_ptr(),
        ldc: out_f,
        bias: b.map_or(std::ptr::null(), <[f32]>::as_ptr),
    };
    // SAFETY: every operand was checked against its shape.
    dispatch!(|s| unsafe { run(s, &g, threads_for(rows, out_f, in_f)) });
    Ok(())
}

/// Gradients of [`linear_forward`]:
/// `dx = dy @ w`, `dw = dy.T @ x`, `db = dy` summed over rows.
///
/// `dy (rows, out_f)`, `x (rows, in_f)`, `w (out_f, in_f)`; `dx (rows,
/// in_f)` is overwritten; `dw (out_f, in_f)` and `db (out_f,)` are
/// overwritten, or added to when `accumulate` (gradient accumulation).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accumulate: bool,
) -> Result<()> {
    let op = "linear_backward";
    check_len(op, "dy", dy.len(), &[rows, out_f])?;
    check_len(op, "x", x.len(), &[rows, in_f])?;
    check_len(op, "w", w.len(), &[out_f, in_f])?;
    check_len(op, "dx", dx.len(), &[rows, in_f])?;
    check_len(op, "dw", dw.len(), &[out_f, in_f])?;
    if let Some(db) = db.as_deref() {
        check_len(op, "db", db.len(), &[out_f])?;
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    let dx_args = GemmArgs {
        m: rows,
        n: in_f,
        k: out_f,
        alpha: 1.0,
        beta: 0.0,
        a: Layout::normal(out_f).view(dy),
        b: Layout::normal(in_f).view(w),
        c: dx.as_mut_ptr(),
        ldc: in_f,
        bias: std::ptr::null(),
    };
    let dw_args = GemmArgs {
        m: out_f,
        n: in_f,
        k: rows,
        alpha: 1.0,
        beta,
        a: Layout::transposed(out_f).view(dy),
        b: Layout::normal(in_f).view(x),
        c: dw.as_mut_ptr(),
        ldc: in_f,
        bias: std::ptr::null(),
    };
    // SAFETY: every operand was checked against its shape.
    dispatch!(|s| unsafe {
        run(s, &dx_args, threads_for(rows, in_f, out_f));
        run(s, &dw_args, threads_for(out_f, in_f, rows));
    });
    if let Some(db) = db {
        column_sums(dy, rows, out_f, db, accumulate);
    }
    Ok(())
}

/// Columns per parallel piece of [`column_sums`].
const SUM_CHUNK: usize = 256;

/// `out[j] (+)= sum_i m[i, j]` for `m (rows, cols)`, summed row by row so
/// each piece reads its columns contiguously.
fn column_sums(m: &[f32], rows: usize, cols: usize, out: &mut [f32], accumulate: bool) {
    let sum = |(c, piece): (usize, &mut [f32])| {
        let j0 = c * SUM_CHUNK;
        if !accumulate {
            piece.fill(0.0);
        }
        for row in m.chunks_exact(cols).take(rows) {
            for (o, &v) in piece.iter_mut().zip(&row[j0..]) {
                *o += v;
            }
        }
    };
    if rows * cols >= 1 << 16 {
        out.par_chunks_mut(SUM_CHUNK).enumerate().for_each(sum);
    } else {
        out.chunks_mut(SUM_CHUNK).enumerate().for_each(sum);
    }
}
