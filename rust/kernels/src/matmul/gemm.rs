//! The GEMM loop nest (BLIS order, see `blocking.rs`), generic over the
//! micro-kernel, with rayon splitting each packed B block's work into
//! tasks of MR-row and NR-column panels.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::LocalKey;

use rayon::prelude::*;

use super::blocking::{mc_panels_for, nc_for, prefetch, Cache};
use super::kernel::{Epilogue, MicroKernel, MAX_TILE};
use super::packing::View;

/// One product `C = alpha * op(A) op(B) + beta * C + bias`, as pointers.
/// op(A) is `(m, k)`, op(B) `(k, n)`, C `(m, n)` row-major with row stride
/// `ldc`; `bias` is null or `n` column biases.
#[derive(Clone, Copy)]
pub struct GemmArgs {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a: View,
    pub b: View,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: *const f32,
}

// SAFETY: tasks read A, B and bias, and write disjoint tiles of C.
unsafe impl Send for GemmArgs {}
// SAFETY: as for Send: tasks share only what they read.
unsafe impl Sync for GemmArgs {}

/// A 64-byte aligned line of floats: packed panels start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([f32; 16]);

thread_local! {
    static PACKED_A: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    pub(super) static PACKED_B: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Lends `f` this thread's reusable buffer of at least `len` floats
/// (contents unspecified). Taking the buffer out of the cell, rather than
/// borrowing it, keeps a nested call on the same thread (rayon may run
/// another job while this one waits) correct: it simply gets a fresh one.
pub(super) fn with_buffer<R>(
    key: &'static LocalKey<Cell<Vec<Line>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = key.take();
    let lines = len.div_ceil(16);
    if buf.len() < lines {
        buf = vec![Line([0.0; 16]); lines];
    }
    // SAFETY: `Line` is 16 plain floats, so `lines` of them are `16*lines` floats.
    let floats = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), len) };
    let out = f(floats);
    key.set(buf);
    out
}

/// How one `jc` block is split into tasks: `tm` row groups times `tn`
/// column groups, each a contiguous range of micro-panels.
struct Plan {
    tm: usize,
    tn: usize,
    mp: usize,
    np: usize,
}

impl Plan {
    /// `mp` row panels and `np` column panels over `threads` threads, with
    /// at most `max_mp` row panels per task (the `mc` limit). Row groups
    /// come in multiples of `threads` so that each thread gets an equal
    /// share. With few row panels (a handful of rows of C: splitting them
    /// would leave one thread a partial panel) only the columns are split,
    /// in equal groups, every task packing the same few rows of A.
    fn new(mp: usize, np: usize, max_mp: usize, threads: usize) -> Plan {
        let mut tm = mp.div_ceil(max_mp.max(1));
        if threads > 1 && mp >= FEW_ROW_PANELS * threads {
            tm = tm.div_ceil(threads) * threads;
        }
        let tm = tm.clamp(1, mp.max(1));
        let tn = if threads > 1 && !tm.is_multiple_of(threads) {
            (threads / gcd(tm, threads)).min(np).max(1)
        } else {
            1
        };
        Plan { tm, tn, mp, np }
    }

    fn count(&self) -> usize {
        self.tm * self.tn
    }

    /// Row-panel and column-panel ranges of task `t`.
    fn task(&self, t: usize) -> (usize, usize, usize, usize) {
        let (i, j) = (t / self.tn, t % self.tn);
        (
            i * self.mp / self.tm,
            (i + 1) * self.mp / self.tm,
            j * self.np / self.tn,
            (j + 1) * self.np / self.tn,
        )
    }
}

/// Below this many row panels per thread, the columns are split instead.
const FEW_ROW_PANELS: usize = 4;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Runs `f(i)` for `i < n`, on the pool when `threads > 1`.
fn for_each_task(n: usize, threads: usize, f: impl Fn(usize) + Send + Sync) {
    if threads > 1 {
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// `C = alpha * op(A) op(B) + beta * C + bias` with micro-kernel `kern`.
///
/// # Safety
/// The views and `c` cover the shapes in `g`, and `k > 0`.
pub unsafe fn gemm<K: MicroKernel>(kern: K, g: &GemmArgs, threads: usize) {
    let (mr, nr) = (K::MR, K::NR);
    let nc = nc_for(&K::BLOCKING, g.k, nr);
    let np_max = nc.min(g.n).div_ceil(nr);
    with_buffer(&PACKED_B, np_max * g.k * nr, |packed_b| {
        for jc in (0..g.n).step_by(nc) {
            let ncur = nc.min(g.n - jc);
            let np = ncur.div_ceil(nr);
            let packed_b = &mut packed_b[..np * g.k * nr];
            let max_mp = mc_panels_for(&K::BLOCKING, g.k, mr);
            let plan = Plan::new(g.m.div_ceil(mr), np, max_mp, threads);
            let shared = SharedB {
                ptr: packed_b.as_mut_ptr(),
                jc,
                ncur,
                state: if threads > 1 {
                    (0..np).map(|_| AtomicU8::new(UNPACKED)).collect()
                } else {
                    Vec::new()
                },
            };
            if threads <= 1 {
                for jp in 0..np {
                    // SAFETY: one thread: nothing else touches the panels.
                    unsafe { shared.pack(kern, g, jp) };
                }
            }
            // One parallel section per block: each B panel is packed by
            // the first task to need it (tasks start their column walks at
            // different panels, so the threads pack different ones), which
            // saves a second fork-join and its wake-ups.
            for_each_task(plan.count(), threads, |t| {
                let (pm0, pm1, pn0, pn1) = plan.task(t);
                // SAFETY: each task owns the C tiles of its panel ranges;
                // B panels are packed once before any task reads them.
                unsafe { task(kern, g, &shared, pm0..pm1, pn0..pn1, (t, plan.count())) }
            });
        }
    });
}

const UNPACKED: u8 = 0;
const PACKING: u8 = 1;
const PACKED: u8 = 2;

/// The packed B block of columns `[jc, jc + ncur)`, `k x NR` per panel,
/// and with several threads, each panel's packing state.
struct SharedB {
    ptr: *mut f32,
    jc: usize,
    ncur: usize,
    state: Vec<AtomicU8>,
}

// SAFETY: a panel is written only by the one task that claims it, and
// read only after its state says PACKED (release / acquire).
unsafe impl Sync for SharedB {}

impl SharedB {
    /// Packs panel `jp`.
    ///
    /// # Safety
    /// As [`gemm`]'s, and no other thread reads or writes the panel meanwhile.
    unsafe fn pack<K: MicroKernel>(&self, kern: K, g: &GemmArgs, jp: usize) {
        let nr = K::NR;
        // SAFETY: panel jp of the block's k * NR-float panels is this
        // call's alone; its columns lie inside op(B).
        unsafe {
            let dst = std::slice::from_raw_parts_mut(self.ptr.add(jp * g.k * nr), g.k * nr);
            kern.pack_b(
                dst,
                g.b,
                self.jc + jp * nr,
                nr.min(self.ncur - jp * nr),
                g.k,
            );
        }
    }

    /// Makes sure panel `jp` is packed: packs it if no task has claimed it
    /// yet, or waits for the task packing it (which waits on nothing).
    ///
    /// # Safety
    /// As [`gemm`]'s.
    unsafe fn ready<K: MicroKernel>(&self, kern: K, g: &GemmArgs, jp: usize) {
        let Some(state) = self.state.get(jp) else {
            return; // one thread: packed up front
        };
        if state.load(Ordering::Acquire) == PACKED {
            return;
        }
        if state
            .compare_exchange(UNPACKED, PACKING, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: this task claimed the panel; the others wait for PACKED.
            unsafe { self.pack(kern, g, jp) };
            state.store(PACKED, Ordering::Release);
        } else {
            while state.load(Ordering::Acquire) != PACKED {
                std::hint::spin_loop();
            }
        }
    }

    fn panel(&self, g: &GemmArgs, nr: usize, jp: usize, pc: usize) -> *const f32 {
        self.ptr.wrapping_add(jp * g.k * nr + pc * nr)
    }
}

/// One task: row panels `pm` against column panels `pn` of the packed B
/// block, over the whole depth. Task `t` of `count` walks the columns
/// starting a fraction `t / count` of the way along.
///
/// # Safety
/// As [`gemm`]'s; the task owns the C tiles of its panel ranges.
unsafe fn task<K: MicroKernel>(
    kern: K,
    g: &GemmArgs,
    b_block: &SharedB,
    pm: std::ops::Range<usize>,
    pn: std::ops::Range<usize>,
    (t, count): (usize, usize),
) {
    let (mr, nr) = (K::MR, K::NR);
    let jc = b_block.jc;
    // Depth blocks of equal size (k = 384 runs as 2 x 192, not 256 + 128:
    // every block pays one load and store of the C tile).
    let passes = g.k.div_ceil(K::BLOCKING.kc);
    let kc_max = g.k.div_ceil(passes);
    let i0 = pm.start * mr;
    let rows = (pm.end * mr).min(g.m) - i0;
    // Column panels per chunk: the task's C rows over one chunk stay in L2
    // across the depth blocks, instead of going out to L3 and back once
    // per block when the task's rows of C are wider than L2.
    let chunk = if passes > 1 {
        (C_CHUNK_FLOATS / (pm.len() * mr * nr)).max(1)
    } else {
        pn.len().max(1)
    };
    let chunks = pn.len().div_ceil(chunk);
    with_buffer(&PACKED_A, pm.len() * mr * g.k, |packed_a| {
        // The task's rows over the whole depth in one pass: long runs along
        // each row of A keep the hardware prefetchers streaming, where
        // packing one `kc` slice at a time between kernels starts each row
        // cold.
        // SAFETY: rows i0..i0 + rows of op(A) exist; the buffer holds
        // pm.len() panels of MR x k.
        unsafe { kern.pack_a(packed_a, g.a, i0, rows, 0, g.k) };
        let chunk_rot = t * chunks / count;
        for ci in 0..chunks {
            let ci = (ci + chunk_rot) % chunks;
            let jc0 = pn.start + ci * chunk;
            let jc1 = (jc0 + chunk).min(pn.end);
            let len = jc1 - jc0;
            // With one chunk, the rotation moves inside it.
            let rot = if chunks == 1 { t * len / count } else { 0 };
            let nth = |idx: usize| jc0 + (idx + rot) % len;
            for pc in (0..g.k).step_by(kc_max) {
                let kc = kc_max.min(g.k - pc);
                let first = pc == 0;
                // Cache lines of one B micro-panel, and how many of the
                // next panel's to prefetch before each tile.
                let b_lines = kc * nr / 16;
                let per_tile = b_lines.div_ceil(pm.len());
                for idx in 0..len {
                    let jp = nth(idx);
                    if first {
                        // SAFETY: as this function's.
                        unsafe { b_block.ready(kern, g, jp) };
                    }
                    // The next B micro-panel is pulled from L3 into L2 a
                    // slice per tile, so the next column of tiles starts
                    // warm. After the chunk's last panel comes its first at
                    // the next depth block. (A panel still being packed
                    // elsewhere is prefetched stale: harmless.)
                    let next_b = if idx + 1 < len {
                        b_block.panel(g, nr, nth(idx + 1), pc)
                    } else {
                        b_block.panel(g, nr, nth(0), (pc + kc).min(g.k - 1))
                    };
                    let j = jc + jp * nr;
                    let cols = nr.min(g.n - j);
                    let b = b_block.panel(g, nr, jp, pc);
                    let ep = Epilogue {
                        alpha: g.alpha,
                        beta: if first { g.beta } else { 1.0 },
                        bias: if first && !g.bias.is_null() {
                            g.bias.wrapping_add(j)
                        } else {
                            std::ptr::null()
                        },
                    };
                    for ip in 0..pm.len() {
                        let i = i0 + ip * mr;
                        let a = packed_a[ip * g.k * mr + pc * mr..].as_ptr();
                        let c = g.c.wrapping_add(i * g.ldc + j);
                        let r = mr.min(g.m - i);
                        for l in ip * per_tile..b_lines.min((ip + 1) * per_tile) {
                            prefetch(next_b.wrapping_add(l * 16), Cache::L2);
                        }
                        // SAFETY: `a` and `b` are packed panels of kc depths;
                        // C's tile at (i, j) has `r` rows and `cols` columns
                        // inside C, which this task owns (and `bias`, when
                        // set, `cols` floats from column j).
                        unsafe {
                            if cols == nr && r == mr {
                                kern.tile(kc, a, b, c, g.ldc, &ep);
                            } else if cols < nr || !kern.tile_partial(kc, a, b, c, g.ldc, r, &ep) {
                                edge_tile(kern, kc, a, b, c, g.ldc, r, cols, &ep);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Floats of C one task keeps in L2 across the depth blocks (384 KiB,
/// beside the task's packed A and the streaming B panels).
const C_CHUNK_FLOATS: usize = 96 * 1024;

/// A tile cut by the edge of C: the kernel writes a scratch tile and only
/// its `rows x cols` corner goes through the epilogue into C.
///
/// # Safety
/// As [`MicroKernel::tile`]'s, with C (and bias) covering `rows x cols`.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile<K: MicroKernel>(
    kern: K,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    ep: &Epilogue,
) {
    let mut scratch = [Line([0.0; 16]); MAX_TILE / 16];
    let t = scratch.as_mut_ptr().cast::<f32>();
    debug_assert!(K::MR * K::NR <= MAX_TILE);
    // SAFETY: the scratch tile holds MR x NR floats at row stride NR; the
    // rest is this function's contract.
    unsafe {
        kern.tile(kc, a, b, t, K::NR, &Epilogue::STORE);
        for i in 0..rows {
            for j in 0..cols {
                let cp = c.add(i * ldc + j);
                let bias = if ep.bias.is_null() {
                    0.0
                } else {
                    *ep.bias.add(j)
                };
                *cp = ep.apply(*t.add(i * K::NR + j), *cp, bias);
            }
        }
    }
}
