//! The tiled backward pass. One task per (batch, q head, key chunk) walks
//! the key blocks of its chunk (outer) and the query blocks that see them
//! (inner), recomputing P from the saved lse:
//!
//! ```text
//! S  = Q_i K_j^T            P  = exp(scale·S - lse)
//! dP = dO_i V_j^T           dS = P ∘ (dP - delta) · scale
//! dV_j += P^T dO_i          dK_j += dS^T Q_i          dQ_i += dS K_j
//! ```
//!
//! The task owns dK_j, dV_j of its chunk (per q head: GQA heads are summed
//! afterwards in head order) and dQ of its (head, chunk) (summed over
//! chunks afterwards in chunk order), so no value is ever written by two
//! threads and the result does not depend on scheduling. K_j^T and V_j^T
//! are packed once per key block and reused by every query block.

use rayon::prelude::*;

use super::tile::Acc;
use super::{cover, sum_parts, Cover, Problem, BLOCK_K, BLOCK_Q};

/// Split keys into chunks until there are about this many tasks (each
/// chunk costs one more dq-sized buffer to sum)...
const TARGET_TASKS: usize = 32;
/// ...but give each chunk at least this many keys.
const MIN_CHUNK: usize = 256;

/// Gradient outputs, rows `dp` floats apart: `dq (B, Hq, Tq, dp)`,
/// `dk, dv (B, Hkv, Tk, dp)`, zero on entry.
pub(super) struct Grads<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
}

/// `d_o, q (B, Hq, Tq, dp)`, `k, v (B, Hkv, Tk, dp)`, `lse, delta (B, Hq, Tq)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    p: &Problem<'_>,
    d_o: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    delta: &[f32],
    g: Grads<'_>,
) {
    let s = &p.shape;
    let (tq, tk, dp) = (s.q_len, s.kv_len, p.dp);
    let heads = s.batch * s.q_heads;
    // The split depends on the shape only, so the bits do not depend on
    // the thread count.
    let want = TARGET_TASKS.div_ceil(heads).min(tk.div_ceil(MIN_CHUNK));
    let chunk = tk.div_ceil(want).div_ceil(BLOCK_K) * BLOCK_K;
    let nchunks = tk.div_ceil(chunk);
    // lse in base 2; a row that sees no key gets +inf so that its P is 0.
    let lse2: Vec<f32> = lse
        .iter()
        .map(|&x| {
            if x == f32::NEG_INFINITY {
                f32::INFINITY
            } else {
                x * std::f32::consts::LOG2_E
            }
        })
        .collect();

    let mut dq_parts = Vec::new();
    let dq_target: &mut [f32] = if nchunks == 1 {
        &mut *g.dq
    } else {
        dq_parts.resize(heads * nchunks * tq * dp, 0.0);
        &mut dq_parts
    };
    let (mut dk_parts, mut dv_parts) = (Vec::new(), Vec::new());
    let group = p.group();
    let (dk_target, dv_target): (&mut [f32], &mut [f32]) = if group == 1 {
        (&mut *g.dk, &mut *g.dv)
    } else {
        dk_parts.resize(heads * tk * dp, 0.0);
        dv_parts.resize(heads * tk * dp, 0.0);
        (&mut dk_parts, &mut dv_parts)
    };

    dq_target
        .par_chunks_mut(nchunks * tq * dp)
        .zip(dk_target.par_chunks_mut(tk * dp))
        .zip(dv_target.par_chunks_mut(tk * dp))
        .enumerate()
        .for_each(|(bh, ((dq_h, dk_h), dv_h))| {
            let kv = p.kv_index(bh);
            let rows = bh * tq..(bh + 1) * tq;
            let head = Head {
                q: &q[rows.start * dp..rows.end * dp],
                d_o: &d_o[rows.start * dp..rows.end * dp],
                k: p.kv_rows(k, kv),
                v: p.kv_rows(v, kv),
                lse2: &lse2[rows.clone()],
                delta: &delta[rows],
                pad: p.padding(bh / s.q_heads),
            };
            dq_h.par_chunks_mut(tq * dp)
                .zip(dk_h.par_chunks_mut(chunk * dp))
                .zip(dv_h.par_chunks_mut(chunk * dp))
                .enumerate()
                .for_each_init(
                    || Scratch::new(dp),
                    |scratch, (c, ((dq, dk), dv))| {
                        key_chunk(p, &head, c * chunk, scratch, dq, dk, dv);
                    },
                );
        });

    if nchunks > 1 {
        sum_parts(&dq_parts, nchunks, g.dq, tq * dp);
    }
    if group > 1 {
        sum_parts(&dk_parts, group, g.dk, tk * dp);
        sum_parts(&dv_parts, group, g.dv, tk * dp);
    }
}

/// One q head's slices: `q, d_o (Tq, dp)`, `k, v (Tk, dp)` of its kv head,
/// `lse2, delta (Tq,)`, padding `(Tk,)`.
struct Head<'a> {
    q: &'a [f32],
    d_o: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    lse2: &'a [f32],
    delta: &'a [f32],
    pad: Option<&'a [bool]>,
}

struct Scratch {
    /// K_j^T and V_j^T, (dp, BLOCK_K).
    kt: Vec<f32>,
    vt: Vec<f32>,
    /// S then P then dS, (BLOCK_Q, BLOCK_K).
    s: Vec<f32>,
    /// dP, (BLOCK_Q, BLOCK_K).
    dp: Vec<f32>,
}

impl Scratch {
    fn new(dp: usize) -> Self {
        Scratch {
            kt: vec![0.0; dp * BLOCK_K],
            vt: vec![0.0; dp * BLOCK_K],
            s: vec![0.0; BLOCK_Q * BLOCK_K],
            dp: vec![0.0; BLOCK_Q * BLOCK_K],
        }
    }
}

/// Keys `k0..k0 + dk.len()/dp` of one head: accumulates their `dk, dv`
/// rows and this chunk's share of `dq (Tq, dp)`.
#[allow(clippy::too_many_arguments)]
fn key_chunk(
    p: &Problem<'_>,
    h: &Head<'_>,
    k0: usize,
    s: &mut Scratch,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, dp, tq) = (p.tiles, p.dp, p.shape.q_len);
    let scale = p.opts.scale;
    let smul = scale * std::f32::consts::LOG2_E;
    let k1 = k0 + dk.len() / dp;
    for j0 in (k0..k1).step_by(BLOCK_K) {
        let kn = BLOCK_K.min(k1 - j0);
        let pad = cover(h.pad, j0, j0 + kn);
        // Queries before `first` see none of these keys under causal.
        let first = p.causal_hidden_rows(0, tq, j0);
        if pad == Cover::All || first == tq {
            continue;
        }
        let bk = kn.div_ceil(16) * 16;
        let (kj, vj) = (&h.k[j0 * dp..(j0 + kn) * dp], &h.v[j0 * dp..(j0 + kn) * dp]);
        t.pack_transposed(kj, (kn, dp, dp), 1.0, &mut s.kt, bk);
        t.pack_transposed(vj, (kn, dp, dp), 1.0, &mut s.vt, bk);
        let (dkj, dvj) = (&mut dk[(j0 - k0) * dp..], &mut dv[(j0 - k0) * dp..]);
        for i0 in (first / BLOCK_Q * BLOCK_Q..tq).step_by(BLOCK_Q) {
            let qn = BLOCK_Q.min(tq - i0);
            let (qi, doi) = (
                &h.q[i0 * dp..(i0 + qn) * dp],
                &h.d_o[i0 * dp..(i0 + qn) * dp],
            );
            let (st, dpt) = (&mut s.s[..qn * bk], &mut s.dp[..qn * bk]);
            t.gemm((qn, bk, dp), qi, (dp, 1), &s.kt, bk, st, bk, Acc::No);
            t.gemm((qn, bk, dp), doi, (dp, 1), &s.vt, bk, dpt, bk, Acc::No);
            t.exp2_rows(st, (qn, bk, bk), smul, &h.lse2[i0..i0 + qn]);
            if p.causal_limit(i0) < j0 + kn {
                for (r, row) in st.chunks_mut(bk).enumerate() {
                    let visible = p.causal_limit(i0 + r).saturating_sub(j0).min(kn);
                    row[visible..kn].fill(0.0);
                }
            }
            if pad == Cover::Some {
                let pad = &h.pad.expect("Cover::Some implies a mask")[j0..j0 + kn];
                for row in st.chunks_mut(bk) {
                    row.iter_mut()
                        .zip(pad)
                        .filter(|(_, &m)| m)
                        .for_each(|(x, _)| *x = 0.0);
                }
            }
            t.gemm((kn, dp, qn), st, (1, bk), doi, dp, dvj, dp, Acc::Add);
            t.softmax_grad_rows(st, dpt, (qn, bk, bk), &h.delta[i0..i0 + qn], scale);
            t.gemm((kn, dp, qn), st, (1, bk), qi, dp, dkj, dp, Acc::Add);
            t.gemm(
                (qn, dp, kn),
                st,
                (bk, 1),
                kj,
                dp,
                &mut dq[i0 * dp..],
                dp,
                Acc::Add,
            );
        }
    }
}
