//! Cache blocking of the GEMM loops: every size the loop nest in
//! `gemm.rs` uses, in one place, with the reason for each; and the one
//! prefetch hint of the matmul family.
//!
//! The loops follow BLIS (outermost first):
//! - loop 5 `jc` steps over columns of C by `nc`; `pack_b` copies the whole
//!   `k x nc` block of op(B) once into NR-wide micro-panels (all threads
//!   share it),
//! - the parallel split hands each task a range of at most `mc` rows (MR
//!   panels) and of NR-column panels; `pack_a` copies the task's rows of
//!   op(A) over the whole depth into MR-tall micro-panels, in one pass so
//!   that the hardware prefetchers stream along the rows of A,
//! - loop 4 `pc` steps over k by `kc`: the task's `mc x kc` slice of packed
//!   A is what stays in L2,
//! - loop 2 `jr` over NR panels: one `kc x NR` micro-panel of B stays in L1,
//! - loop 1 `ir` over MR panels: the A slice streams from L2,
//! - the micro-kernel updates one MR x NR tile of C held in registers.
//!
//! The machine these were tuned on (Xeon, Sapphire/Emerald Rapids class) has
//! 48 KiB L1d and 2 MiB L2 per core; other x86-64 cores of the last decade
//! have at least 32 KiB / 256 KiB, for which the AVX2 sizes are chosen.

/// Block sizes of one micro-kernel. `mc` is a multiple of the kernel's MR.
#[derive(Debug, Clone, Copy)]
pub struct Blocking {
    /// Depth of one packed block. The `kc x NR` B micro-panel is reused
    /// across every MR panel of the task, so it should sit in L1 beside an
    /// A micro-panel; the C tile is loaded and stored once per `kc`, which
    /// a `kc` of a few hundred makes negligible.
    pub kc: usize,
    /// Most rows of A in one task: its `mc x kc` slice of packed A stays
    /// in L2 while every B micro-panel of the task passes over it. See
    /// [`mc_for`] for the bound on the whole `mc x k` packed block.
    pub mc: usize,
    /// Most columns of B packed at once. The packed block is `k x nc`
    /// (shared by all threads, read from L3), so `nc` also bounds the
    /// buffer; see [`nc_for`].
    pub nc: usize,
}

/// AVX-512, 14 x 32 tile: A block 252 x 512 floats = 504 KiB (L2). The
/// B micro-panel (512 x 32 floats, 64 KiB) outgrows L1 and streams from
/// L2, which its two loads per 28 FMAs allow; the deeper block halves the
/// loads and stores of C (k = 512 in one block, k = 768 in two): measured
/// 1.0-1.2x the speed of kc = 256 at 512^3 and the GPT shapes.
pub const AVX512: Blocking = Blocking {
    kc: 512,
    mc: 252,
    nc: 3072,
};

/// AVX2+FMA, 6 x 16 tile: B micro-panel 256 x 16 floats = 16 KiB (L1),
/// A block 120 x 256 floats = 120 KiB (L2 of 256 KiB).
pub const AVX2: Blocking = Blocking {
    kc: 256,
    mc: 120,
    nc: 3072,
};

/// Portable 4 x 8 tile; sizes as for AVX2.
pub const PORTABLE: Blocking = Blocking {
    kc: 256,
    mc: 128,
    nc: 3072,
};

/// Packed B is `k x nc` floats and each task's packed A `mc x k`; above
/// this many floats the blocks shrink (16 MiB: well inside a server L3,
/// and the buffers are kept per thread for reuse).
const PACKED_MAX: usize = 4 << 20;

/// Columns per `jc` block for depth `k`: `nc`, narrowed so that the packed
/// `k x nc` block stays under [`PACKED_B_MAX`], never below `4 * nr`, and
/// a multiple of `nr`.
pub fn nc_for(blocking: &Blocking, k: usize, nr: usize) -> usize {
    let fit = PACKED_MAX / k.max(1);
    let nc = blocking.nc.min(fit).max(4 * nr);
    nc / nr * nr
}

/// Most MR panels of rows per task for depth `k`: `mc / mr`, fewer when
/// the task's packed `mc x k` block would pass [`PACKED_MAX`], at least 1.
pub fn mc_panels_for(blocking: &Blocking, k: usize, mr: usize) -> usize {
    let fit = PACKED_MAX / (k.max(1) * mr);
    (blocking.mc / mr).min(fit).max(1)
}

/// The cache level a [`prefetch`] asks for.
#[derive(Clone, Copy)]
pub enum Cache {
    L1,
    L2,
}

/// Asks for the cache line at `p` to be brought into `level`; only a
/// hint, never a fault, whatever the address.
#[inline(always)]
pub fn prefetch(p: *const f32, level: Cache) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        match level {
            Cache::L1 => _mm_prefetch::<_MM_HINT_T0>(p.cast()),
            Cache::L2 => _mm_prefetch::<_MM_HINT_T1>(p.cast()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, level);
}
