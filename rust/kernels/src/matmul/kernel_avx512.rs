//! AVX-512 micro-kernel: a 14 x 32 tile of C in 28 zmm accumulators.
//!
//! Per k step two zmm loads of B feed 28 FMAs against 14 broadcasts of A,
//! which keeps both FMA ports busy while leaving two registers for B and
//! one or two for the broadcasts (32 zmm in all).

use std::arch::x86_64::*;

use super::blocking::{self, Blocking};
use super::kernel::{Epilogue, MicroKernel};
use crate::simd::Avx512;

const MR: usize = 14;
const NR: usize = 32;

impl MicroKernel for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    const BLOCKING: Blocking = blocking::AVX512;

    super::kernel::packing_methods!();

    unsafe fn tile(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        ep: &Epilogue,
    ) {
        // SAFETY: the token proves AVX-512F; the pointers are this
        // method's contract.
        unsafe { tile_rows::<MR>(kc, a, b, c, ldc, ep) }
    }

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
        // The last row panel of most products is partial (2048 = 146 x 14
        // + 4, 128 = 9 x 14 + 2): its rows alone, straight into C, instead
        // of a whole tile into scratch and an element-wise copy.
        let f = match rows {
            1 => tile_rows::<1>,
            2 => tile_rows::<2>,
            3 => tile_rows::<3>,
            4 => tile_rows::<4>,
            5 => tile_rows::<5>,
            6 => tile_rows::<6>,
            7 => tile_rows::<7>,
            8 => tile_rows::<8>,
            9 => tile_rows::<9>,
            10 => tile_rows::<10>,
            11 => tile_rows::<11>,
            12 => tile_rows::<12>,
            13 => tile_rows::<13>,
            _ => return false,
        };
        // SAFETY: the token proves AVX-512F; C covers the `rows` rows
        // written, the rest is this method's contract.
        unsafe { f(kc, a, b, c, ldc, ep) };
        true
    }
}

/// The first `R` rows (`R <= MR`) of a tile: `a` is a packed A micro-panel
/// (MR floats per depth step, whatever `R`), all NR columns.
///
/// # Safety
/// As [`MicroKernel::tile`]'s with C covering `R` rows, on a CPU with
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_rows<const R: usize>(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    // C is touched only after the k loop; start pulling its lines in now.
    for i in 0..R {
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i.wrapping_mul(ldc)) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            c.wrapping_add(i.wrapping_mul(ldc).wrapping_add(16)) as *const i8
        );
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for _ in 0..kc {
        // SAFETY: `a` and `b` advance through the kc * MR and kc * NR
        // floats of the packed panels.
        unsafe {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let alpha = _mm512_set1_ps(ep.alpha);
    let beta = _mm512_set1_ps(ep.beta);
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            // SAFETY: C covers R rows of NR floats, bias (when not null)
            // NR floats.
            unsafe {
                let cp = c.add(i * ldc + 16 * h);
                let mut out = _mm512_mul_ps(v, alpha);
                if ep.beta != 0.0 {
                    out = _mm512_fmadd_ps(_mm512_loadu_ps(cp), beta, out);
                }
                if !ep.bias.is_null() {
                    out = _mm512_add_ps(out, _mm512_loadu_ps(ep.bias.add(16 * h)));
                }
                _mm512_storeu_ps(cp, out);
            }
        }
    }
}
