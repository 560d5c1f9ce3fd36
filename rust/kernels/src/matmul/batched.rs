//! Batched matmul with NumPy broadcasting of the leading dimensions:
//! `a (..., m, k) @ b (..., k, n) -> (batch..., m, n)`, either operand
//! read transposed. Broadcast operands are indexed, never tiled out.

use rayon::prelude::*;

use super::gemm::GemmArgs;
use super::{run, threads_for, Layout};
use crate::error::{check_len, elements, Error, Result};
use crate::simd::{dispatch, Arch};

/// Shapes of one batched product, after broadcasting.
struct Plan {
    m: usize,
    n: usize,
    k: usize,
    /// Broadcast batch shape of the result.
    batch: Vec<usize>,
    /// Per batch axis, the step in elements of a and of b (0 where that
    /// operand is broadcast along the axis).
    a_steps: Vec<usize>,
    b_steps: Vec<usize>,
}

/// Per-axis steps of one operand whose batch shape is `batch` (of
/// `matrix`-element matrices), right-aligned to `rank` axes: a size-1 or
/// missing axis steps by 0, which is how broadcasting reads it.
/// `None` where a step overflows (possible only for an operand with a
/// zero-size axis, whose element count does not bound its other axes).
fn steps(batch: &[usize], rank: usize, matrix: Option<usize>) -> Option<Vec<usize>> {
    let mut steps = vec![0; rank];
    let mut step = matrix?;
    for (ax, &d) in batch.iter().enumerate().rev() {
        if d != 1 {
            steps[rank - batch.len() + ax] = step;
        }
        step = step.checked_mul(d)?;
    }
    Some(steps)
}

fn plan(a_shape: &[usize], trans_a: bool, b_shape: &[usize], trans_b: bool) -> Result<Plan> {
    let mismatch = |why: &str| {
        Error::Shape(format!(
            "matmul: a {a_shape:?} (trans_a={trans_a}) and b {b_shape:?} (trans_b={trans_b}) {why}"
        ))
    };
    if a_shape.len() < 2 || b_shape.len() < 2 {
        return Err(mismatch("must both be at least 2-D"));
    }
    let (ab, am) = a_shape.split_at(a_shape.len() - 2);
    let (bb, bm) = b_shape.split_at(b_shape.len() - 2);
    let (m, ka) = if trans_a {
        (am[1], am[0])
    } else {
        (am[0], am[1])
    };
    let (kb, n) = if trans_b {
        (bm[1], bm[0])
    } else {
        (bm[0], bm[1])
    };
    if ka != kb {
        return Err(mismatch(&format!("have inner sizes {ka} and {kb}")));
    }
    let rank = ab.len().max(bb.len());
    let mut batch = vec![1; rank];
    for (pos, d) in batch.iter_mut().enumerate() {
        let da = (pos + ab.len()).checked_sub(rank).map_or(1, |i| ab[i]);
        let db = (pos + bb.len()).checked_sub(rank).map_or(1, |i| bb[i]);
        *d = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(mismatch("have batch dimensions that do not broadcast")),
        };
    }
    let too_big = || mismatch("have more elements than memory can hold");
    let a_steps = steps(ab, rank, m.checked_mul(ka)).ok_or_else(too_big)?;
    let b_steps = steps(bb, rank, ka.checked_mul(n)).ok_or_else(too_big)?;
    // The result's count bounds every offset into it.
    elements(&batch)
        .and_then(|b| b.checked_mul(m)?.checked_mul(n))
        .ok_or_else(too_big)?;
    Ok(Plan {
        m,
        n,
        k: ka,
        a_steps,
        b_steps,
        batch,
    })
}

/// The result shape of [`matmul_batched`]: `(batch..., m, n)`.
pub fn matmul_shape(
    a_shape: &[usize],
    trans_a: bool,
    b_shape: &[usize],
    trans_b: bool,
) -> Result<Vec<usize>> {
    let p = plan(a_shape, trans_a, b_shape, trans_b)?;
    let mut shape = p.batch;
    shape.extend([p.m, p.n]);
    Ok(shape)
}

/// Below this many multiply-adds per matrix, and with at least two
/// matrices per thread, whole matrices go to threads (attention heads);
/// above it each product is split across the threads in turn.
const PER_MATRIX_SERIAL_MACS: usize = 1 << 24;

/// `c = op(a) @ op(b)` over broadcast batches.
///
/// `a (..., m, k)`, or `(..., k, m)` when `trans_a`; `b (..., k, n)`, or
/// `(..., n, k)` when `trans_b`; all C-contiguous. `c` is the result,
/// shaped as [`matmul_shape`] says, and is overwritten.
pub fn matmul_batched(
    a: &[f32],
    a_shape: &[usize],
    trans_a: bool,
    b: &[f32],
    b_shape: &[usize],
    trans_b: bool,
    c: &mut [f32],
) -> Result<()> {
    let p = plan(a_shape, trans_a, b_shape, trans_b)?;
    check_len("matmul", "a", a.len(), a_shape)?;
    check_len("matmul", "b", b.len(), b_shape)?;
    let count: usize = p.batch.iter().product();
    check_len("matmul", "out", c.len(), &[count, p.m, p.n])?;
    let (m, n, k) = (p.m, p.n, p.k);
    if c.is_empty() {
        return Ok(());
    }
    let a_layout = if trans_a {
        Layout::transposed(m)
    } else {
        Layout::normal(k)
    };
    let b_layout = if trans_b {
        Layout::transposed(k)
    } else {
        Layout::normal(n)
    };
    let arch = Arch::best();
    let b_shared = p.b_steps.iter().all(|&s| s == 0);
    if b_shared && !trans_a {
        // Every matrix of a meets the same b: the batch is just more rows.
        let rows = count * m;
        let g = args(rows, n, k, a, a_layout, 0, b, b_layout, 0, c);
        // SAFETY: a holds `count` contiguous (m, k) matrices; b and c checked.
        dispatch!(arch, |s| unsafe { run(s, &g, threads_for(rows, n, k)) });
        return Ok(());
    }
    let offsets = |t: usize| {
        let (mut rest, mut ao, mut bo) = (t, 0, 0);
        for ax in (0..p.batch.len()).rev() {
            let i = rest % p.batch[ax];
            rest /= p.batch[ax];
            ao += i * p.a_steps[ax];
            bo += i * p.b_steps[ax];
        }
        (ao, bo)
    };
    let threads = rayon::current_num_threads();
    let macs = m.saturating_mul(n).saturating_mul(k);
    let by_matrix = threads > 1 && count >= 2 * threads && macs < PER_MATRIX_SERIAL_MACS;
    let one = |(t, ct): (usize, &mut [f32])| {
        let (ao, bo) = offsets(t);
        let g = args(m, n, k, a, a_layout, ao, b, b_layout, bo, ct);
        let threads = if by_matrix { 1 } else { threads_for(m, n, k) };
        // SAFETY: the offsets stay inside a and b by the broadcast plan.
        dispatch!(arch, |s| unsafe { run(s, &g, threads) });
    };
    if by_matrix {
        c.par_chunks_mut(m * n).enumerate().for_each(one);
    } else {
        c.chunks_mut(m * n).enumerate().for_each(one);
    }
    Ok(())
}

/// The product of the matrices at offsets `ao` of a and `bo` of b into `c`.
#[allow(clippy::too_many_arguments)]
fn args(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    ao: usize,
    b: &[f32],
    b_layout: Layout,
    bo: usize,
    c: &mut [f32],
) -> GemmArgs {
    GemmArgs {
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
        a: a_layout.view(&a[ao..]),
        b: b_layout.view(&b[bo..]),
        c: c.as_mut_ptr(),
        ldc: n,
        bias: std::ptr::null(),
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::*;

    #[test]
    fn huge_shapes_are_refused_not_wrapped() {
        let big = 1usize << 40;
        let cases: [(&[usize], &[usize]); 4] = [
            (&[big, big, 2, 2], &[2, 2]), // batch count overflows with the matrix
            (&[0, big, big], &[big, 1]),  // empty batch, but m * k overflows
            (&[2, 2], &[0, 2, 1 << 63]),  // k * n of b overflows
            (&[big, 4, 1], &[1, 1, big]), // result count overflows
        ];
        for (a, b) in cases {
            let e = matmul_batched(&[], a, false, &[], b, false, &mut []).unwrap_err();
            assert!(matches!(e, Error::Shape(_)), "{a:?} @ {b:?}: {e:?}");
        }
    }
}
