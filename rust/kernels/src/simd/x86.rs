//! The x86-64 tokens. Their one field is private to this file, so a token
//! is made only by `try_new` (which asks the CPU) or by `new_unchecked`.

use super::{cpu_features, Simd, AVX2_FMA, AVX512};

/// `token!(Name, BIT, "features", "what", Register, with_fn; rest)` defines
/// a token for the instruction sets `what`: the type, `try_new` (true when
/// `cpu_features` has `BIT`), `new_unchecked`, and its [`Simd`] impl, whose
/// `vectorize` runs the closure inside `with_fn`, compiled with
/// `features`; `rest` goes into that impl.
macro_rules! token {
    (
        $T:ident, $bit:ident, $features:literal, $what:literal, $V:ty, $with:ident;
        $($rest:tt)*
    ) => {
        #[doc = concat!($what, ".")]
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $T {
            _private: (),
        }

        impl $T {
            #[doc = concat!("The token, if this CPU has ", $what, ".")]
            #[inline]
            pub fn try_new() -> Option<Self> {
                (cpu_features() & $bit != 0).then_some($T { _private: () })
            }

            /// The token without asking.
            ///
            /// # Safety
            #[doc = concat!("The CPU must support ", $what, ".")]
            #[allow(dead_code)]
            pub unsafe fn new_unchecked() -> Self {
                $T { _private: () }
            }
        }

        impl Simd for $T {
            type V = $V;

            #[inline(always)]
            fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
                #[target_feature(enable = $features)]
                #[inline]
                fn $with<R>(f: impl FnOnce() -> R) -> R {
                    f()
                }
                // SAFETY: the token exists, so the CPU has the features.
                unsafe { $with(f) }
            }

            $($rest)*
        }
    };
}

token! {
    Avx2, AVX2_FMA, "avx2,fma", "AVX2, FMA and F16C", crate::vec_math::avx2::F32x8, with_avx2;

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        Some(self)
    }
}

token! {
    Avx512, AVX512, "avx512f,avx2,fma", "AVX-512F, with AVX2, FMA and F16C",
    crate::vec_math::avx512::F32x16, with_avx512;

    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        Some(self)
    }

    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        Some(Avx2 { _private: () })
    }
}
