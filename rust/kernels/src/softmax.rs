//! Softmax over the last axis, with the score scale and the causal mask
//! fused in, and its backward.
//!
//! Rows are independent: each is read from L1 three times (max, exp and
//! sum, normalise) and rows are split over the pool in fixed chunks.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{chunk_rows, dot, max_scaled, softmax_exact, sum_exp, Vf32};

/// The causal layout of the rows: each block of `tq` consecutive rows is
/// one `(tq, tk)` score matrix, aligned to the bottom-right.
#[derive(Clone, Copy, Debug)]
struct Causal {
    tq: usize,
}

/// How many leading columns row `row` sees: all of them without a mask;
/// with one, query `i` sees key `j` iff `j <= i + tk - tq`.
#[inline(always)]
fn visible(row: usize, cols: usize, causal: Option<Causal>) -> usize {
    match causal {
        None => cols,
        Some(Causal { tq }) => {
            let i = (row % tq) as isize;
            (i + cols as isize - tq as isize + 1).clamp(0, cols as isize) as usize
        }
    }
}

/// `y = softmax(scale * x)` per row; `x, y (rows, cols)`; masked columns
/// and rows with nothing visible (or only `-inf`) are 0.
#[inline(always)]
fn forward_rows<V: Vf32>(
    _: impl Simd<V = V>,
    x: &[f32],
    y: &mut [f32],
    row0: usize,
    cols: usize,
    scale: f32,
    causal: Option<Causal>,
) {
    for (r, (xr, yr)) in x
        .chunks_exact(cols)
        .zip(y.chunks_exact_mut(cols))
        .enumerate()
    {
        let n = visible(row0 + r, cols, causal);
        let (yv, masked) = yr.split_at_mut(n);
        masked.fill(0.0);
        let xv = &xr[..n];
        let m = max_scaled::<V>(xv, scale);
        if !m.is_finite() {
            // Nothing visible, or a +inf, -inf or NaN in the way of the
            // shift: the exact path (one check per row). A NaN beside a
            // finite maximum needs none: the sum of exponentials is NaN.
            exact_row(xv, yv, scale);
            continue;
        }
        let inv = V::splat(1.0 / sum_exp::<V>(xv, scale, -m, Some(&mut *yv)));
        lanes!(V, n, l => {
            (V::get(yv, l, 0.0) * inv).put(yv, l);
        });
    }
}

/// `y = softmax(scale * x)` over one row, in f64 with the reference's
/// semantics for non-finite values (see [`softmax_exact`]).
fn exact_row(x: &[f32], y: &mut [f32], scale: f32) {
    let mut s: Vec<f64> = x.iter().map(|&v| v as f64 * scale as f64).collect();
    softmax_exact(&mut s);
    y.iter_mut().zip(&s).for_each(|(o, &p)| *o = p as f32);
}

/// `dx = scale * y * (dy - sum(dy * y))` per row; all `(rows, cols)`.
#[inline(always)]
fn backward_rows<V: Vf32>(
    _: impl Simd<V = V>,
    dy: &[f32],
    y: &[f32],
    dx: &mut [f32],
    cols: usize,
    scale: f32,
) {
    let rows = dy.chunks_exact(cols).zip(y.chunks_exact(cols));
    for ((dyr, yr), dxr) in rows.zip(dx.chunks_exact_mut(cols)) {
        let (s, d) = (V::splat(scale), V::splat(dot::<V>(dyr, yr)));
        lanes!(V, cols, l => {
            let (g, p) = (V::get(dyr, l, 0.0), V::get(yr, l, 0.0));
            ((g - d) * p * s).put(dxr, l);
        });
    }
}

/// Softmax of `scale * x` over the last axis.
///
/// `x, y (rows, cols)`. With `causal = Some(tq)`, every `tq` consecutive rows
/// form one `(tq, cols)` score matrix and row `i` of it sees column `j` only
/// if `j <= i + cols - tq`; masked entries are 0, and a row that sees
/// nothing is all zeros. Non-finite values follow the NumPy reference: a
/// NaN among the visible entries makes them all NaN, a +inf gives NaN
/// there and 0 beside it, and masked entries stay 0 in every case.
pub fn softmax_forward(
    x: &[f32],
    y: &mut [f32],
    rows: usize,
    cols: usize,
    scale: f32,
    causal: Option<usize>,
) -> Result<()> {
    check_len("softmax_forward", "x", x.len(), &[rows, cols])?;
    check_len("softmax_forward", "y", y.len(), &[rows, cols])?;
    let causal = match causal {
        None => None,
        Some(tq) if tq > 0 && rows.is_multiple_of(tq) => Some(Causal { tq }),
        Some(tq) => {
            return Err(Error::Shape(format!(
                "softmax_forward: causal needs rows ({rows}) to be a multiple of Tq ({tq})"
            )))
        }
    };
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    dispatch!(|s| y
        .par_chunks_mut(cr * cols)
        .zip(x.par_chunks(cr * cols))
        .enumerate()
        .for_each(|(c, (yc, xc))| vectorized!(
            s,
            forward_rows(s, xc, yc, c * cr, cols, scale, causal)
        )));
    Ok(())
}

/// `dx = scale * y * (dy - sum(dy * y, last axis))`; all `(rows, cols)`.
pub fn softmax_backward(
    dy: &[f32],
    y: &[f32],
    dx: &mut [f32],
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<()> {
    for (name, len) in [("dy", dy.len()), ("y", y.len()), ("dx", dx.len())] {
        check_len("softmax_backward", name, len, &[rows, cols])?;
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    dispatch!(|s| dx
        .par_chunks_mut(cr * cols)
        .zip(dy.par_chunks(cr * cols).zip(y.par_chunks(cr * cols)))
        .for_each(|(dxc, (dyc, yc))| vectorized!(s, backward_rows(s, dyc, yc, dxc, cols, scale))));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, Rng, SIZES};

    fn naive_forward(
        x: &[f32],
        rows: usize,
        cols: usize,
        scale: f64,
        tq: Option<usize>,
    ) -> Vec<f64> {
        let mut y = vec![0.0; rows * cols];
        for r in 0..rows {
            let n = match tq {
                None => cols,
                Some(tq) => ((r % tq) as isize + cols as isize - tq as isize + 1)
                    .clamp(0, cols as isize) as usize,
            };
            let row: Vec<f64> = x[r * cols..r * cols + n]
                .iter()
                .map(|&v| v as f64 * scale)
                .collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for j in 0..n {
                y[r * cols + j] = (row[j] - m).exp() / s;
            }
        }
        y
    }

    #[test]
    fn softmax_forward_matches_naive() {
        let mut rng = Rng::new(1);
        for arch in Arch::supported() {
            for &cols in &SIZES {
                for (rows, tq, scale) in [(3, None, 1.0), (6, Some(3), 0.125), (8, Some(4), -2.0)] {
                    let x = rng.vec(rows * cols, -8.0, 8.0);
                    let mut y = vec![f32::NAN; rows * cols];
                    arch.forced(|| softmax_forward(&x, &mut y, rows, cols, scale, tq))
                        .unwrap();
                    let want = naive_forward(&x, rows, cols, scale as f64, tq);
                    assert_close(
                        &format!("{:?} cols {cols} tq {tq:?}", arch.level()),
                        &y,
                        &want,
                        1e-5,
                        1e-7,
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_forward_masked_rows_are_zero() {
        for arch in Arch::supported() {
            // Tk < Tq: the first rows see nothing; -inf rows see nothing either.
            let (rows, cols) = (4, 2);
            let mut x = vec![1.0; rows * cols];
            x[6] = f32::NEG_INFINITY;
            x[7] = f32::NEG_INFINITY;
            let mut y = vec![f32::NAN; rows * cols];
            arch.forced(|| softmax_forward(&x, &mut y, rows, cols, 1.0, Some(4)))
                .unwrap();
            assert_eq!(y, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn softmax_backward_matches_naive() {
        let mut rng = Rng::new(2);
        for arch in Arch::supported() {
            for &cols in &SIZES {
                let rows = 5;
                let x = rng.vec(rows * cols, -3.0, 3.0);
                let dy = rng.vec(rows * cols, -1.0, 1.0);
                let mut y = vec![0.0; rows * cols];
                arch.forced(|| softmax_forward(&x, &mut y, rows, cols, 1.0, None))
                    .unwrap();
                let mut dx = vec![f32::NAN; rows * cols];
                arch.forced(|| softmax_backward(&dy, &y, &mut dx, rows, cols, 0.5))
                    .unwrap();
                let mut want = vec![0.0; rows * cols];
                for r in 0..rows {
                    let o = r * cols;
                    let dot: f64 = (0..cols).map(|j| dy[o + j] as f64 * y[o + j] as f64).sum();
                    for j in 0..cols {
                        want[o + j] = 0.5 * y[o + j] as f64 * (dy[o + j] as f64 - dot);
                    }
                }
                assert_close(
                    &format!("{:?} cols {cols}", arch.level()),
                    &dx,
                    &want,
                    1e-4,
                    1e-7,
                );
            }
        }
    }

    #[test]
    fn softmax_parallel_chunks_and_errors() {
        let (rows, cols) = (300, 1000);
        let x = Rng::new(3).vec(rows * cols, -5.0, 5.0);
        let mut y = vec![0.0; rows * cols];
        softmax_forward(&x, &mut y, rows, cols, 1.0, Some(100)).unwrap();
        let want = naive_forward(&x, rows, cols, 1.0, Some(100));
        assert_close("parallel", &y, &want, 1e-5, 1e-7);
        assert!(softmax_forward(&x, &mut y, rows, cols, 1.0, Some(7)).is_err());
        assert!(softmax_forward(&x[1..], &mut y, rows, cols, 1.0, None).is_err());
    }
}
