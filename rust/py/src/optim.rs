//! Binding of the fused AdamW step, in place on `param, m, v`.

use ferroformer_kernels::optim as k;
use numpy::{PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

fn slice_mut<'a>(
    op: &str,
    name: &str,
    a: &'a mut PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<&'a mut [f32]> {
    a.as_slice_mut().map_err(|_| {
        PyValueError::new_err(format!(
            "{op}: {name} must be a C-contiguous writable float32 array"
        ))
    })
}

/// PyTorch AdamW; `param, grad, m, v` of one shape, `step >= 1`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn adamw_step(
    py: Python<'_>,
    mut param: PyReadwriteArrayDyn<'_, f32>,
    grad: PyReadonlyArrayDyn<'_, f32>,
    mut m: PyReadwriteArrayDyn<'_, f32>,
    mut v: PyReadwriteArrayDyn<'_, f32>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i64,
) -> PyResult<()> {
    const OP: &str = "adamw_step";
    util::guard(OP, || {
        let shape = util::shape(&param);
        for (name, s) in [("grad", grad.shape()), ("m", m.shape()), ("v", v.shape())] {
            if s != shape.as_slice() {
                return Err(PyValueError::new_err(format!(
                    "{OP}: {name} has shape {s:?} but param has shape {shape:?}"
                )));
            }
        }
        if step < 1 {
            return Err(PyValueError::new_err(format!(
                "{OP}: step must be >= 1, got {step}"
            )));
        }
        let gs = util::slice(OP, "grad", &grad)?;
        let ps = slice_mut(OP, "param", &mut param)?;
        let ms = slice_mut(OP, "m", &mut m)?;
        let vs = slice_mut(OP, "v", &mut v)?;
        util::run_sized(py, gs.len(), || {
            k::adamw_step(
                ps,
                gs,
                ms,
                vs,
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                step as u64,
            )
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adamw_step, m)?)?;
    Ok(())
}
