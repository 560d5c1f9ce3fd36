//! The AVX-512 register: sixteen f32 lanes in a `__m512`. Only valid inside
//! functions compiled with `#[target_feature(enable = "avx512f,avx2,fma")]`.

use std::arch::x86_64::*;

use super::x86::x86_register;

x86_register! {
    F32x16(__m512), 16;
    add _mm512_add_ps, sub _mm512_sub_ps, mul _mm512_mul_ps, div _mm512_div_ps,
    splat _mm512_set1_ps, load _mm512_loadu_ps, store _mm512_storeu_ps,
    mul_add _mm512_fmadd_ps, max _mm512_max_ps, min _mm512_min_ps, sqrt _mm512_sqrt_ps;

    #[inline(always)]
    fn ldexp(self, n: Self) -> Self {
        // One instruction where AVX2 needs convert, add, shift and multiply.
        // SAFETY: only code compiled for AVX-512F holds this type.
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
        // SAFETY: only code compiled for AVX-512F holds this type.
        unsafe {
            let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0);
            F32x16(_mm512_mask_blend_ps(m, b.0, a.0))
        }
    }
    #[inline(always)]
    fn swap_pairs(self) -> Self {
        // SAFETY: only code compiled for AVX-512F holds this type.
        unsafe { F32x16(_mm512_permute_ps::<0b10_11_00_01>(self.0)) }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f32 {
        // SAFETY: only code compiled for AVX-512F holds this type.
        unsafe { _mm512_reduce_add_ps(self.0) }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: only code compiled for AVX-512F holds this type.
        unsafe { _mm512_reduce_max_ps(self.0) }
    }
}
