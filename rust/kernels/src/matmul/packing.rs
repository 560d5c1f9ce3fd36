//! Packing: copies of op(A) and op(B) blocks into the contiguous,
//! zero-padded micro-panels the micro-kernels stream through.
//!
//! A transposed operand is only read with swapped strides here; nothing
//! else ever copies or transposes it. Packing is generic over the SIMD
//! token: with AVX-512 the transposing copy goes through registers.

use super::blocking::{prefetch, Cache};
use crate::simd::Simd;

/// A read-only strided matrix: element `(i, j)` lives at `ptr + i*rs + j*cs`.
/// A row-major `(r, c)` array is `rs = c, cs = 1`; its transpose is `rs = 1, cs = c`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a View only reads, and the caller keeps the data alive and
// unmodified for as long as any thread uses it.
unsafe impl Send for View {}
// SAFETY: as for Send: shared use only reads.
unsafe impl Sync for View {}

impl View {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be inside the matrix (or one past it, unread).
    #[inline]
    pub unsafe fn at(self, i: usize, j: usize) -> View {
        View {
            // SAFETY: the offset stays inside the matrix (this fn's contract).
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }
}

/// Floats per cache line.
const LINE: usize = 16;

/// How many rows ahead a strided contiguous copy prefetches.
const PREFETCH_ROWS: usize = 8;

/// Packs one micro-panel: `dst (kc, W)` with `dst[p*W + i] = src(i, p)`
/// for `i < valid`, zero for `valid <= i < W`. `src(i, p)` is at
/// `ptr + i*stride_w + p*stride_k`. `W` is the kernel's MR or NR, a
/// constant, so that the copies below compile to fixed-width moves.
///
/// # Safety
/// `dst` holds `kc * W` floats; `src` is readable for `i < valid`,
/// `p < kc`.
#[inline(always)]
unsafe fn pack_panel<const W: usize, S: Simd>(
    s: S,
    dst: &mut [f32],
    src: *const f32,
    stride_w: usize,
    stride_k: usize,
    valid: usize,
    kc: usize,
) {
    debug_assert!(dst.len() >= kc * W && valid <= W);
    let dst = &mut dst[..kc * W];
    if stride_w == 1 {
        // Each depth step is a contiguous run of `valid` floats.
        if valid == W {
            // Rows a whole row of op(B) apart (often 2 KiB or more): the
            // hardware prefetchers miss such strides, so ask for the lines
            // a few rows ahead.
            for (p, row) in dst.chunks_exact_mut(W).enumerate() {
                // Only a hint: past the end (or wrapped, for a huge stride) is fine.
                let ahead = src.wrapping_add((p + PREFETCH_ROWS).wrapping_mul(stride_k));
                for l in (0..W).step_by(LINE) {
                    prefetch(ahead.wrapping_add(l), Cache::L1);
                }
                // SAFETY: depth step p < kc of the W (= valid) lines.
                let line = unsafe { &*src.add(p * stride_k).cast::<[f32; W]>() };
                row.copy_from_slice(line);
            }
        } else {
            for (p, row) in dst.chunks_exact_mut(W).enumerate() {
                // SAFETY: depth step p < kc of the `valid` lines.
                let line = unsafe { std::slice::from_raw_parts(src.add(p * stride_k), valid) };
                row[..valid].copy_from_slice(line);
                row[valid..].fill(0.0);
            }
        }
    } else if stride_k == 1 {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = s.avx512().filter(|_| W <= 32) {
            // SAFETY: as this function's contract; the token proves AVX-512F.
            return unsafe {
                x86::transpose_panel::<W>(t, dst.as_mut_ptr(), src, stride_w, valid, kc)
            };
        }
        let _ = s;
        // Each of the `valid` lines is contiguous along depth: a transpose,
        // done one source cache line (16 floats) of every line at a time.
        // Lines of A or B often lie a multiple of 4 KiB apart and so share
        // an L1 set; consuming each loaded cache line at once keeps them
        // from evicting each other before use.
        if valid < W {
            for row in dst.chunks_exact_mut(W) {
                row[valid..].fill(0.0);
            }
        }
        for p0 in (0..kc).step_by(LINE) {
            let len = LINE.min(kc - p0);
            let block = &mut dst[p0 * W..(p0 + len) * W];
            for i in 0..valid {
                // SAFETY: line i < valid, depths p0..p0 + len <= kc.
                let line = unsafe { std::slice::from_raw_parts(src.add(i * stride_w + p0), len) };
                for (row, &v) in block.chunks_exact_mut(W).zip(line) {
                    row[i] = v;
                }
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(W).enumerate() {
            for (i, d) in row.iter_mut().enumerate() {
                *d = if i < valid {
                    // SAFETY: line i < valid, depth p < kc.
                    unsafe { *src.add(i * stride_w + p * stride_k) }
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use crate::simd::Avx512;

    /// [`transpose_panel`] for a full panel (`valid == W`, W a multiple of
    /// 16) over the first `kc` (a multiple of 16) depths: each group of 16
    /// lines is walked along the depth as 16 streams, with no per-line
    /// checks, and every store fills one whole cache line of `dst`.
    ///
    /// # Safety
    /// As [`transpose_panel`]'s with `valid == W`.
    #[inline(always)]
    unsafe fn transpose_full<const W: usize>(
        t: Avx512,
        dst: *mut f32,
        src: *const f32,
        stride_w: usize,
        kc: usize,
    ) {
        for i0 in (0..W).step_by(16) {
            for p0 in (0..kc).step_by(16) {
                // SAFETY: lines i0..i0 + 16 <= W at depths p0..p0 + 16 <= kc
                // are readable, and `dst` holds kc * W floats; the token
                // proves AVX-512F.
                unsafe {
                    let base = src.add(i0 * stride_w);
                    let rows: [__m512; 16] =
                        std::array::from_fn(|i| _mm512_loadu_ps(base.add(i * stride_w + p0)));
                    let cols = transpose16(t, rows);
                    for (q, &c) in cols.iter().enumerate() {
                        _mm512_storeu_ps(dst.add((p0 + q) * W + i0), c);
                    }
                }
            }
        }
    }

    /// `out[j]` = column `j` of the 16 x 16 block whose rows are `r`.
    ///
    /// Written out step by step: built with `array::from_fn` and a
    /// `match` per element, the second stage compiled to a loop that
    /// spilled every vector to the stack (packing ran at half speed).
    #[inline(always)]
    pub fn transpose16(_: Avx512, r: [__m512; 16]) -> [__m512; 16] {
        // SAFETY: shuffles only; the token proves AVX-512F.
        unsafe {
            let pd = _mm512_castps_pd;
            let ps = _mm512_castpd_ps;
            // Pairs of rows interleaved: t[2i], t[2i + 1] from r[2i], r[2i + 1].
            let lo = |a, b| _mm512_unpacklo_ps(a, b);
            let hi = |a, b| _mm512_unpackhi_ps(a, b);
            let t = [
                lo(r[0], r[1]),
                hi(r[0], r[1]),
                lo(r[2], r[3]),
                hi(r[2], r[3]),
                lo(r[4], r[5]),
                hi(r[4], r[5]),
                lo(r[6], r[7]),
                hi(r[6], r[7]),
                lo(r[8], r[9]),
                hi(r[8], r[9]),
                lo(r[10], r[11]),
                hi(r[10], r[11]),
                lo(r[12], r[13]),
                hi(r[12], r[13]),
                lo(r[14], r[15]),
                hi(r[14], r[15]),
            ];
            // Pairs of pairs, as doubles: u[4q + {0,1}] from t[4q], t[4q + 2];
            // u[4q + {2,3}] from t[4q + 1], t[4q + 3].
            let dlo = |a, b| ps(_mm512_unpacklo_pd(pd(a), pd(b)));
            let dhi = |a, b| ps(_mm512_unpackhi_pd(pd(a), pd(b)));
            let u = [
                dlo(t[0], t[2]),
                dhi(t[0], t[2]),
                dlo(t[1], t[3]),
                dhi(t[1], t[3]),
                dlo(t[4], t[6]),
                dhi(t[4], t[6]),
                dlo(t[5], t[7]),
                dhi(t[5], t[7]),
                dlo(t[8], t[10]),
                dhi(t[8], t[10]),
                dlo(t[9], t[11]),
                dhi(t[9], t[11]),
                dlo(t[12], t[14]),
                dhi(t[12], t[14]),
                dlo(t[13], t[15]),
                dhi(t[13], t[15]),
            ];
            // 128-bit blocks: v[8h + j] (j < 4) from u[8h + j], u[8h + j + 4]
            // (even blocks), v[8h + 4 + j] the odd blocks.
            let ev = |a, b| _mm512_shuffle_f32x4::<0x88>(a, b);
            let od = |a, b| _mm512_shuffle_f32x4::<0xdd>(a, b);
            let v = [
                ev(u[0], u[4]),
                ev(u[1], u[5]),
                ev(u[2], u[6]),
                ev(u[3], u[7]),
                od(u[0], u[4]),
                od(u[1], u[5]),
                od(u[2], u[6]),
                od(u[3], u[7]),
                ev(u[8], u[12]),
                ev(u[9], u[13]),
                ev(u[10], u[14]),
                ev(u[11], u[15]),
                od(u[8], u[12]),
                od(u[9], u[13]),
                od(u[10], u[14]),
                od(u[11], u[15]),
            ];
            // out[j] (j < 8) from v[j], v[j + 8] (even blocks), out[8 + j] odd.
            [
                ev(v[0], v[8]),
                ev(v[1], v[9]),
                ev(v[2], v[10]),
                ev(v[3], v[11]),
                ev(v[4], v[12]),
                ev(v[5], v[13]),
                ev(v[6], v[14]),
                ev(v[7], v[15]),
                od(v[0], v[8]),
                od(v[1], v[9]),
                od(v[2], v[10]),
                od(v[3], v[11]),
                od(v[4], v[12]),
                od(v[5], v[13]),
                od(v[6], v[14]),
                od(v[7], v[15]),
            ]
        }
    }

    /// The transposing case of `pack_panel` (`stride_k == 1`, `W <= 32`):
    /// 16 x 16 blocks through registers, lines past `valid` read as zero.
    ///
    /// # Safety
    /// `dst` holds `kc * W` floats; lines `i < valid` of `src`, `stride_w`
    /// apart, are readable for `kc` floats each. (The token proves AVX-512F.)
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_panel<const W: usize>(
        t: Avx512,
        dst: *mut f32,
        src: *const f32,
        stride_w: usize,
        valid: usize,
        kc: usize,
    ) {
        let mut start = 0;
        if valid == W && W.is_multiple_of(16) {
            start = kc / 16 * 16;
            // SAFETY: a full panel over the first `start <= kc` depths.
            unsafe { transpose_full::<W>(t, dst, src, stride_w, start) };
        }
        for p0 in (start..kc).step_by(16) {
            let len = 16.min(kc - p0);
            let kmask: __mmask16 = if len == 16 { !0 } else { (1u16 << len) - 1 };
            for i0 in (0..W).step_by(16) {
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    if i0 + i < valid {
                        // SAFETY: line i0 + i < valid, the `len` depths
                        // from p0 masked in.
                        unsafe { _mm512_maskz_loadu_ps(kmask, src.add((i0 + i) * stride_w + p0)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let cols = transpose16(t, rows);
                let width = 16.min(W - i0);
                let wmask: __mmask16 = if width == 16 { !0 } else { (1u16 << width) - 1 };
                for (q, &c) in cols.iter().enumerate().take(len) {
                    // SAFETY: row p0 + q < kc of dst, columns i0..i0 + width <= W.
                    unsafe { _mm512_mask_storeu_ps(dst.add((p0 + q) * W + i0), wmask, c) };
                }
            }
        }
    }
}

/// Packs rows `[i0, i0 + rows)` and depth `[p0, p0 + kc)` of op(A) `a`
/// into `ceil(rows / MR)` micro-panels `(kc, MR)`, one after another in
/// `dst`; rows past the end are zero.
///
/// # Safety
/// The block lies inside `a`; `dst` holds `ceil(rows / MR) * kc * MR`
/// floats.
pub unsafe fn pack_a<const MR: usize, S: Simd>(
    s: S,
    dst: &mut [f32],
    a: View,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
) {
    for (r, panel) in dst
        .chunks_exact_mut(kc * MR)
        .take(rows.div_ceil(MR))
        .enumerate()
    {
        let valid = MR.min(rows - r * MR);
        // SAFETY: rows i0 + r*MR .. + valid and depths p0..p0 + kc lie inside
        // `a`; `panel` holds kc * MR floats.
        unsafe {
            let src = a.at(i0 + r * MR, p0);
            pack_panel::<MR, S>(s, panel, src.ptr, a.rs, a.cs, valid, kc);
        }
    }
}

/// Packs columns `[j0, j0 + NR)` (fewer, `valid`, at the right edge) of
/// op(B) `b` over the whole depth `k` into one micro-panel `dst (k, NR)`.
///
/// # Safety
/// The columns lie inside `b`; `dst` holds `k * NR` floats.
pub unsafe fn pack_b<const NR: usize, S: Simd>(
    s: S,
    dst: &mut [f32],
    b: View,
    j0: usize,
    valid: usize,
    k: usize,
) {
    // SAFETY: columns j0..j0 + valid over depth k lie inside `b`; `dst`
    // holds k * NR floats.
    unsafe {
        let src = b.at(0, j0);
        pack_panel::<NR, S>(s, dst, src.ptr, b.cs, b.rs, valid, k);
    }
}
