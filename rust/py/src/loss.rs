//! Bindings of the cross-entropy kernels: `logits (N, V)`, `targets (N,)`
//! int64, PyTorch semantics for `ignore_index` and `label_smoothing`.

use ferroformer_kernels::loss as k;
use numpy::PyUntypedArrayMethods;

use crate::shapes;
use crate::util::{self, Array, In};

util::binding! {
    /// `(loss, lse)`: mean loss over counted rows (0.0 if none) and the
    /// per-row log-sum-exp `(N,)`.
    fn cross_entropy_forward<'py>(
        py, logits: In<'py>, targets: In<'py, i64>, ignore_index: i64, label_smoothing: f32,
    ) -> (f64, Array<'py>) {
        let [n, v] = shapes::exact(OP, "logits", "(N, V)", logits.shape())?;
        let zs = util::slice(OP, "logits", &logits)?;
        let ts = util::slice(OP, "targets", &targets)?;
        let [lse] = util::outputs(py, OP, [&[n]])?;
        let loss = util::run_into(py, util::small(zs.len()), [&lse], |[ls]| {
            k::cross_entropy_forward(zs, ts, ignore_index, label_smoothing, ls, n, v)
        })?;
        Ok((loss, lse))
    }

    /// `dlogits (N, V)` of `grad * loss`.
    fn cross_entropy_backward<'py>(
        py, logits: In<'py>, targets: In<'py, i64>, lse: In<'py>, ignore_index: i64,
        label_smoothing: f32, grad: f32,
    ) -> Array<'py> {
        let [n, v] = shapes::exact(OP, "logits", "(N, V)", logits.shape())?;
        let [zs, ls] = util::slices(OP, [("logits", &logits), ("lse", &lse)])?;
        let ts = util::slice(OP, "targets", &targets)?;
        util::fill(py, util::uninit(py, OP, &[n, v])?, |dz| {
            k::cross_entropy_backward(zs, ts, ls, ignore_index, label_smoothing, grad, dz, n, v)
        })
    }
}
