//! SIMD capability as a value: zero-size tokens, one per instruction set,
//! that exist only where the CPU runs it, so that holding one is the proof
//! (the pattern of pulp's `V3`/`V4` and matrixmultiply's kernel types).
//!
//! - [`Portable`]: always available; plain Rust that LLVM vectorises for
//!   the baseline target (SSE2 on x86-64, NEON on aarch64).
//! - [`Avx2`]: AVX2, FMA and F16C.
//! - [`Avx512`]: AVX-512F, with AVX2 and FMA.
//!
//! A token comes only from [`Avx2::try_new`] / [`Avx512::try_new`] (a run
//! time CPU check, cached) or from their `unsafe` `new_unchecked`. Kernels
//! are generic over [`Simd`] and run their bodies through
//! [`Simd::vectorize`], which compiles them with the token's features.
//! Every kernel family picks its token the same way, with [`dispatch!`]
//! over [`Arch::best`]: the best token this CPU has, lowered by
//! `FERROFORMER_SIMD=avx2` or `FERROFORMER_SIMD=portable`. Tests loop over
//! [`Arch::supported`], every token this CPU has, whatever the variable.
//!
//! Only [`Level`] and [`level`] are public (the bindings report the level);
//! the tokens are private to the crate.

#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::vec_math::{Lanes, Vf32};

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

/// The instruction sets the kernels are written for, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    Avx2Fma,
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2Fma => "avx2+fma",
            Level::Avx512 => "avx512",
        }
    }
}

/// Bits of [`cpu_features`]: set once the CPU has been asked.
const ASKED: u8 = 1;
/// AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
const AVX2_FMA: u8 = 2;
/// AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
const AVX512: u8 = 4;

/// What this CPU runs, as bits; asked once and cached (a race only asks
/// twice and stores the same answer).
fn cpu_features() -> u8 {
    static FEATURES: AtomicU8 = AtomicU8::new(0);
    let cached = FEATURES.load(Ordering::Relaxed);
    if cached & ASKED != 0 {
        return cached;
    }
    #[allow(unused_mut)]
    let mut f = ASKED;
    #[cfg(target_arch = "x86_64")]
    {
        // F16C comes with every AVX2 CPU; the quantized kernels convert block
        // scales with it, so the AVX2 token stands for all three.
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            f |= AVX2_FMA;
            if is_x86_feature_detected!("avx512f") {
                f |= AVX512;
            }
        }
    }
    FEATURES.store(f, Ordering::Relaxed);
    f
}

/// The best level this CPU supports, lowered by `FERROFORMER_SIMD=avx2` or
/// `FERROFORMER_SIMD=portable` (the variable never raises it).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("FERROFORMER_SIMD").as_deref() {
            Ok("portable") => Level::Portable,
            Ok("avx2") => Level::Avx2Fma,
            _ => Level::Avx512,
        };
        Arch::supported()
            .into_iter()
            .map(Arch::level)
            .filter(|&l| l <= cap)
            .max()
            .unwrap_or(Level::Portable)
    })
}

/// A SIMD token: a zero-size proof that the CPU runs its instruction set.
pub(crate) trait Simd: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The register of f32 lanes this token's kernels compute in.
    type V: Vf32;

    /// A register with every lane `x`.
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        Self::V::splat(x)
    }

    /// A register of zeros.
    #[inline(always)]
    fn zero(self) -> Self::V {
        Self::V::zero()
    }

    /// Loads `N` lanes from `s[..N]`; `s` must hold at least `N`.
    #[inline(always)]
    #[allow(dead_code)]
    fn load(self, s: &[f32]) -> Self::V {
        Self::V::load(s)
    }

    /// Loads `s[l.i .. l.i + l.w]`, lanes past `l.w` filled with `fill`.
    #[inline(always)]
    fn get(self, s: &[f32], l: Lanes, fill: f32) -> Self::V {
        Self::V::get(s, l, fill)
    }

    /// Runs `f` inside a function compiled with this token's target
    /// features. Pass an `#[inline(always)]` closure whose kernels are
    /// `#[inline(always)]` too: their bodies, and the intrinsics in them,
    /// are then compiled there as plain instructions. Kernels call it
    /// through [`vectorized!`].
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;

    /// The AVX-512 token, when this is one: lets generic code take an
    /// AVX-512-only path (the branch folds away per token type).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        None
    }

    /// The AVX2 token, when this token implies AVX2 (AVX2 and AVX-512 do).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn avx2(self) -> Option<Avx2> {
        None
    }
}

/// The token of plain Rust, which every CPU runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    type V = crate::vec_math::portable::F32x8;

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// One token of any type: what [`dispatch!`] matches on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arch {
    Portable(Portable),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
}

impl Arch {
    /// The token of [`level`]: the best this CPU has, as lowered by
    /// `FERROFORMER_SIMD` (in tests, the one [`Arch::forced`] names).
    #[inline]
    pub fn best() -> Arch {
        #[cfg(test)]
        if let Some(arch) = FORCED.get() {
            return arch;
        }
        let level = level();
        #[cfg(target_arch = "x86_64")]
        {
            if level >= Level::Avx512 {
                if let Some(t) = Avx512::try_new() {
                    return Arch::Avx512(t);
                }
            }
            if level >= Level::Avx2Fma {
                if let Some(t) = Avx2::try_new() {
                    return Arch::Avx2(t);
                }
            }
        }
        let _ = level;
        Arch::Portable(Portable)
    }

    /// Every token this CPU has, portable first.
    pub fn supported() -> Vec<Arch> {
        #[allow(unused_mut)]
        let mut all = vec![Arch::Portable(Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            all.extend(Avx2::try_new().map(Arch::Avx2));
            all.extend(Avx512::try_new().map(Arch::Avx512));
        }
        all
    }

    pub fn level(self) -> Level {
        match self {
            Arch::Portable(_) => Level::Portable,
            #[cfg(target_arch = "x86_64")]
            Arch::Avx2(_) => Level::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            Arch::Avx512(_) => Level::Avx512,
        }
    }
}

#[cfg(test)]
thread_local! {
    static FORCED: std::cell::Cell<Option<Arch>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
impl Arch {
    /// Runs `f` with [`Arch::best`] returning `self` on this thread, so that
    /// a test drives a public kernel with each token in turn.
    pub fn forced<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arch>);
        impl Drop for Restore {
            fn drop(&mut self) {
                FORCED.set(self.0);
            }
        }
        let _restore = Restore(FORCED.replace(Some(self)));
        f()
    }
}

/// `dispatch!(|s| body)` evaluates `body` with `s` bound to the token of
/// [`Arch::best`]; `dispatch!(arch, |s| body)` to the token held by
/// `arch`. `body` is compiled once per token type, so it may call
/// anything generic over [`Simd`] (or over a trait every token has).
macro_rules! dispatch {
    ($arch:expr, |$s:ident| $body:expr) => {
        match $arch {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Arch::Avx512($s) => $body,
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Arch::Avx2($s) => $body,
            $crate::simd::Arch::Portable($s) => $body,
        }
    };
    (|$s:ident| $body:expr) => {
        $crate::simd::dispatch!($crate::simd::Arch::best(), |$s| $body)
    };
}
pub(crate) use dispatch;

/// `vectorized!(s, kernel(s, a, b, ..))` runs the call inside
/// `s.vectorize`, compiled with the token's features. `kernel` is a named
/// `#[inline(always)]` function that takes every slice it touches as a
/// parameter: LLVM knows parameters do not alias one another, but not the
/// captures of a closure, and without that it reloads values in the loops.
/// A kernel generic over the register alone takes the token as
/// `_: impl Simd<V = V>`, which names its `V`.
macro_rules! vectorized {
    ($s:ident, $call:expr) => {
        $s.vectorize(
            #[inline(always)]
            move || $call,
        )
    };
}
pub(crate) use vectorized;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_supported_and_forced_wins() {
        let all = Arch::supported();
        assert_eq!(all[0].level(), Level::Portable);
        assert!(all.iter().any(|a| a.level() == Arch::best().level()));
        assert_eq!(Arch::best().level(), level());
        for &arch in &all {
            assert_eq!(arch.forced(|| Arch::best().level()), arch.level());
        }
        assert_eq!(Arch::best().level(), level());
    }
}
