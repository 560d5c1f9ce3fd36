//! The micro-kernel contract: one MR x NR tile of C from packed panels.
//!
//! Each SIMD token has its own kernel (`kernel_avx512.rs`,
//! `kernel_avx2.rs`, `kernel_portable.rs`); `gemm.rs` is generic over this
//! trait and `mod.rs` picks the token with [`crate::simd::dispatch!`].

use super::blocking::Blocking;
use super::packing::View;
use crate::simd::Simd;

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

/// The packing methods of a [`MicroKernel`] impl with constants `MR`,
/// `NR` in scope (a macro because `pack_a::<{ Self::MR }>` is not allowed
/// in a generic default method).
macro_rules! packing_methods {
    () => {
        unsafe fn pack_a(
            self,
            dst: &mut [f32],
            a: super::packing::View,
            i0: usize,
            rows: usize,
            p0: usize,
            kc: usize,
        ) {
            // SAFETY: forwarded from this method's contract.
            unsafe { super::packing::pack_a::<MR, _>(self, dst, a, i0, rows, p0, kc) }
        }

        unsafe fn pack_b(
            self,
            dst: &mut [f32],
            b: super::packing::View,
            j0: usize,
            valid: usize,
            k: usize,
        ) {
            // SAFETY: forwarded from this method's contract.
            unsafe { super::packing::pack_b::<NR, _>(self, dst, b, j0, valid, k) }
        }
    };
}
pub(super) use packing_methods;

/// Scratch tile big enough for every kernel's MR x NR.
pub const MAX_TILE: usize = 512;
