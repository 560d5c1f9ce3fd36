//! Portable micro-kernel: a 4 x 8 tile in plain Rust that the compiler
//! vectorizes with whatever the baseline target offers (SSE2 on x86-64,
//! NEON on aarch64). Always present, so any CPU runs every path.

use super::blocking::{self, Blocking};
use super::kernel::{Epilogue, MicroKernel};

pub struct Portable;

const MR: usize = 4;
const NR: usize = 8;

impl MicroKernel for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const BLOCKING: Blocking = blocking::PORTABLE;

    super::kernel::packing_methods!(false);

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        ep: &Epilogue,
    ) {
        let a = std::slice::from_raw_parts(a, kc * MR);
        let b = std::slice::from_raw_parts(b, kc * NR);
        let mut acc = [[0.0f32; NR]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (x, &bj) in row.iter_mut().zip(bp) {
                    *x += ai * bj;
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let crow = std::slice::from_raw_parts_mut(c.add(i * ldc), NR);
            for (j, (cv, &ab)) in crow.iter_mut().zip(row).enumerate() {
                let bias = if ep.bias.is_null() {
                    0.0
                } else {
                    *ep.bias.add(j)
                };
                *cv = ep.apply(ab, *cv, bias);
            }
        }
    }
}
