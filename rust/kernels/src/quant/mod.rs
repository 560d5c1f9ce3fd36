//! `y = x @ W.T + b` with W held as GGUF blocks, never decoded to a float
//! matrix.
//!
//! ```text
//! quantized_linear_forward(x, qweight, QType::Q4K, bias, y, rows, in_f, out_f)
//! // x (rows, in_f) f32, qweight (out_f, in_f / 256 * 144) u8, y (rows, out_f) f32
//! ```
//!
//! Two modes ([`Activations`]). `Float` (what the bindings use by default):
//! each weight row is decoded, bit-identical to the NumPy reference, into a
//! float32 panel and dotted with x in float32, so the result is the
//! reference's up to float32 summation order. `Int8`:
//! **activations are quantized to 8 bits.** Each row of x is cut into
//! chunks of 32 values; a chunk is stored as int8 `qx = round(x / dx)` with
//! `dx = max|x| / 127` (llama.cpp's q8_0). A weight block decodes to int8
//! values with a float scale per 16 values and an offset per 32 (see
//! [`blocks`]), and each chunk's dot product is an integer sum scaled once:
//! `dx * (scale * sum(q * qx) + offset * sum(qx))`. The result differs from
//! the exact product of x with the decoded weights by at most
//! `sum over chunks of dx / 2 * sum |w|` (each `|x - dx qx| <= dx / 2`),
//! plus float32 rounding of the sums. In both modes a row of x holding NaN or inf is
//! multiplied in float32 with the decoded weights instead, so non-finite
//! values propagate as in the reference.
//!
//! Prefill in the float mode (8 rows of x or more): slabs of W are decoded
//! into an L2-sized float32 panel and multiplied by the crate's GEMM, so
//! each weight block is decoded once per call and used for every row.
//! Otherwise x is quantized once per call (int8 mode),
//! then the output rows are split over the rayon pool, in groups of four;
//! each task dots its weight rows against every row of x (which, quantized,
//! stays in L2 for a 128-token prompt), four rows at a time straight from
//! the block bytes on x86 (`x86.rs`), elsewhere a row decoded once into an
//! int8 panel (L1-resident), so the weight bytes are streamed from memory
//! exactly once per call.
//! The bodies are written once and compiled per SIMD token (`Simd::vectorize`).

pub mod blocks;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use blocks::QType;
use blocks::{decode_block, ChunkScale, CHUNK};

use rayon::prelude::*;

use crate::simd::{dispatch, Simd};
use crate::{Error, Result};

const OP: &str = "quantized_linear_forward";

/// Multiply-adds below which a call runs on one thread.
pub const SERIAL_MACS: usize = 1 << 18;

/// x quantized per chunk: `qx` (rows, in) int8, `dx` and `sx = dx *
/// sum(qx)` per chunk, and whether each row is finite.
struct QuantizedRows {
    qx: Vec<i8>,
    dx: Vec<f32>,
    sx: Vec<f32>,
    finite: Vec<bool>,
}

#[inline(always)]
fn quantize_rows(x: &[f32], rows: usize, in_f: usize) -> QuantizedRows {
    let n_ch = in_f / CHUNK;
    let mut qr = QuantizedRows {
        qx: vec![0; rows * in_f],
        dx: vec![0.0; rows * n_ch],
        sx: vec![0.0; rows * n_ch],
        finite: vec![true; rows],
    };
    for r in 0..rows {
        let xr = &x[r * in_f..(r + 1) * in_f];
        qr.finite[r] = xr.iter().all(|v| v.is_finite());
        if !qr.finite[r] {
            continue;
        }
        for c in 0..n_ch {
            let xc = &xr[c * CHUNK..(c + 1) * CHUNK];
            let amax = xc.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let qc = &mut qr.qx[r * in_f + c * CHUNK..r * in_f + (c + 1) * CHUNK];
            let mut sum = 0i32;
            for (o, &v) in qc.iter_mut().zip(xc) {
                let q = (v * id).round().clamp(-127.0, 127.0) as i8;
                *o = q;
                sum += q as i32;
            }
            qr.dx[r * n_ch + c] = d;
            qr.sx[r * n_ch + c] = d * sum as f32;
        }
    }
    qr
}

/// `sum(q[..16] * qx[..16])` and the same over `[16..32]`.
#[inline(always)]
fn chunk_dot(q: &[i8], qx: &[i8]) -> (i32, i32) {
    let (q, qx): (&[i8; CHUNK], &[i8; CHUNK]) = (
        q.try_into().expect("a chunk"),
        qx.try_into().expect("a chunk"),
    );
    let (mut a, mut b) = (0i32, 0i32);
    for l in 0..16 {
        a += q[l] as i32 * qx[l] as i32;
        b += q[l + 16] as i32 * qx[l + 16] as i32;
    }
    (a, b)
}

/// `sum(w * x)` in float32 over 16 lanes (the sum's order is fixed: lane
/// partial sums, then the lanes in order), for any length.
#[inline(always)]
fn float_dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in wc.zip(xc) {
        for l in 0..16 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The decoded row as float32, bit-identical to the reference's decoding
/// (`scale * q + offset`, never fused).
#[inline(always)]
fn expand(q: &[i8], cs: &[ChunkScale], wf: &mut [f32]) {
    for ((s, qc), wc) in cs
        .iter()
        .zip(q.chunks_exact(CHUNK))
        .zip(wf.chunks_exact_mut(CHUNK))
    {
        let (qc, wc): (&[i8; CHUNK], &mut [f32; CHUNK]) = (
            qc.try_into().expect("a chunk"),
            wc.try_into().expect("a chunk"),
        );
        for l in 0..16 {
            wc[l] = s.scale[0] * qc[l] as f32 + s.offset;
            wc[l + 16] = s.scale[1] * qc[l + 16] as f32 + s.offset;
        }
    }
}

/// `acc[l] += a[l] * b[l]` over 16 lanes.
#[inline(always)]
fn mac16(acc: &mut [f32; 16], a: &[f32; 16], b: &[f32]) {
    let b: &[f32; 16] = b.try_into().expect("16 values");
    for l in 0..16 {
        acc[l] += a[l] * b[l];
    }
}

/// [`float_dot`] of one row `w` with four rows of x at once (w loaded once).
#[inline(always)]
fn float_dot4(w: &[f32], x0: &[f32], x1: &[f32], x2: &[f32], x3: &[f32]) -> [f32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; 16], [0.0; 16], [0.0; 16], [0.0; 16]);
    let n = w.len() / 16 * 16;
    let (x0, x1, x2, x3) = (
        &x0[..w.len()],
        &x1[..w.len()],
        &x2[..w.len()],
        &x3[..w.len()],
    );
    for i in (0..n).step_by(16) {
        let a: &[f32; 16] = w[i..i + 16].try_into().expect("16 values");
        mac16(&mut a0, a, &x0[i..i + 16]);
        mac16(&mut a1, a, &x1[i..i + 16]);
        mac16(&mut a2, a, &x2[i..i + 16]);
        mac16(&mut a3, a, &x3[i..i + 16]);
    }
    let tail = |x: &[f32]| -> f32 { w[n..].iter().zip(&x[n..]).map(|(a, b)| a * b).sum() };
    [
        a0.iter().sum::<f32>() + tail(x0),
        a1.iter().sum::<f32>() + tail(x1),
        a2.iter().sum::<f32>() + tail(x2),
        a3.iter().sum::<f32>() + tail(x3),
    ]
}

/// One decoded weight row against every row of x: `out[r]` for each r.
#[inline(always)]
fn row_dots(
    q: &[i8],
    cs: &[ChunkScale],
    x: &[f32],
    qr: &QuantizedRows,
    in_f: usize,
    out: &mut [f32],
) {
    let n_ch = in_f / CHUNK;
    for (r, o) in out.iter_mut().enumerate() {
        if !qr.finite[r] {
            // rows holding NaN or inf: the float product, so they propagate
            let mut wf = vec![0.0f32; in_f];
            expand(q, cs, &mut wf);
            *o = float_dot(&wf, &x[r * in_f..(r + 1) * in_f]);
            continue;
        }
        let qx = &qr.qx[r * in_f..(r + 1) * in_f];
        let (dx, sx) = (
            &qr.dx[r * n_ch..(r + 1) * n_ch],
            &qr.sx[r * n_ch..(r + 1) * n_ch],
        );
        let mut acc = 0.0f32;
        for c in 0..n_ch {
            let (a, b) = chunk_dot(
                &q[c * CHUNK..(c + 1) * CHUNK],
                &qx[c * CHUNK..(c + 1) * CHUNK],
            );
            let s = &cs[c];
            acc += dx[c] * (s.scale[0] * a as f32 + s.scale[1] * b as f32) + s.offset * sx[c];
        }
        *o = acc;
    }
}

/// Output rows `j0..j0 + out.len() / rows` of W: `out` (those rows, rows of x)
/// transposed, i.e. `out[(j - j0) * rows + r] = y[r, j]`.
#[allow(clippy::too_many_arguments)]
fn tile<S: Simd>(
    s: S,
    t: QType,
    mode: Activations,
    w: &[u8],
    j0: usize,
    x: &[f32],
    qr: Option<&QuantizedRows>,
    rows: usize,
    in_f: usize,
    out: &mut [f32],
) {
    s.vectorize(
        #[inline(always)]
        || {
            let (bs, ts) = (t.block_size(), t.type_size());
            let row_bytes = in_f / bs * ts;
            let weight_row = |i: usize| &w[(j0 + i) * row_bytes..(j0 + i + 1) * row_bytes];
            #[cfg(target_arch = "x86_64")]
            if let (Activations::Int8, Some(qr), Some(a)) = (mode, qr, s.avx2()) {
                if qr.finite.iter().all(|&f| f) {
                    // straight from the block bytes (x86.rs), no decoded row,
                    // four weight rows at a time against each row of x
                    let n_ch = in_f / CHUNK;
                    let xs: Vec<x86::QRow> = (0..rows)
                        .map(|r| x86::QRow {
                            qx: &qr.qx[r * in_f..(r + 1) * in_f],
                            dx: &qr.dx[r * n_ch..(r + 1) * n_ch],
                            sx: &qr.sx[r * n_ch..(r + 1) * n_ch],
                        })
                        .collect();
                    let w = &w[j0 * row_bytes..(j0 + out.len() / rows) * row_bytes];
                    a.quant_rows_dot(x86::Dot::best(), t, w, &xs, out);
                    return;
                }
            }
            let mut q = vec![0i8; in_f];
            let mut cs = vec![ChunkScale::default(); in_f / CHUNK];
            let per_block = bs / CHUNK;
            let mut wf = vec![0.0f32; if mode == Activations::Float { in_f } else { 0 }];
            for (i, o) in out.chunks_exact_mut(rows).enumerate() {
                let wr = weight_row(i);
                for (k, blk) in wr.chunks_exact(ts).enumerate() {
                    decode_block(
                        t,
                        blk,
                        &mut q[k * bs..(k + 1) * bs],
                        &mut cs[k * per_block..(k + 1) * per_block],
                    );
                }
                match (mode, qr) {
                    (Activations::Int8, Some(qr)) => row_dots(&q, &cs, x, qr, in_f, o),
                    _ => {
                        expand(&q, &cs, &mut wf);
                        let xr = |r: usize| &x[r * in_f..(r + 1) * in_f];
                        let mut r = 0;
                        while r + 4 <= rows {
                            let d = float_dot4(&wf, xr(r), xr(r + 1), xr(r + 2), xr(r + 3));
                            o[r..r + 4].copy_from_slice(&d);
                            r += 4;
                        }
                        for (k, v) in o[r..].iter_mut().enumerate() {
                            *v = float_dot(&wf, xr(r + k));
                        }
                    }
                }
            }
        },
    )
}

/// Rows of x from which the float mode decodes slabs of W into float32
/// panels and multiplies them by the crate's GEMM (prefill).
const PANEL_ROWS: usize = 8;
/// Decoded values per panel: 256 KiB of float32, L2-resident.
const PANEL_VALUES: usize = 1 << 16;

/// Weight rows `w` (n, row_bytes) decoded to float32 `wf` (n, in_f),
/// bit-identical to the reference.
fn decode_rows<S: Simd>(s: S, t: QType, w: &[u8], in_f: usize, wf: &mut [f32]) {
    s.vectorize(
        #[inline(always)]
        || {
            let (bs, ts) = (t.block_size(), t.type_size());
            let per_block = bs / CHUNK;
            let mut q = vec![0i8; in_f];
            let mut cs = vec![ChunkScale::default(); in_f / CHUNK];
            for (wr, out) in w
                .chunks_exact(in_f / bs * ts)
                .zip(wf.chunks_exact_mut(in_f))
            {
                for (k, blk) in wr.chunks_exact(ts).enumerate() {
                    decode_block(
                        t,
                        blk,
                        &mut q[k * bs..(k + 1) * bs],
                        &mut cs[k * per_block..(k + 1) * per_block],
                    );
                }
                expand(&q, &cs, out);
            }
        },
    )
}

/// The float mode for many rows: slabs of W decoded into a float32 panel,
/// each multiplied by x with `matmul::linear_forward` (which also carries
/// NaN and inf as the reference does); y (rows, out_f) written slab by slab.
fn panel_product(
    x: &[f32],
    qweight: &[u8],
    t: QType,
    y: &mut [f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<()> {
    let row_bytes = in_f / t.block_size() * t.type_size();
    let slab = (PANEL_VALUES / in_f).max(16).min(out_f);
    let mut wf = vec![0.0f32; slab * in_f];
    let mut yp = vec![0.0f32; rows * slab];
    for j0 in (0..out_f).step_by(slab) {
        let n = slab.min(out_f - j0);
        let (w, wf) = (
            &qweight[j0 * row_bytes..(j0 + n) * row_bytes],
            &mut wf[..n * in_f],
        );
        dispatch!(|s| decode_rows(s, t, w, in_f, wf));
        crate::matmul::linear_forward(x, wf, None, &mut yp[..rows * n], rows, in_f, n)?;
        for (yr, pr) in y.chunks_exact_mut(out_f).zip(yp.chunks_exact(n)) {
            yr[j0..j0 + n].copy_from_slice(pr);
        }
    }
    Ok(())
}

/// How x meets the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// x stays float32: each weight row is decoded (bit-identical to the
    /// reference) into a float32 panel and dotted in float32.
    Float,
    /// x quantized to int8 per 32 values, integer dots (see the module docs).
    Int8,
}

/// `y = x @ W.T + bias`: x (rows, in_f), qweight (out_f, in_f / block_size *
/// type_size) bytes of `t`, bias (out_f,) or None, y (rows, out_f).
#[allow(clippy::too_many_arguments)]
pub fn quantized_linear_forward(
    x: &[f32],
    qweight: &[u8],
    t: QType,
    mode: Activations,
    bias: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Result<()> {
    let bs = t.block_size();
    let name = t.name();
    let row_bytes = (in_f / bs).checked_mul(t.type_size());
    let shape_err = || {
        Error::Shape(format!(
            "{OP}: x ({rows}, {in_f}) with a {name} weight ({out_f}, {in_f}) needs in_f a \
             multiple of {bs}, x of {} values, qweight of {out_f} rows of whole blocks, y of \
             {} values, bias of {out_f} (got x {}, qweight {}, y {}, bias {:?})",
            rows.saturating_mul(in_f),
            rows.saturating_mul(out_f),
            x.len(),
            qweight.len(),
            y.len(),
            bias.map(|b| b.len())
        ))
    };
    let (Some(row_bytes), Some(nx), Some(ny)) =
        (row_bytes, rows.checked_mul(in_f), rows.checked_mul(out_f))
    else {
        return Err(shape_err());
    };
    if !in_f.is_multiple_of(bs)
        || x.len() != nx
        || y.len() != ny
        || Some(qweight.len()) != out_f.checked_mul(row_bytes)
        || bias.is_some_and(|b| b.len() != out_f)
    {
        return Err(shape_err());
    }
    if ny == 0 {
        return Ok(());
    }
    if in_f == 0 {
        y.fill(0.0);
    } else if mode == Activations::Float && rows >= PANEL_ROWS {
        panel_product(x, qweight, t, y, rows, in_f, out_f)?;
    } else {
        let qr = (mode == Activations::Int8).then(|| {
            dispatch!(|s| s.vectorize(
                #[inline(always)]
                || quantize_rows(x, rows, in_f)
            ))
        });
        let macs = ny.saturating_mul(in_f);
        let tasks = if macs <= SERIAL_MACS {
            1
        } else {
            (rayon::current_num_threads() * 8).min(out_f)
        };
        // whole groups of four weight rows per task (the int8 kernels' unit)
        let per_task = out_f.div_ceil(tasks).next_multiple_of(4);
        let arch = crate::simd::Arch::best();
        let mut yt = if rows == 1 {
            Vec::new()
        } else {
            vec![0.0f32; ny]
        };
        let dst: &mut [f32] = if rows == 1 { &mut *y } else { &mut yt };
        let run = |(i, out): (usize, &mut [f32])| {
            dispatch!(arch, |s| tile(
                s,
                t,
                mode,
                qweight,
                i * per_task,
                x,
                qr.as_ref(),
                rows,
                in_f,
                out
            ))
        };
        if tasks == 1 {
            run((0, dst));
        } else {
            dst.par_chunks_mut(per_task * rows)
                .enumerate()
                .for_each(run);
        }
        if rows > 1 {
            for (j, col) in yt.chunks_exact(rows).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    y[r * out_f + j] = v;
                }
            }
        }
    }
    if let Some(b) = bias {
        for yr in y.chunks_exact_mut(out_f) {
            for (o, &bv) in yr.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
    Ok(())
}
