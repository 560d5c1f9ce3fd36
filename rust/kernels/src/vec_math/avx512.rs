//! The AVX-512 register: sixteen f32 lanes in a `__m512`. Only valid inside
//! functions compiled with `#[target_feature(enable = "avx512f,avx2,fma")]`.

use std::arch::x86_64::*;
use std::ops::{Add, Div, Mul, Sub};

use super::Vf32;

#[derive(Clone, Copy, Debug)]
pub struct F32x16(pub __m512);

macro_rules! binop {
    ($tr:ident, $f:ident, $intr:ident) => {
        impl $tr for F32x16 {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                // SAFETY: this type is only used where AVX-512F is enabled.
                unsafe { F32x16($intr(self.0, o.0)) }
            }
        }
    };
}
binop!(Add, add, _mm512_add_ps);
binop!(Sub, sub, _mm512_sub_ps);
binop!(Mul, mul, _mm512_mul_ps);
binop!(Div, div, _mm512_div_ps);

// SAFETY (every `unsafe` below): the type is only used inside
// `#[target_feature(enable = "avx512f,avx2,fma")]` code, and loads and
// stores are bounds-checked by the slice index before the pointer is taken.
impl Vf32 for F32x16 {
    const N: usize = 16;

    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_set1_ps(x)) }
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        let s = &s[..16];
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_loadu_ps(s.as_ptr())) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        let s = &mut s[..16];
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_max_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_min_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_sqrt_ps(self.0)) }
    }
    #[inline(always)]
    fn ldexp(self, n: Self) -> Self {
        // One instruction where AVX2 needs convert, add, shift and multiply.
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_scalef_ps(self.0, n.0)) }
    }
    #[inline(always)]
    fn round(self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe {
            F32x16(_mm512_roundscale_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(self.0))
        }
    }
    #[inline(always)]
    fn lt_select(self, o: Self, a: Self, b: Self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe {
            let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0);
            F32x16(_mm512_mask_blend_ps(m, b.0, a.0))
        }
    }
    #[inline(always)]
    fn swap_pairs(self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { F32x16(_mm512_permute_ps::<0b10_11_00_01>(self.0)) }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f32 {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { _mm512_reduce_add_ps(self.0) }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: only code compiled for AVX-512F holds this type (module note).
        unsafe { _mm512_reduce_max_ps(self.0) }
    }
}
