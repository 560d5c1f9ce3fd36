//! `ferroformer._native`: the PyO3 bindings. This file only declares the
//! modules and the `#[pymodule]`, which lists every binding; each family's
//! bindings live in their own file and only read the sizes they need,
//! release the GIL and call the kernels (through `util`).

// Every unsafe operation sits in its own `unsafe {}` block, and every such
// block states the invariant it relies on in a `// SAFETY:` comment.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod shapes;
mod util;

mod activation;
mod attention;
mod embedding;
mod loss;
mod matmul;
mod norm;
mod optim;
mod quant;
mod rope;
mod runtime;
mod softmax;

/// The module: every binding, by family, and the package's version.
#[pyo3::pymodule]
mod _native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::activation::{
        gelu_backward, gelu_forward, relu_backward, relu_forward, silu_backward, silu_forward,
        swiglu_backward, swiglu_forward,
    };
    #[pymodule_export]
    use crate::attention::{attention_backward, attention_forward};
    #[pymodule_export]
    use crate::embedding::{embedding_backward, embedding_forward};
    #[pymodule_export]
    use crate::loss::{cross_entropy_backward, cross_entropy_forward};
    #[pymodule_export]
    use crate::matmul::{linear_backward, linear_forward, matmul};
    #[pymodule_export]
    use crate::norm::{layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward};
    #[pymodule_export]
    use crate::optim::adamw_step;
    #[pymodule_export]
    use crate::quant::quantized_linear_forward;
    #[pymodule_export]
    use crate::rope::{rope_backward, rope_forward};
    #[pymodule_export]
    use crate::runtime::{_force_panic, get_num_threads, set_num_threads, simd_level};
    #[pymodule_export]
    use crate::softmax::{softmax_backward, softmax_forward};

    /// Loads NumPy's C API and rust-numpy's borrow checking now, at import,
    /// by borrowing a small array. Left to the first call, that load runs
    /// Python code while the arguments are read, before the binding's
    /// guard: a Ctrl-C handled there makes rust-numpy panic.
    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use numpy::PyArrayMethods;
        let probe = crate::util::zeros(m.py(), "_native", &[1])?;
        drop(probe.try_readonly()?);
        Ok(())
    }

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
