//! What the AVX2 and AVX-512 registers share: every method that is one
//! intrinsic, named per instruction set, and the one argument for why
//! calling those intrinsics is sound. Each register's file adds the
//! methods that differ (`ldexp`, `lt_select`, `swap_pairs`, the reductions).

/// `x86_register! { F32x8(__m256), 8; add _mm256_add_ps, ..; rest }` defines
/// the register type, its operators and the one-intrinsic methods of
/// [`Vf32`](super::Vf32); `rest` (the other methods) goes into the same
/// impl. The intrinsics are named in the order the pattern lists them.
///
/// Why the intrinsics are sound to call: values of the type are made only
/// inside code compiled with its instruction set (a token's `vectorize`),
/// and a load or store indexes its slice, bounds-checked, before it takes
/// the raw pointer.
macro_rules! x86_register {
    (
        $(#[$doc:meta])*
        $T:ident($raw:ty), $n:literal;
        add $add:ident, sub $sub:ident, mul $mul:ident, div $div:ident,
        splat $set1:ident, load $loadu:ident, store $storeu:ident,
        mul_add $fmadd:ident, max $max:ident, min $min:ident, sqrt $sqrt:ident;
        $($rest:tt)*
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $T(pub $raw);

        $crate::vec_math::x86::x86_register!(@op $T, Add, add, $add);
        $crate::vec_math::x86::x86_register!(@op $T, Sub, sub, $sub);
        $crate::vec_math::x86::x86_register!(@op $T, Mul, mul, $mul);
        $crate::vec_math::x86::x86_register!(@op $T, Div, div, $div);

        impl $crate::vec_math::Vf32 for $T {
            const N: usize = $n;

            #[inline(always)]
            fn splat(x: f32) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($set1(x)) }
            }
            #[inline(always)]
            fn load(s: &[f32]) -> Self {
                let s = &s[..$n];
                // SAFETY: as for `splat`; `s` holds `N` floats.
                unsafe { $T($loadu(s.as_ptr())) }
            }
            #[inline(always)]
            fn store(self, s: &mut [f32]) {
                let s = &mut s[..$n];
                // SAFETY: as for `splat`; `s` holds `N` floats.
                unsafe { $storeu(s.as_mut_ptr(), self.0) }
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($fmadd(self.0, b.0, c.0)) }
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($max(self.0, o.0)) }
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($min(self.0, o.0)) }
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($sqrt(self.0)) }
            }

            $($rest)*
        }
    };
    (@op $T:ident, $tr:ident, $f:ident, $intr:ident) => {
        impl std::ops::$tr for $T {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                // SAFETY: only code compiled for the type's features holds it.
                unsafe { $T($intr(self.0, o.0)) }
            }
        }
    };
}
pub(crate) use x86_register;
