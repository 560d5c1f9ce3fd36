//! Bindings of the embedding kernels: `weight (V, C)`, `ids` int64 of any
//! shape, rows out as `ids.shape + (C,)`.

use ferroformer_kernels::embedding as k;
use numpy::PyUntypedArrayMethods;

use crate::shapes;
use crate::util::{self, Array, In};

util::binding! {
    /// `weight[ids]`; an id outside `[0, V)` raises IndexError.
    fn embedding_forward<'py>(py, weight: In<'py>, ids: In<'py, i64>) -> Array<'py> {
        let [vocab, dim] = shapes::exact(OP, "weight", "(V, C)", weight.shape())?;
        let shape = [ids.shape(), &[dim]].concat();
        let (ws, is) = (
            util::slice(OP, "weight", &weight)?,
            util::slice(OP, "ids", &ids)?,
        );
        util::fill(py, util::uninit(py, OP, &shape)?, |out| {
            k::embedding_forward(ws, is, out, vocab, dim)
        })
    }

    /// `dweight (num_embeddings, C)` from `dy ids.shape + (C,)`, summed in
    /// token order (deterministic).
    fn embedding_backward<'py>(
        py, dy: In<'py>, ids: In<'py, i64>, num_embeddings: usize,
    ) -> Array<'py> {
        let [dim] = shapes::last(OP, "dy", "ids.shape + (C,)", dy.shape())?;
        let (dys, is) = (util::slice(OP, "dy", &dy)?, util::slice(OP, "ids", &ids)?);
        util::fill(py, util::uninit(py, OP, &[num_embeddings, dim])?, |dw| {
            k::embedding_backward(dys, is, dw, num_embeddings, dim)
        })
    }
}
