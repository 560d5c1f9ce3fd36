//! `ferroformer._native`: the PyO3 bindings. This file only declares the
//! modules and the `#[pymodule]`; each family's bindings live in their own
//! file and only check arguments, release the GIL and call the kernels.

use pyo3::prelude::*;

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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    runtime::register(m)?;
    activation::register(m)?;
    attention::register(m)?;
    embedding::register(m)?;
    loss::register(m)?;
    matmul::register(m)?;
    norm::register(m)?;
    optim::register(m)?;
    quant::register(m)?;
    rope::register(m)?;
    softmax::register(m)?;
    Ok(())
}
