//! Portable micro-kernel: a 4 x 8 tile in plain Rust that the compiler
//! vectorizes with whatever the baseline target offers (SSE2 on x86-64,
//! NEON on aarch64). Always present, so any CPU runs every path.

use super::blocking::{self, Blocking};
use super::kernel::{Epilogue, MicroKernel};
use crate::simd::Portable;

const MR: usize = 4;
const NR: usize = 8;

impl MicroKernel for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const BLOCKING: Blocking = blocking::PORTABLE;

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
        // SAFETY: `a` and `b` hold `kc * MR` and `kc * NR` floats (the
        // contract of `tile`).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[0.0f32; NR]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (x, &bj) in row.iter_mut().zip(bp) {
                    *x += ai * bj;
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: C covers MR rows of NR floats at stride `ldc`, and
            // `bias`, when not null, NR floats.
            let (crow, bias) = unsafe {
                let bias = (!ep.bias.is_null()).then(|| std::slice::from_raw_parts(ep.bias, NR));
                (std::slice::from_raw_parts_mut(c.add(i * ldc), NR), bias)
            };
            for (j, (cv, &ab)) in crow.iter_mut().zip(row).enumerate() {
                *cv = ep.apply(ab, *cv, bias.map_or(0.0, |b| b[j]));
            }
        }
    }
}
