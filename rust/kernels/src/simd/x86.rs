//! The x86-64 tokens. Their one field is private to this file, so a token
//! is made only by `try_new` (which asks the CPU) or by `new_unchecked`.

use super::{cpu_features, Simd, AVX2_FMA, AVX512};

/// AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2 {
    _private: (),
}

/// AVX-512F, with AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512 {
    _private: (),
}

impl Avx2 {
    /// The token, if this CPU has AVX2, FMA and F16C.
    #[inline]
    pub fn try_new() -> Option<Self> {
        (cpu_features() & AVX2_FMA != 0).then_some(Avx2 { _private: () })
    }

    /// The token without asking.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[allow(dead_code)]
    pub unsafe fn new_unchecked() -> Self {
        Avx2 { _private: () }
    }
}

impl Avx512 {
    /// The token, if this CPU has AVX-512F, AVX2, FMA and F16C.
    #[inline]
    pub fn try_new() -> Option<Self> {
        (cpu_features() & AVX512 != 0).then_some(Avx512 { _private: () })
    }

    /// The token without asking.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    #[allow(dead_code)]
    pub unsafe fn new_unchecked() -> Self {
        Avx512 { _private: () }
    }
}

impl Simd for Avx2 {
    type V = crate::vec_math::avx2::F32x8;

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token exists, so the CPU has AVX2 and FMA.
        unsafe { with_avx2(f) }
    }

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        Some(self)
    }
}

impl Simd for Avx512 {
    type V = crate::vec_math::avx512::F32x16;

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token exists, so the CPU has AVX-512F, AVX2 and FMA.
        unsafe { with_avx512(f) }
    }

    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        Some(self)
    }

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        Some(Avx2 { _private: () })
    }
}
