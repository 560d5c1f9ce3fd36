//! Element-wise activations and their backward: GELU (tanh and exact erf),
//! ReLU, SiLU, and the SwiGLU gate `silu(gate) * up`.
//!
//! Every op is one pass over memory in fixed chunks of
//! [`CHUNK_ELEMS`](crate::vec_math::CHUNK_ELEMS); the transcendental parts
//! come from [`vec_math`](crate::vec_math) and are written so that no lane
//! gives NaN or loses its relative accuracy in the tails:
//! `0.5 x (1 + tanh(u)) = x sigmoid(2u)`, and exact GELU uses `erfc` for
//! `x < 0` instead of `1 + erf`.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{erfc_nonneg, exp, sigmoid, Vf32, CHUNK_ELEMS};

/// Which GELU: the tanh approximation or the exact erf form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    Tanh,
    Erf,
}

impl Gelu {
    /// PyTorch's spelling: `"tanh"` or `"none"` (exact).
    pub fn parse(op: &str, approximate: &str) -> Result<Gelu> {
        match approximate {
            "tanh" => Ok(Gelu::Tanh),
            "none" => Ok(Gelu::Erf),
            other => Err(Error::Value(format!(
                "{op}: approximate must be \"tanh\" or \"none\", got {other:?}"
            ))),
        }
    }
}

/// The one-input activations.
#[derive(Clone, Copy, Debug)]
enum Unary {
    GeluTanh,
    GeluErf,
    Relu,
    Silu,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `Phi(x)`, the standard normal CDF, accurate in both tails.
#[inline(always)]
fn normal_cdf<V: Vf32>(x: V) -> V {
    let half_erfc = erfc_nonneg(x.max(V::zero() - x) * V::splat(std::f32::consts::FRAC_1_SQRT_2))
        * V::splat(0.5);
    x.lt_select(V::zero(), half_erfc, V::splat(1.0) - half_erfc)
}

/// `2u` of tanh-GELU, `u = sqrt(2/pi) (x + 0.044715 x³)`.
#[inline(always)]
fn gelu_two_u<V: Vf32>(x: V) -> V {
    (x * x).mul_add(V::splat(GELU_C), V::splat(1.0)) * x * V::splat(2.0 * SQRT_2_OVER_PI)
}

#[inline(always)]
fn forward_lane<V: Vf32>(op: Unary, x: V) -> V {
    match op {
        Unary::GeluTanh => x * sigmoid(gelu_two_u(x)),
        Unary::GeluErf => x * normal_cdf(x),
        // Zero first: `max` returns its second operand for NaN, so NaN stays.
        Unary::Relu => V::zero().max(x),
        Unary::Silu => x * sigmoid(x),
    }
}

/// `dy * f'(x)`.
#[inline(always)]
fn backward_lane<V: Vf32>(op: Unary, dy: V, x: V) -> V {
    let one = V::splat(1.0);
    match op {
        Unary::GeluTanh => {
            // d/dx [x s(2u)] = s + x s (1 - s) 2u', u' = k (1 + 3c x²).
            let s = sigmoid(gelu_two_u(x));
            let du2 = (x * x).mul_add(V::splat(3.0 * GELU_C), one) * V::splat(2.0 * SQRT_2_OVER_PI);
            dy * (x * s * (one - s)).mul_add(du2, s)
        }
        Unary::GeluErf => {
            let pdf = exp(x * x * V::splat(-0.5)) * V::splat(FRAC_1_SQRT_2PI);
            dy * x.mul_add(pdf, normal_cdf(x))
        }
        Unary::Relu => V::zero().lt_select(x, dy, V::zero()),
        Unary::Silu => {
            let s = sigmoid(x);
            dy * s * (x * (one - s) + one)
        }
    }
}

/// `per_op!(op, OP => body)`: `body` once per op, with `OP` a constant
/// equal to `op`, so that each op gets a loop of its own in which the
/// lane functions' `match` folds away.
macro_rules! per_op {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            Unary::GeluTanh => per_op!(@ Unary::GeluTanh, $o => $body),
            Unary::GeluErf => per_op!(@ Unary::GeluErf, $o => $body),
            Unary::Relu => per_op!(@ Unary::Relu, $o => $body),
            Unary::Silu => per_op!(@ Unary::Silu, $o => $body),
        }
    };
    (@ $v:expr, $o:ident => $body:expr) => {{
        const $o: Unary = $v;
        $body
    }};
}

/// `y = f(x)` over one chunk; `x, y (n,)`.
#[inline(always)]
fn forward_chunk<V: Vf32>(_: impl Simd<V = V>, op: Unary, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    let y = &mut y[..n];
    per_op!(op, OP => lanes!(V, n, l => {
        forward_lane::<V>(OP, V::get(x, l, 0.0)).put(y, l);
    }));
}

/// `dx = dy * f'(x)` over one chunk; all `(n,)`.
#[inline(always)]
fn backward_chunk<V: Vf32>(_: impl Simd<V = V>, op: Unary, dy: &[f32], x: &[f32], dx: &mut [f32]) {
    let n = x.len();
    let (dy, dx) = (&dy[..n], &mut dx[..n]);
    per_op!(op, OP => lanes!(V, n, l => {
        backward_lane::<V>(OP, V::get(dy, l, 0.0), V::get(x, l, 0.0)).put(dx, l);
    }));
}

/// `h = silu(gate) * up` over one chunk.
#[inline(always)]
fn swiglu_chunk<V: Vf32>(_: impl Simd<V = V>, gate: &[f32], up: &[f32], h: &mut [f32]) {
    let n = gate.len();
    let (up, h) = (&up[..n], &mut h[..n]);
    lanes!(V, n, l => {
        let g = V::get(gate, l, 0.0);
        (g * sigmoid(g) * V::get(up, l, 0.0)).put(h, l);
    });
}

/// `dgate = dh * up * silu'(gate)`, `dup = dh * silu(gate)` over one chunk.
#[inline(always)]
fn swiglu_backward_chunk<V: Vf32>(
    _: impl Simd<V = V>,
    dh: &[f32],
    gate: &[f32],
    up: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
) {
    let n = gate.len();
    let (dh, up, dgate, dup) = (&dh[..n], &up[..n], &mut dgate[..n], &mut dup[..n]);
    let one = V::splat(1.0);
    lanes!(V, n, l => {
        let (d, g) = (V::get(dh, l, 0.0), V::get(gate, l, 0.0));
        let s = sigmoid(g);
        (d * V::get(up, l, 0.0) * s * (g * (one - s) + one)).put(dgate, l);
        (d * g * s).put(dup, l);
    });
}

fn check_same(op: &str, names: &[&str], lens: &[usize]) -> Result<()> {
    for (name, &len) in names.iter().zip(lens).skip(1) {
        check_len(op, name, len, &[lens[0]])?;
    }
    Ok(())
}

fn unary_forward(op: Unary, name: &str, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_same(name, &["x", "y"], &[x.len(), y.len()])?;
    dispatch!(|s| y
        .par_chunks_mut(CHUNK_ELEMS)
        .zip(x.par_chunks(CHUNK_ELEMS))
        .for_each(|(yc, xc)| vectorized!(s, forward_chunk(s, op, xc, yc))));
    Ok(())
}

fn unary_backward(op: Unary, name: &str, dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<()> {
    check_same(name, &["x", "dy", "dx"], &[x.len(), dy.len(), dx.len()])?;
    dispatch!(|s| dx
        .par_chunks_mut(CHUNK_ELEMS)
        .zip(dy.par_chunks(CHUNK_ELEMS).zip(x.par_chunks(CHUNK_ELEMS)))
        .for_each(|(dxc, (dyc, xc))| vectorized!(s, backward_chunk(s, op, dyc, xc, dxc))));
    Ok(())
}

fn gelu_op(g: Gelu) -> Unary {
    match g {
        Gelu::Tanh => Unary::GeluTanh,
        Gelu::Erf => Unary::GeluErf,
    }
}

/// GELU, `x, y (n,)`: tanh form `0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x³)))`
/// or exact `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu_forward(x: &[f32], y: &mut [f32], approximate: Gelu) -> Result<()> {
    unary_forward(gelu_op(approximate), "gelu_forward", x, y)
}

/// `dx = dy * gelu'(x)`; all `(n,)`.
pub fn gelu_backward(dy: &[f32], x: &[f32], dx: &mut [f32], approximate: Gelu) -> Result<()> {
    unary_backward(gelu_op(approximate), "gelu_backward", dy, x, dx)
}

/// `y = max(x, 0)`; `x, y (n,)`.
pub fn relu_forward(x: &[f32], y: &mut [f32]) -> Result<()> {
    unary_forward(Unary::Relu, "relu_forward", x, y)
}

/// `dx = dy` where `x > 0`, else 0; all `(n,)`.
pub fn relu_backward(dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<()> {
    unary_backward(Unary::Relu, "relu_backward", dy, x, dx)
}

/// `y = x sigmoid(x)`; `x, y (n,)`.
pub fn silu_forward(x: &[f32], y: &mut [f32]) -> Result<()> {
    unary_forward(Unary::Silu, "silu_forward", x, y)
}

/// `dx = dy s (1 + x (1 - s))`, `s = sigmoid(x)`; all `(n,)`.
pub fn silu_backward(dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<()> {
    unary_backward(Unary::Silu, "silu_backward", dy, x, dx)
}

/// `h = silu(gate) * up`; all `(n,)`.
pub fn swiglu_forward(gate: &[f32], up: &[f32], h: &mut [f32]) -> Result<()> {
    check_same(
        "swiglu_forward",
        &["gate", "up", "h"],
        &[gate.len(), up.len(), h.len()],
    )?;
    dispatch!(|s| h
        .par_chunks_mut(CHUNK_ELEMS)
        .zip(gate.par_chunks(CHUNK_ELEMS).zip(up.par_chunks(CHUNK_ELEMS)))
        .for_each(|(hc, (gc, uc))| vectorized!(s, swiglu_chunk(s, gc, uc, hc))));
    Ok(())
}

/// SwiGLU backward: `dgate = dh * up * silu'(gate)`, `dup = dh * silu(gate)`;
/// all `(n,)`.
pub fn swiglu_backward(
    dh: &[f32],
    gate: &[f32],
    up: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
) -> Result<()> {
    check_same(
        "swiglu_backward",
        &["gate", "dh", "up", "dgate", "dup"],
        &[gate.len(), dh.len(), up.len(), dgate.len(), dup.len()],
    )?;
    dispatch!(|s| dgate
        .par_chunks_mut(CHUNK_ELEMS)
        .zip(dup.par_chunks_mut(CHUNK_ELEMS))
        .zip(dh.par_chunks(CHUNK_ELEMS).zip(gate.par_chunks(CHUNK_ELEMS)))
        .zip(up.par_chunks(CHUNK_ELEMS))
        .for_each(|(((dgc, duc), (dhc, gc)), uc)| {
            vectorized!(s, swiglu_backward_chunk(s, dhc, gc, uc, dgc, duc))
        }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, Rng, SIZES};

    fn erf(x: f64) -> f64 {
        let e = crate::vec_math::tests::erfc_f64(x.abs());
        if x < 0.0 {
            e - 1.0
        } else {
            1.0 - e
        }
    }

    fn phi_cdf(x: f64) -> f64 {
        // 0.5 erfc(-x / sqrt 2), kept accurate in the lower tail.
        let z = -x / std::f64::consts::SQRT_2;
        if z >= 0.0 {
            0.5 * crate::vec_math::tests::erfc_f64(z)
        } else {
            0.5 * (1.0 + erf(-z))
        }
    }

    /// f64 references: (forward, derivative).
    fn reference(op: Unary, x: f64) -> (f64, f64) {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        match op {
            Unary::GeluTanh => {
                // 0.5 (1 + tanh u) = sigmoid(2u); `1 + tanh` in f64 would
                // cancel to nothing far out on the negative side.
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let u = k * (x + 0.044715 * x * x * x);
                let s = sig(2.0 * u);
                let du = k * (1.0 + 3.0 * 0.044715 * x * x);
                (x * s, s + x * 2.0 * s * (1.0 - s) * du)
            }
            Unary::GeluErf => {
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (x * phi_cdf(x), phi_cdf(x) + x * pdf)
            }
            Unary::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
            Unary::Silu => (x * sig(x), sig(x) * (1.0 + x * (1.0 - sig(x)))),
        }
    }

    #[test]
    fn activations_match_naive() {
        let mut rng = Rng::new(20);
        for arch in Arch::supported() {
            for op in [Unary::GeluTanh, Unary::GeluErf, Unary::Relu, Unary::Silu] {
                for &n in &SIZES {
                    let mut x = rng.vec(n, -9.0, 9.0);
                    x[0] = -20.0;
                    let dy = rng.vec(n, -1.0, 1.0);
                    let (mut y, mut dx) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                    arch.forced(|| unary_forward(op, "t", &x, &mut y)).unwrap();
                    arch.forced(|| unary_backward(op, "t", &dy, &x, &mut dx))
                        .unwrap();
                    let want_y: Vec<f64> = x.iter().map(|&v| reference(op, v as f64).0).collect();
                    let want_dx: Vec<f64> = x
                        .iter()
                        .zip(&dy)
                        .map(|(&v, &g)| g as f64 * reference(op, v as f64).1)
                        .collect();
                    let what = format!("{:?} {op:?} n {n}", arch.level());
                    assert_close(&format!("{what} y"), &y, &want_y, 2e-5, 1e-30);
                    assert_close(&format!("{what} dx"), &dx, &want_dx, 2e-5, 1e-7);
                }
            }
        }
    }

    #[test]
    fn swiglu_matches_naive() {
        let mut rng = Rng::new(21);
        for arch in Arch::supported() {
            for &n in &SIZES {
                let (g, u, dh) = (
                    rng.vec(n, -8.0, 8.0),
                    rng.vec(n, -2.0, 2.0),
                    rng.vec(n, -1.0, 1.0),
                );
                let mut h = vec![0.0; n];
                let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
                arch.forced(|| swiglu_forward(&g, &u, &mut h)).unwrap();
                arch.forced(|| swiglu_backward(&dh, &g, &u, &mut dg, &mut du))
                    .unwrap();
                let (mut wh, mut wdg, mut wdu) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                for i in 0..n {
                    let (silu, dsilu) = reference(Unary::Silu, g[i] as f64);
                    wh[i] = silu * u[i] as f64;
                    wdg[i] = dh[i] as f64 * u[i] as f64 * dsilu;
                    wdu[i] = dh[i] as f64 * silu;
                }
                let what = format!("{:?} n {n}", arch.level());
                assert_close(&format!("{what} h"), &h, &wh, 2e-5, 1e-7);
                assert_close(&format!("{what} dgate"), &dg, &wdg, 2e-5, 1e-7);
                assert_close(&format!("{what} dup"), &du, &wdu, 2e-5, 1e-7);
            }
        }
    }

    #[test]
    fn activation_errors() {
        assert!(Gelu::parse("gelu_forward", "erf").is_err());
        assert_eq!(Gelu::parse("gelu_forward", "none"), Ok(Gelu::Erf));
        let mut y = vec![0.0; 3];
        assert!(relu_forward(&[1.0; 4], &mut y).is_err());
        assert!(swiglu_forward(&[1.0; 3], &[1.0; 2], &mut y).is_err());
    }
}
