//! Bindings of rotary position embedding: `x (..., T, D)`, `cos, sin
//! (T, D/2)`, adjacent pairs rotated.

use ferroformer_kernels::rope as k;
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

type Kernel =
    fn(&[f32], &[f32], &[f32], &mut [f32], usize, usize, usize) -> ferroformer_kernels::Result<()>;

fn rotate<'py>(
    py: Python<'py>,
    op: &str,
    x: PyReadonlyArrayDyn<'py, f32>,
    cos: PyReadonlyArrayDyn<'py, f32>,
    sin: PyReadonlyArrayDyn<'py, f32>,
    kernel: Kernel,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    util::guard(op, || {
        let shape = util::shape(&x);
        let (t, d) = match shape.as_slice() {
            [.., t, d] if d % 2 == 0 => (*t, *d),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "{op}: x must be (..., T, D) with D even, got {shape:?}"
                )))
            }
        };
        for (name, a) in [("cos", &cos), ("sin", &sin)] {
            if a.shape() != [t, d / 2] {
                return Err(PyValueError::new_err(format!(
                    "{op}: {name} must be (T, D/2) = ({t}, {}), got {:?}",
                    d / 2,
                    a.shape()
                )));
            }
        }
        let rows = shape[..shape.len() - 1].iter().product();
        let xs = util::slice(op, "x", &x)?;
        let (cs, ss) = (util::slice(op, "cos", &cos)?, util::slice(op, "sin", &sin)?);
        if rows == 0 {
            return util::zeros(py, op, &shape);
        }
        util::fill(py, util::uninit(py, op, &shape)?, |y| {
            kernel(xs, cs, ss, y, rows, t, d)
        })
    })
}

/// `(x0, x1) -> (x0 c - x1 s, x0 s + x1 c)` per adjacent pair.
#[pyfunction]
fn rope_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    cos: PyReadonlyArrayDyn<'py, f32>,
    sin: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    rotate(py, "rope_forward", x, cos, sin, k::rope_forward)
}

/// The inverse rotation of `dy`.
#[pyfunction]
fn rope_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    cos: PyReadonlyArrayDyn<'py, f32>,
    sin: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    rotate(py, "rope_backward", dy, cos, sin, k::rope_backward)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rope_forward, m)?)?;
    m.add_function(wrap_pyfunction!(rope_backward, m)?)?;
    Ok(())
}
