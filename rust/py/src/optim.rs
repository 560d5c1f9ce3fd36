//! Binding of the fused AdamW step, in place on `param, m, v`; the kernel
//! checks the lengths, the step and the betas.

use ferroformer_kernels::optim as k;
use numpy::PyReadwriteArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util::{self, In};

type InOut<'py> = PyReadwriteArrayDyn<'py, f32>;

/// PyTorch AdamW; `param, grad, m, v` of one shape, `step >= 1`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_step(
    py: Python<'_>,
    mut param: InOut<'_>,
    grad: In<'_>,
    mut m: InOut<'_>,
    mut v: InOut<'_>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i64,
) -> PyResult<()> {
    const OP: &str = "adamw_step";
    util::guard(OP, || {
        // the kernel takes the step unsigned: a negative one would wrap
        let step = u64::try_from(step)
            .map_err(|_| PyValueError::new_err(format!("{OP}: step must be >= 1, got {step}")))?;
        let gs = util::slice(OP, "grad", &grad)?;
        let ps = util::slice_mut(OP, "param", &mut param)?;
        let ms = util::slice_mut(OP, "m", &mut m)?;
        let vs = util::slice_mut(OP, "v", &mut v)?;
        util::run_on(py, util::small(gs.len()), || {
            k::adamw_step(ps, gs, ms, vs, lr, beta1, beta2, eps, weight_decay, step)
        })
    })
}
