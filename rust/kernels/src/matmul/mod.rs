//! Matrix products: SGEMM, batched matmul with NumPy broadcasting, and the
//! linear layer's forward and backward.
//!
//! ```
//! use ferroformer_kernels::matmul::{sgemm, Layout};
//! // c (2, 2) = a (2, 3) @ b.T, with b stored (2, 3)
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
//! let mut c = [0.0; 4];
//! sgemm(2, 2, 3, 1.0, &a, Layout::normal(3), &b, Layout::transposed(3), 0.0, &mut c, 2).unwrap();
//! assert_eq!(c, [1.0, 2.0, 4.0, 5.0]);
//! ```
//!
//! Files: `blocking.rs` (cache block sizes), `kernel.rs` (the micro-kernel,
//! one generic body and each token's tile shape), `packing.rs`
//! (`pack_a`, `pack_b`), `gemm.rs` (the loop nest and its threads),
//! `gemv.rs` (the one-row / one-column case), `small_m.rs` (up to 32 rows
//! of x against W read in place), `swapped.rs` (33 to 256 rows against W
//! read in place, AVX-512), `batched.rs`, `linear.rs`,
//! and `naive.rs`, the oracle.

mod batched;
mod blocking;
mod gemm;
mod gemv;
mod kernel;
mod linear;
mod naive;
mod packing;
mod small_m;
#[cfg(target_arch = "x86_64")]
mod swapped;
#[cfg(test)]
mod tests;

pub use batched::{matmul_batched, matmul_shape};
pub use linear::{linear_backward, linear_forward};
pub use naive::sgemm_naive;

use crate::error::{Error, Result};
use crate::simd::dispatch;
use gemm::{gemm, GemmArgs};
use gemv::{gemv, GemvArgs};
use kernel::{Epilogue, MicroKernel};
use packing::View;
use small_m::RowDots;

/// How an operand of [`sgemm`] is stored. The matrix in memory is
/// row-major with row stride `ld`; when `trans` is set the product reads
/// its transpose, so op(X) of shape `(r, c)` is stored as `(c, r)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub trans: bool,
    pub ld: usize,
}

impl Layout {
    /// op(X) = X, stored row-major with row stride `ld`.
    pub fn normal(ld: usize) -> Layout {
        Layout { trans: false, ld }
    }

    /// op(X) = X.T, with X stored row-major with row stride `ld`.
    pub fn transposed(ld: usize) -> Layout {
        Layout { trans: true, ld }
    }

    /// Where element `(i, j)` of op(X) lives.
    fn index(self, i: usize, j: usize) -> usize {
        if self.trans {
            j * self.ld + i
        } else {
            i * self.ld + j
        }
    }

    /// The strided view of op(X) over `data`.
    fn view(self, data: &[f32]) -> View {
        let (rs, cs) = if self.trans {
            (1, self.ld)
        } else {
            (self.ld, 1)
        };
        View {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }

    /// Checks that `len` elements hold op(X) of shape `(rows, cols)`.
    fn check(self, op: &str, name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
        let (sr, sc) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        // Checked: a huge stride or size must be refused, not wrap to a small span.
        let need = if sr == 0 || sc == 0 {
            Some(0)
        } else {
            (sr - 1)
                .checked_mul(self.ld)
                .and_then(|s| s.checked_add(sc))
        };
        if self.ld < sc || need.is_none_or(|need| len < need) {
            return Err(Error::Shape(format!(
                "{op}: {name} has {len} elements and row stride {}, too few for a stored \
                 ({sr}, {sc}) matrix",
                self.ld
            )));
        }
        Ok(())
    }
}

/// Validates the operands of a product and returns the views of op(A), op(B).
#[allow(clippy::too_many_arguments)]
fn checked_views(
    op: &str,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    c_len: usize,
    ldc: usize,
) -> Result<(View, View)> {
    a_layout.check(op, "a", a.len(), m, k)?;
    b_layout.check(op, "b", b.len(), k, n)?;
    Layout::normal(ldc).check(op, "c", c_len, m, n)?;
    Ok((a_layout.view(a), b_layout.view(b)))
}

/// Below this many multiply-adds a product runs on one thread: forking
/// costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Whether products of `macs` multiply-adds in all (every matrix of a
/// batch together) run on one thread whatever the pool's size: a caller
/// may then run them outside the pool ([`crate::pool::serial`]).
pub fn one_thread(macs: usize) -> bool {
    macs < PARALLEL_MIN_MACS
}

/// Threads worth using for an `(m, k) x (k, n)` product.
fn threads_for(m: usize, n: usize, k: usize) -> usize {
    if one_thread(m.saturating_mul(n).saturating_mul(k)) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `C = alpha * op(A) op(B) + beta * C`.
///
/// op(A) is `(m, k)`, op(B) `(k, n)`, C `(m, n)` row-major with row stride
/// `ldc`. `beta == 0` overwrites C without reading it; `beta == 1`
/// accumulates (weight gradients). Runs on the current rayon pool with the
/// best SIMD kernel of this CPU.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    let (av, bv) = checked_views("sgemm", m, n, k, a, a_layout, b, b_layout, c.len(), ldc)?;
    let g = GemmArgs {
        m,
        n,
        k,
        alpha,
        beta,
        a: av,
        b: bv,
        c: c.as_mut_ptr(),
        ldc,
        bias: std::ptr::null(),
    };
    // SAFETY: the views and C were checked against the shapes.
    dispatch!(|s| unsafe { run(s, &g, threads_for(m, n, k)) });
    Ok(())
}

/// Runs a checked product with the kernels of token `kern` on `threads`
/// threads.
///
/// # Safety
/// `g`'s views and C cover its shapes.
unsafe fn run<K: MicroKernel + RowDots>(kern: K, g: &GemmArgs, threads: usize) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    // Every call below: `g` covers its shapes, and each path's condition
    // holds (k > 0 past the first; W read in place for small_m and
    // swapped; m <= MAX_M for small_m).
    if g.k == 0 {
        // SAFETY: as said.
        return unsafe { epilogue_only(g) };
    }
    if g.b.rs == 1 && small_m::wanted(g.m, g.n, g.k) {
        // SAFETY: as said.
        return unsafe { run_small_m(kern, g, threads) };
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = kern
        .avx512()
        .filter(|_| g.b.rs == 1 && swapped::wanted(g.m, g.n, g.k))
    {
        // SAFETY: as said.
        return unsafe { swapped::run(t, g, threads) };
    }
    if g.m == 1 || g.n == 1 {
        // SAFETY: as said.
        unsafe { run_gemv(kern, g, threads) }
    } else {
        // SAFETY: as said.
        unsafe { gemm(kern, g, threads) }
    }
}

/// `k == 0`: the product is zero, only `beta * C + bias` remains.
///
/// # Safety
/// As [`run`]'s.
unsafe fn epilogue_only(g: &GemmArgs) {
    let ep = Epilogue {
        alpha: g.alpha,
        beta: g.beta,
        bias: g.bias,
    };
    for i in 0..g.m {
        for j in 0..g.n {
            // SAFETY: (i, j) lies inside C, j inside bias.
            unsafe {
                let cp = g.c.add(i * g.ldc + j);
                let bias = if g.bias.is_null() {
                    0.0
                } else {
                    *g.bias.add(j)
                };
                *cp = ep.apply(0.0, *cp, bias);
            }
        }
    }
}

/// A few rows of A against a B stored as rows along k (`x @ W.T`):
/// W streamed once, several of its rows at a time.
///
/// # Safety
/// As [`run`]'s, with `k > 0` and `1 <= m <= small_m::MAX_M`.
unsafe fn run_small_m<D: RowDots>(dots: D, g: &GemmArgs, threads: usize) {
    let copy: Vec<f32>;
    let (x, ldx) = if g.a.cs == 1 {
        (g.a.ptr, g.a.rs)
    } else {
        // Rows of op(A) strided along k (trans_a): gather them, m x k floats.
        copy = (0..g.m)
            .flat_map(|i| (0..g.k).map(move |p| (i, p)))
            // SAFETY: (i, p) lies inside op(A).
            .map(|(i, p)| unsafe { *g.a.at(i, p).ptr })
            .collect();
        (copy.as_ptr(), g.k)
    };
    let s = small_m::SmallArgs {
        m: g.m,
        n: g.n,
        k: g.k,
        x,
        ldx,
        w: g.b.ptr,
        ldw: g.b.cs,
        c: g.c,
        ldc: g.ldc,
        ep: Epilogue {
            alpha: g.alpha,
            beta: g.beta,
            bias: g.bias,
        },
    };
    // SAFETY: x is op(A) (m, k) at row stride ldx, W = op(B)^T (n, k).
    unsafe { small_m::small_m(dots, &s, threads) };
}

/// One row or one column of C: a matrix-vector product over the other
/// operand, which is streamed once instead of packed.
///
/// # Safety
/// As [`run`]'s, with `k > 0` and `m == 1` or `n == 1`.
unsafe fn run_gemv<S: crate::simd::Simd>(simd: S, g: &GemmArgs, threads: usize) {
    let ep = Epilogue {
        alpha: g.alpha,
        beta: g.beta,
        bias: g.bias,
    };
    // The vector operand, copied only when it is strided.
    let (vec, stride) = if g.m == 1 {
        (g.a.ptr, g.a.cs)
    } else {
        (g.b.ptr, g.b.rs)
    };
    let copy: Vec<f32>;
    let x = if stride == 1 || g.k == 1 {
        vec
    } else {
        // SAFETY: the vector operand has k elements `stride` apart.
        copy = (0..g.k).map(|p| unsafe { *vec.add(p * stride) }).collect();
        copy.as_ptr()
    };
    let args = if g.m == 1 {
        // C row (n,) = x (k,) . op(B) (k, n): outputs walk B's columns.
        GemvArgs {
            len: g.n,
            k: g.k,
            mat: View {
                ptr: g.b.ptr,
                rs: g.b.cs,
                cs: g.b.rs,
            },
            x,
            y: g.c,
            incy: 1,
            ep,
            bias_stride: 1,
        }
    } else {
        // C column (m,) = op(A) (m, k) . x (k,); its one bias serves every row.
        GemvArgs {
            len: g.m,
            k: g.k,
            mat: g.a,
            x,
            y: g.c,
            incy: g.ldc,
            ep,
            bias_stride: 0,
        }
    };
    // SAFETY: the view, x and y cover the shapes (from `g`'s).
    unsafe { gemv(simd, &args, threads) };
}
