//! Bindings of the matmul kernels: `matmul`, `linear_forward`,
//! `linear_backward`. Inputs arrive C-contiguous float32; shapes are
//! checked here again (ValueError naming the op and the shapes) because
//! the kernels index by them.

use ferroformer_kernels::matmul::{
    linear_backward as linear_bwd, linear_forward as linear_fwd, matmul_batched, matmul_shape,
    one_thread,
};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

/// `op(a) @ op(b)` over broadcast leading dims; `op` swaps the last two
/// axes when its flag is set. a `(..., m, k)` or `(..., k, m)`, b
/// `(..., k, n)` or `(..., n, k)` -> `(batch..., m, n)`.
#[pyfunction]
#[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
fn matmul<'py>(
    py: Python<'py>,
    a: PyReadonlyArrayDyn<'py, f32>,
    b: PyReadonlyArrayDyn<'py, f32>,
    trans_a: bool,
    trans_b: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    util::guard("matmul", || {
        let (a_shape, b_shape) = (util::shape(&a), util::shape(&b));
        let shape = matmul_shape(&a_shape, trans_a, &b_shape, trans_b).map_err(util::to_pyerr)?;
        let depth = if trans_a {
            a_shape[a_shape.len() - 2]
        } else {
            a_shape[a_shape.len() - 1]
        };
        let macs = shape.iter().fold(depth, |acc, &d| acc.saturating_mul(d));
        let a = util::slice("matmul", "a", &a)?;
        let b = util::slice("matmul", "b", &b)?;
        // the output is uninitialized (NumPy allocates it with `malloc` and asks
        // for huge pages, which the GEMM's scattered tile writes need; a zeroed
        // array comes from `calloc` on 4 KiB pages, and the TLB misses cost ~15%)
        let out = util::uninit(py, "matmul", &shape)?;
        util::fill_on(py, out, one_thread(macs), move |c| {
            matmul_batched(a, &a_shape, trans_a, b, &b_shape, trans_b, c)
        })
    })
}

/// `(rows, in_f, out_f)` of a linear layer: x `(..., in)`, w `(out, in)`.
fn linear_dims(op: &str, x: &[usize], w: &[usize]) -> PyResult<(usize, usize, usize)> {
    match (x.split_last(), w) {
        (Some((&in_f, lead)), &[out_f, w_in]) if w_in == in_f => {
            Ok((lead.iter().product(), in_f, out_f))
        }
        _ => Err(PyValueError::new_err(format!(
            "{op}: x {x:?} must be (..., in) and w {w:?} (out, in) with the same in"
        ))),
    }
}

/// `y = x @ w.T + b`: x `(..., in)`, w `(out, in)`, b `(out,)` or None ->
/// y `(..., out)`.
#[pyfunction]
#[pyo3(signature = (x, w, b=None))]
fn linear_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    w: PyReadonlyArrayDyn<'py, f32>,
    b: Option<PyReadonlyArrayDyn<'py, f32>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let op = "linear_forward";
    util::guard(op, || {
        let x_shape = util::shape(&x);
        let (rows, in_f, out_f) = linear_dims(op, &x_shape, &util::shape(&w))?;
        if let Some(b) = &b {
            let b_shape = util::shape(b);
            if b_shape != [out_f] {
                return Err(PyValueError::new_err(format!(
                    "{op}: b {b_shape:?} must be ({out_f},) for w {:?}",
                    util::shape(&w)
                )));
            }
        }
        let x = util::slice(op, "x", &x)?;
        let w = util::slice(op, "w", &w)?;
        let b = b.as_ref().map(|b| util::slice(op, "b", b)).transpose()?;
        let mut shape = x_shape;
        *shape.last_mut().expect("x is at least 1-D") = out_f;
        let serial = one_thread(rows.saturating_mul(in_f).saturating_mul(out_f));
        util::fill_on(py, util::uninit(py, op, &shape)?, serial, move |y| {
            linear_fwd(x, w, b, y, rows, in_f, out_f)
        })
    })
}

type Grads<'py> = (
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<f32>>,
    Option<Bound<'py, PyArrayDyn<f32>>>,
);

/// Gradients of `linear_forward`: dy `(..., out)`, x `(..., in)`, w
/// `(out, in)` -> `(dx (..., in), dw (out, in), db (out,) or None)`.
#[pyfunction]
#[pyo3(signature = (dy, x, w, has_bias=true))]
fn linear_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
    w: PyReadonlyArrayDyn<'py, f32>,
    has_bias: bool,
) -> PyResult<Grads<'py>> {
    let op = "linear_backward";
    util::guard(op, || {
        let (x_shape, dy_shape, w_shape) = (util::shape(&x), util::shape(&dy), util::shape(&w));
        let (rows, in_f, out_f) = linear_dims(op, &x_shape, &w_shape)?;
        if dy_shape.split_last() != Some((&out_f, &x_shape[..x_shape.len() - 1])) {
            return Err(PyValueError::new_err(format!(
                "{op}: dy {dy_shape:?} must be x's leading dims {:?} then out = {out_f}",
                &x_shape[..x_shape.len() - 1]
            )));
        }
        let dy = util::slice(op, "dy", &dy)?;
        let x = util::slice(op, "x", &x)?;
        let w = util::slice(op, "w", &w)?;
        let dx = util::uninit(py, op, &x_shape)?;
        let dw = util::uninit(py, op, &w_shape)?;
        let db = has_bias
            .then(|| util::zeros(py, op, &[out_f]))
            .transpose()?;
        {
            let (mut dx_rw, mut dw_rw) = (dx.readwrite(), dw.readwrite());
            let mut db_rw = db.as_ref().map(|d| d.readwrite());
            let dx_s = dx_rw.as_slice_mut().expect("fresh arrays are contiguous");
            let dw_s = dw_rw.as_slice_mut().expect("fresh arrays are contiguous");
            let db_s = db_rw
                .as_mut()
                .map(|d| d.as_slice_mut().expect("fresh arrays are contiguous"));
            util::run(py, move || {
                linear_bwd(dy, x, w, rows, in_f, out_f, dx_s, dw_s, db_s, false)
            })?;
        }
        Ok((dx, dw, db))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(linear_forward, m)?)?;
    m.add_function(wrap_pyfunction!(linear_backward, m)?)?;
    Ok(())
}
