//! The tiled forward pass: one task per (batch, head, query block), an
//! online softmax over key blocks, scratch O(block) per task.
//!
//! Scores are computed transposed, `S^T (keys, queries) = K_j · Q_i^T`:
//! K rows are then broadcast straight from the input (no packing per key
//! block), Q_i^T is packed once per task, and the softmax statistics run
//! along columns, so the running max and sum are plain vector ops.

use rayon::prelude::*;

use super::tile::Acc;
use super::{all_finite, cover, exact, Cover, Head, Problem, BLOCK_K, BLOCK_Q};

/// Per-task scratch, reused across the tasks a rayon worker runs.
struct Scratch {
    /// Q_i^T · scale·log2(e), (dp, BLOCK_Q).
    qt: Vec<f32>,
    /// S^T then P^T for one key block, (BLOCK_K, BLOCK_Q).
    st: Vec<f32>,
    /// Unnormalised output rows, (BLOCK_Q, dp).
    acc: Vec<f32>,
    /// Per column: running max (base 2) and sum, the shift used for the
    /// current block, the factor that rescales the previous blocks, and
    /// a sink for sums nobody reads.
    max: Vec<f32>,
    sum: Vec<f32>,
    shift: Vec<f32>,
    alpha: Vec<f32>,
    unused: Vec<f32>,
}

impl Scratch {
    fn new(dp: usize) -> Self {
        Scratch {
            qt: vec![0.0; dp * BLOCK_Q],
            st: vec![0.0; BLOCK_K * BLOCK_Q],
            acc: vec![0.0; BLOCK_Q * dp],
            max: vec![0.0; BLOCK_Q],
            sum: vec![0.0; BLOCK_Q],
            shift: vec![0.0; BLOCK_Q],
            alpha: vec![0.0; BLOCK_Q],
            unused: vec![0.0; BLOCK_Q],
        }
    }
}

/// `q (B, Hq, Tq, dp)`, `k, v (B, Hkv, Tk, dp)` → `o (B, Hq, Tq, dp)`,
/// `lse (B, Hq, Tq)`.
pub(super) fn forward(
    p: &Problem<'_>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (tq, dp) = (p.shape.q_len, p.dp);
    o.par_chunks_mut(tq * dp)
        .zip(lse.par_chunks_mut(tq))
        .enumerate()
        .for_each(|(bh, (o_h, lse_h))| {
            let head = p.head(bh, q, k, v);
            o_h.par_chunks_mut(BLOCK_Q * dp)
                .zip(lse_h.par_chunks_mut(BLOCK_Q))
                .enumerate()
                .for_each_init(
                    || Scratch::new(dp),
                    |scratch, (ib, (o_blk, lse_blk))| {
                        query_block(p, &head, ib * BLOCK_Q, scratch, o_blk, lse_blk)
                    },
                );
        });
}

/// Queries `i0..i0 + qn` of one head against all the keys they may see.
fn query_block(
    p: &Problem<'_>,
    h: &Head<'_>,
    i0: usize,
    s: &mut Scratch,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (t, dp) = (p.tiles, p.dp);
    let qn = lse.len();
    // Columns of Q^T and S^T: the tile products work in 16-float widths.
    let bq = qn.div_ceil(16) * 16;
    let qscale = p.opts.scale * std::f32::consts::LOG2_E;
    let qt = &mut s.qt[..dp * bq];
    t.pack_transposed(&h.q[i0 * dp..], (qn, dp, dp), qscale, qt, bq);
    s.max.fill(f32::NEG_INFINITY);
    s.sum.fill(0.0);
    let acc = &mut s.acc[..qn * dp];
    acc.fill(0.0);
    // Keys past the last row's causal limit are hidden from the whole block.
    let kend = p.causal_limit(i0 + qn - 1);
    // Below the first row's limit every row sees every key: no masking.
    let kfree = p.causal_limit(i0);
    for j0 in (0..kend).step_by(BLOCK_K) {
        let kn = BLOCK_K.min(kend - j0);
        let pad = cover(h.pad, j0, j0 + kn);
        if pad == Cover::All {
            continue;
        }
        let st = &mut s.st[..kn * bq];
        t.gemm(
            (kn, bq, dp),
            &h.k[j0 * dp..],
            (dp, 1),
            qt,
            bq,
            st,
            bq,
            Acc::No,
        );
        if j0 + kn > kfree {
            // Key j is hidden from the columns whose row limit is <= j: a prefix.
            for (jj, row) in st.chunks_mut(bq).enumerate() {
                row[..p.causal_hidden_rows(i0, qn, j0 + jj)].fill(f32::NEG_INFINITY);
            }
        }
        if pad == Cover::Some {
            let pad = h.pad.expect("Cover::Some implies a mask");
            for (row, _) in st.chunks_mut(bq).zip(&pad[j0..j0 + kn]).filter(|(_, &m)| m) {
                row.fill(f32::NEG_INFINITY);
            }
        }
        // Online softmax: new max, alpha = 2^(old max - new max) to rescale
        // what was summed so far, then P = 2^(S - new max).
        s.alpha[..bq].copy_from_slice(&s.max[..bq]);
        t.col_max(st, (kn, bq, bq), &mut s.max);
        for (sh, &m) in s.shift.iter_mut().zip(&s.max) {
            // A column with nothing visible yet keeps max -inf; shifting by
            // 0 then maps its -inf scores to exactly 0 instead of NaN.
            *sh = if m == f32::NEG_INFINITY { 0.0 } else { m };
        }
        t.exp2_cols(&mut s.alpha, (1, bq, bq), &s.shift, &mut s.unused);
        s.sum.iter_mut().zip(&s.alpha).for_each(|(l, a)| *l *= a);
        t.exp2_cols(st, (kn, bq, bq), &s.shift, &mut s.sum);
        // O_i = O_i·alpha + P · V_j, with P read transposed out of P^T.
        let v = &h.v[j0 * dp..];
        t.gemm(
            (qn, dp, kn),
            st,
            (1, bq),
            v,
            dp,
            acc,
            dp,
            Acc::ScaleRows(&s.alpha),
        );
    }
    // One check over the whole block's outputs; only when it fails are the
    // rows checked one by one.
    let block_finite = t.all_finite(acc);
    for c in 0..qn {
        let out = &mut o[c * dp..(c + 1) * dp];
        let (l, m, acc) = (s.sum[c], s.max[c], &acc[c * dp..(c + 1) * dp]);
        let clean = if block_finite {
            stats_are_clean(m, l)
        } else {
            row_is_clean(m, l, acc)
        };
        if !clean {
            let i = i0 + c;
            let qi = &h.q[i * dp..(i + 1) * dp];
            lse[c] = exact::forward_row(p, h.pad, i, qi, h.k, h.v, dp, out);
        } else if l > 0.0 {
            let inv = 1.0 / l;
            out.iter_mut().zip(acc).for_each(|(y, &x)| *y = x * inv);
            lse[c] = (m + l.log2()) * std::f32::consts::LN_2;
        } else {
            out.fill(0.0);
            lse[c] = f32::NEG_INFINITY;
        }
    }
}

/// Whether the online softmax of a row (base-2 max `m`, sum `l`,
/// unnormalised output `acc`) is the reference's answer: everything finite
/// and a finite max, or a row with nothing visible (max -inf, sum 0). A
/// NaN or inf anywhere in the row's inputs leaves a trace in one of the
/// three (a NaN score makes the sum NaN; a +inf makes the max +inf; a
/// non-finite value, even behind a mask, makes `acc` non-finite), and the
/// row goes to the exact path.
pub(super) fn row_is_clean(m: f32, l: f32, acc: &[f32]) -> bool {
    all_finite(acc) && stats_are_clean(m, l)
}

/// The max and sum half of [`row_is_clean`].
fn stats_are_clean(m: f32, l: f32) -> bool {
    l.is_finite() && (m.is_finite() || (m == f32::NEG_INFINITY && l == 0.0))
}
