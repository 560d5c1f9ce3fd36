//! Process-wide settings: thread count and the SIMD level in use.

use ferroformer_kernels::{pool, simd};
use pyo3::prelude::*;

#[pyfunction]
fn set_num_threads(n: usize) {
    pool::set_num_threads(n);
}

#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

#[pyfunction]
fn simd_level() -> &'static str {
    simd::level().name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
