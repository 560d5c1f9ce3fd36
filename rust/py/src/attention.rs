//! Bindings of the attention kernels: `attention_forward` and
//! `attention_backward`. They read the sizes from q and k, release the GIL
//! and call the kernels, which check every array against those sizes.

use ferroformer_kernels::attention::{self, AttentionOptions, AttentionShape};
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::shapes;
use crate::util::{self, Array, In};

const LAYOUT: &str = "(B, H, T, D)";

/// The optional `key_padding_mask (B, Tk)`: True hides that key.
type Mask<'py> = Option<In<'py, bool>>;

/// The sizes: batch, query heads and length and head dim from
/// `q (B, Hq, Tq, D)`, key heads and length from `k (B, Hkv, Tk, D)`.
fn shape_of(op: &str, q: &In<'_>, k: &In<'_>) -> PyResult<AttentionShape> {
    let [batch, q_heads, q_len, head_dim] = shapes::exact(op, "q", LAYOUT, q.shape())?;
    let [_, kv_heads, kv_len, _] = shapes::exact(op, "k", LAYOUT, k.shape())?;
    Ok(AttentionShape {
        batch,
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim,
    })
}

/// The kernel options, the mask borrowed as a slice.
fn options<'a>(
    op: &str,
    causal: bool,
    scale: f32,
    mask: &'a Mask<'_>,
) -> PyResult<AttentionOptions<'a>> {
    Ok(AttentionOptions {
        causal,
        scale,
        key_padding_mask: util::slice_opt(op, "key_padding_mask", mask)?,
    })
}

util::binding! {
    /// `(o (B, Hq, Tq, D), lse (B, Hq, Tq))` of softmax(scale·q·k^T)·v over
    /// the visible keys. With `kv_len`, k and v are KV-cache buffers
    /// `(B, Hkv, capacity, D)` (mask `(B, capacity)`) of which only the first
    /// `kv_len` positions are used.
    #[pyo3(signature = (q, k, v, causal, scale, key_padding_mask=None, kv_len=None))]
    #[allow(clippy::too_many_arguments)]
    fn attention_forward<'py>(
        py, q: In<'py>, k: In<'py>, v: In<'py>, causal: bool, scale: f32,
        key_padding_mask: Mask<'py>, kv_len: Option<usize>,
    ) -> (Array<'py>, Array<'py>) {
        let mut s = shape_of(OP, &q, &k)?;
        let capacity = s.kv_len;
        s.kv_len = kv_len.unwrap_or(capacity);
        let [qs, ks, vs] = util::slices(OP, [("q", &q), ("k", &k), ("v", &v)])?;
        let opts = options(OP, causal, scale, &key_padding_mask)?;
        // zero-filled, not uninit: the forward kernels do not promise to write
        // every value of o and lse, which uninit's contract needs
        let o = util::zeros(py, OP, q.shape())?;
        let lse = util::zeros(py, OP, &q.shape()[..3])?;
        util::run_into(py, false, [&o, &lse], |[os, ls]| {
            attention::attention_forward_cached(qs, ks, vs, s, capacity, opts, os, ls)
        })?;
        Ok((o, lse))
    }

    /// `(dq, dk, dv)` from the output gradient `do (B, Hq, Tq, D)` and the
    /// forward's `o` and `lse`.
    #[pyo3(signature = (do_, q, k, v, o, lse, causal, scale, key_padding_mask=None))]
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<'py>(
        py, do_: In<'py>, q: In<'py>, k: In<'py>, v: In<'py>, o: In<'py>, lse: In<'py>,
        causal: bool, scale: f32, key_padding_mask: Mask<'py>,
    ) -> (Array<'py>, Array<'py>, Array<'py>) {
        let s = shape_of(OP, &q, &k)?;
        let [dos, qs, ks, vs, os, lses] = util::slices(
            OP,
            [
                ("do", &do_),
                ("q", &q),
                ("k", &k),
                ("v", &v),
                ("o", &o),
                ("lse", &lse),
            ],
        )?;
        let opts = options(OP, causal, scale, &key_padding_mask)?;
        // the kernel zero-fills its gradients itself before accumulating
        let kv_dims = [s.batch, s.kv_heads, s.kv_len, s.head_dim];
        let [dq, dk, dv] = util::outputs(py, OP, [q.shape(), &kv_dims, &kv_dims])?;
        util::run_into(py, false, [&dq, &dk, &dv], |[dqs, dks, dvs]| {
            attention::attention_backward(dos, qs, ks, vs, os, lses, s, opts, dqs, dks, dvs)
        })?;
        Ok((dq, dk, dv))
    }
}
