//! Bindings of the attention kernels: `attention_forward` and
//! `attention_backward`. They check ranks and shapes (ValueError naming
//! the op and the shapes), release the GIL and call the kernels.

use ferroformer_kernels::attention::{self, AttentionOptions, AttentionShape};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

/// The sizes of `q (B, Hq, Tq, D)`, `k, v (B, Hkv, Tk, D)` and the mask
/// `(B, Tk)`, or a ValueError naming what does not fit.
fn shape_of(
    op: &str,
    q: &PyReadonlyArrayDyn<'_, f32>,
    k: &PyReadonlyArrayDyn<'_, f32>,
    v: &PyReadonlyArrayDyn<'_, f32>,
    mask: Option<&PyReadonlyArrayDyn<'_, bool>>,
) -> PyResult<AttentionShape> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let mask_shape = mask.map(|m| m.shape().to_vec());
    let bad = || {
        PyValueError::new_err(format!(
            "{op}: expected q (B, Hq, Tq, D), k and v (B, Hkv, Tk, D) with Hq % Hkv == 0 \
             and key_padding_mask (B, Tk); got q {qs:?}, k {ks:?}, v {vs:?}, mask {mask_shape:?}"
        ))
    };
    if qs.len() != 4 || ks.len() != 4 || ks != vs || qs[0] != ks[0] || qs[3] != ks[3] {
        return Err(bad());
    }
    if ks[1] == 0 || qs[1] % ks[1] != 0 || qs[3] == 0 {
        return Err(bad());
    }
    if let Some(ms) = &mask_shape {
        if ms.as_slice() != [ks[0], ks[2]] {
            return Err(bad());
        }
    }
    Ok(AttentionShape {
        batch: qs[0],
        q_heads: qs[1],
        kv_heads: ks[1],
        q_len: qs[2],
        kv_len: ks[2],
        head_dim: qs[3],
    })
}

/// The kernel options, the mask borrowed as a slice.
fn options<'a>(
    op: &str,
    causal: bool,
    scale: f32,
    mask: &'a Option<PyReadonlyArrayDyn<'_, bool>>,
) -> PyResult<AttentionOptions<'a>> {
    let key_padding_mask = match mask {
        Some(m) => Some(util::slice(op, "key_padding_mask", m)?),
        None => None,
    };
    Ok(AttentionOptions {
        causal,
        scale,
        key_padding_mask,
    })
}

fn same_shape(
    op: &str,
    name: &str,
    a: &PyReadonlyArrayDyn<'_, f32>,
    want: &[usize],
) -> PyResult<()> {
    if a.shape() != want {
        return Err(PyValueError::new_err(format!(
            "{op}: {name} has shape {:?}, expected {want:?}",
            a.shape()
        )));
    }
    Ok(())
}

/// `(o (B, Hq, Tq, D), lse (B, Hq, Tq))` of softmax(scale·q·k^T)·v over
/// the visible keys. With `kv_len`, k and v are KV-cache buffers
/// `(B, Hkv, capacity, D)` (mask `(B, capacity)`) of which only the first
/// `kv_len` positions are used.
#[pyfunction]
#[pyo3(signature = (q, k, v, causal, scale, key_padding_mask=None, kv_len=None))]
#[allow(clippy::too_many_arguments)]
fn attention_forward<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    causal: bool,
    scale: f32,
    key_padding_mask: Option<PyReadonlyArrayDyn<'py, bool>>,
    kv_len: Option<usize>,
) -> PyResult<(Array<'py>, Array<'py>)> {
    const OP: &str = "attention_forward";
    util::guard(OP, || {
        let mut s = shape_of(OP, &q, &k, &v, key_padding_mask.as_ref())?;
        let capacity = s.kv_len;
        if let Some(n) = kv_len {
            if n > capacity {
                return Err(PyValueError::new_err(format!(
                    "{OP}: kv_len {n} exceeds the {capacity} positions of k {:?}",
                    k.shape()
                )));
            }
            s.kv_len = n;
        }
        let (qs, ks, vs) = (
            util::slice(OP, "q", &q)?,
            util::slice(OP, "k", &k)?,
            util::slice(OP, "v", &v)?,
        );
        let opts = options(OP, causal, scale, &key_padding_mask)?;
        let o = util::zeros(py, OP, &[s.batch, s.q_heads, s.q_len, s.head_dim])?;
        let lse = util::zeros(py, OP, &[s.batch, s.q_heads, s.q_len])?;
        {
            let (mut ow, mut lw) = (o.readwrite(), lse.readwrite());
            let os = ow.as_slice_mut().expect("fresh arrays are contiguous");
            let ls = lw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run(py, || {
                attention::attention_forward_cached(qs, ks, vs, s, capacity, opts, os, ls)
            })?;
        }
        Ok((o, lse))
    })
}

/// `(dq, dk, dv)` from the output gradient `do (B, Hq, Tq, D)` and the
/// forward's `o` and `lse`.
#[pyfunction]
#[pyo3(signature = (do_, q, k, v, o, lse, causal, scale, key_padding_mask=None))]
#[allow(clippy::too_many_arguments)]
fn attention_backward<'py>(
    py: Python<'py>,
    do_: PyReadonlyArrayDyn<'py, f32>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    o: PyReadonlyArrayDyn<'py, f32>,
    lse: PyReadonlyArrayDyn<'py, f32>,
    causal: bool,
    scale: f32,
    key_padding_mask: Option<PyReadonlyArrayDyn<'py, bool>>,
) -> PyResult<(Array<'py>, Array<'py>, Array<'py>)> {
    const OP: &str = "attention_backward";
    util::guard(OP, || {
        let s = shape_of(OP, &q, &k, &v, key_padding_mask.as_ref())?;
        let q_dims = [s.batch, s.q_heads, s.q_len, s.head_dim];
        let kv_dims = [s.batch, s.kv_heads, s.kv_len, s.head_dim];
        same_shape(OP, "do", &do_, &q_dims)?;
        same_shape(OP, "o", &o, &q_dims)?;
        same_shape(OP, "lse", &lse, &q_dims[..3])?;
        let (dos, qs) = (util::slice(OP, "do", &do_)?, util::slice(OP, "q", &q)?);
        let (ks, vs) = (util::slice(OP, "k", &k)?, util::slice(OP, "v", &v)?);
        let (os, lses) = (util::slice(OP, "o", &o)?, util::slice(OP, "lse", &lse)?);
        let opts = options(OP, causal, scale, &key_padding_mask)?;
        // the kernel zero-fills its gradients itself before accumulating
        let dq = util::uninit(py, OP, &q_dims)?;
        let dk = util::uninit(py, OP, &kv_dims)?;
        let dv = util::uninit(py, OP, &kv_dims)?;
        {
            let (mut a, mut b, mut c) = (dq.readwrite(), dk.readwrite(), dv.readwrite());
            let dqs = a.as_slice_mut().expect("fresh arrays are contiguous");
            let dks = b.as_slice_mut().expect("fresh arrays are contiguous");
            let dvs = c.as_slice_mut().expect("fresh arrays are contiguous");
            util::run(py, || {
                attention::attention_backward(dos, qs, ks, vs, os, lses, s, opts, dqs, dks, dvs)
            })?;
        }
        Ok((dq, dk, dv))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_backward, m)?)?;
    Ok(())
}
