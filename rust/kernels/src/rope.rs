//! Rotary position embedding on adjacent pairs, forward and backward.
//!
//! For pair `i` of position `t`: `(x0, x1) -> (x0 c - x1 s, x0 s + x1 c)`
//! with `c = cos[t, i]`, `s = sin[t, i]`. The tables are first widened to
//! `(T, D)` as `[c0, c0, c1, c1, ..]` and `[-s0, s0, -s1, s1, ..]`, so that a
//! register does `y = x * cc + swap_pairs(x) * ss`. The backward is the
//! same rotation with `s` negated.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{chunk_rows, Vf32};

/// Rotates rows `row0 ..` of `x, y (rows, d)`; `cc, ss (t, d)` widened.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rotate_rows<S: Simd>(
    s: S,
    x: &[f32],
    y: &mut [f32],
    cc: &[f32],
    ss: &[f32],
    row0: usize,
    d: usize,
) {
    let t_len = cc.len() / d;
    for (r, (xr, yr)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let t = (row0 + r) % t_len;
        let (c, sn) = (&cc[t * d..(t + 1) * d], &ss[t * d..(t + 1) * d]);
        lanes!(S::V, d, l => {
            let xv = s.get(xr, l, 0.0);
            let rot = xv.swap_pairs() * s.get(sn, l, 0.0);
            xv.mul_add(s.get(c, l, 0.0), rot).put(yr, l);
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn rotate(
    op: &str,
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    sign: f32,
    y: &mut [f32],
    rows: usize,
    t: usize,
    d: usize,
) -> Result<()> {
    if !d.is_multiple_of(2) {
        return Err(Error::Shape(format!(
            "{op}: the last dim D must be even, got {d}"
        )));
    }
    check_len(op, "x", x.len(), &[rows, d])?;
    check_len(op, "y", y.len(), &[rows, d])?;
    check_len(op, "cos", cos.len(), &[t, d / 2])?;
    check_len(op, "sin", sin.len(), &[t, d / 2])?;
    if t == 0 || !rows.is_multiple_of(t) {
        return Err(Error::Shape(format!(
            "{op}: {rows} rows are not a whole number of T = {t} positions"
        )));
    }
    if d == 0 {
        return Ok(());
    }
    let mut cc = vec![0.0f32; t * d];
    let mut ss = vec![0.0f32; t * d];
    for (k, (&c, &s)) in cos.iter().zip(sin).enumerate() {
        cc[2 * k] = c;
        cc[2 * k + 1] = c;
        ss[2 * k] = -sign * s;
        ss[2 * k + 1] = sign * s;
    }
    let (cc, ss, cr) = (cc.as_slice(), ss.as_slice(), chunk_rows(rows, d));
    dispatch!(|s| y
        .par_chunks_mut(cr * d)
        .zip(x.par_chunks(cr * d))
        .enumerate()
        .for_each(|(c, (yc, xc))| vectorized!(s, rotate_rows(s, xc, yc, cc, ss, c * cr, d))));
    Ok(())
}

/// `x, y (rows, D)` with rows = (..., T) flattened, `cos, sin (T, D/2)`.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    y: &mut [f32],
    rows: usize,
    t: usize,
    d: usize,
) -> Result<()> {
    rotate("rope_forward", x, cos, sin, 1.0, y, rows, t, d)
}

/// The inverse rotation: `dy, dx (rows, D)`, `cos, sin (T, D/2)`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    dx: &mut [f32],
    rows: usize,
    t: usize,
    d: usize,
) -> Result<()> {
    rotate("rope_backward", dy, cos, sin, -1.0, dx, rows, t, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, Rng};

    #[test]
    fn rope_matches_naive_and_inverts() {
        let mut rng = Rng::new(50);
        for arch in Arch::supported() {
            for d in [2, 8, 14, 16, 34, 64, 130] {
                let (t, rows) = (5, 15);
                let x = rng.vec(rows * d, -1.0, 1.0);
                let ang = rng.vec(t * d / 2, -3.0, 3.0);
                let cos: Vec<f32> = ang.iter().map(|a| a.cos()).collect();
                let sin: Vec<f32> = ang.iter().map(|a| a.sin()).collect();
                let mut y = vec![0.0; rows * d];
                arch.forced(|| rotate("f", &x, &cos, &sin, 1.0, &mut y, rows, t, d))
                    .unwrap();
                let mut want = vec![0.0; rows * d];
                for r in 0..rows {
                    for i in 0..d / 2 {
                        let (c, s) = (
                            cos[(r % t) * d / 2 + i] as f64,
                            sin[(r % t) * d / 2 + i] as f64,
                        );
                        let (x0, x1) = (x[r * d + 2 * i] as f64, x[r * d + 2 * i + 1] as f64);
                        want[r * d + 2 * i] = x0 * c - x1 * s;
                        want[r * d + 2 * i + 1] = x0 * s + x1 * c;
                    }
                }
                assert_close(&format!("{:?} d {d}", arch.level()), &y, &want, 1e-6, 1e-6);
                let mut back = vec![0.0; rows * d];
                arch.forced(|| rotate("b", &y, &cos, &sin, -1.0, &mut back, rows, t, d))
                    .unwrap();
                let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                assert_close(
                    &format!("{:?} d {d} inverse", arch.level()),
                    &back,
                    &xd,
                    1e-5,
                    1e-6,
                );
            }
        }
    }

    #[test]
    fn rope_rejects_bad_shapes() {
        let mut y = vec![0.0; 12];
        assert!(rope_forward(&[0.0; 12], &[1.0; 3], &[0.0; 3], &mut y, 4, 1, 3).is_err());
        assert!(rope_forward(&[0.0; 12], &[1.0; 4], &[0.0; 4], &mut y, 3, 2, 4).is_err());
        assert!(rope_backward(&[0.0; 12], &[1.0; 2], &[0.0; 3], &mut y, 3, 1, 4).is_err());
    }
}
