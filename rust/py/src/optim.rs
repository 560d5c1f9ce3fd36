//! Binding of the fused AdamW step, in place on `param, m, v`; the kernel
//! checks the lengths, the step and the betas.

use ferroformer_kernels::optim as k;
use numpy::PyReadwriteArrayDyn;
use pyo3::exceptions::PyValueError;

use crate::util::{self, In};

type InOut<'py> = PyReadwriteArrayDyn<'py, f32>;

util::binding! {
    /// PyTorch AdamW; `param, grad, m, v` of one shape, `step >= 1`.
    #[allow(clippy::too_many_arguments)]
    fn adamw_step<'py>(
        py, mut param: InOut<'py>, grad: In<'py>, mut m: InOut<'py>, mut v: InOut<'py>,
        lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: i64,
    ) -> () {
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
    }
}
