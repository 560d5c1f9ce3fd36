//! The AVX2+FMA register: eight f32 lanes in a `__m256`. Only valid inside
//! functions compiled with `#[target_feature(enable = "avx2,fma")]`.

use std::arch::x86_64::*;
use std::ops::{Add, Div, Mul, Sub};

use super::Vf32;

#[derive(Clone, Copy, Debug)]
pub struct F32x8(pub __m256);

macro_rules! binop {
    ($tr:ident, $f:ident, $intr:ident) => {
        impl $tr for F32x8 {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                // SAFETY: this type is only used where AVX2 is enabled.
                unsafe { F32x8($intr(self.0, o.0)) }
            }
        }
    };
}
binop!(Add, add, _mm256_add_ps);
binop!(Sub, sub, _mm256_sub_ps);
binop!(Mul, mul, _mm256_mul_ps);
binop!(Div, div, _mm256_div_ps);

// SAFETY (every `unsafe` below): the type is only used inside
// `#[target_feature(enable = "avx2,fma")]` code, and loads and stores are
// bounds-checked by the slice index before the raw pointer is taken.
impl Vf32 for F32x8 {
    const N: usize = 8;

    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_set1_ps(x)) }
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        let s = &s[..8];
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_loadu_ps(s.as_ptr())) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        let s = &mut s[..8];
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_max_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_min_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_sqrt_ps(self.0)) }
    }
    #[inline(always)]
    fn ldexp(self, n: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            let n = _mm256_cvtps_epi32(n.0);
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)));
            F32x8(_mm256_mul_ps(self.0, _mm256_castsi256_ps(bits)))
        }
    }
    #[inline(always)]
    fn round(self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            F32x8(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(self.0))
        }
    }
    #[inline(always)]
    fn ldexp_normal(self, n: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n.0));
            F32x8(_mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(self.0),
                e,
            )))
        }
    }
    #[inline(always)]
    fn lt_select(self, o: Self, a: Self, b: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            let m = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0);
            F32x8(_mm256_blendv_ps(b.0, a.0, m))
        }
    }
    #[inline(always)]
    fn swap_pairs(self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe { F32x8(_mm256_permute_ps::<0b10_11_00_01>(self.0)) }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f32 {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            let s = _mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            );
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: only code compiled for AVX2 and FMA holds this type (module note).
        unsafe {
            let s = _mm_max_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            );
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}
