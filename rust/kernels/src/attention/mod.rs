//! Fused, tiled ("flash") attention: forward, backward and a split-K
//! decode path, without ever materialising the (Tq, Tk) score matrix.
//!
//! ```
//! use ferroformer_kernels::attention::{attention_forward, AttentionOptions, AttentionShape};
//! let shape = AttentionShape { batch: 1, q_heads: 2, kv_heads: 1, q_len: 3, kv_len: 5, head_dim: 16 };
//! let (q, kv) = (vec![0.1f32; 2 * 3 * 16], vec![0.2f32; 5 * 16]);
//! let (mut o, mut lse) = (vec![0.0; 2 * 3 * 16], vec![0.0; 2 * 3]);
//! let opts = AttentionOptions { causal: true, scale: 0.25, key_padding_mask: None };
//! attention_forward(&q, &kv, &kv, shape, opts, &mut o, &mut lse).unwrap();
//! assert!((o[0] - 0.2).abs() < 1e-6);
//! ```
//!
//! Layouts: `q (B, Hq, Tq, D)`, `k, v (B, Hkv, Tk, D)`, `o (B, Hq, Tq, D)`,
//! `lse (B, Hq, Tq)`, row-major. Query head h reads kv head
//! `h / (Hq / Hkv)` (GQA/MQA) in place. Causal masking is aligned to the
//! bottom-right: query i sees key j iff `j <= i + Tk - Tq`. A query that
//! sees no key gets `o = 0`, `lse = -inf` and zero gradients.
//!
//! How the work is cut:
//! - forward (`forward.rs`): one task per (batch, head, block of
//!   `BLOCK_Q` queries); it keeps Q^T of its block packed and walks the key
//!   blocks with an online softmax, so its scratch is O(block).
//! - decode (`decode.rs`, `Tq <= DECODE_MAX_Q`): few rows, so the keys of
//!   each head are split into chunks that run in parallel, each keeping
//!   its own (max, sum, acc), merged afterwards in chunk order.
//! - backward (`backward.rs`): one task per (batch, q head, key chunk); it
//!   owns the dk/dv rows of its chunk and the dq rows of its (head, chunk),
//!   so nothing is accumulated by two threads; partial results (GQA heads,
//!   key chunks) are summed afterwards in a fixed order. Bits are the same
//!   run to run and for any thread count.
//!
//! All tile arithmetic goes through `tile.rs` (register-blocked products
//! per instruction set, lane loops once over the SIMD tokens); scores are kept in base 2 (the
//! scale is multiplied by log2(e)) so that the exponentials are exp2.

mod backward;
mod decode;
mod exact;
mod forward;
mod tile;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use tile::Tiles;

/// Queries per forward/backward task and per tile row block.
const BLOCK_Q: usize = 64;
/// Keys per tile.
const BLOCK_K: usize = 64;
/// Up to this many query rows the forward takes the split-K decode path.
const DECODE_MAX_Q: usize = 4;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

/// Which keys each query sees, and the factor on `q·k`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions<'a> {
    /// Bottom-right aligned causal mask.
    pub causal: bool,
    /// Usually `1/sqrt(D)`.
    pub scale: f32,
    /// `(B, Tk)`, true = that key is hidden from every query of its batch.
    pub key_padding_mask: Option<&'a [bool]>,
}

/// Forward attention: fills `o (B, Hq, Tq, D)` and
/// `lse (B, Hq, Tq) = log Σ_j exp(scale·q·k_j)` over the visible keys.
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    opts: AttentionOptions<'_>,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    attention_forward_cached(q, k, v, shape, shape.kv_len, opts, o, lse)
}

/// Forward attention over the first `shape.kv_len` keys of a KV cache:
/// `k, v (B, Hkv, capacity, D)` and the padding mask `(B, capacity)` are
/// whole preallocated buffers, of which only positions `0..kv_len` are
/// read, so a growing cache is never copied. The causal mask aligns the
/// queries with the last `q_len` of those `kv_len` positions.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_cached(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    capacity: usize,
    opts: AttentionOptions<'_>,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    if capacity < shape.kv_len {
        return Err(Error::Shape(format!(
            "attention_forward: kv_len {} exceeds the cache capacity {capacity}",
            shape.kv_len
        )));
    }
    const OP: &str = "attention_forward";
    check_inputs(OP, q, k, v, shape, capacity, opts)?;
    let s = shape;
    check_len(OP, "o", o.len(), &[s.batch, s.q_heads, s.q_len, s.head_dim])?;
    check_len(OP, "lse", lse.len(), &[s.batch, s.q_heads, s.q_len])?;
    if o.is_empty() {
        return Ok(());
    }
    let (d, dp) = (s.head_dim, padded_dim(s.head_dim));
    // Padded copies hold only the used rows [0, kv_len) of each cache slab,
    // so a decode step costs O(kv_len), not O(capacity).
    let kv_stride = if dp == d { capacity } else { s.kv_len };
    let q = pad_rows(q, d, dp);
    let (k, v) = (
        pad_slabs(k, capacity, s.kv_len, d, dp),
        pad_slabs(v, capacity, s.kv_len, d, dp),
    );
    let mut o_pad = Vec::new();
    let o_target: &mut [f32] = if dp == d {
        o
    } else {
        o_pad.resize(o.len() / d * dp, 0.0);
        &mut o_pad
    };
    let problem = Problem {
        tiles: Tiles::new(),
        shape,
        opts,
        dp,
        kv_stride,
        mask_stride: capacity,
    };
    if s.q_len <= DECODE_MAX_Q {
        decode::forward(&problem, &q, &k, &v, o_target, lse);
    } else {
        forward::forward(&problem, &q, &k, &v, o_target, lse);
    }
    if dp != d {
        unpad_rows(&o_pad, dp, o, d);
    }
    Ok(())
}

/// Backward attention: from `d_o (B, Hq, Tq, D)` and the forward's `o`
/// and `lse`, fills `dq (B, Hq, Tq, D)`, `dk, dv (B, Hkv, Tk, D)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d_o: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    shape: AttentionShape,
    opts: AttentionOptions<'_>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<()> {
    const OP: &str = "attention_backward";
    check_inputs(OP, q, k, v, shape, shape.kv_len, opts)?;
    let s = shape;
    let q_dims = [s.batch, s.q_heads, s.q_len, s.head_dim];
    let kv_dims = [s.batch, s.kv_heads, s.kv_len, s.head_dim];
    check_len(OP, "do", d_o.len(), &q_dims)?;
    check_len(OP, "o", o.len(), &q_dims)?;
    check_len(OP, "lse", lse.len(), &[s.batch, s.q_heads, s.q_len])?;
    check_len(OP, "dq", dq.len(), &q_dims)?;
    check_len(OP, "dk", dk.len(), &kv_dims)?;
    check_len(OP, "dv", dv.len(), &kv_dims)?;
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    if dq.is_empty() || dk.is_empty() {
        return Ok(());
    }
    let (d, dp) = (s.head_dim, padded_dim(s.head_dim));
    // delta_i = do_i·o_i, the row term of the softmax gradient.
    let delta: Vec<f32> = d_o
        .par_chunks(d)
        .zip(o.par_chunks(d))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
        .collect();
    let inputs = exact::Inputs {
        d_o,
        q,
        k,
        v,
        o,
        lse,
    };
    let (d_o, q) = (pad_rows(d_o, d, dp), pad_rows(q, d, dp));
    let (k, v) = (pad_rows(k, d, dp), pad_rows(v, d, dp));
    let problem = Problem {
        tiles: Tiles::new(),
        shape,
        opts,
        dp,
        kv_stride: shape.kv_len,
        mask_stride: shape.kv_len,
    };
    let mut dq_pad = Vec::new();
    let mut dk_pad = Vec::new();
    let mut dv_pad = Vec::new();
    let (gq, gk, gv): (&mut [f32], &mut [f32], &mut [f32]) = if dp == d {
        (&mut *dq, &mut *dk, &mut *dv)
    } else {
        dq_pad.resize(dq.len() / d * dp, 0.0);
        dk_pad.resize(dk.len() / d * dp, 0.0);
        dv_pad.resize(dv.len() / d * dp, 0.0);
        (&mut dq_pad, &mut dk_pad, &mut dv_pad)
    };
    let targets = backward::Grads {
        dq: &mut *gq,
        dk: &mut *gk,
        dv: &mut *gv,
    };
    backward::backward(&problem, &d_o, &q, &k, &v, lse, &delta, targets);
    // One check per (batch, kv head) group: where a gradient came out
    // non-finite, the group is recomputed the exact way.
    exact::redo_backward(&problem, &inputs, gq, gk, gv);
    if dp != d {
        unpad_rows(&dq_pad, dp, dq, d);
        unpad_rows(&dk_pad, dp, dk, d);
        unpad_rows(&dv_pad, dp, dv, d);
    }
    Ok(())
}

/// Everything a kernel needs besides the arrays; rows are `dp` floats apart.
struct Problem<'a> {
    tiles: Tiles,
    shape: AttentionShape,
    opts: AttentionOptions<'a>,
    dp: usize,
    /// Rows per (batch, kv head) slab of k and v as the kernels get them:
    /// `kv_len`, or a KV cache's capacity when the cache is read in place.
    kv_stride: usize,
    /// Columns per padding-mask row: `kv_len` or the cache's capacity.
    mask_stride: usize,
}

impl Problem<'_> {
    /// Query heads per kv head.
    fn group(&self) -> usize {
        self.shape.q_heads / self.shape.kv_heads
    }

    /// The flat (batch, kv head) index that flat (batch, q head) `bh` reads.
    fn kv_index(&self, bh: usize) -> usize {
        let s = &self.shape;
        (bh / s.q_heads) * s.kv_heads + (bh % s.q_heads) / self.group()
    }

    /// Key padding row `(Tk,)` of batch b, if any.
    fn padding(&self, b: usize) -> Option<&[bool]> {
        let (tk, cap) = (self.shape.kv_len, self.mask_stride);
        self.opts
            .key_padding_mask
            .map(|m| &m[b * cap..b * cap + tk])
    }

    /// What flat (batch, q head) `bh` reads in the forward: its query rows,
    /// the key and value rows of its kv head, its batch's padding row.
    fn head<'h>(&'h self, bh: usize, q: &'h [f32], k: &'h [f32], v: &'h [f32]) -> Head<'h> {
        let (tq, dp, kv) = (self.shape.q_len, self.dp, self.kv_index(bh));
        Head {
            q: &q[bh * tq * dp..(bh + 1) * tq * dp],
            k: self.kv_rows(k, kv),
            v: self.kv_rows(v, kv),
            pad: self.padding(bh / self.shape.q_heads),
        }
    }

    /// The used rows `(Tk, dp)` of flat (batch, kv head) `kv` in k or v.
    fn kv_rows<'k>(&self, x: &'k [f32], kv: usize) -> &'k [f32] {
        let start = kv * self.kv_stride * self.dp;
        &x[start..start + self.shape.kv_len * self.dp]
    }

    /// How many keys query row i may see counting from key 0, before the
    /// padding mask: `i + Tk - Tq + 1` clamped to `[0, Tk]` under causal.
    fn causal_limit(&self, i: usize) -> usize {
        let s = &self.shape;
        if !self.opts.causal {
            return s.kv_len;
        }
        (i + s.kv_len + 1).saturating_sub(s.q_len).min(s.kv_len)
    }

    /// Of the query rows `i0..i0 + n`, how many (always a prefix) cannot
    /// see key `j < Tk` under the causal mask: those with `i + Tk - Tq < j`.
    fn causal_hidden_rows(&self, i0: usize, n: usize, j: usize) -> usize {
        let s = &self.shape;
        if !self.opts.causal {
            return 0;
        }
        (j + s.q_len).saturating_sub(s.kv_len + i0).min(n)
    }
}

/// One q head's forward slices: `q (Tq, dp)`, `k, v (Tk, dp)` of its kv
/// head, padding `(Tk,)`; see [`Problem::head`].
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    pad: Option<&'a [bool]>,
}

/// How the padding mask covers a key range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cover {
    None,
    Some,
    All,
}

fn cover(pad: Option<&[bool]>, j0: usize, j1: usize) -> Cover {
    let Some(pad) = pad else { return Cover::None };
    let hidden = pad[j0..j1].iter().filter(|&&m| m).count();
    match hidden {
        0 => Cover::None,
        n if n == j1 - j0 => Cover::All,
        _ => Cover::Some,
    }
}

fn check_inputs(
    op: &str,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttentionShape,
    capacity: usize,
    opts: AttentionOptions<'_>,
) -> Result<()> {
    if s.head_dim == 0 || s.kv_heads == 0 || !s.q_heads.is_multiple_of(s.kv_heads) {
        return Err(Error::Shape(format!(
            "{op}: need head_dim > 0 and q_heads a multiple of kv_heads, got {s:?}"
        )));
    }
    if !opts.scale.is_finite() {
        return Err(Error::Value(format!(
            "{op}: scale must be finite, got {}",
            opts.scale
        )));
    }
    check_len(op, "q", q.len(), &[s.batch, s.q_heads, s.q_len, s.head_dim])?;
    check_len(
        op,
        "k",
        k.len(),
        &[s.batch, s.kv_heads, capacity, s.head_dim],
    )?;
    check_len(
        op,
        "v",
        v.len(),
        &[s.batch, s.kv_heads, capacity, s.head_dim],
    )?;
    if let Some(m) = opts.key_padding_mask {
        check_len(op, "key_padding_mask", m.len(), &[s.batch, capacity])?;
    }
    Ok(())
}

/// Rows padded to a multiple of 16 floats, the width the tile products
/// work in.
fn padded_dim(d: usize) -> usize {
    d.div_ceil(16) * 16
}

/// `x (rows, d)` with each row zero-padded to `dp`; borrowed when `d == dp`.
fn pad_rows(x: &[f32], d: usize, dp: usize) -> Cow<'_, [f32]> {
    if d == dp {
        return Cow::Borrowed(x);
    }
    let mut out = vec![0.0; x.len() / d * dp];
    out.par_chunks_mut(dp)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| o[..d].copy_from_slice(r));
    Cow::Owned(out)
}

/// Rows `[0, used)` of every `cap`-row slab of `x (slabs, cap, d)`, each
/// zero-padded to `dp`: `(slabs, used, dp)`; `x` itself, borrowed, when
/// `d == dp` (the kernels then read the slabs in place).
fn pad_slabs(x: &[f32], cap: usize, used: usize, d: usize, dp: usize) -> Cow<'_, [f32]> {
    if d == dp {
        return Cow::Borrowed(x);
    }
    let slabs = x.len() / (cap * d).max(1);
    let mut out = vec![0.0; slabs * used * dp];
    out.par_chunks_mut(dp).enumerate().for_each(|(r, o)| {
        let (slab, row) = (r / used, r % used);
        let at = (slab * cap + row) * d;
        o[..d].copy_from_slice(&x[at..at + d]);
    });
    Cow::Owned(out)
}

/// Whether every value of `x` is finite. The largest magnitude is taken in
/// the integer bits, a reduction LLVM vectorises, so the check costs a
/// small fraction of one pass over `x` ([`Tiles::all_finite`] compiles it
/// with the token's features: AVX2 has the unsigned maximum, SSE2 not).
#[inline(always)]
fn all_finite(x: &[f32]) -> bool {
    let top = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    top < 0x7f80_0000
}

/// The first `d` floats of every `dp`-float row of `x` into `out (rows, d)`.
fn unpad_rows(x: &[f32], dp: usize, out: &mut [f32], d: usize) {
    out.par_chunks_mut(d)
        .zip(x.par_chunks(dp))
        .for_each(|(o, r)| o.copy_from_slice(&r[..d]));
}

/// `out[i] = Σ_p parts[i][p]` for `parts (n, nparts, len)`, `out (n, len)`,
/// summed in part order so the bits never depend on scheduling.
fn sum_parts(parts: &[f32], nparts: usize, out: &mut [f32], len: usize) {
    out.par_chunks_mut(len)
        .zip(parts.par_chunks(nparts * len))
        .for_each(|(o, p)| {
            o.copy_from_slice(&p[..len]);
            for part in p.chunks(len).skip(1) {
                o.iter_mut().zip(part).for_each(|(x, y)| *x += y);
            }
        });
}
