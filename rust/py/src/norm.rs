//! Bindings of the norm kernels: LayerNorm and RMSNorm over the last axis,
//! forward (returning the statistics the backward needs) and backward.

use ferroformer_kernels::norm as k;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::softmax::{rows_cols, same_shape};
use crate::util;

type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

/// `(y, mean, rstd)`: `x (..., C)`, `gamma, beta (C,)`, `mean, rstd x.shape[:-1]`.
#[pyfunction]
fn layernorm_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    gamma: PyReadonlyArrayDyn<'py, f32>,
    beta: PyReadonlyArrayDyn<'py, f32>,
    eps: f32,
) -> PyResult<(Array<'py>, Array<'py>, Array<'py>)> {
    const OP: &str = "layernorm_forward";
    util::guard(OP, || {
        let shape = util::shape(&x);
        let (rows, cols) = rows_cols(OP, "x", &shape)?;
        same_shape(OP, ("gamma", gamma.shape()), ("(C,)", &[cols]))?;
        same_shape(OP, ("beta", beta.shape()), ("(C,)", &[cols]))?;
        let xs = util::slice(OP, "x", &x)?;
        let (gs, bs) = (
            util::slice(OP, "gamma", &gamma)?,
            util::slice(OP, "beta", &beta)?,
        );
        let (y, mean, rstd) = (
            util::uninit(py, OP, &shape)?,
            util::uninit(py, OP, &shape[..shape.len() - 1])?,
            util::uninit(py, OP, &shape[..shape.len() - 1])?,
        );
        {
            let (mut yw, mut mw, mut rw) = (y.readwrite(), mean.readwrite(), rstd.readwrite());
            let ys = yw.as_slice_mut().expect("fresh arrays are contiguous");
            let ms = mw.as_slice_mut().expect("fresh arrays are contiguous");
            let rs = rw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, rows * cols, || {
                k::layernorm_forward(xs, gs, bs, eps, ys, ms, rs, rows, cols)
            })?;
        }
        Ok((y, mean, rstd))
    })
}

/// `(dx, dgamma, dbeta)` from `dy, x (..., C)`, `gamma (C,)`,
/// `mean, rstd x.shape[:-1]`.
#[pyfunction]
fn layernorm_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
    gamma: PyReadonlyArrayDyn<'py, f32>,
    mean: PyReadonlyArrayDyn<'py, f32>,
    rstd: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(Array<'py>, Array<'py>, Array<'py>)> {
    const OP: &str = "layernorm_backward";
    util::guard(OP, || {
        let shape = util::shape(&x);
        same_shape(OP, ("dy", dy.shape()), ("x", &shape))?;
        let (rows, cols) = rows_cols(OP, "x", &shape)?;
        same_shape(OP, ("gamma", gamma.shape()), ("(C,)", &[cols]))?;
        row_stats(OP, "mean", mean.shape(), &shape)?;
        row_stats(OP, "rstd", rstd.shape(), &shape)?;
        let (dys, xs) = (util::slice(OP, "dy", &dy)?, util::slice(OP, "x", &x)?);
        let gs = util::slice(OP, "gamma", &gamma)?;
        let (ms, rs) = (
            util::slice(OP, "mean", &mean)?,
            util::slice(OP, "rstd", &rstd)?,
        );
        let (dx, dg, db) = (
            util::uninit(py, OP, &shape)?,
            util::uninit(py, OP, &[cols])?,
            util::uninit(py, OP, &[cols])?,
        );
        {
            let (mut dxw, mut dgw, mut dbw) = (dx.readwrite(), dg.readwrite(), db.readwrite());
            let dxs = dxw.as_slice_mut().expect("fresh arrays are contiguous");
            let dgs = dgw.as_slice_mut().expect("fresh arrays are contiguous");
            let dbs = dbw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, rows * cols, || {
                k::layernorm_backward(dys, xs, gs, ms, rs, dxs, dgs, dbs, rows, cols)
            })?;
        }
        Ok((dx, dg, db))
    })
}

/// `(y, rstd)`: `x (..., C)`, `gamma (C,)`, `rstd x.shape[:-1]`.
#[pyfunction]
fn rmsnorm_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    gamma: PyReadonlyArrayDyn<'py, f32>,
    eps: f32,
) -> PyResult<(Array<'py>, Array<'py>)> {
    const OP: &str = "rmsnorm_forward";
    util::guard(OP, || {
        let shape = util::shape(&x);
        let (rows, cols) = rows_cols(OP, "x", &shape)?;
        same_shape(OP, ("gamma", gamma.shape()), ("(C,)", &[cols]))?;
        let (xs, gs) = (util::slice(OP, "x", &x)?, util::slice(OP, "gamma", &gamma)?);
        let (y, rstd) = (
            util::uninit(py, OP, &shape)?,
            util::uninit(py, OP, &shape[..shape.len() - 1])?,
        );
        {
            let (mut yw, mut rw) = (y.readwrite(), rstd.readwrite());
            let ys = yw.as_slice_mut().expect("fresh arrays are contiguous");
            let rs = rw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, rows * cols, || {
                k::rmsnorm_forward(xs, gs, eps, ys, rs, rows, cols)
            })?;
        }
        Ok((y, rstd))
    })
}

/// `(dx, dgamma)` from `dy, x (..., C)`, `gamma (C,)`, `rstd x.shape[:-1]`.
#[pyfunction]
fn rmsnorm_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
    gamma: PyReadonlyArrayDyn<'py, f32>,
    rstd: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(Array<'py>, Array<'py>)> {
    const OP: &str = "rmsnorm_backward";
    util::guard(OP, || {
        let shape = util::shape(&x);
        same_shape(OP, ("dy", dy.shape()), ("x", &shape))?;
        let (rows, cols) = rows_cols(OP, "x", &shape)?;
        same_shape(OP, ("gamma", gamma.shape()), ("(C,)", &[cols]))?;
        row_stats(OP, "rstd", rstd.shape(), &shape)?;
        let (dys, xs) = (util::slice(OP, "dy", &dy)?, util::slice(OP, "x", &x)?);
        let (gs, rs) = (
            util::slice(OP, "gamma", &gamma)?,
            util::slice(OP, "rstd", &rstd)?,
        );
        let (dx, dg) = (
            util::uninit(py, OP, &shape)?,
            util::uninit(py, OP, &[cols])?,
        );
        {
            let (mut dxw, mut dgw) = (dx.readwrite(), dg.readwrite());
            let dxs = dxw.as_slice_mut().expect("fresh arrays are contiguous");
            let dgs = dgw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, rows * cols, || {
                k::rmsnorm_backward(dys, xs, gs, rs, dxs, dgs, rows, cols)
            })?;
        }
        Ok((dx, dg))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(layernorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layernorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(rmsnorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(rmsnorm_backward, m)?)?;
    Ok(())
}

/// Raises ValueError unless a per-row statistic has shape `x.shape[:-1]`.
fn row_stats(op: &str, name: &str, stats: &[usize], x_shape: &[usize]) -> PyResult<()> {
    same_shape(
        op,
        (name, stats),
        ("x.shape[:-1]", &x_shape[..x_shape.len() - 1]),
    )
}
