//! Vector math shared by the row-wise kernels (softmax, norms, activations,
//! losses, rope, optimizers): one trait, [`Vf32`], over a SIMD register of
//! f32 lanes, implemented for AVX-512 (16 lanes), AVX2+FMA (8 lanes) and a
//! portable `[f32; 8]` that LLVM autovectorises; lane-wise `exp`,
//! `sigmoid` and `erfc` written once on top of it; and the fixed row
//! chunking that keeps every parallel reduction deterministic. A kernel
//! gets its register type from a [`crate::simd::Simd`] token (`S::V`)
//! and runs inside the token's `vectorize`.
//!
//! A kernel is written as an `#[inline(always)]` function generic over
//! `V: Vf32`; every trait method is `#[inline(always)]` too, so the whole
//! body is inlined into the `#[target_feature]` wrapper and the intrinsics
//! compile to plain instructions there.

use std::ops::{Add, Div, Mul, Sub};

pub(crate) mod portable;

#[cfg(test)]
pub(crate) mod testing;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
mod x86;

/// A window of one row handed to a loop body by [`lanes!`]: lanes
/// `i .. i + w`, with `w == V::N` except in the tail.
#[derive(Clone, Copy, Debug)]
pub struct Lanes {
    pub i: usize,
    pub w: usize,
}

/// The widest register any level uses, for stack buffers.
pub const MAX_LANES: usize = 16;

/// A register of `N` f32 lanes.
///
/// Values of the AVX2 and AVX-512 registers are made only by the methods
/// of their token (see `avx2.rs`, `avx512.rs`), so holding one proves the
/// CPU runs its instructions.
pub(crate) trait Vf32:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    const N: usize;

    fn splat(x: f32) -> Self;
    /// Loads `N` lanes from `s[..N]`; `s` must hold at least `N`.
    fn load(s: &[f32]) -> Self;
    /// Stores the `N` lanes into `s[..N]`; `s` must hold at least `N`.
    fn store(self, s: &mut [f32]);
    /// `self * b + c`, fused where the level has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// Lane-wise maximum; where either lane is NaN the result is `o`'s lane
    /// (x86's `maxps`), so `V::splat(c).max(x)` keeps a NaN of `x`.
    fn max(self, o: Self) -> Self;
    /// Lane-wise minimum; NaN as for [`Vf32::max`]: `o`'s lane wins.
    fn min(self, o: Self) -> Self;
    fn sqrt(self) -> Self;
    /// `self * 2^n` for `n` holding integral values in `[-126, 127]`.
    fn ldexp(self, n: Self) -> Self;
    /// Rounds to the nearest integer, ties to even, for `|x| < 2^22`; NaN
    /// stays NaN. By default adding and subtracting 1.5 * 2^23, which
    /// leaves the integer in the low bits; AVX2 and AVX-512 have one
    /// instruction for it.
    #[inline(always)]
    fn round(self) -> Self {
        let magic = Self::splat(12_582_912.0);
        (self + magic) - magic
    }
    /// [`Vf32::ldexp`] where the product is known to be a normal number:
    /// then raising the exponent bits by `n` is the same multiply, and
    /// AVX2 does it in two integer operations instead of three and a
    /// multiply. Any other product is unspecified (no overflow to inf).
    #[inline(always)]
    fn ldexp_normal(self, n: Self) -> Self {
        self.ldexp(n)
    }
    /// Lane-wise `if self < o { a } else { b }`.
    fn lt_select(self, o: Self, a: Self, b: Self) -> Self;
    /// Exchanges lanes `2k` and `2k + 1` (rope's adjacent pairs).
    fn swap_pairs(self) -> Self;
    fn reduce_sum(self) -> f32;
    fn reduce_max(self) -> f32;

    fn zero() -> Self {
        Self::splat(0.0)
    }

    /// Loads `s[l.i .. l.i + l.w]`, lanes past `l.w` filled with `fill`.
    #[inline(always)]
    fn get(s: &[f32], l: Lanes, fill: f32) -> Self {
        if l.w == Self::N {
            Self::load(&s[l.i..l.i + Self::N])
        } else {
            let mut buf = [fill; MAX_LANES];
            buf[..l.w].copy_from_slice(&s[l.i..l.i + l.w]);
            Self::load(&buf)
        }
    }

    /// Stores the first `l.w` lanes into `s[l.i ..]`.
    #[inline(always)]
    fn put(self, s: &mut [f32], l: Lanes) {
        if l.w == Self::N {
            self.store(&mut s[l.i..l.i + Self::N]);
        } else {
            let mut buf = [0.0; MAX_LANES];
            self.store(&mut buf);
            s[l.i..l.i + l.w].copy_from_slice(&buf[..l.w]);
        }
    }

    /// Sets the lanes past `l.w` to `v`, so that a tail adds nothing to a
    /// reduction (0 for sums, -inf for maxima).
    #[inline(always)]
    fn pad(self, l: Lanes, v: f32) -> Self {
        if l.w == Self::N {
            self
        } else {
            let mut buf = [0.0; MAX_LANES];
            self.store(&mut buf);
            buf[l.w..].fill(v);
            Self::load(&buf)
        }
    }
}

/// Runs `body` over a row of `n` lanes, `V::N` at a time, then the tail:
/// `lanes!(V, n, l => { ... })` binds `l: Lanes`. The body is pasted twice,
/// with `l.w == V::N` known in the main loop, so that `get`/`put` become
/// plain loads and stores there. A macro, not a closure: a closure is its
/// own function, compiled without the caller's `#[target_feature]`s, and
/// the intrinsics in it would stay calls.
#[macro_export]
macro_rules! lanes {
    ($V:ty, $n:expr, $l:ident => $body:block) => {{
        let n: usize = $n;
        let w = <$V as $crate::vec_math::Vf32>::N;
        // A counted loop over whole registers (no `i + w <= n`, which LLVM
        // cannot always prove free of overflow once the body sits behind a
        // token's closure: it then keeps a bounds check in the loop and does
        // not unroll it).
        let full = n / w;
        for c in 0..full {
            let $l = $crate::vec_math::Lanes { i: c * w, w };
            $body
        }
        let i = full * w;
        if i < n {
            let $l = $crate::vec_math::Lanes { i, w: n - i };
            $body
        }
    }};
}

// The row reductions below keep two accumulators and take two registers
// per step: one accumulator is a chain of dependent adds (4 cycles each),
// two let the core overlap them. The tail goes through `lanes!`.

/// `max_i scale * x[i]`; `-inf` for an empty row.
#[inline(always)]
pub(crate) fn max_scaled<V: Vf32>(x: &[f32], scale: f32) -> f32 {
    let s = V::splat(scale);
    let (mut m0, mut m1) = (V::splat(f32::NEG_INFINITY), V::splat(f32::NEG_INFINITY));
    let pairs = x.len() / (2 * V::N) * (2 * V::N);
    for p in x[..pairs].chunks_exact(2 * V::N) {
        m0 = m0.max(V::load(p) * s);
        m1 = m1.max(V::load(&p[V::N..]) * s);
    }
    let rest = &x[pairs..];
    lanes!(V, rest.len(), l => {
        m0 = m0.max((V::get(rest, l, 0.0) * s).pad(l, f32::NEG_INFINITY));
    });
    m0.max(m1).reduce_max()
}

/// `(max_i x[i], sum_i x[i])` in one pass; `(-inf, 0)` for an empty row.
#[inline(always)]
pub(crate) fn max_and_sum<V: Vf32>(x: &[f32]) -> (f32, f32) {
    let (mut m0, mut m1) = (V::splat(f32::NEG_INFINITY), V::splat(f32::NEG_INFINITY));
    let (mut s0, mut s1) = (V::zero(), V::zero());
    let pairs = x.len() / (2 * V::N) * (2 * V::N);
    for p in x[..pairs].chunks_exact(2 * V::N) {
        let (a, b) = (V::load(p), V::load(&p[V::N..]));
        m0 = m0.max(a);
        m1 = m1.max(b);
        s0 = s0 + a;
        s1 = s1 + b;
    }
    let rest = &x[pairs..];
    lanes!(V, rest.len(), l => {
        let v = V::get(rest, l, 0.0);
        m0 = m0.max(v.pad(l, f32::NEG_INFINITY));
        s0 = s0 + v;
    });
    (m0.max(m1).reduce_max(), (s0 + s1).reduce_sum())
}

/// `sum_i e^(scale x[i] + shift)`; with `out`, each term is stored there too.
#[inline(always)]
pub(crate) fn sum_exp<V: Vf32>(
    x: &[f32],
    scale: f32,
    shift: f32,
    mut out: Option<&mut [f32]>,
) -> f32 {
    let (sc, sh) = (V::splat(scale), V::splat(shift));
    let (mut s0, mut s1) = (V::zero(), V::zero());
    let pairs = x.len() / (2 * V::N) * (2 * V::N);
    for (k, p) in x[..pairs].chunks_exact(2 * V::N).enumerate() {
        let a = exp(V::load(p).mul_add(sc, sh));
        let b = exp(V::load(&p[V::N..]).mul_add(sc, sh));
        if let Some(o) = &mut out {
            a.store(&mut o[k * 2 * V::N..]);
            b.store(&mut o[k * 2 * V::N + V::N..]);
        }
        s0 = s0 + a;
        s1 = s1 + b;
    }
    let rest = &x[pairs..];
    lanes!(V, rest.len(), l => {
        let e = exp(V::get(rest, l, 0.0).mul_add(sc, sh));
        if let Some(o) = &mut out {
            e.put(&mut o[pairs..], l);
        }
        s0 = s0 + e.pad(l, 0.0);
    });
    (s0 + s1).reduce_sum()
}

/// `sum_i a[i]`, lanes accumulated in f32.
#[inline(always)]
pub(crate) fn sum<V: Vf32>(a: &[f32]) -> f32 {
    let mut acc = V::zero();
    lanes!(V, a.len(), l => {
        acc = acc + V::get(a, l, 0.0);
    });
    acc.reduce_sum()
}

/// `sum_i a[i] b[i]`, lanes accumulated in f32; `b` at least as long as `a`.
#[inline(always)]
pub(crate) fn dot<V: Vf32>(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = V::zero();
    lanes!(V, a.len(), l => {
        acc = V::get(a, l, 0.0).mul_add(V::get(b, l, 0.0), acc);
    });
    acc.reduce_sum()
}

/// Below this `exp` returns exactly 0 (the smallest normal is `exp(-87.34)`).
const EXP_LO: f32 = -87.336_54;
/// Inputs are clamped to this, just above `128 ln 2`, so that `2^n` is at
/// most `2^128` = +inf: `exp(+inf)` and every `x >= 88.73` give +inf.
const EXP_HI: f32 = 88.73;

/// Lane-wise `e^x`, relative error about 1e-7 (1-2 ulp).
///
/// `x = n ln2 + r` with `n` an integer and `|r| <= ln2 / 2`; `e^r` is a
/// degree-6 polynomial (Cephes' `expf` coefficients) and `2^n` is built in
/// the exponent bits. `ln2` is split in two (Cody-Waite) so that `r` keeps
/// its low bits. Lanes below [`EXP_LO`] give 0, so `-inf` logits vanish;
/// NaN stays NaN, and large lanes overflow to +inf (from about 88.38 up,
/// where `2^n` leaves the exponent range, on the levels that build `2^n`
/// in the exponent bits; from 88.72 with AVX-512's `scalef`).
#[inline(always)]
pub(crate) fn exp<V: Vf32>(x: V) -> V {
    // The constant first: `max`/`min` return their second operand for NaN.
    let xc = V::splat(EXP_HI).min(V::splat(EXP_LO).max(x));
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low bits.
    let magic = V::splat(12_582_912.0);
    let n = xc.mul_add(V::splat(std::f32::consts::LOG2_E), magic) - magic;
    let r = n.mul_add(V::splat(-0.693_359_4), xc);
    let r = n.mul_add(V::splat(2.121_944_4e-4), r);
    let mut p = V::splat(1.987_569_1e-4);
    p = p.mul_add(r, V::splat(1.398_2e-3));
    p = p.mul_add(r, V::splat(8.333_452e-3));
    p = p.mul_add(r, V::splat(4.166_579_6e-2));
    p = p.mul_add(r, V::splat(0.166_666_65));
    p = p.mul_add(r, V::splat(0.5));
    let er = p.mul_add(r * r, r + V::splat(1.0));
    let y = er.ldexp(n);
    x.lt_select(V::splat(EXP_LO), V::zero(), y)
}

/// Taylor coefficients of 2^f = e^(f·ln2): (ln2)^i / i!.
const EXP2_POLY: [f32; 7] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// Lane-wise `2^x`, relative error about 1e-7; exactly 0 below -125 (and
/// for -inf: never a subnormal, whose arithmetic costs a microcode assist),
/// +inf from 128 up, NaN for NaN. `2^x = 2^n · 2^f` with `n = round(x)`,
/// `|f| <= 1/2`, and `2^f` by its Taylor series in `f ln2` to degree 6.
/// The attention kernels keep their scores in base 2 for this.
#[inline(always)]
pub(crate) fn exp2<V: Vf32>(x: V) -> V {
    // The constants first: `max`/`min` return their second operand for NaN.
    let (p, n) = exp2_parts(V::splat(128.0).min(V::splat(-125.0).max(x)));
    x.lt_select(V::splat(-125.0), V::zero(), p.ldexp(n))
}

/// [`exp2`] for `x <= 0` (or NaN), with the same bits there: a score minus
/// its row's maximum. Nothing can overflow, so the clamp at 128 goes and
/// `2^n` is applied with [`Vf32::ldexp_normal`]. Above 0 the result is
/// unspecified (finite garbage, not +inf).
#[inline(always)]
pub(crate) fn exp2_nonpositive<V: Vf32>(x: V) -> V {
    let (p, n) = exp2_parts(V::splat(-125.0).max(x));
    x.lt_select(V::splat(-125.0), V::zero(), p.ldexp_normal(n))
}

/// `(2^f, n)` with `n = round(x)`, `f = x - n`, for `x` already clamped to
/// `[-125, 128]` (or NaN, which gives NaN).
#[inline(always)]
fn exp2_parts<V: Vf32>(x: V) -> (V, V) {
    let n = x.round();
    let f = x - n;
    let mut p = V::splat(EXP2_POLY[6]);
    for &c in EXP2_POLY[..6].iter().rev() {
        p = p.mul_add(f, V::splat(c));
    }
    (p, n)
}

/// Lane-wise `1 / (1 + e^-x)`; exact 0 and 1 at the far ends (and at
/// -inf, +inf); NaN for NaN.
#[inline(always)]
pub(crate) fn sigmoid<V: Vf32>(x: V) -> V {
    let one = V::splat(1.0);
    one / (one + exp(V::zero() - x))
}

/// Lane-wise `erfc(z)` for `z >= 0`, relative error below 4e-7 × (1 + z²)
/// (the f32 rounding of `z²` inside the exponent dominates far out).
///
/// The Chebyshev fit `t e^(-z² + P(t))`, `t = 1 / (1 + z/2)`, from
/// Numerical Recipes (`erfcc`): unlike `1 - erf`, it keeps its relative
/// accuracy in the far tail, which exact GELU needs for large negative x.
#[inline(always)]
pub(crate) fn erfc_nonneg<V: Vf32>(z: V) -> V {
    let one = V::splat(1.0);
    let t = one / z.mul_add(V::splat(0.5), one);
    let mut p = V::splat(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        p = p.mul_add(t, V::splat(c));
    }
    t * exp(p - z * z)
}

/// The exact softmax of one row of scores, in place, in f64, for the rows
/// the fast kernels hand back because something in them is not finite
/// (the fast paths keep one check per row, never one per element). The
/// semantics are the NumPy reference's: the shift is the row's maximum
/// where that is finite and 0 otherwise, so any NaN gives a NaN row, a
/// +inf gives NaN at the +inf entries and 0 elsewhere, and a row with
/// nothing above -inf gives zeros. Returns the log-sum-exp (-inf when the
/// sum is 0). Only the visible scores belong in `s`.
pub fn softmax_exact(s: &mut [f64]) -> f64 {
    // A plain `f64::max` would skip NaN.
    let m = s.iter().fold(f64::NEG_INFINITY, |a, &x| {
        if a.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            a.max(x)
        }
    });
    let shift = if m.is_finite() { m } else { 0.0 };
    let mut total = 0.0;
    for x in s.iter_mut() {
        *x = (*x - shift).exp();
        total += *x;
    }
    if total == 0.0 {
        return f64::NEG_INFINITY;
    }
    s.iter_mut().for_each(|x| *x /= total);
    total.ln() + shift
}

/// Rows per parallel task: about 32K elements, so that rayon's per-task
/// cost vanishes and an input of one task runs on the calling thread. It
/// depends on the sizes alone, never on the thread count, so chunked
/// reductions give the same bits on any pool.
pub fn chunk_rows(rows: usize, cols: usize) -> usize {
    const TARGET: usize = 1 << 15;
    (TARGET / cols.max(1)).clamp(1, rows.max(1))
}

/// Elements per parallel task for element-wise ops.
pub const CHUNK_ELEMS: usize = 1 << 15;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::simd::{dispatch, Simd};

    #[inline(always)]
    fn check_level<V: Vf32>(_: impl Simd<V = V>) {
        // exp against f64 over the whole useful range.
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let mut out = [0.0f32; MAX_LANES];
            exp(V::splat(x)).store(&mut out);
            let want = (x as f64).exp();
            worst = worst.max(((out[0] as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "exp worst rel err {worst}");
        let mut out = [1.0f32; MAX_LANES];
        exp(V::splat(f32::NEG_INFINITY)).store(&mut out);
        assert_eq!(out[0], 0.0);
        exp(V::splat(-100.0)).store(&mut out);
        assert_eq!(out[0], 0.0);
        // Non-finite lanes: NaN stays NaN, +inf and overflow give +inf.
        exp(V::splat(f32::NAN)).store(&mut out);
        assert!(out[0].is_nan());
        for x in [f32::INFINITY, 88.75, 1e30] {
            exp(V::splat(x)).store(&mut out);
            assert_eq!(out[0], f32::INFINITY, "exp({x})");
        }
        sigmoid(V::splat(f32::NAN)).store(&mut out);
        assert!(out[0].is_nan());
        sigmoid(V::splat(f32::NEG_INFINITY)).store(&mut out);
        assert_eq!(out[0], 0.0);
        sigmoid(V::splat(f32::INFINITY)).store(&mut out);
        assert_eq!(out[0], 1.0);

        // erfc against a series-free f64 reference: erfc(z) = 1 - erf(z) with
        // erf from its Taylor series (converges fast for z <= 3), and the far
        // tail through the continued fraction.
        let mut worst: f64 = 0.0;
        let mut z = 0.0f32;
        while z < 9.0 {
            erfc_nonneg(V::splat(z)).store(&mut out);
            let want = erfc_f64(z as f64);
            // The f32 rounding of z² alone costs z² * 6e-8 relative.
            let rel = ((out[0] as f64 - want) / want).abs() / (1.0 + (z * z) as f64);
            worst = worst.max(rel);
            z += 0.011;
        }
        assert!(worst < 4e-7, "erfc worst rel err / (1 + z²) {worst}");

        // swap_pairs, reductions, tails.
        let src: Vec<f32> = (0..V::N).map(|i| i as f32).collect();
        V::load(&src).swap_pairs().store(&mut out);
        for (i, &o) in out[..V::N].iter().enumerate() {
            assert_eq!(o, (i ^ 1) as f32);
        }
        assert_eq!(V::load(&src).reduce_sum(), (V::N * (V::N - 1) / 2) as f32);
        assert_eq!(V::load(&src).reduce_max(), (V::N - 1) as f32);
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f32 = row.iter().map(|v| v * v).sum();
        let got = dot::<V>(&row, &row);
        assert!((got - want).abs() < 1e-5);
        let m = max_scaled::<V>(&row, -2.0);
        let want = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(-2.0 * v));
        assert_eq!(m, want);
    }

    pub fn erfc_f64(z: f64) -> f64 {
        if z < 3.0 {
            let mut term = z;
            let mut sum = z;
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Lentz-free continued fraction, evaluated backwards.
            let mut f = 0.0;
            for k in (1..100).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
        }
    }

    #[test]
    fn vec_math_every_level() {
        for arch in crate::simd::Arch::supported() {
            dispatch!(arch, |s| s.vectorize(
                #[inline(always)]
                || check_level(s)
            ));
        }
    }
}
