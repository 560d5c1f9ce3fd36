//! Bindings of the element-wise activations: GELU, ReLU, SiLU, SwiGLU,
//! forward and backward, on arrays of any shape.

use ferroformer_kernels::activation::{self as k, Gelu};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::softmax::same_shape;
use crate::util;

type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

fn unary<'py>(
    py: Python<'py>,
    op: &str,
    x: &PyReadonlyArrayDyn<'py, f32>,
    f: impl FnOnce(&[f32], &mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Array<'py>> {
    util::guard(op, || {
        let xs = util::slice(op, "x", x)?;
        util::fill(py, util::uninit(py, op, x.shape())?, |y| f(xs, y))
    })
}

fn binary<'py>(
    py: Python<'py>,
    op: &str,
    (an, a): (&str, &PyReadonlyArrayDyn<'py, f32>),
    (bn, b): (&str, &PyReadonlyArrayDyn<'py, f32>),
    f: impl FnOnce(&[f32], &[f32], &mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Array<'py>> {
    util::guard(op, || {
        same_shape(op, (an, a.shape()), (bn, b.shape()))?;
        let (sa, sb) = (util::slice(op, an, a)?, util::slice(op, bn, b)?);
        util::fill(py, util::uninit(py, op, a.shape())?, |y| f(sa, sb, y))
    })
}

/// `approximate` is `"tanh"` or `"none"` (exact erf).
#[pyfunction]
fn gelu_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    approximate: &str,
) -> PyResult<Array<'py>> {
    let g = Gelu::parse("gelu_forward", approximate).map_err(util::to_pyerr)?;
    unary(py, "gelu_forward", &x, |x, y| k::gelu_forward(x, y, g))
}

#[pyfunction]
fn gelu_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
    approximate: &str,
) -> PyResult<Array<'py>> {
    let g = Gelu::parse("gelu_backward", approximate).map_err(util::to_pyerr)?;
    binary(py, "gelu_backward", ("dy", &dy), ("x", &x), |dy, x, dx| {
        k::gelu_backward(dy, x, dx, g)
    })
}

#[pyfunction]
fn relu_forward<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<Array<'py>> {
    unary(py, "relu_forward", &x, k::relu_forward)
}

/// The gradient is 0 where `x <= 0`.
#[pyfunction]
fn relu_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Array<'py>> {
    binary(
        py,
        "relu_backward",
        ("dy", &dy),
        ("x", &x),
        k::relu_backward,
    )
}

#[pyfunction]
fn silu_forward<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<Array<'py>> {
    unary(py, "silu_forward", &x, k::silu_forward)
}

#[pyfunction]
fn silu_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Array<'py>> {
    binary(
        py,
        "silu_backward",
        ("dy", &dy),
        ("x", &x),
        k::silu_backward,
    )
}

/// `silu(gate) * up`.
#[pyfunction]
fn swiglu_forward<'py>(
    py: Python<'py>,
    gate: PyReadonlyArrayDyn<'py, f32>,
    up: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Array<'py>> {
    binary(
        py,
        "swiglu_forward",
        ("gate", &gate),
        ("up", &up),
        k::swiglu_forward,
    )
}

/// `(dgate, dup)`.
#[pyfunction]
fn swiglu_backward<'py>(
    py: Python<'py>,
    dh: PyReadonlyArrayDyn<'py, f32>,
    gate: PyReadonlyArrayDyn<'py, f32>,
    up: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(Array<'py>, Array<'py>)> {
    const OP: &str = "swiglu_backward";
    util::guard(OP, || {
        let shape = util::shape(&gate);
        same_shape(OP, ("dh", dh.shape()), ("gate", &shape))?;
        same_shape(OP, ("up", up.shape()), ("gate", &shape))?;
        let (dhs, gs, us) = (
            util::slice(OP, "dh", &dh)?,
            util::slice(OP, "gate", &gate)?,
            util::slice(OP, "up", &up)?,
        );
        let (dg, du) = (util::uninit(py, OP, &shape)?, util::uninit(py, OP, &shape)?);
        {
            let (mut dgw, mut duw) = (dg.readwrite(), du.readwrite());
            let dgs = dgw.as_slice_mut().expect("fresh arrays are contiguous");
            let dus = duw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, dhs.len(), || k::swiglu_backward(dhs, gs, us, dgs, dus))?;
        }
        Ok((dg, du))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gelu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(gelu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(relu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(relu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(silu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(silu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_backward, m)?)?;
    Ok(())
}
