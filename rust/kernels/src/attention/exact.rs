//! Exact attention, in f64 with the NumPy reference's semantics, for the
//! few query rows (forward) and (batch, kv head) groups (backward) where
//! the fast kernels met a value that is not finite.
//!
//! The tiled kernels are right for finite inputs, but with NaN or inf
//! around they would differ from the reference: an online softmax cannot
//! shift by a +inf maximum, a masked key whose value is NaN adds
//! `0 * NaN` to the tile product, and f32 exponentials underflow where the
//! f64 reference's do not (`0 * inf` against `1e-60 * inf`). Every such
//! case leaves a NaN or an inf in the fast result, so the kernels check
//! once per row or per group (never per element) and hand those here.
//!
//! The semantics, as in the reference: only visible (query, key) pairs
//! take part anywhere, so a masked pair adds nothing even where a value
//! there is NaN or inf; a row's softmax is [`softmax_exact`] (a NaN makes
//! the row NaN, a +inf gives NaN there and 0 beside it, a row with nothing
//! visible gives `o = 0` and `lse = -inf`); the backward takes `P = 0` on
//! rows whose lse is not finite.

use rayon::prelude::*;

use super::Problem;
use crate::vec_math::softmax_exact;

/// The backward's inputs as the caller gave them, rows `head_dim` apart.
pub(super) struct Inputs<'a> {
    pub d_o: &'a [f32],
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub lse: &'a [f32],
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The keys query row `i` sees: causal limit, then the padding row `pad`.
fn visible_keys(p: &Problem<'_>, pad: Option<&[bool]>, i: usize) -> Vec<usize> {
    (0..p.causal_limit(i))
        .filter(|&j| !pad.is_some_and(|m| m[j]))
        .collect()
}

/// Query row `i` of one head, exactly: `q` its row, `k, v (Tk, ld)` the
/// rows of its kv head, `pad` its batch's padding row. Writes
/// `o[..head_dim]` (and zeros up to `o.len()`), returns the lse.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_row(
    p: &Problem<'_>,
    pad: Option<&[bool]>,
    i: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    o: &mut [f32],
) -> f32 {
    let d = p.shape.head_dim;
    let scale = p.opts.scale as f64;
    let keys = visible_keys(p, pad, i);
    let mut s: Vec<f64> = keys
        .iter()
        .map(|&j| dot64(&q[..d], &k[j * ld..j * ld + d]) * scale)
        .collect();
    let lse = softmax_exact(&mut s);
    let mut acc = vec![0.0f64; d];
    for (&j, &pj) in keys.iter().zip(&s) {
        for (a, &x) in acc.iter_mut().zip(&v[j * ld..j * ld + d]) {
            *a += pj * x as f64;
        }
    }
    o.fill(0.0);
    o.iter_mut().zip(&acc).for_each(|(y, &a)| *y = a as f32);
    lse as f32
}

/// After the fast backward: every (batch, kv head) group whose gradients
/// hold a NaN or an inf is recomputed by [`backward_group`]. `dq (B, Hq,
/// Tq, dp)`, `dk, dv (B, Hkv, Tk, dp)`.
pub(super) fn redo_backward(
    p: &Problem<'_>,
    x: &Inputs<'_>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let s = &p.shape;
    let (tq, tk, dp) = (s.q_len, s.kv_len, p.dp);
    let g = p.group();
    dq.par_chunks_mut(g * tq * dp)
        .zip(dk.par_chunks_mut(tk * dp))
        .zip(dv.par_chunks_mut(tk * dp))
        .enumerate()
        .for_each(|(grp, ((dq, dk), dv))| {
            let t = p.tiles;
            if !(t.all_finite(dq) && t.all_finite(dk) && t.all_finite(dv)) {
                backward_group(p, x, grp, dq, dk, dv);
            }
        });
}

/// The gradients of one (batch, kv head) group `grp`, exactly: `dq (g, Tq,
/// dp)` for its `g` query heads, `dk, dv (Tk, dp)`; padded columns are 0.
fn backward_group(
    p: &Problem<'_>,
    x: &Inputs<'_>,
    grp: usize,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let s = &p.shape;
    let (tq, tk, d, dp) = (s.q_len, s.kv_len, s.head_dim, p.dp);
    let g = p.group();
    let scale = p.opts.scale as f64;
    let b = grp / s.kv_heads;
    let pad = p.padding(b);
    let (k, v) = (
        &x.k[grp * tk * d..(grp + 1) * tk * d],
        &x.v[grp * tk * d..(grp + 1) * tk * d],
    );
    let mut gq = vec![0.0f64; g * tq * d];
    let mut gk = vec![0.0f64; tk * d];
    let mut gv = vec![0.0f64; tk * d];
    for h in 0..g {
        // Query head `grp * g + h` in (B, Hq) order: batch b, head kvh·g + h.
        let bh = grp * g + h;
        for i in 0..tq {
            let r = bh * tq + i;
            let (qi, doi, oi) = (x_row(x.q, r, d), x_row(x.d_o, r, d), x_row(x.o, r, d));
            let lse = x.lse[r] as f64;
            let delta: f64 = doi.iter().zip(oi).map(|(&a, &b)| a as f64 * b as f64).sum();
            let dqi = &mut gq[(h * tq + i) * d..(h * tq + i + 1) * d];
            for j in visible_keys(p, pad, i) {
                let (kj, vj) = (x_row(k, j, d), x_row(v, j, d));
                let pj = if lse.is_finite() {
                    (dot64(qi, kj) * scale - lse).exp()
                } else {
                    0.0
                };
                let ds = pj * (dot64(doi, vj) - delta) * scale;
                for c in 0..d {
                    gv[j * d + c] += pj * doi[c] as f64;
                    gk[j * d + c] += ds * qi[c] as f64;
                    dqi[c] += ds * kj[c] as f64;
                }
            }
        }
    }
    let put = |out: &mut [f32], acc: &[f64]| {
        for (o, a) in out.chunks_mut(dp).zip(acc.chunks(d)) {
            o.fill(0.0);
            o.iter_mut().zip(a).for_each(|(y, &v)| *y = v as f32);
        }
    };
    put(dq, &gq);
    put(dk, &gk);
    put(dv, &gv);
}

/// Row `r` of a `(rows, d)` array.
fn x_row(a: &[f32], r: usize, d: usize) -> &[f32] {
    &a[r * d..(r + 1) * d]
}
