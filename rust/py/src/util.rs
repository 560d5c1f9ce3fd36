//! The one path every binding takes into Rust: borrow the arrays, check
//! their sizes, release the GIL, run inside ferroformer's thread pool, and
//! map a kernel error onto its Python exception. Every binding body runs
//! inside [`guard`], the last line of defence that turns a Rust panic into
//! a RuntimeError naming the op.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ferroformer_kernels::{pool, Error};
use numpy::npyffi::{self, npy_intp, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// Runs a binding's body; a panic anywhere inside it (in the body, in a
/// kernel, on a pool thread: rayon hands a worker's panic back to the
/// caller of `install`) comes out as a RuntimeError naming `op`, never as
/// PyO3's PanicException (a BaseException that `except Exception` misses)
/// or an abort. The array borrows and the GIL are released by their guards
/// while the panic unwinds, so the process goes on in a consistent state.
pub fn guard<T>(op: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            Err(PyRuntimeError::new_err(format!(
                "{op}: internal error in the native kernels ({what}); this is a ferroformer \
                 bug, please report it"
            )))
        }
    }
}

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

/// The array's data as a slice; the Python layer hands in C-contiguous,
/// aligned arrays, so a strided or unaligned one here is a caller bug
/// reported as ValueError.
pub fn slice<'a, T: numpy::Element>(
    op: &str,
    name: &str,
    a: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        PyValueError::new_err(format!(
            "{op}: {name} must be C-contiguous and aligned (the rust backend copies it so)"
        ))
    })
}

pub fn shape<T: numpy::Element>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<usize> {
    a.shape().to_vec()
}

/// A fresh C-order float32 array, or the Python error NumPy raised (the
/// MemoryError of a failed allocation): rust-numpy's own constructors
/// panic on that. A shape whose element count or byte size does not fit
/// `isize` is a ValueError naming the op, before anything is allocated.
fn new_array<'py>(
    py: Python<'py>,
    op: &str,
    shape: &[usize],
    zeroed: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let bytes = shape
        .iter()
        .try_fold(std::mem::size_of::<f32>(), |n, &d| n.checked_mul(d))
        .filter(|&n| isize::try_from(n).is_ok());
    let dims: Option<Vec<npy_intp>> = shape.iter().map(|&d| npy_intp::try_from(d).ok()).collect();
    let (Some(_), Some(mut dims)) = (bytes, dims) else {
        return Err(PyValueError::new_err(format!(
            "{op}: an output of shape {shape:?} has more elements than any array can hold"
        )));
    };
    let nd = c_int::try_from(dims.len())
        .map_err(|_| PyValueError::new_err(format!("{op}: too many dimensions ({shape:?})")))?;
    // SAFETY: `dims` holds `nd` valid dimensions and outlives the call; the
    // descriptor reference is stolen by NumPy, as `into_dtype_ptr` provides;
    // a null return is turned into the Python error NumPy set.
    unsafe {
        let descr = f32::get_dtype(py).into_dtype_ptr();
        let ptr = if zeroed {
            PY_ARRAY_API.PyArray_Zeros(py, nd, dims.as_mut_ptr(), descr, 0)
        } else {
            PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
                descr,
                nd,
                dims.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
        Bound::from_owned_ptr_or_err(py, ptr).map(|a| a.cast_into_unchecked())
    }
}

/// A fresh float32 array whose contents are left unwritten: no zero-fill
/// pass, and NumPy's allocator hands large ones huge pages.
///
/// # Safety contract
/// Only for outputs that the kernel writes in full before returning Ok (f32
/// has no invalid bit patterns; on an error the array is dropped unseen).
pub fn uninit<'py>(
    py: Python<'py>,
    op: &str,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    new_array(py, op, shape, false)
}

/// A fresh zero-filled float32 array of the given shape.
pub fn zeros<'py>(
    py: Python<'py>,
    op: &str,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    new_array(py, op, shape, true)
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
