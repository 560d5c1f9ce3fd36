//! Bindings of the matmul kernels: `matmul`, `linear_forward`,
//! `linear_backward`. Inputs arrive C-contiguous float32; the bindings read
//! the sizes, and the kernels check every array against them.

use ferroformer_kernels::matmul::{
    linear_backward as linear_bwd, linear_forward as linear_fwd, matmul_batched, matmul_shape,
    one_thread,
};
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::shapes;
use crate::util::{self, Array, In};

/// `(rows, in_f, out_f)` of a linear layer: x `(..., in)`, w `(out, in)`.
fn linear_dims(op: &str, x: &In<'_>, w: &In<'_>) -> PyResult<(usize, usize, usize)> {
    let (rows, in_f) = shapes::rows_cols(op, "x", x.shape())?;
    let [out_f, _] = shapes::exact(op, "w", "(out, in)", w.shape())?;
    Ok((rows, in_f, out_f))
}

/// Whether a product of `rows x in_f x out_f` runs on the calling thread.
fn serial((rows, in_f, out_f): (usize, usize, usize)) -> bool {
    one_thread(rows.saturating_mul(in_f).saturating_mul(out_f))
}

type Grads<'py> = (Array<'py>, Array<'py>, Option<Array<'py>>);

util::binding! {
    /// `op(a) @ op(b)` over broadcast leading dims; `op` swaps the last two
    /// axes when its flag is set. a `(..., m, k)` or `(..., k, m)`, b
    /// `(..., k, n)` or `(..., n, k)` -> `(batch..., m, n)`.
    #[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
    fn matmul<'py>(py, a: In<'py>, b: In<'py>, trans_a: bool, trans_b: bool) -> Array<'py> {
        let (a_shape, b_shape) = (a.shape(), b.shape());
        let shape = matmul_shape(a_shape, trans_a, b_shape, trans_b).map_err(util::to_pyerr)?;
        // matmul_shape has checked that a is at least 2-D
        let depth = a_shape[a_shape.len() - if trans_a { 2 } else { 1 }];
        let macs = shape.iter().fold(depth, |acc, &d| acc.saturating_mul(d));
        let [a_s, b_s] = util::slices(OP, [("a", &a), ("b", &b)])?;
        // the output is uninitialized (NumPy allocates it with `malloc` and asks
        // for huge pages, which the GEMM's scattered tile writes need; a zeroed
        // array comes from `calloc` on 4 KiB pages, and the TLB misses cost ~15%)
        util::fill_on(py, util::uninit(py, OP, &shape)?, one_thread(macs), |c| {
            matmul_batched(a_s, a_shape, trans_a, b_s, b_shape, trans_b, c)
        })
    }

    /// `y = x @ w.T + b`: x `(..., in)`, w `(out, in)`, b `(out,)` or None ->
    /// y `(..., out)`.
    #[pyo3(signature = (x, w, b=None))]
    fn linear_forward<'py>(py, x: In<'py>, w: In<'py>, b: Option<In<'py>>) -> Array<'py> {
        let dims @ (rows, in_f, out_f) = linear_dims(OP, &x, &w)?;
        let [x_s, w_s] = util::slices(OP, [("x", &x), ("w", &w)])?;
        let b_s = util::slice_opt(OP, "b", &b)?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x is at least 1-D") = out_f;
        util::fill_on(py, util::uninit(py, OP, &shape)?, serial(dims), |y| {
            linear_fwd(x_s, w_s, b_s, y, rows, in_f, out_f)
        })
    }

    /// Gradients of `linear_forward`: dy `(..., out)`, x `(..., in)`, w
    /// `(out, in)` -> `(dx (..., in), dw (out, in), db (out,) or None)`.
    #[pyo3(signature = (dy, x, w, has_bias=true))]
    fn linear_backward<'py>(
        py, dy: In<'py>, x: In<'py>, w: In<'py>, has_bias: bool,
    ) -> Grads<'py> {
        let (rows, in_f, out_f) = linear_dims(OP, &x, &w)?;
        let [dy_s, x_s, w_s] = util::slices(OP, [("dy", &dy), ("x", &x), ("w", &w)])?;
        let [dx, dw] = util::outputs(py, OP, [x.shape(), w.shape()])?;
        let grads = |dx: &mut [f32], dw: &mut [f32], db: Option<&mut [f32]>| {
            linear_bwd(dy_s, x_s, w_s, rows, in_f, out_f, dx, dw, db, false)
        };
        let db = has_bias
            .then(|| util::zeros(py, OP, &[out_f]))
            .transpose()?;
        match &db {
            Some(db) => util::run_into(py, false, [&dx, &dw, db], |[dx, dw, db]| {
                grads(dx, dw, Some(db))
            }),
            None => util::run_into(py, false, [&dx, &dw], |[dx, dw]| grads(dx, dw, None)),
        }?;
        Ok((dx, dw, db))
    }
}
