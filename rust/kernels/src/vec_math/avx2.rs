//! The AVX2+FMA register: eight f32 lanes in a `__m256`. Only valid inside
//! functions compiled with `#[target_feature(enable = "avx2,fma")]`.

use std::arch::x86_64::*;

use super::x86::x86_register;

/// The four 128-bit steps that fold a `__m256` to lane 0 with `$op` (the
/// last step on one lane, `$op_ss`).
macro_rules! fold {
    ($v:expr, $op:ident, $op_ss:ident) => {{
        let s = $op(_mm256_castps256_ps128($v), _mm256_extractf128_ps::<1>($v));
        let s = $op(s, _mm_movehl_ps(s, s));
        let s = $op_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }};
}

x86_register! {
    F32x8(__m256), 8;
    add _mm256_add_ps, sub _mm256_sub_ps, mul _mm256_mul_ps, div _mm256_div_ps,
    splat _mm256_set1_ps, load _mm256_loadu_ps, store _mm256_storeu_ps,
    mul_add _mm256_fmadd_ps, max _mm256_max_ps, min _mm256_min_ps, sqrt _mm256_sqrt_ps;

    #[inline(always)]
    fn ldexp(self, n: Self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type.
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
        // SAFETY: only code compiled for AVX2 and FMA holds this type.
        unsafe {
            let m = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0);
            F32x8(_mm256_blendv_ps(b.0, a.0, m))
        }
    }
    #[inline(always)]
    fn swap_pairs(self) -> Self {
        // SAFETY: only code compiled for AVX2 and FMA holds this type.
        unsafe { F32x8(_mm256_permute_ps::<0b10_11_00_01>(self.0)) }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f32 {
        // SAFETY: only code compiled for AVX2 and FMA holds this type.
        unsafe { fold!(self.0, _mm_add_ps, _mm_add_ss) }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: only code compiled for AVX2 and FMA holds this type.
        unsafe { fold!(self.0, _mm_max_ps, _mm_max_ss) }
    }
}
