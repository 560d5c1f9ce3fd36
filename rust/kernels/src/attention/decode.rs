//! The forward pass for a few query rows (decode: one new token against a
//! KV cache). There are too few (batch, head) pairs to keep every core
//! busy and each query row is a matrix-vector product, so the keys of a
//! head are split into chunks processed in parallel; each chunk keeps its
//! own (max, sum, acc) and the chunks are merged in chunk order. Scores
//! are dot products straight off the K rows, no packing.

use rayon::prelude::*;

use super::forward::row_is_clean;
use super::tile::Acc;
use super::{cover, exact, Cover, Head, Problem, BLOCK_K};

/// Aim for this many (batch, head, chunk) tasks...
const TARGET_TASKS: usize = 32;
/// ...but give each chunk at least this many keys.
const MIN_CHUNK: usize = 256;

/// `q (B, Hq, Tq, dp)` with `Tq <= DECODE_MAX_Q`, `k, v (B, Hkv, Tk, dp)` →
/// `o (B, Hq, Tq, dp)`, `lse (B, Hq, Tq)`.
pub(super) fn forward(
    p: &Problem<'_>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (tq, tk, dp) = (p.shape.q_len, p.shape.kv_len, p.dp);
    let heads = p.shape.batch * p.shape.q_heads;
    // The split depends on the shape only, so the bits do not depend on
    // the thread count.
    let want = TARGET_TASKS
        .div_ceil(heads)
        .min(tk.div_ceil(MIN_CHUNK))
        .max(1);
    let chunk = tk.div_ceil(want).div_ceil(BLOCK_K).max(1) * BLOCK_K;
    let nchunks = tk.div_ceil(chunk).max(1);
    // Per (head, chunk, row): max, sum, then dp accumulated outputs.
    let rec = dp + 2;
    let mut parts = vec![0.0f32; heads * nchunks * tq * rec];
    parts.par_chunks_mut(tq * rec).enumerate().for_each_init(
        || Scratch::new(tq, dp),
        |s, (task, part)| {
            let (bh, c) = (task / nchunks, task % nchunks);
            let head = p.head(bh, q, k, v);
            key_chunk(p, &head, c * chunk, ((c + 1) * chunk).min(tk), s, part);
        },
    );
    o.par_chunks_mut(tq * dp)
        .zip(lse.par_chunks_mut(tq))
        .zip(parts.par_chunks(nchunks * tq * rec))
        .enumerate()
        .for_each(|(bh, ((o_h, lse_h), parts_h))| {
            for r in 0..tq {
                let recs = || parts_h.chunks(tq * rec).map(|c| &c[r * rec..(r + 1) * rec]);
                let m = recs().map(|x| x[0]).fold(f32::NEG_INFINITY, f32::max);
                // A row with nothing visible yet: shift by 0, so that its
                // records weigh 0 (and a NaN in them still shows).
                let shift = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let out = &mut o_h[r * dp..(r + 1) * dp];
                out.fill(0.0);
                let mut l = 0.0;
                for x in recs() {
                    let w = (x[0] - shift).exp2();
                    l += x[1] * w;
                    out.iter_mut().zip(&x[2..]).for_each(|(y, &a)| *y += a * w);
                }
                if !row_is_clean(m, l, out) {
                    let kv = p.kv_index(bh);
                    let qr = &q[(bh * tq + r) * dp..(bh * tq + r + 1) * dp];
                    let (k, v) = (p.kv_rows(k, kv), p.kv_rows(v, kv));
                    let pad = p.padding(bh / p.shape.q_heads);
                    lse_h[r] = exact::forward_row(p, pad, r, qr, k, v, dp, out);
                } else if l > 0.0 {
                    out.iter_mut().for_each(|y| *y /= l);
                    lse_h[r] = (m + l.log2()) * std::f32::consts::LN_2;
                } else {
                    out.fill(0.0);
                    lse_h[r] = f32::NEG_INFINITY;
                }
            }
        });
}

struct Scratch {
    /// Query rows · scale·log2(e), (Tq, dp).
    q: Vec<f32>,
    /// Scores then probabilities of one key block, (Tq, BLOCK_K).
    s: Vec<f32>,
    /// Unnormalised outputs, (Tq, dp).
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    shift: Vec<f32>,
}

impl Scratch {
    fn new(tq: usize, dp: usize) -> Self {
        Scratch {
            q: vec![0.0; tq * dp],
            s: vec![0.0; tq * BLOCK_K],
            acc: vec![0.0; tq * dp],
            max: vec![0.0; tq],
            sum: vec![0.0; tq],
            shift: vec![0.0; tq],
        }
    }
}

/// All query rows of one head against keys `k0..k1`; writes one record
/// `[max, sum, acc (dp)]` per row into `part`.
fn key_chunk(
    p: &Problem<'_>,
    h: &Head<'_>,
    k0: usize,
    k1: usize,
    s: &mut Scratch,
    part: &mut [f32],
) {
    let (t, dp) = (p.tiles, p.dp);
    let tq = s.max.len();
    let qscale = p.opts.scale * std::f32::consts::LOG2_E;
    s.q.iter_mut().zip(h.q).for_each(|(y, &x)| *y = x * qscale);
    s.max.fill(f32::NEG_INFINITY);
    s.sum.fill(0.0);
    s.acc.fill(0.0);
    for j0 in (k0..k1).step_by(BLOCK_K) {
        let kn = BLOCK_K.min(k1 - j0);
        let pad = cover(h.pad, j0, j0 + kn);
        if pad == Cover::All {
            continue;
        }
        for r in 0..tq {
            let qr = &s.q[r * dp..(r + 1) * dp];
            let row = &mut s.s[r * BLOCK_K..(r + 1) * BLOCK_K];
            t.dots(qr, &h.k[j0 * dp..(j0 + kn) * dp], &mut row[..kn]);
            let visible = p.causal_limit(r).saturating_sub(j0).min(kn);
            row[visible..].fill(f32::NEG_INFINITY);
            if pad == Cover::Some {
                let pad = &h.pad.expect("Cover::Some implies a mask")[j0..j0 + kn];
                row.iter_mut()
                    .zip(pad)
                    .filter(|(_, &m)| m)
                    .for_each(|(x, _)| *x = f32::NEG_INFINITY);
            }
            let m = row[..kn].iter().copied().fold(s.max[r], f32::max);
            let shift = if m == f32::NEG_INFINITY { 0.0 } else { m };
            let alpha = (s.max[r] - shift).exp2();
            s.max[r] = m;
            s.shift[r] = shift;
            s.sum[r] *= alpha;
            if alpha != 1.0 {
                s.acc[r * dp..(r + 1) * dp]
                    .iter_mut()
                    .for_each(|x| *x *= alpha);
            }
        }
        t.exp2_rows(&mut s.s, (tq, BLOCK_K, BLOCK_K), 1.0, &s.shift);
        for r in 0..tq {
            s.sum[r] += s.s[r * BLOCK_K..r * BLOCK_K + kn].iter().sum::<f32>();
        }
        t.gemm(
            (tq, dp, kn),
            &s.s,
            (BLOCK_K, 1),
            &h.v[j0 * dp..],
            dp,
            &mut s.acc,
            dp,
            Acc::Add,
        );
    }
    for (r, rec) in part.chunks_mut(dp + 2).enumerate() {
        rec[0] = s.max[r];
        rec[1] = s.sum[r];
        rec[2..].copy_from_slice(&s.acc[r * dp..(r + 1) * dp]);
    }
}
