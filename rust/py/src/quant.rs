//! Binding of the quantized product: `quantized_linear_forward(x, qweight,
//! qtype, b)`. x arrives C-contiguous float32 (rows, in), qweight (out,
//! row_bytes) uint8 (possibly a read-only memory map); shapes are checked
//! here again (ValueError naming the op) because the kernel indexes by them.

use ferroformer_kernels::quant::{
    quantized_linear_forward as qlinear, Activations, QType, SERIAL_MACS,
};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::util;

/// `y = x @ W.T + b` with W the blocks of `qtype`: x `(rows, in)`, qweight
/// `(out, in / block_size * type_size)`, b `(out,)` or None -> y `(rows, out)`.
/// `int8_activations`: quantize x to int8 per 32 values and use integer dots
/// (see the kernel's docs for the bound); else float32 dots, the reference's
/// result up to summation order.
#[pyfunction]
#[pyo3(signature = (x, qweight, qtype, b=None, int8_activations=false))]
fn quantized_linear_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    qweight: PyReadonlyArrayDyn<'py, u8>,
    qtype: &str,
    b: Option<PyReadonlyArrayDyn<'py, f32>>,
    int8_activations: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let op = "quantized_linear_forward";
    util::guard(op, || {
        let t = QType::from_name(qtype).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{op}: quantized type {qtype} has no native kernel; supported: Q8_0, Q4_0, \
                 Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K"
            ))
        })?;
        let (x_shape, w_shape) = (util::shape(&x), util::shape(&qweight));
        let (&[rows, in_f], &[out_f, row_bytes]) = (&x_shape[..], &w_shape[..]) else {
            return Err(PyValueError::new_err(format!(
                "{op}: x {x_shape:?} must be (rows, in) and qweight {w_shape:?} (out, row_bytes)"
            )));
        };
        if !in_f.is_multiple_of(t.block_size())
            || in_f / t.block_size() * t.type_size() != row_bytes
        {
            return Err(PyValueError::new_err(format!(
                "{op}: x {x_shape:?} has in = {in_f}, but {} qweight {w_shape:?} rows hold \
                 {} blocks of {} values",
                t.name(),
                row_bytes as f64 / t.type_size() as f64,
                t.block_size()
            )));
        }
        if let Some(b) = &b {
            let b_shape = util::shape(b);
            if b_shape != [out_f] {
                return Err(PyValueError::new_err(format!(
                    "{op}: b {b_shape:?} must be ({out_f},) for qweight {w_shape:?}"
                )));
            }
        }
        let x = util::slice(op, "x", &x)?;
        let w = qweight
            .as_slice()
            .map_err(|_| PyValueError::new_err(format!("{op}: qweight must be C-contiguous")))?;
        let b = b.as_ref().map(|b| util::slice(op, "b", b)).transpose()?;
        let mode = if int8_activations {
            Activations::Int8
        } else {
            Activations::Float
        };
        let serial = rows.saturating_mul(in_f).saturating_mul(out_f) <= SERIAL_MACS;
        util::fill_on(
            py,
            util::uninit(py, op, &[rows, out_f])?,
            serial,
            move |y| qlinear(x, w, t, mode, b, y, rows, in_f, out_f),
        )
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantized_linear_forward, m)?)?;
    Ok(())
}
