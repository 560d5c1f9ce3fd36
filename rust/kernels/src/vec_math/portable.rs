//! The portable register: eight f32 lanes in an array. Every operation is
//! a plain loop over the lanes, which LLVM turns into SSE (or whatever the
//! target has) without any `std::arch`.

use std::ops::{Add, Div, Mul, Sub};

use super::Vf32;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct F32x8(pub [f32; 8]);

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> F32x8 {
    let mut out = [0.0; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
    F32x8(out)
}

macro_rules! binop {
    ($tr:ident, $f:ident, $op:tt) => {
        impl $tr for F32x8 {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                lanes(|i| self.0[i] $op o.0[i])
            }
        }
    };
}
binop!(Add, add, +);
binop!(Sub, sub, -);
binop!(Mul, mul, *);
binop!(Div, div, /);

impl Vf32 for F32x8 {
    const N: usize = 8;

    #[inline(always)]
    fn splat(x: f32) -> Self {
        F32x8([x; 8])
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        let mut out = [0.0; 8];
        out.copy_from_slice(&s[..8]);
        F32x8(out)
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        s[..8].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // Unfused: `f32::mul_add` is a libm call on targets without FMA.
        lanes(|i| self.0[i] * b.0[i] + c.0[i])
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        lanes(|i| {
            if self.0[i] > o.0[i] {
                self.0[i]
            } else {
                o.0[i]
            }
        })
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        lanes(|i| {
            if self.0[i] < o.0[i] {
                self.0[i]
            } else {
                o.0[i]
            }
        })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        lanes(|i| self.0[i].sqrt())
    }
    #[inline(always)]
    fn ldexp(self, n: Self) -> Self {
        lanes(|i| self.0[i] * f32::from_bits(((n.0[i] as i32 + 127) << 23) as u32))
    }
    #[inline(always)]
    fn lt_select(self, o: Self, a: Self, b: Self) -> Self {
        lanes(|i| if self.0[i] < o.0[i] { a.0[i] } else { b.0[i] })
    }
    #[inline(always)]
    fn swap_pairs(self) -> Self {
        lanes(|i| self.0[i ^ 1])
    }
    #[inline(always)]
    fn reduce_sum(self) -> f32 {
        let v = self.0;
        ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        self.0
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    }
}
