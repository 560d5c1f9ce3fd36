//! Bindings of the softmax kernels: `softmax_forward(x, scale, causal)` and
//! `softmax_backward(dy, y, scale)`, softmax over the last axis.

use ferroformer_kernels::softmax as k;
use numpy::PyUntypedArrayMethods;

use crate::shapes;
use crate::util::{self, Array, In};

util::binding! {
    /// `y = softmax(scale * x)` over the last axis; with `causal`, the last two
    /// dims `(Tq, Tk)` are masked bottom-right aligned.
    fn softmax_forward<'py>(py, x: In<'py>, scale: f32, causal: bool) -> Array<'py> {
        let shape = x.shape();
        let (rows, cols) = shapes::rows_cols(OP, "x", shape)?;
        let tq = if causal {
            let [tq, _] = shapes::last(OP, "x", "(..., Tq, Tk) with causal", shape)?;
            Some(tq)
        } else {
            None
        };
        let xs = util::slice(OP, "x", &x)?;
        let y = util::uninit(py, OP, shape)?;
        if xs.is_empty() {
            return Ok(y); // nothing to write (and a causal (..., 0, Tk) has no rows to mask)
        }
        util::fill(py, y, |y| k::softmax_forward(xs, y, rows, cols, scale, tq))
    }

    /// `dx = scale * y * (dy - sum(dy * y, last axis))`.
    fn softmax_backward<'py>(py, dy: In<'py>, y: In<'py>, scale: f32) -> Array<'py> {
        let (rows, cols) = shapes::rows_cols(OP, "dy", dy.shape())?;
        let [dys, ys] = util::slices(OP, [("dy", &dy), ("y", &y)])?;
        util::fill(py, util::uninit(py, OP, dy.shape())?, |dx| {
            k::softmax_backward(dys, ys, dx, rows, cols, scale)
        })
    }
}
