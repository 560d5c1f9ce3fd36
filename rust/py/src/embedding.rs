//! Bindings of the embedding kernels: `weight (V, C)`, `ids` int64 of any
//! shape, rows out as `ids.shape + (C,)`.

use ferroformer_kernels::embedding as k;
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

/// `weight[ids]`; an id outside `[0, V)` raises IndexError.
#[pyfunction]
fn embedding_forward<'py>(
    py: Python<'py>,
    weight: PyReadonlyArrayDyn<'py, f32>,
    ids: PyReadonlyArrayDyn<'py, i64>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const OP: &str = "embedding_forward";
    util::guard(OP, || {
        let (vocab, dim) = match weight.shape() {
            &[v, c] => (v, c),
            s => {
                return Err(PyValueError::new_err(format!(
                    "{OP}: weight must be (V, C), got {s:?}"
                )))
            }
        };
        let mut shape = ids.shape().to_vec();
        shape.push(dim);
        let (ws, is) = (
            util::slice(OP, "weight", &weight)?,
            util::slice(OP, "ids", &ids)?,
        );
        util::fill(py, util::uninit(py, OP, &shape)?, |out| {
            k::embedding_forward(ws, is, out, vocab, dim)
        })
    })
}

/// `dweight (num_embeddings, C)`, summed in token order (deterministic).
#[pyfunction]
fn embedding_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    ids: PyReadonlyArrayDyn<'py, i64>,
    num_embeddings: usize,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const OP: &str = "embedding_backward";
    util::guard(OP, || {
        let dim = match dy.shape().split_last() {
            Some((&c, lead)) if lead == ids.shape() => c,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "{OP}: dy must be ids.shape + (C,), got dy {:?} and ids {:?}",
                    dy.shape(),
                    ids.shape()
                )))
            }
        };
        let (dys, is) = (util::slice(OP, "dy", &dy)?, util::slice(OP, "ids", &ids)?);
        util::fill(py, util::uninit(py, OP, &[num_embeddings, dim])?, |dw| {
            k::embedding_backward(dys, is, dw, num_embeddings, dim)
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(embedding_forward, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_backward, m)?)?;
    Ok(())
}
