//! ferroformer's CPU kernels.
//!
//! Every kernel is a plain function on `&[f32]` slices plus the dimensions
//! that give them shape; nothing here knows about Python. Row-major
//! (C-contiguous) layout throughout. Each module carries `#[cfg(test)]`
//! tests against naive loops.
//!
//! Parallel loops use rayon; callers run them inside [`pool::install`] so
//! that `ferroformer.set_num_threads` governs their width.

// Every unsafe operation sits in its own `unsafe {}` block, and every such
// block states the invariant it relies on in a `// SAFETY:` comment.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod pool;
pub mod simd;

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod quant;
pub mod rope;
pub mod softmax;
pub mod vec_math;

pub use error::{Error, Result};
