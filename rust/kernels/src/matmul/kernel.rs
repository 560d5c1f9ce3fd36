//! The micro-kernel: one MR x NR tile of C from packed panels, written
//! once over the SIMD token layer.
//!
//! A tile is MR rows of a few registers of the token's `V`; every depth
//! step loads one row of the packed B panel, broadcasts each of the MR
//! values of the packed A panel and multiply-adds. Only the tile's shape
//! and cache blocks differ per token (one `micro_kernel!` each, below);
//! `gemm.rs` is generic over [`MicroKernel`] and `mod.rs` picks the
//! token with [`crate::simd::dispatch!`].

use super::blocking::{self, Blocking};
#[cfg(target_arch = "x86_64")]
use super::blocking::{prefetch, Cache};
use super::packing::{self, View};
#[cfg(target_arch = "x86_64")]
use crate::simd::{Avx2, Avx512};
use crate::simd::{Portable, Simd};
use crate::vec_math::Vf32;

/// What a tile does with its product: `c = alpha * (a·b) + beta * c + bias`.
/// `beta == 0` overwrites C without reading it (so NaN in C cannot leak);
/// `bias` is null or points at the tile's NR column biases.
#[derive(Clone, Copy)]
pub struct Epilogue {
    pub alpha: f32,
    pub beta: f32,
    pub bias: *const f32,
}

impl Epilogue {
    /// Plain product into scratch: `c = a·b`.
    pub const STORE: Epilogue = Epilogue {
        alpha: 1.0,
        beta: 0.0,
        bias: std::ptr::null(),
    };

    /// The epilogue applied to one element, for tile edges and the slow paths.
    #[inline(always)]
    pub fn apply(&self, ab: f32, c: f32, bias: f32) -> f32 {
        let scaled = self.alpha * ab;
        let kept = if self.beta == 0.0 {
            scaled
        } else {
            scaled + self.beta * c
        };
        kept + bias
    }
}

/// A register-tiled micro-kernel, implemented by each SIMD token: the
/// token is the kernel, so holding one is the proof that the CPU runs it.
pub trait MicroKernel: Simd {
    /// Rows of the C tile (the height of an A micro-panel).
    const MR: usize;
    /// Columns of the C tile (the width of a B micro-panel).
    const NR: usize;
    /// Cache block sizes tuned for this kernel.
    const BLOCKING: Blocking;

    /// Computes one full tile.
    ///
    /// `a` is a packed A micro-panel `(kc, MR)` (k-major, MR floats per k),
    /// `b` a packed B micro-panel `(kc, NR)`; `c` points at the tile's
    /// top-left element of a row-major C with row stride `ldc`.
    ///
    /// # Safety
    /// `a` and `b` hold `kc * MR` and `kc * NR` floats, and `c` is writable
    /// (and readable when `beta != 0`) for `MR` rows of `NR` floats.
    unsafe fn tile(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        ep: &Epilogue,
    );

    /// The first `rows` (`< MR`) rows of a tile with all NR columns,
    /// written straight into C, where the kernel has such a variant
    /// (returns true); otherwise returns false and the caller goes through
    /// a scratch tile.
    ///
    /// # Safety
    /// As [`MicroKernel::tile`]'s, with C covering only `rows` rows.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_partial(
        self,
        _kc: usize,
        _a: *const f32,
        _b: *const f32,
        _c: *mut f32,
        _ldc: usize,
        _rows: usize,
        _ep: &Epilogue,
    ) -> bool {
        false
    }

    /// [`super::packing::pack_a`] with this kernel's MR.
    ///
    /// # Safety
    /// As `pack_a`'s.
    unsafe fn pack_a(self, dst: &mut [f32], a: View, i0: usize, rows: usize, p0: usize, kc: usize);

    /// [`super::packing::pack_b`] with this kernel's NR.
    ///
    /// # Safety
    /// As `pack_b`'s.
    unsafe fn pack_b(self, dst: &mut [f32], b: View, j0: usize, valid: usize, k: usize);
}

/// Implements [`MicroKernel`] for a token from its tile shape: `mr` rows
/// of `vectors` registers of the token's `V` (so NR = `vectors * V::N`),
/// its cache blocks, and the row counts below MR that get a straight-into-C
/// `tile_partial` (none: the GEMM goes through a scratch tile). A macro
/// because the shape is a const generic argument of [`tile_rows`], which a
/// generic default method cannot take from `Self::MR`.
macro_rules! micro_kernel {
    ($token:ty {
        mr: $mr:literal,
        vectors: $nv:literal,
        blocking: $blocking:expr
        $(, partial: [$($rows:literal)*])? $(,)?
    }) => {
        impl MicroKernel for $token {
            const MR: usize = $mr;
            const NR: usize = $nv * <<$token as Simd>::V as Vf32>::N;
            const BLOCKING: Blocking = $blocking;

            unsafe fn tile(
                self,
                kc: usize,
                a: *const f32,
                b: *const f32,
                c: *mut f32,
                ldc: usize,
                ep: &Epilogue,
            ) {
                // SAFETY: forwarded from this method's contract.
                unsafe { tile_rows::<Self, $mr, $nv, $mr>(self, kc, a, b, c, ldc, ep) }
            }

            $(
                unsafe fn tile_partial(
                    self,
                    kc: usize,
                    a: *const f32,
                    b: *const f32,
                    c: *mut f32,
                    ldc: usize,
                    rows: usize,
                    ep: &Epilogue,
                ) -> bool {
                    match rows {
                        $(
                            // SAFETY: forwarded from this method's contract;
                            // C covers the `rows` rows written.
                            $rows => unsafe {
                                tile_rows::<Self, $mr, $nv, $rows>(self, kc, a, b, c, ldc, ep)
                            },
                        )*
                        _ => return false,
                    }
                    true
                }
            )?

            unsafe fn pack_a(
                self,
                dst: &mut [f32],
                a: View,
                i0: usize,
                rows: usize,
                p0: usize,
                kc: usize,
            ) {
                // SAFETY: forwarded from this method's contract.
                unsafe { packing::pack_a::<$mr, _>(self, dst, a, i0, rows, p0, kc) }
            }

            unsafe fn pack_b(self, dst: &mut [f32], b: View, j0: usize, valid: usize, k: usize) {
                // SAFETY: forwarded from this method's contract.
                unsafe { packing::pack_b::<{ <$token as MicroKernel>::NR }, _>(self, dst, b, j0, valid, k) }
            }
        }
    };
}

// AVX-512: a 14 x 32 tile in 28 zmm accumulators. Per depth step two zmm
// loads of B feed 28 FMAs against 14 broadcasts of A, which keeps both FMA
// ports busy while leaving two registers for B and one or two for the
// broadcasts (32 zmm in all). The last row panel of most products is
// partial (2048 = 146 x 14 + 4, 128 = 9 x 14 + 2): its rows alone, straight
// into C, instead of a whole tile into scratch and an element-wise copy.
#[cfg(target_arch = "x86_64")]
micro_kernel!(Avx512 {
    mr: 14,
    vectors: 2,
    blocking: blocking::AVX512,
    partial: [1 2 3 4 5 6 7 8 9 10 11 12 13],
});

// AVX2+FMA: a 6 x 16 tile in 12 ymm accumulators (two ymm loads of B and
// one broadcast of A per row fill the 16 ymm).
#[cfg(target_arch = "x86_64")]
micro_kernel!(Avx2 {
    mr: 6,
    vectors: 2,
    blocking: blocking::AVX2,
});

// Portable: a 4 x 8 tile of plain Rust lanes that the compiler vectorizes
// with whatever the baseline target offers (SSE2 on x86-64, NEON on
// aarch64). Always present, so any CPU runs every path.
micro_kernel!(Portable {
    mr: 4,
    vectors: 1,
    blocking: blocking::PORTABLE,
});

/// The first `R` rows (`R <= MR`) of a tile, all NR = `NV * V::N` columns,
/// compiled with the token's features: `a` is a packed A micro-panel (MR
/// floats per depth step, whatever `R`), `b` a packed B micro-panel.
///
/// # Safety
/// As [`MicroKernel::tile`]'s, with C covering `R` rows.
#[inline(always)]
unsafe fn tile_rows<S: Simd, const MR: usize, const NV: usize, const R: usize>(
    s: S,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    s.vectorize(
        #[inline(always)]
        move || {
            // SAFETY: this function's contract.
            unsafe { tile_body::<S, MR, NV, R>(s, kc, a, b, c, ldc, ep) }
        },
    )
}

/// The body of [`tile_rows`], to be inlined where the token's features
/// are enabled: `R x NV` accumulators; per depth step NV loads of B, R
/// broadcasts of A and R x NV multiply-adds; then the epilogue.
///
/// # Safety
/// As [`tile_rows`]'s.
#[inline(always)]
unsafe fn tile_body<S: Simd, const MR: usize, const NV: usize, const R: usize>(
    s: S,
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    let n = S::V::N;
    // C is touched only after the depth loop: the x86 kernels start
    // pulling its lines in now (the portable one stays plain Rust).
    #[cfg(target_arch = "x86_64")]
    if s.avx2().is_some() {
        for i in 0..R {
            for h in 0..NV {
                prefetch(
                    c.wrapping_add(i.wrapping_mul(ldc).wrapping_add(h * n)),
                    Cache::L1,
                );
            }
        }
    }
    let mut acc = [[s.zero(); NV]; R];
    for _ in 0..kc {
        // SAFETY: `a` and `b` advance through the kc * MR and kc * NR
        // floats of the packed panels.
        unsafe {
            let mut bv = [s.zero(); NV];
            for (h, v) in bv.iter_mut().enumerate() {
                *v = load::<S::V>(b.add(h * n));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = s.splat(*a.add(i));
                for (x, &bh) in row.iter_mut().zip(&bv) {
                    *x = ai.mul_add(bh, *x);
                }
            }
            a = a.add(MR);
            b = b.add(NV * n);
        }
    }
    let alpha = s.splat(ep.alpha);
    let beta = s.splat(ep.beta);
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            // SAFETY: C covers R rows of NR floats, bias (when not null)
            // NR floats.
            unsafe {
                let cp = c.add(i * ldc + h * n);
                let mut out = v * alpha;
                if ep.beta != 0.0 {
                    out = load::<S::V>(cp).mul_add(beta, out);
                }
                if !ep.bias.is_null() {
                    out = out + load::<S::V>(ep.bias.add(h * n));
                }
                out.store(std::slice::from_raw_parts_mut(cp, n));
            }
        }
    }
}

/// The register at `p`.
///
/// # Safety
/// `p` points at `V::N` readable floats.
#[inline(always)]
unsafe fn load<V: Vf32>(p: *const f32) -> V {
    // SAFETY: this function's contract.
    V::load(unsafe { std::slice::from_raw_parts(p, V::N) })
}

/// Scratch tile big enough for every kernel's MR x NR.
pub const MAX_TILE: usize = 512;
