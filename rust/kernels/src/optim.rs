//! AdamW, one fused pass over parameters, gradients and both moments.
//!
//! PyTorch's semantics: decoupled weight decay `p *= 1 - lr wd`, then
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g²` and
//! `p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)` with
//! `bc_i = 1 - b_i^step`.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{Vf32, CHUNK_ELEMS};

/// The per-step scalars, bias corrections folded in.
#[derive(Clone, Copy, Debug)]
struct Coefs {
    decay: f32,
    b1: f32,
    b2: f32,
    /// `1 - b1` and `1 - b2`, taken in f64: `1 - 0.999f32` is 1e-5 off.
    c1: f32,
    c2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
}

/// One AdamW step over a chunk: `p, g, m, v (n,)`.
#[inline(always)]
fn adamw<S: Simd>(s: S, k: Coefs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let (b1, b2) = (s.splat(k.b1), s.splat(k.b2));
    let (c1, c2) = (s.splat(k.c1), s.splat(k.c2));
    let (decay, step, inv_bc2, eps) = (
        s.splat(k.decay),
        s.splat(k.step_size),
        s.splat(k.inv_sqrt_bc2),
        s.splat(k.eps),
    );
    lanes!(S::V, n, l => {
        let gv = s.get(g, l, 0.0);
        let mv = gv.mul_add(c1, s.get(m, l, 0.0) * b1);
        let vv = (gv * gv).mul_add(c2, s.get(v, l, 0.0) * b2);
        let denom = vv.sqrt().mul_add(inv_bc2, eps);
        let pv = s.get(p, l, 0.0) * decay - step * mv / denom;
        mv.put(m, l);
        vv.put(v, l);
        pv.put(p, l);
    });
}

/// One AdamW step in place on `param, m, v`; all four slices `(n,)`. The
/// hyper-parameters are f64, as Python hands them, so that `1 - beta2` and
/// the bias corrections are exact before they are rounded to f32.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let n = param.len();
    check_len(OP, "grad", grad.len(), &[n])?;
    check_len(OP, "m", m.len(), &[n])?;
    check_len(OP, "v", v.len(), &[n])?;
    if step < 1 {
        return Err(Error::Value(format!("{OP}: step must be >= 1, got {step}")));
    }
    for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::Value(format!(
                "{OP}: {name} must be in [0, 1), got {b}"
            )));
        }
    }
    let step_i = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - beta1.powi(step_i);
    let bc2 = 1.0 - beta2.powi(step_i);
    let k = Coefs {
        decay: (1.0 - lr * weight_decay) as f32,
        b1: beta1 as f32,
        b2: beta2 as f32,
        c1: (1.0 - beta1) as f32,
        c2: (1.0 - beta2) as f32,
        step_size: (lr / bc1) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        eps: eps as f32,
    };
    dispatch!(|s| param
        .par_chunks_mut(CHUNK_ELEMS)
        .zip(
            m.par_chunks_mut(CHUNK_ELEMS)
                .zip(v.par_chunks_mut(CHUNK_ELEMS)),
        )
        .zip(grad.par_chunks(CHUNK_ELEMS))
        .for_each(|((pc, (mc, vc)), gc)| vectorized!(s, adamw(s, k, pc, gc, mc, vc))));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, Rng, SIZES};

    #[test]
    fn adamw_matches_naive() {
        let mut rng = Rng::new(60);
        for arch in Arch::supported() {
            for &n in &SIZES {
                let (mut p, g) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
                let (mut m, mut v) = (rng.vec(n, -0.1, 0.1), rng.vec(n, 0.0, 0.01));
                let (lr, b1, b2, eps, wd, step) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64, 3);
                let (mut wp, mut wm, mut wv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                for i in 0..n {
                    let gi = g[i] as f64;
                    wm[i] = b1 * m[i] as f64 + (1.0 - b1) * gi;
                    wv[i] = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
                    let mhat = wm[i] / (1.0 - b1.powi(step));
                    let vhat = wv[i] / (1.0 - b2.powi(step));
                    wp[i] = p[i] as f64 * (1.0 - lr * wd) - lr * mhat / (vhat.sqrt() + eps);
                }
                arch.forced(|| {
                    adamw_step(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, step as u64)
                })
                .unwrap();
                let what = format!("{:?} n {n}", arch.level());
                assert_close(&format!("{what} m"), &m, &wm, 1e-6, 1e-8);
                assert_close(&format!("{what} v"), &v, &wv, 1e-6, 1e-10);
                assert_close(&format!("{what} param"), &p, &wp, 1e-6, 1e-7);
            }
        }
    }

    #[test]
    fn adamw_rejects_bad_args() {
        let (mut p, mut m, mut v) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
        assert!(
            adamw_step(&mut p, &[0.0; 3], &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0).is_err()
        );
        assert!(
            adamw_step(&mut p, &[0.0; 2], &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1).is_err()
        );
    }
}
