//! Bindings of the cross-entropy kernels: `logits (N, V)`, `targets (N,)`
//! int64, PyTorch semantics for `ignore_index` and `label_smoothing`.

use ferroformer_kernels::loss as k;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

fn dims(op: &str, logits: &[usize], targets: &[usize]) -> PyResult<(usize, usize)> {
    match (logits, targets) {
        (&[n, v], &[nt]) if n == nt => Ok((n, v)),
        _ => Err(PyValueError::new_err(format!(
            "{op}: logits must be (N, V) and targets (N,), got {logits:?} and {targets:?}"
        ))),
    }
}

/// `(loss, lse)`: mean loss over counted rows (0.0 if none) and the
/// per-row log-sum-exp `(N,)`.
#[pyfunction]
fn cross_entropy_forward<'py>(
    py: Python<'py>,
    logits: PyReadonlyArrayDyn<'py, f32>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    ignore_index: i64,
    label_smoothing: f32,
) -> PyResult<(f64, Bound<'py, PyArrayDyn<f32>>)> {
    const OP: &str = "cross_entropy_forward";
    util::guard(OP, || {
        let (n, v) = dims(OP, logits.shape(), targets.shape())?;
        let (zs, ts) = (
            util::slice(OP, "logits", &logits)?,
            util::slice(OP, "targets", &targets)?,
        );
        let lse = util::uninit(py, OP, &[n])?;
        let loss = {
            let mut lw = lse.readwrite();
            let ls = lw.as_slice_mut().expect("fresh arrays are contiguous");
            util::run_sized(py, zs.len(), || {
                k::cross_entropy_forward(zs, ts, ignore_index, label_smoothing, ls, n, v)
            })?
        };
        Ok((loss, lse))
    })
}

/// `dlogits (N, V)` of `grad * loss`.
#[pyfunction]
fn cross_entropy_backward<'py>(
    py: Python<'py>,
    logits: PyReadonlyArrayDyn<'py, f32>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    lse: PyReadonlyArrayDyn<'py, f32>,
    ignore_index: i64,
    label_smoothing: f32,
    grad: f32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const OP: &str = "cross_entropy_backward";
    util::guard(OP, || {
        let (n, v) = dims(OP, logits.shape(), targets.shape())?;
        if lse.shape() != [n] {
            return Err(PyValueError::new_err(format!(
                "{OP}: lse must be ({n},), got {:?}",
                lse.shape()
            )));
        }
        let (zs, ts) = (
            util::slice(OP, "logits", &logits)?,
            util::slice(OP, "targets", &targets)?,
        );
        let ls = util::slice(OP, "lse", &lse)?;
        util::fill(py, util::uninit(py, OP, &[n, v])?, |dz| {
            k::cross_entropy_backward(zs, ts, ls, ignore_index, label_smoothing, grad, dz, n, v)
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cross_entropy_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_backward, m)?)?;
    Ok(())
}
