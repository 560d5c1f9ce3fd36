//! The one path every binding takes into Rust: borrow the inputs as
//! slices, allocate the outputs, release the GIL and run the kernel (on
//! the calling thread or in ferroformer's pool), then map a kernel error
//! onto its Python exception and handle any signal that arrived meanwhile.
//! Every binding body runs inside [`guard`], the last line of defence that
//! turns a Rust panic into a RuntimeError naming the op.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ferroformer_kernels::{pool, Error};
use numpy::npyffi::{self, npy_intp, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// A float32 array of any rank: what every binding allocates and returns.
pub type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

/// A borrowed input array (float32 unless said otherwise).
pub type In<'py, T = f32> = PyReadonlyArrayDyn<'py, T>;

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

/// Declares bindings in the shape they all share: a `#[pyfunction]` with
/// the Python name, taking the GIL token first, whose body runs inside
/// [`guard`] under that name and sees it as `OP` (the prefix of every
/// error message the body raises). The body returns `PyResult<ret>`;
/// attributes (docs, `#[pyo3(signature = ..)]`) pass through, and an
/// argument may be `mut`. A macro, as a function cannot declare the
/// signature PyO3 reads. rustfmt does not reach inside it: the bindings
/// keep its layout by hand, the arguments as `fn_params_layout =
/// "Compressed"` lays them out.
///
/// ```ignore
/// util::binding! {
///     /// `softmax(x)` over the last axis.
///     fn softmax<'py>(py, x: In<'py>) -> Array<'py> { .. }
/// }
/// ```
macro_rules! binding {
    ($(
        $(#[$attr:meta])*
        fn $name:ident<$py:lifetime>($gil:ident $(, $($arg:ident)+: $ty:ty)* $(,)?)
            -> $ret:ty $body:block
    )+) => {$(
        #[pyo3::pyfunction]
        $(#[$attr])*
        pub(crate) fn $name<$py>(
            $gil: pyo3::Python<$py>,
            $($($arg)+: $ty),*
        ) -> pyo3::PyResult<$ret> {
            const OP: &str = stringify!($name);
            $crate::util::guard(OP, || $body)
        }
    )+};
}
pub(crate) use binding;

pub fn to_pyerr(e: Error) -> PyErr {
    match e {
        Error::Shape(m) | Error::Value(m) => PyValueError::new_err(m),
        Error::Index(m) => PyIndexError::new_err(m),
    }
}

/// Elements up to which a row-wise or element-wise kernel runs as one task
/// (its chunk size), and so gains nothing from the pool.
pub const SERIAL_ELEMS: usize = ferroformer_kernels::vec_math::CHUNK_ELEMS;

/// Whether a row-wise or element-wise kernel over `elems` elements is one
/// task ([`SERIAL_ELEMS`]): then it runs on the calling thread (see
/// [`pool::serial`]), which spares small calls (one decoding step's norms
/// and activations) the trip into the pool.
pub fn small(elems: usize) -> bool {
    elems <= SERIAL_ELEMS
}

/// Runs `f` with the GIL released: on the calling thread when `serial`
/// (the caller knows the kernel does the work as one task), else in the
/// kernel thread pool; then maps a kernel error onto its Python exception.
///
/// A Ctrl-C (or any signal with a Python handler) that arrives while the
/// kernel runs cannot stop it, since the kernel borrows the arrays until
/// it returns; it is handled as soon as the kernel returns, and its
/// KeyboardInterrupt replaces the result, so a caller in a loop of calls
/// made from C (a `map` over arrays, say) stops at once.
///
/// A panic is not caught here but by [`guard`], around the whole binding.
pub fn run_on<T: Send>(
    py: Python<'_>,
    serial: bool,
    f: impl FnOnce() -> ferroformer_kernels::Result<T> + Send,
) -> PyResult<T> {
    let result = if serial {
        py.detach(|| pool::serial(f))
    } else {
        py.detach(|| pool::install(f))
    };
    py.check_signals()?;
    result.map_err(to_pyerr)
}

/// [`run_on`] for a kernel that writes `N` outputs: `f` gets their data as
/// mutable slices, in order, while the GIL is released. The outputs are
/// fresh arrays (from [`outputs`], [`uninit`] or [`zeros`]), so they are
/// contiguous and nothing else borrows them.
pub fn run_into<const N: usize, T: Send>(
    py: Python<'_>,
    serial: bool,
    outs: [&Array<'_>; N],
    f: impl FnOnce([&mut [f32]; N]) -> ferroformer_kernels::Result<T> + Send,
) -> PyResult<T> {
    let mut borrows = outs.map(|a| a.readwrite());
    let slices = borrows
        .each_mut()
        .map(|b| b.as_slice_mut().expect("fresh arrays are contiguous"));
    run_on(py, serial, move || f(slices))
}

/// The array's data as a slice; the Python layer hands in C-contiguous,
/// aligned arrays, so a strided or unaligned one here is a caller bug
/// reported as ValueError.
pub fn slice<'a, T: numpy::Element>(op: &str, name: &str, a: &'a In<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        PyValueError::new_err(format!(
            "{op}: {name} must be C-contiguous and aligned (the rust backend copies it so)"
        ))
    })
}

/// [`slice`] of each named array, in order.
pub fn slices<'a, T: numpy::Element, const N: usize>(
    op: &str,
    arrays: [(&str, &'a In<'_, T>); N],
) -> PyResult<[&'a [T]; N]> {
    let mut out = [&[][..]; N];
    for (s, (name, a)) in out.iter_mut().zip(arrays) {
        *s = slice(op, name, a)?;
    }
    Ok(out)
}

/// [`slice`] of an optional array.
pub fn slice_opt<'a, T: numpy::Element>(
    op: &str,
    name: &str,
    a: &'a Option<In<'_, T>>,
) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(op, name, a)).transpose()
}

/// [`slice`] of an array the kernel updates in place.
pub fn slice_mut<'a, T: numpy::Element>(
    op: &str,
    name: &str,
    a: &'a mut PyReadwriteArrayDyn<'_, T>,
) -> PyResult<&'a mut [T]> {
    a.as_slice_mut().map_err(|_| {
        PyValueError::new_err(format!(
            "{op}: {name} must be C-contiguous, aligned and writable"
        ))
    })
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
) -> PyResult<Array<'py>> {
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
pub fn uninit<'py>(py: Python<'py>, op: &str, shape: &[usize]) -> PyResult<Array<'py>> {
    new_array(py, op, shape, false)
}

/// A fresh zero-filled float32 array of the given shape.
pub fn zeros<'py>(py: Python<'py>, op: &str, shape: &[usize]) -> PyResult<Array<'py>> {
    new_array(py, op, shape, true)
}

/// Fresh uninitialised float32 outputs of the given shapes (see
/// [`uninit`]), for [`run_into`].
pub fn outputs<'py, const N: usize>(
    py: Python<'py>,
    op: &str,
    shapes: [&[usize]; N],
) -> PyResult<[Array<'py>; N]> {
    let mut made = Vec::with_capacity(N);
    for shape in shapes {
        made.push(uninit(py, op, shape)?);
    }
    Ok(made.try_into().expect("one array per shape"))
}

/// [`run_into`] for a kernel with one output, which it hands back.
pub fn fill_on<'py>(
    py: Python<'py>,
    out: Array<'py>,
    serial: bool,
    f: impl FnOnce(&mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Array<'py>> {
    run_into(py, serial, [&out], |[y]| f(y))?;
    Ok(out)
}

/// [`fill_on`] for a row-wise or element-wise kernel, whose work is the
/// output's size (see [`small`]).
pub fn fill<'py>(
    py: Python<'py>,
    out: Array<'py>,
    f: impl FnOnce(&mut [f32]) -> ferroformer_kernels::Result<()> + Send,
) -> PyResult<Array<'py>> {
    let serial = small(out.len());
    fill_on(py, out, serial, f)
}
