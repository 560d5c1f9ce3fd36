//! Bindings of the softmax kernels: `softmax_forward(x, scale, causal)` and
//! `softmax_backward(dy, y, scale)`, softmax over the last axis.

use ferroformer_kernels::softmax as k;
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

/// `(rows, cols)` of an array seen as rows over its last axis; the row
/// families (softmax, norms, rope) share it.
pub(crate) fn rows_cols(op: &str, name: &str, shape: &[usize]) -> PyResult<(usize, usize)> {
    match shape.split_last() {
        Some((&cols, lead)) => Ok((lead.iter().product(), cols)),
        None => Err(PyValueError::new_err(format!(
            "{op}: {name} must have at least one dimension, got a 0-d array"
        ))),
    }
}

/// Raises ValueError unless two arrays have the same shape.
pub(crate) fn same_shape(op: &str, a: (&str, &[usize]), b: (&str, &[usize])) -> PyResult<()> {
    if a.1 == b.1 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{op}: {} has shape {:?} but {} has shape {:?}",
            a.0, a.1, b.0, b.1
        )))
    }
}

/// `y = softmax(scale * x)` over the last axis; with `causal`, the last two
/// dims `(Tq, Tk)` are masked bottom-right aligned.
#[pyfunction]
fn softmax_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: f32,
    causal: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const OP: &str = "softmax_forward";
    util::guard(OP, || {
        let shape = util::shape(&x);
        let (rows, cols) = rows_cols(OP, "x", &shape)?;
        let tq = if causal {
            if shape.len() < 2 {
                return Err(PyValueError::new_err(format!(
                    "{OP}: causal needs x of at least 2 dims (..., Tq, Tk), got shape {shape:?}"
                )));
            }
            Some(shape[shape.len() - 2])
        } else {
            None
        };
        let xs = util::slice(OP, "x", &x)?;
        let y = util::uninit(py, OP, &shape)?;
        if xs.is_empty() {
            return Ok(y); // nothing to write (and a causal (..., 0, Tk) has no rows to mask)
        }
        util::fill(py, y, |y| k::softmax_forward(xs, y, rows, cols, scale, tq))
    })
}

/// `dx = scale * y * (dy - sum(dy * y, last axis))`.
#[pyfunction]
fn softmax_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    y: PyReadonlyArrayDyn<'py, f32>,
    scale: f32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const OP: &str = "softmax_backward";
    util::guard(OP, || {
        let shape = util::shape(&dy);
        same_shape(OP, ("dy", &shape), ("y", y.shape()))?;
        let (rows, cols) = rows_cols(OP, "dy", &shape)?;
        let (dys, ys) = (util::slice(OP, "dy", &dy)?, util::slice(OP, "y", &y)?);
        util::fill(py, util::uninit(py, OP, &shape)?, |dx| {
            k::softmax_backward(dys, ys, dx, rows, cols, scale)
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(softmax_forward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_backward, m)?)?;
    Ok(())
}
