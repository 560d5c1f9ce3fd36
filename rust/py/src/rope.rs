//! Bindings of rotary position embedding: `x (..., T, D)`, `cos, sin
//! (T, D/2)`, adjacent pairs rotated.

use ferroformer_kernels::rope as k;
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::shapes;
use crate::util::{self, Array, In};

type Kernel =
    fn(&[f32], &[f32], &[f32], &mut [f32], usize, usize, usize) -> ferroformer_kernels::Result<()>;

/// `kernel(x, cos, sin)` into a fresh array shaped like `x`.
fn rotate<'py>(
    py: Python<'py>,
    op: &str,
    [x, cos, sin]: [&In<'py>; 3],
    kernel: Kernel,
) -> PyResult<Array<'py>> {
    let shape = x.shape();
    let [t, d] = shapes::last(op, "x", "(..., T, D)", shape)?;
    let rows = shape[..shape.len() - 1].iter().product();
    let [xs, cs, ss] = util::slices(op, [("x", x), ("cos", cos), ("sin", sin)])?;
    if rows == 0 {
        return util::zeros(py, op, shape);
    }
    util::fill(py, util::uninit(py, op, shape)?, |y| {
        kernel(xs, cs, ss, y, rows, t, d)
    })
}

util::binding! {
    /// `(x0, x1) -> (x0 c - x1 s, x0 s + x1 c)` per adjacent pair.
    fn rope_forward<'py>(py, x: In<'py>, cos: In<'py>, sin: In<'py>) -> Array<'py> {
        rotate(py, OP, [&x, &cos, &sin], k::rope_forward)
    }

    /// The inverse rotation of `dy`.
    fn rope_backward<'py>(py, dy: In<'py>, cos: In<'py>, sin: In<'py>) -> Array<'py> {
        rotate(py, OP, [&dy, &cos, &sin], k::rope_backward)
    }
}
