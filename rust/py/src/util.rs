//! The one path every binding takes into Rust: borrow the arrays, check
//! their sizes, release the GIL, run inside ferroformer's thread pool, and
//! map a kernel error onto its Python exception.

use ferroformer_kernels::{pool, Error};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;

pub fn to_pyerr(e: Error) -> PyErr {
    match e {
        Error::Shape(m) | Error::Value(m) => PyValueError::new_err(m),
        Error::Index(m) => PyIndexError::new_err(m),
    }
}

/// Releases the GIL and runs `f` in the kernel thread pool.
pub fn run<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> ferroformer_kernels::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| pool::install(f)).map_err(to_pyerr)
}

/// Elements up to which a row-wise or element-wise kernel runs as one task
/// (its chunk size), and so gains nothing from the pool.
pub const SERIAL_ELEMS: usize = ferroformer_kernels::vec_math::CHUNK_ELEMS;

/// [`run`] for a kernel over `elems` elements: at most [`SERIAL_ELEMS`]
/// run on the calling thread (see [`pool::serial`]), which spares small
/// calls (one decoding step's norms and activations) the trip into the
/// pool; more go to the pool.
pub fn run_sized<T: Send>(
    py: Python<'_>,
    elems: usize,
    f: impl FnOnce() -> ferroformer_kernels::Result<T> + Send,
) -> PyResult<T> {
    run_on(py, elems <= SERIAL_ELEMS, f)
}

/// [`run`] on the calling thread when `serial` (the caller knows the kernel
/// will do the work as one task), else in the pool.
pub fn run_on<T: Send>(
    py: Python<'_>,
    serial: bool,
    f: impl FnOnce() -> ferroformer_kernels::Result<T> + Send,
) -> PyResult<T> {
    if serial {
        py.detach(|| pool::serial(f)).map_err(to_pyerr)
    } else {
        run(py, f)
    }
}

/// The array's data as a slice; the Python layer hands in C-contiguous
/// arrays, so a strided one here is a caller bug reported as ValueError.
pub fn slice<'a, T: numpy::Element>(
    op: &str,
    name: &str,
    a: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{op}: {name} must be C-contiguous")))
}

pub fn shape<T: numpy::Element>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<usize> {
    a.shape().to_vec()
}

/// A fresh float32 array whose contents are left unwritten: no zero-fill
/// pass, and NumPy's allocator hands large ones huge pages.
///
/// # Safety contract
/// Only for outputs that the kernel writes in full before returning Ok (f32
/// has no invalid bit patterns; on an error the array is dropped unseen).
pub fn uninit<'py>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<f32>> {
    // SAFETY: see the contract above; every caller's kernel writes each element.
    unsafe { PyArrayDyn::<f32>::new(py, shape, false) }
}

/// A fresh zero-filled float32 array of the given shape.
pub fn zeros<'py>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<f32>> {
    PyArrayDyn::<f32>::zeros(py, shape, false)
}

/// Runs `f` with the output's data as a mutable slice while the GIL is
/// released, then hands the output back. The work is taken to be the
/// output's size (element-wise and row-wise kernels): see [`run_sized`].
pub fn fill<'py>(
    py: Python<'py>,
    out: Bound<'py, PyArrayDyn<f32>>,
    f: impl FnOnce(&mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let serial = out.len() <= SERIAL_ELEMS;
    fill_on(py, out, serial, f)
}

/// [`fill`] on the calling thread when `serial` (see [`run_on`]): for
/// products, whose output says little about their cost.
pub fn fill_on<'py>(
    py: Python<'py>,
    out: Bound<'py, PyArrayDyn<f32>>,
    serial: bool,
    f: impl FnOnce(&mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut().expect("fresh arrays are contiguous");
        run_on(py, serial, move || f(dst))?;
    }
    Ok(out)
}
