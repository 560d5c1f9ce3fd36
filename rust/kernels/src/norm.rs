//! LayerNorm and RMSNorm over the last axis, forward and backward.
//!
//! The forward returns what the backward needs (`mean`, `rstd`). Mean and
//! variance take two passes over the row (sum, then squared deviations),
//! which stays accurate when the mean is large against the spread; the row
//! is in L1 for the second pass. `dgamma`/`dbeta` are summed per fixed
//! chunk of rows and the chunk partials are added in chunk order, so the
//! bits never depend on the thread count.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{chunk_rows, dot, sum, Vf32};

/// `y = (x - mean) * rstd * gamma + beta` per row; `x, y (rows, cols)`,
/// `mean, rstd (rows,)` written, `gamma, beta (cols,)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layernorm_rows<S: Simd>(
    s: S,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let cols = gamma.len();
    let inv_c = 1.0 / cols as f32;
    let rows = x.chunks_exact(cols).zip(y.chunks_exact_mut(cols));
    for ((xr, yr), (mo, ro)) in rows.zip(mean.iter_mut().zip(rstd.iter_mut())) {
        let mu = sum::<S::V>(xr) * inv_c;
        let m = s.splat(mu);
        let mut acc = s.zero();
        lanes!(S::V, cols, l => {
            let d = (s.get(xr, l, 0.0) - m).pad(l, 0.0);
            acc = d.mul_add(d, acc);
        });
        let rs = 1.0 / (acc.reduce_sum() * inv_c + eps).sqrt();
        let r = s.splat(rs);
        lanes!(S::V, cols, l => {
            let xhat = (s.get(xr, l, 0.0) - m) * r;
            xhat.mul_add(s.get(gamma, l, 0.0), s.get(beta, l, 0.0)).put(yr, l);
        });
        *mo = mu;
        *ro = rs;
    }
}

/// LayerNorm backward for a chunk of rows; adds this chunk's `dgamma` and
/// `dbeta` into `dg, db (cols,)`.
///
/// With `xhat = (x - mean) rstd` and `g = dy * gamma`:
/// `dx = rstd (g - mean(g) - xhat mean(g xhat))`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layernorm_backward_rows<S: Simd>(
    s: S,
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let cols = gamma.len();
    let inv_c = 1.0 / cols as f32;
    let rows = dy.chunks_exact(cols).zip(x.chunks_exact(cols));
    for (((dyr, xr), dxr), (&mu, &rs)) in rows
        .zip(dx.chunks_exact_mut(cols))
        .zip(mean.iter().zip(rstd))
    {
        let (m, r) = (s.splat(mu), s.splat(rs));
        let (mut sg, mut sgx) = (s.zero(), s.zero());
        lanes!(S::V, cols, l => {
            // dy's tail lanes are 0, so g and g * xhat add nothing there.
            let d = s.get(dyr, l, 0.0);
            let xhat = (s.get(xr, l, 0.0) - m) * r;
            let g = d * s.get(gamma, l, 0.0);
            sg = sg + g;
            sgx = g.mul_add(xhat, sgx);
            d.mul_add(xhat, s.get(dg, l, 0.0)).put(dg, l);
            (s.get(db, l, 0.0) + d).put(db, l);
        });
        let a = s.splat(sg.reduce_sum() * inv_c);
        let b = s.splat(sgx.reduce_sum() * inv_c);
        lanes!(S::V, cols, l => {
            let xhat = (s.get(xr, l, 0.0) - m) * r;
            let g = s.get(dyr, l, 0.0) * s.get(gamma, l, 0.0);
            ((g - a - xhat * b) * r).put(dxr, l);
        });
    }
}

/// `y = x * rstd * gamma`, `rstd = 1 / sqrt(mean(x²) + eps)` per row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rmsnorm_rows<S: Simd>(
    s: S,
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) {
    let cols = gamma.len();
    let rows = x.chunks_exact(cols).zip(y.chunks_exact_mut(cols));
    for ((xr, yr), ro) in rows.zip(rstd.iter_mut()) {
        let rs = 1.0 / (dot::<S::V>(xr, xr) / cols as f32 + eps).sqrt();
        let r = s.splat(rs);
        lanes!(S::V, cols, l => {
            (s.get(xr, l, 0.0) * r * s.get(gamma, l, 0.0)).put(yr, l);
        });
        *ro = rs;
    }
}

/// RMSNorm backward for a chunk of rows, adding into `dg (cols,)`:
/// `dx = rstd (g - x rstd² mean(g x))` with `g = dy * gamma`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rmsnorm_backward_rows<S: Simd>(
    s: S,
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dg: &mut [f32],
) {
    let cols = gamma.len();
    let inv_c = 1.0 / cols as f32;
    let rows = dy.chunks_exact(cols).zip(x.chunks_exact(cols));
    for (((dyr, xr), dxr), &rs) in rows.zip(dx.chunks_exact_mut(cols)).zip(rstd) {
        let r = s.splat(rs);
        let mut sgx = s.zero();
        lanes!(S::V, cols, l => {
            let d = s.get(dyr, l, 0.0);
            let xv = s.get(xr, l, 0.0);
            sgx = (d * s.get(gamma, l, 0.0)).mul_add(xv, sgx);
            (d * xv).mul_add(r, s.get(dg, l, 0.0)).put(dg, l);
        });
        let k = s.splat(sgx.reduce_sum() * inv_c * rs * rs);
        lanes!(S::V, cols, l => {
            let g = s.get(dyr, l, 0.0) * s.get(gamma, l, 0.0);
            ((g - s.get(xr, l, 0.0) * k) * r).put(dxr, l);
        });
    }
}

/// `out[j] = sum over chunks c of parts[c * cols + j]`, in chunk order.
fn sum_partials(parts: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for part in parts.chunks_exact(cols) {
        for (o, p) in out.iter_mut().zip(part) {
            *o += p;
        }
    }
}

fn check_eps(op: &str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "{op}: eps must be finite and >= 0, got {eps}"
        )))
    }
}

/// LayerNorm over the last axis: `x, y (rows, cols)`, `gamma, beta (cols,)`,
/// `mean, rstd (rows,)` (biased variance, `rstd = 1 / sqrt(var + eps)`).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "layernorm_forward";
    check_eps(OP, eps)?;
    check_len(OP, "x", x.len(), &[rows, cols])?;
    check_len(OP, "y", y.len(), &[rows, cols])?;
    check_len(OP, "gamma", gamma.len(), &[cols])?;
    check_len(OP, "beta", beta.len(), &[cols])?;
    check_len(OP, "mean", mean.len(), &[rows])?;
    check_len(OP, "rstd", rstd.len(), &[rows])?;
    if rows == 0 || cols == 0 {
        mean.fill(0.0);
        rstd.fill(1.0 / eps.sqrt());
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    dispatch!(|s| y
        .par_chunks_mut(cr * cols)
        .zip(x.par_chunks(cr * cols))
        .zip(mean.par_chunks_mut(cr).zip(rstd.par_chunks_mut(cr)))
        .for_each(|((yc, xc), (mc, rc))| vectorized!(
            s,
            layernorm_rows(s, xc, gamma, beta, eps, yc, mc, rc)
        )));
    Ok(())
}

/// LayerNorm backward: `dy, x, dx (rows, cols)`, `gamma, dgamma, dbeta
/// (cols,)`, `mean, rstd (rows,)` from the forward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    for (name, len) in [("dy", dy.len()), ("x", x.len()), ("dx", dx.len())] {
        check_len(OP, name, len, &[rows, cols])?;
    }
    for (name, len) in [
        ("gamma", gamma.len()),
        ("dgamma", dgamma.len()),
        ("dbeta", dbeta.len()),
    ] {
        check_len(OP, name, len, &[cols])?;
    }
    check_len(OP, "mean", mean.len(), &[rows])?;
    check_len(OP, "rstd", rstd.len(), &[rows])?;
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    let chunks = rows.div_ceil(cr);
    let mut dg_parts = vec![0.0f32; chunks * cols];
    let mut db_parts = vec![0.0f32; chunks * cols];
    dispatch!(|s| dx
        .par_chunks_mut(cr * cols)
        .zip(dy.par_chunks(cr * cols).zip(x.par_chunks(cr * cols)))
        .zip(mean.par_chunks(cr).zip(rstd.par_chunks(cr)))
        .zip(
            dg_parts
                .par_chunks_mut(cols)
                .zip(db_parts.par_chunks_mut(cols)),
        )
        .for_each(|(((dxc, (dyc, xc)), (mc, rc)), (dg, db))| {
            vectorized!(
                s,
                layernorm_backward_rows(s, dyc, xc, gamma, mc, rc, dxc, dg, db)
            )
        }));
    sum_partials(&dg_parts, cols, dgamma);
    sum_partials(&db_parts, cols, dbeta);
    Ok(())
}

/// RMSNorm over the last axis: `x, y (rows, cols)`, `gamma (cols,)`,
/// `rstd (rows,)` with `rstd = 1 / sqrt(mean(x²) + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "rmsnorm_forward";
    check_eps(OP, eps)?;
    check_len(OP, "x", x.len(), &[rows, cols])?;
    check_len(OP, "y", y.len(), &[rows, cols])?;
    check_len(OP, "gamma", gamma.len(), &[cols])?;
    check_len(OP, "rstd", rstd.len(), &[rows])?;
    if rows == 0 || cols == 0 {
        rstd.fill(1.0 / eps.sqrt());
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    dispatch!(|s| y
        .par_chunks_mut(cr * cols)
        .zip(x.par_chunks(cr * cols))
        .zip(rstd.par_chunks_mut(cr))
        .for_each(|((yc, xc), rc)| vectorized!(s, rmsnorm_rows(s, xc, gamma, eps, yc, rc))));
    Ok(())
}

/// RMSNorm backward: `dy, x, dx (rows, cols)`, `gamma, dgamma (cols,)`,
/// `rstd (rows,)` from the forward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "rmsnorm_backward";
    for (name, len) in [("dy", dy.len()), ("x", x.len()), ("dx", dx.len())] {
        check_len(OP, name, len, &[rows, cols])?;
    }
    check_len(OP, "gamma", gamma.len(), &[cols])?;
    check_len(OP, "dgamma", dgamma.len(), &[cols])?;
    check_len(OP, "rstd", rstd.len(), &[rows])?;
    dgamma.fill(0.0);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cr = chunk_rows(rows, cols);
    let mut dg_parts = vec![0.0f32; rows.div_ceil(cr) * cols];
    dispatch!(|s| dx
        .par_chunks_mut(cr * cols)
        .zip(dy.par_chunks(cr * cols).zip(x.par_chunks(cr * cols)))
        .zip(rstd.par_chunks(cr).zip(dg_parts.par_chunks_mut(cols)))
        .for_each(|((dxc, (dyc, xc)), (rc, dg))| {
            vectorized!(s, rmsnorm_backward_rows(s, dyc, xc, gamma, rc, dxc, dg))
        }));
    sum_partials(&dg_parts, cols, dgamma);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, in_pool, Rng, SIZES};

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| a as f64).collect()
    }

    #[test]
    fn layernorm_matches_naive() {
        let mut rng = Rng::new(10);
        for arch in Arch::supported() {
            for &cols in &SIZES {
                let rows = 6;
                // An offset mean checks the two-pass variance.
                let x: Vec<f32> = rng
                    .vec(rows * cols, -2.0, 2.0)
                    .iter()
                    .map(|v| v + 30.0)
                    .collect();
                let (gamma, beta) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -1.0, 1.0));
                let dy = rng.vec(rows * cols, -1.0, 1.0);
                let eps = 1e-5;
                let (mut y, mut mean, mut rstd) =
                    (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
                arch.forced(|| {
                    layernorm_forward(
                        &x, &gamma, &beta, eps, &mut y, &mut mean, &mut rstd, rows, cols,
                    )
                })
                .unwrap();
                let (mut dx, mut dg, mut db) =
                    (vec![0.0; rows * cols], vec![9.0; cols], vec![9.0; cols]);
                arch.forced(|| {
                    layernorm_backward(
                        &dy, &x, &gamma, &mean, &rstd, &mut dx, &mut dg, &mut db, rows, cols,
                    )
                })
                .unwrap();

                let (xd, dyd) = (f64s(&x), f64s(&dy));
                let (mut wy, mut wm, mut wr) =
                    (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
                let (mut wdx, mut wdg, mut wdb) =
                    (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
                for r in 0..rows {
                    let xr = &xd[r * cols..][..cols];
                    let g = &dyd[r * cols..][..cols];
                    let mu = xr.iter().sum::<f64>() / cols as f64;
                    let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / cols as f64;
                    let rs = 1.0 / (var + eps as f64).sqrt();
                    let xhat: Vec<f64> = xr.iter().map(|v| (v - mu) * rs).collect();
                    let gn: Vec<f64> = (0..cols).map(|j| g[j] * gamma[j] as f64).collect();
                    let a = gn.iter().sum::<f64>() / cols as f64;
                    let b = (0..cols).map(|j| gn[j] * xhat[j]).sum::<f64>() / cols as f64;
                    for j in 0..cols {
                        wy[r * cols + j] = xhat[j] * gamma[j] as f64 + beta[j] as f64;
                        wdx[r * cols + j] = rs * (gn[j] - a - xhat[j] * b);
                        wdg[j] += g[j] * xhat[j];
                        wdb[j] += g[j];
                    }
                    wm[r] = mu;
                    wr[r] = rs;
                }
                let what = format!("{:?} cols {cols}", arch.level());
                assert_close(&format!("{what} y"), &y, &wy, 1e-4, 1e-5);
                assert_close(&format!("{what} mean"), &mean, &wm, 1e-6, 1e-6);
                assert_close(&format!("{what} rstd"), &rstd, &wr, 1e-4, 0.0);
                assert_close(&format!("{what} dx"), &dx, &wdx, 1e-3, 1e-4);
                assert_close(&format!("{what} dgamma"), &dg, &wdg, 1e-3, 1e-4);
                assert_close(&format!("{what} dbeta"), &db, &wdb, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn rmsnorm_matches_naive() {
        let mut rng = Rng::new(11);
        for arch in Arch::supported() {
            for &cols in &SIZES {
                let rows = 5;
                let x = rng.vec(rows * cols, -2.0, 2.0);
                let gamma = rng.vec(cols, 0.5, 1.5);
                let dy = rng.vec(rows * cols, -1.0, 1.0);
                let eps = 1e-6;
                let (mut y, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows]);
                arch.forced(|| rmsnorm_forward(&x, &gamma, eps, &mut y, &mut rstd, rows, cols))
                    .unwrap();
                let (mut dx, mut dg) = (vec![0.0; rows * cols], vec![9.0; cols]);
                arch.forced(|| {
                    rmsnorm_backward(&dy, &x, &gamma, &rstd, &mut dx, &mut dg, rows, cols)
                })
                .unwrap();

                let (xd, dyd) = (f64s(&x), f64s(&dy));
                let (mut wy, mut wr) = (vec![0.0; rows * cols], vec![0.0; rows]);
                let (mut wdx, mut wdg) = (vec![0.0; rows * cols], vec![0.0; cols]);
                for r in 0..rows {
                    let xr = &xd[r * cols..][..cols];
                    let g = &dyd[r * cols..][..cols];
                    let rs = 1.0
                        / (xr.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps as f64).sqrt();
                    let s = (0..cols)
                        .map(|j| g[j] * gamma[j] as f64 * xr[j])
                        .sum::<f64>()
                        / cols as f64;
                    for j in 0..cols {
                        wy[r * cols + j] = xr[j] * rs * gamma[j] as f64;
                        wdx[r * cols + j] = rs * (g[j] * gamma[j] as f64 - xr[j] * rs * rs * s);
                        wdg[j] += g[j] * xr[j] * rs;
                    }
                    wr[r] = rs;
                }
                let what = format!("{:?} cols {cols}", arch.level());
                assert_close(&format!("{what} y"), &y, &wy, 1e-5, 1e-6);
                assert_close(&format!("{what} rstd"), &rstd, &wr, 1e-5, 0.0);
                assert_close(&format!("{what} dx"), &dx, &wdx, 1e-4, 1e-5);
                assert_close(&format!("{what} dgamma"), &dg, &wdg, 1e-4, 1e-5);
            }
        }
    }

    #[test]
    fn layernorm_backward_is_deterministic_across_threads() {
        let (rows, cols) = (333, 700);
        let mut rng = Rng::new(12);
        let (x, dy) = (
            rng.vec(rows * cols, -1.0, 1.0),
            rng.vec(rows * cols, -1.0, 1.0),
        );
        let gamma = rng.vec(cols, 0.5, 1.5);
        let (mean, rstd) = (vec![0.1; rows], vec![1.2; rows]);
        let run = |threads: usize| {
            in_pool(threads, || {
                let (mut dx, mut dg, mut db) =
                    (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
                layernorm_backward(
                    &dy, &x, &gamma, &mean, &rstd, &mut dx, &mut dg, &mut db, rows, cols,
                )
                .unwrap();
                (dx, dg, db)
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn norm_rejects_bad_lengths() {
        let mut y = vec![0.0; 6];
        let (mut m, mut r) = (vec![0.0; 2], vec![0.0; 2]);
        assert!(layernorm_forward(
            &[0.0; 6], &[1.0; 3], &[0.0; 2], 1e-5, &mut y, &mut m, &mut r, 2, 3
        )
        .is_err());
        assert!(rmsnorm_forward(&[0.0; 5], &[1.0; 3], 1e-5, &mut y, &mut r, 2, 3).is_err());
        assert!(rmsnorm_forward(&[0.0; 6], &[1.0; 3], -1.0, &mut y, &mut r, 2, 3).is_err());
    }
}
