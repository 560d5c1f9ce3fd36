//! Bindings of the norm kernels: LayerNorm and RMSNorm over the last axis,
//! forward (returning the statistics the backward needs) and backward.
//! Every one reads `(rows, C)` from x; the kernel checks that the other
//! arrays hold `rows * C`, `C` or `rows` values.

use ferroformer_kernels::norm as k;
use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

use crate::shapes;
use crate::util::{self, Array, In};

/// The dims of `x (..., C)`: `(rows, C, x.shape, x.shape[:-1])`.
fn dims<'a>(op: &str, x: &'a In<'_>) -> PyResult<(usize, usize, &'a [usize], &'a [usize])> {
    let shape = x.shape();
    let (rows, cols) = shapes::rows_cols(op, "x", shape)?;
    Ok((rows, cols, shape, &shape[..shape.len() - 1]))
}

type Two<'py> = (Array<'py>, Array<'py>);
type Three<'py> = (Array<'py>, Array<'py>, Array<'py>);

util::binding! {
    /// `(y, mean, rstd)`: `x (..., C)`, `gamma, beta (C,)`, `mean, rstd x.shape[:-1]`.
    fn layernorm_forward<'py>(
        py, x: In<'py>, gamma: In<'py>, beta: In<'py>, eps: f32,
    ) -> Three<'py> {
        let (rows, cols, shape, lead) = dims(OP, &x)?;
        let [xs, gs, bs] = util::slices(OP, [("x", &x), ("gamma", &gamma), ("beta", &beta)])?;
        let [y, mean, rstd] = util::outputs(py, OP, [shape, lead, lead])?;
        util::run_into(
            py,
            util::small(rows * cols),
            [&y, &mean, &rstd],
            |[ys, ms, rs]| k::layernorm_forward(xs, gs, bs, eps, ys, ms, rs, rows, cols),
        )?;
        Ok((y, mean, rstd))
    }

    /// `(dx, dgamma, dbeta)` from `dy, x (..., C)`, `gamma (C,)`,
    /// `mean, rstd x.shape[:-1]`.
    fn layernorm_backward<'py>(
        py, dy: In<'py>, x: In<'py>, gamma: In<'py>, mean: In<'py>, rstd: In<'py>,
    ) -> Three<'py> {
        let (rows, cols, shape, _) = dims(OP, &x)?;
        let [dys, xs, gs, ms, rs] = util::slices(
            OP,
            [
                ("dy", &dy),
                ("x", &x),
                ("gamma", &gamma),
                ("mean", &mean),
                ("rstd", &rstd),
            ],
        )?;
        let [dx, dg, db] = util::outputs(py, OP, [shape, &[cols], &[cols]])?;
        util::run_into(
            py,
            util::small(rows * cols),
            [&dx, &dg, &db],
            |[dxs, dgs, dbs]| k::layernorm_backward(dys, xs, gs, ms, rs, dxs, dgs, dbs, rows, cols),
        )?;
        Ok((dx, dg, db))
    }

    /// `(y, rstd)`: `x (..., C)`, `gamma (C,)`, `rstd x.shape[:-1]`.
    fn rmsnorm_forward<'py>(py, x: In<'py>, gamma: In<'py>, eps: f32) -> Two<'py> {
        let (rows, cols, shape, lead) = dims(OP, &x)?;
        let [xs, gs] = util::slices(OP, [("x", &x), ("gamma", &gamma)])?;
        let [y, rstd] = util::outputs(py, OP, [shape, lead])?;
        util::run_into(py, util::small(rows * cols), [&y, &rstd], |[ys, rs]| {
            k::rmsnorm_forward(xs, gs, eps, ys, rs, rows, cols)
        })?;
        Ok((y, rstd))
    }

    /// `(dx, dgamma)` from `dy, x (..., C)`, `gamma (C,)`, `rstd x.shape[:-1]`.
    fn rmsnorm_backward<'py>(
        py, dy: In<'py>, x: In<'py>, gamma: In<'py>, rstd: In<'py>,
    ) -> Two<'py> {
        let (rows, cols, shape, _) = dims(OP, &x)?;
        let [dys, xs, gs, rs] = util::slices(
            OP,
            [("dy", &dy), ("x", &x), ("gamma", &gamma), ("rstd", &rstd)],
        )?;
        let [dx, dg] = util::outputs(py, OP, [shape, &[cols]])?;
        util::run_into(py, util::small(rows * cols), [&dx, &dg], |[dxs, dgs]| {
            k::rmsnorm_backward(dys, xs, gs, rs, dxs, dgs, rows, cols)
        })?;
        Ok((dx, dg))
    }
}
