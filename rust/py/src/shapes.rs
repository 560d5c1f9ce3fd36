//! Reading the dims a binding needs from its arrays' shapes: the sizes it
//! hands the kernel and the shapes of the outputs it allocates. Nothing
//! more: whether the other arrays fit those dims is the kernel's check
//! (`check_len`, which guards memory), and the Python layer has checked
//! every shape before the call already. A shape that cannot be read is a
//! ValueError naming the op, the array and the layout it must have.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn bad(op: &str, name: &str, layout: &str, shape: &[usize]) -> PyErr {
    PyValueError::new_err(format!(
        "{op}: {name} must be {layout}, got shape {shape:?}"
    ))
}

/// The dims of an array that must have exactly `N` of them.
pub fn exact<const N: usize>(
    op: &str,
    name: &str,
    layout: &str,
    shape: &[usize],
) -> PyResult<[usize; N]> {
    shape.try_into().map_err(|_| bad(op, name, layout, shape))
}

/// The last `N` dims of an array that has at least `N`.
pub fn last<const N: usize>(
    op: &str,
    name: &str,
    layout: &str,
    shape: &[usize],
) -> PyResult<[usize; N]> {
    shape
        .len()
        .checked_sub(N)
        .and_then(|lead| shape[lead..].try_into().ok())
        .ok_or_else(|| bad(op, name, layout, shape))
}

/// `(rows, cols)` of an array seen as rows over its last axis, as the row
/// families (softmax, norms, rope, linear) read it.
pub fn rows_cols(op: &str, name: &str, shape: &[usize]) -> PyResult<(usize, usize)> {
    let [cols] = last(op, name, "at least 1-D", shape)?;
    Ok((shape[..shape.len() - 1].iter().product(), cols))
}
