//! The slow twin of [`super::sgemm`]: one f64 dot product per element of C.
//! It is the oracle every test holds the fast paths against.

use super::{checked_views, Layout};
use crate::Result;

/// `C = alpha * op(A) op(B) + beta * C`, same contract as [`super::sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_naive(
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
    checked_views(
        "sgemm_naive",
        m,
        n,
        k,
        a,
        a_layout,
        b,
        b_layout,
        c.len(),
        ldc,
    )?;
    let at = |i: usize, p: usize| a[a_layout.index(i, p)] as f64;
    let bt = |p: usize, j: usize| b[b_layout.index(p, j)] as f64;
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            let cij = &mut c[i * ldc + j];
            let kept = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * *cij as f64
            };
            *cij = (alpha as f64 * dot + kept) as f32;
        }
    }
    Ok(())
}
