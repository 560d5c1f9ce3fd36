//! Process-wide settings: thread count and the SIMD level in use; and
//! `_force_panic`, which panics on purpose so that a test can see the
//! binding boundary turn a panic into a RuntimeError.

use ferroformer_kernels::{pool, simd};
use pyo3::prelude::*;

use crate::util;

#[pyfunction]
pub(crate) fn set_num_threads(n: usize) {
    pool::set_num_threads(n);
}

#[pyfunction]
pub(crate) fn get_num_threads() -> usize {
    pool::num_threads()
}

#[pyfunction]
pub(crate) fn simd_level() -> &'static str {
    simd::level().name()
}

util::binding! {
    /// Panics on purpose, inside [`util::guard`] as every binding does: on the
    /// calling thread, or with `in_pool` on a worker of the kernel pool with
    /// the GIL released (the path the kernels take). For tests only.
    #[pyo3(signature = (in_pool=false))]
    fn _force_panic<'py>(py, in_pool: bool) -> () {
        if in_pool {
            // `pool::install` runs the closure on one of the pool's threads
            util::run_on(py, false, || -> ferroformer_kernels::Result<()> {
                panic!("forced on a pool thread for a test")
            })
        } else {
            panic!("forced for a test")
        }
    }
}
