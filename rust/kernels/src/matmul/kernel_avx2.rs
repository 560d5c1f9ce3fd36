//! AVX2+FMA micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators
//! (two ymm loads of B and one broadcast of A per row fill the 16 ymm).

use std::arch::x86_64::*;

use super::blocking::{self, Blocking};
use super::kernel::{Epilogue, MicroKernel};
use crate::simd::Avx2;

const MR: usize = 6;
const NR: usize = 16;

impl MicroKernel for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    const BLOCKING: Blocking = blocking::AVX2;

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
        // SAFETY: the token proves AVX2 and FMA; the pointers are this
        // method's contract.
        unsafe { tile_6x16(kc, a, b, c, ldc, ep) }
    }
}

/// # Safety
/// As [`MicroKernel::tile`]'s, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    for i in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i.wrapping_mul(ldc)) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            c.wrapping_add(i.wrapping_mul(ldc).wrapping_add(8)) as *const i8
        );
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for _ in 0..kc {
        // SAFETY: `a` and `b` advance through the kc * MR and kc * NR
        // floats of the packed panels.
        unsafe {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_ps(*a.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    let alpha = _mm256_set1_ps(ep.alpha);
    let beta = _mm256_set1_ps(ep.beta);
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            // SAFETY: C covers MR rows of NR floats, bias (when not null)
            // NR floats.
            unsafe {
                let cp = c.add(i * ldc + 8 * h);
                let mut out = _mm256_mul_ps(v, alpha);
                if ep.beta != 0.0 {
                    out = _mm256_fmadd_ps(_mm256_loadu_ps(cp), beta, out);
                }
                if !ep.bias.is_null() {
                    out = _mm256_add_ps(out, _mm256_loadu_ps(ep.bias.add(8 * h)));
                }
                _mm256_storeu_ps(cp, out);
            }
        }
    }
}
