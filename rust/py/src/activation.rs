//! Bindings of the element-wise activations: GELU, ReLU, SiLU, SwiGLU,
//! forward and backward, on arrays of any shape. Each output takes the
//! first input's shape; the kernel checks that the others are as long.

use ferroformer_kernels::activation::{self as k, Gelu};
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::util::{self, Array, In};

/// `f(inputs, y)` into a fresh `y` shaped like the first input.
fn apply<'py, const N: usize>(
    py: Python<'py>,
    op: &str,
    inputs: [(&str, &In<'py>); N],
    f: impl FnOnce([&[f32]; N], &mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Array<'py>> {
    let xs = util::slices(op, inputs)?;
    util::fill(py, util::uninit(py, op, inputs[0].1.shape())?, |y| f(xs, y))
}

/// One binding per kernel `kernel(inputs.., out)` with no other argument:
/// `name(inputs..) = kernel;`, the Rust names being the Python ones.
macro_rules! elementwise {
    ($($(#[doc = $doc:literal])* $name:ident($($arg:ident),+) = $kernel:path;)+) => {
        util::binding! {$(
            $(#[doc = $doc])*
            fn $name<'py>(py, $($arg: In<'py>),+) -> Array<'py> {
                apply(py, OP, [$((stringify!($arg), &$arg)),+], |[$($arg),+], y| {
                    $kernel($($arg,)+ y)
                })
            }
        )+}
    };
}

elementwise! {
    relu_forward(x) = k::relu_forward;
    /// The gradient is 0 where `x <= 0`.
    relu_backward(dy, x) = k::relu_backward;
    silu_forward(x) = k::silu_forward;
    silu_backward(dy, x) = k::silu_backward;
    /// `silu(gate) * up`.
    swiglu_forward(gate, up) = k::swiglu_forward;
}

util::binding! {
    /// `approximate` is `"tanh"` or `"none"` (exact erf).
    fn gelu_forward<'py>(py, x: In<'py>, approximate: &str) -> Array<'py> {
        let g = Gelu::parse(OP, approximate).map_err(util::to_pyerr)?;
        apply(py, OP, [("x", &x)], |[x], y| k::gelu_forward(x, y, g))
    }

    fn gelu_backward<'py>(py, dy: In<'py>, x: In<'py>, approximate: &str) -> Array<'py> {
        let g = Gelu::parse(OP, approximate).map_err(util::to_pyerr)?;
        apply(py, OP, [("dy", &dy), ("x", &x)], |[dy, x], dx| {
            k::gelu_backward(dy, x, dx, g)
        })
    }

    /// `(dgate, dup)`.
    fn swiglu_backward<'py>(
        py, dh: In<'py>, gate: In<'py>, up: In<'py>,
    ) -> (Array<'py>, Array<'py>) {
        let [dhs, gs, us] = util::slices(OP, [("dh", &dh), ("gate", &gate), ("up", &up)])?;
        let [dg, du] = util::outputs(py, OP, [gate.shape(), gate.shape()])?;
        util::run_into(py, util::small(dhs.len()), [&dg, &du], |[dgs, dus]| {
            k::swiglu_backward(dhs, gs, us, dgs, dus)
        })?;
        Ok((dg, du))
    }
}
