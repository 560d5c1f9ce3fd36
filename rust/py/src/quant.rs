//! Binding of the quantized product: `quantized_linear_forward(x, qweight,
//! qtype, b)`. x arrives C-contiguous float32 (rows, in), qweight (out,
//! row_bytes) uint8 (possibly a read-only memory map); the binding reads
//! the sizes, and the kernel checks that the blocks of `qtype` fit them.

use ferroformer_kernels::quant::{
    quantized_linear_forward as qlinear, Activations, QType, SERIAL_MACS,
};
use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::PyValueError;

use crate::shapes;
use crate::util::{self, Array, In};

util::binding! {
    /// `y = x @ W.T + b` with W the blocks of `qtype`: x `(rows, in)`, qweight
    /// `(out, in / block_size * type_size)`, b `(out,)` or None -> y `(rows, out)`.
    /// `int8_activations`: quantize x to int8 per 32 values and use integer dots
    /// (see the kernel's docs for the bound); else float32 dots, the reference's
    /// result up to summation order.
    #[pyo3(signature = (x, qweight, qtype, b=None, int8_activations=false))]
    fn quantized_linear_forward<'py>(
        py, x: In<'py>, qweight: In<'py, u8>, qtype: &str, b: Option<In<'py>>,
        int8_activations: bool,
    ) -> Array<'py> {
        let t = QType::from_name(qtype).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{OP}: quantized type {qtype} has no native kernel; supported: Q8_0, Q4_0, \
                 Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K"
            ))
        })?;
        let [rows, in_f] = shapes::exact(OP, "x", "(rows, in)", x.shape())?;
        let [out_f, _] = shapes::exact(OP, "qweight", "(out, row_bytes)", qweight.shape())?;
        let x = util::slice(OP, "x", &x)?;
        let w = util::slice(OP, "qweight", &qweight)?;
        let b = util::slice_opt(OP, "b", &b)?;
        let mode = if int8_activations {
            Activations::Int8
        } else {
            Activations::Float
        };
        let serial = rows.saturating_mul(in_f).saturating_mul(out_f) <= SERIAL_MACS;
        util::fill_on(py, util::uninit(py, OP, &[rows, out_f])?, serial, |y| {
            qlinear(x, w, t, mode, b, y, rows, in_f, out_f)
        })
    }
}
