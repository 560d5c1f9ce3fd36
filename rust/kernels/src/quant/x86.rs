//! The int8 mode's dot products on AVX2, straight from the block bytes,
//! several weight rows per pass.
//!
//! Each weight block is unpacked in registers (nibbles split by a 64-bit
//! variable shift of the bytes loaded twice, the fifth and sixth bits spread
//! from their bit fields with a byte shuffle and a compare, or shifted into
//! place) into 32 unsigned bytes `u` per chunk and multiplied with the
//! chunk's int8 activations: by `vpdpbusd` where the CPU has VNNI (AVX-VNNI,
//! or AVX-512 VNNI on ymm), else by `vpmaddubsw` (pairs into 16 bits) and
//! `vpmaddwd` (pairs into 32 bits). Either gives the same eight exact
//! integer partial sums (lane k holds bytes 4k..4k+3), converted once per
//! chunk and scaled by `dx * scale` into a float accumulator. Nothing is
//! written to memory between the weight bytes and the sum.
//!
//! Up to four weight rows go through the chunks together: each chunk of
//! activations is loaded (and its scale broadcast) once for all of them,
//! and their accumulators are independent, so the FMA latency of one row no
//! longer paces the loop. The four rows' sums are reduced together.
//!
//! Signed weights `q = u - bias` (Q4_0, Q5_0, Q6_K: bias 8, 16, 32) use the
//! unsigned `u` and start each chunk's integer sums at `-bias * (the four
//! activation bytes of the lane summed)`, computed once per chunk for all
//! rows: the sums are exactly `sum(q * qx)`. Q8_0 (full int8) takes `u = q +
//! 128` with VNNI (no saturation there) and the sign trick without
//! (`|q|` times `qx` with q's sign). `vpmaddubsw` saturates a pair sum at
//! 2^15; its operands never reach it: `u` is at most 63 (`2 * 63 * 127 <
//! 2^15`) and the sign trick's `2 * 128 * 127 = 32512`.
//!
//! Types with a minimum (Q4_1, Q5_1, Q4_K, Q5_K) are `w = scale * u +
//! offset`, so their chunks are `dx * scale * sum(u * qx) + offset * sx`
//! (`sx = dx * sum(qx)`), the identity of the module docs. The float
//! products are rounded in the order of the portable path (`(d * dx)`,
//! `(d * sc) * dx`, `(d * dx) * sc`, `m * sx`); only the order of the sums
//! differs.

use std::arch::x86_64::*;

use super::blocks::{QType, CHUNK};
use crate::simd::Avx2;

/// One quantized row of activations: int8 values, and per chunk of 32 the
/// scale `dx` and `sx = dx * sum(qx)`.
#[derive(Clone, Copy)]
pub(super) struct QRow<'a> {
    pub qx: &'a [i8],
    pub dx: &'a [f32],
    pub sx: &'a [f32],
}

/// Which integer dot instruction the kernels use. Made only by
/// [`Dot::best`] and [`Dot::supported`], which ask the CPU, so holding a VNNI
/// value is the proof that the CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dot(DotKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotKind {
    /// `vpmaddubsw` + `vpmaddwd` (AVX2).
    Madd,
    /// `vpdpbusd` on ymm, VEX-encoded (AVX-VNNI).
    AvxVnni,
    /// `vpdpbusd` on ymm, EVEX-encoded (AVX-512 VNNI with VL).
    Avx512Vnni,
}

impl Dot {
    /// Every kind this CPU runs, the plain AVX2 one first (the tests force
    /// each).
    #[cfg(test)]
    pub(super) fn supported() -> Vec<Dot> {
        let mut all = vec![Dot(DotKind::Madd)];
        if is_x86_feature_detected!("avxvnni") {
            all.push(Dot(DotKind::AvxVnni));
        }
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            all.push(Dot(DotKind::Avx512Vnni));
        }
        all
    }

    /// The EVEX VNNI where present (on ymm: no AVX-512 frequency cost, and
    /// 32 registers, so that four rows' accumulators and the unpacking
    /// constants stay in registers: Q5_1's four-row loop is 90 instructions
    /// against 106 with VEX), else the VEX one, else the AVX2 pair (std
    /// caches the CPU's answers).
    #[inline]
    pub(super) fn best() -> Dot {
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            Dot(DotKind::Avx512Vnni)
        } else if is_x86_feature_detected!("avxvnni") {
            Dot(DotKind::AvxVnni)
        } else {
            Dot(DotKind::Madd)
        }
    }
}

impl Avx2 {
    /// `out[i * xs.len() + r] = sum(w_i * xs[r])` for the weight rows `w_i`
    /// in `w` (`out.len() / xs.len()` rows of whole blocks of `t`) against
    /// quantized activation rows of the same length, four weight rows per
    /// pass. A row's result does not depend on the other rows.
    #[inline(always)]
    pub(super) fn quant_rows_dot(
        self,
        dot: Dot,
        t: QType,
        w: &[u8],
        xs: &[QRow<'_>],
        out: &mut [f32],
    ) {
        let n_ch = w.len() / (out.len() / xs.len().max(1)).max(1) / t.type_size()
            * (t.block_size() / CHUNK);
        assert!(
            xs.iter()
                .all(|x| x.qx.len() == n_ch * CHUNK && x.dx.len() == n_ch && x.sx.len() == n_ch)
                && out.len().is_multiple_of(xs.len().max(1)),
            "quant_rows_dot: {} weight bytes, {} outputs, activation rows of {:?} values",
            w.len(),
            out.len(),
            xs.iter().map(|x| x.qx.len()).collect::<Vec<_>>()
        );
        if xs.is_empty() || out.is_empty() {
            return;
        }
        match dot.0 {
            // SAFETY: the token exists, so the CPU has AVX2, FMA and F16C, the
            // features these functions are compiled with (they index only
            // with bounds checks).
            DotKind::Madd => unsafe { madd::tile(t, w, xs, out) },
            // SAFETY: as above, and this kind is made only where the CPU has
            // AVX-VNNI.
            DotKind::AvxVnni => unsafe { avx_vnni::tile(t, w, xs, out) },
            // SAFETY: as above, and this kind is made only where the CPU has
            // AVX-512 VNNI and VL.
            DotKind::Avx512Vnni => unsafe { avx512_vnni::tile(t, w, xs, out) },
        }
    }
}

/// [`drive`] with the kernel `$k` at four rows and at one (`_` stands for
/// the row count among its const parameters), `$unpack` passed on.
macro_rules! by_four {
    ($w:expr, $xs:expr, $out:expr, $k:ident::<_ $(, $p:tt)*> $(, $unpack:expr)?) => {
        drive(
            $w,
            $xs,
            $out,
            |w, x| $k::<4 $(, $p)*>(w, x $(, $unpack)?),
            |w, x| $k::<1 $(, $p)*>(w, x $(, $unpack)?),
        )
    };
}

/// The weight rows of `w` (as many as `out` has per row of `xs`) against every row of `xs`
/// into `out` (weight row major): four weight rows at a time by `four`,
/// the last ones by `one`.
#[inline(always)]
fn drive(
    w: &[u8],
    xs: &[QRow<'_>],
    out: &mut [f32],
    four: impl Fn([&[u8]; 4], QRow<'_>) -> [f32; 4],
    one: impl Fn([&[u8]; 1], QRow<'_>) -> [f32; 1],
) {
    // the kernels check that a row holds whole blocks for the activations
    let rows = xs.len();
    let row_bytes = w.len() / (out.len() / rows);
    assert_eq!(
        w.len(),
        out.len() / rows * row_bytes,
        "quant_rows_dot: shapes"
    );
    let mut groups = w.chunks_exact(4 * row_bytes);
    let mut outs = out.chunks_exact_mut(4 * rows);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let (w01, w23) = g.split_at(2 * row_bytes);
        let (w0, w1) = w01.split_at(row_bytes);
        let (w2, w3) = w23.split_at(row_bytes);
        for (r, &x) in xs.iter().enumerate() {
            for (k, v) in four([w0, w1, w2, w3], x).into_iter().enumerate() {
                o[k * rows + r] = v;
            }
        }
    }
    let tail = groups.remainder().chunks_exact(row_bytes);
    for (wr, o) in tail.zip(outs.into_remainder().chunks_exact_mut(rows)) {
        for (v, &x) in o.iter_mut().zip(xs) {
            *v = one([wr], x)[0];
        }
    }
}

/// 32 bytes from a slice of exactly 32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load32(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` holds 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// 16 bytes from a slice of exactly 16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` holds 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// The activation chunk `c` of `x` as 32 signed bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_qx(x: &QRow<'_>, c: usize) -> __m256i {
    let q: &[i8; 32] = x.qx[c * CHUNK..(c + 1) * CHUNK]
        .try_into()
        .expect("a chunk");
    // SAFETY: `q` holds 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// 32 bytes in both 128-bit halves.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load16x2(b: &[u8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(load16(b))
}

/// 16 packed bytes' nibbles as 32 bytes: the low nibbles, then the high.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let shifted = _mm256_srlv_epi64(load16x2(qs), _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// The 32 bits at `b` as 32 bytes, byte i = 0x10 where bit i is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits(b: &[u8; 4]) -> __m256i {
    // SAFETY: `b` holds 4 readable bytes; the load is unaligned.
    let bits = unsafe { _mm_loadu_si32(b.as_ptr().cast()) };
    let spread = _mm256_shuffle_epi8(
        _mm256_broadcastd_epi32(bits),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// The f16 at `b` in all eight lanes (F16C's exact conversion).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn half8(b: &[u8; 2]) -> __m256 {
    // SAFETY: `b` holds 2 readable bytes; the load is unaligned.
    let h = unsafe { _mm_loadu_si16(b.as_ptr().cast()) };
    _mm256_cvtph_ps(_mm_broadcastw_epi16(h))
}

/// The two f16 at `b` (a block's `d` and `m`), as `[d, m, d, m, ...]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn halves8(b: &[u8; 4]) -> __m256 {
    // SAFETY: `b` holds 4 readable bytes; the load is unaligned.
    let h = unsafe { _mm_loadu_si32(b.as_ptr().cast()) };
    _mm256_cvtph_ps(_mm_broadcastd_epi32(h))
}

/// `acc + u . qx` per lane of four bytes (`vpmaddubsw`, `vpmaddwd`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_madd(acc: __m256i, u: __m256i, qx: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(u, qx);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// `q . qx` per lane for full int8 `q`, by the sign trick: `|q|` times
/// `qx` with q's sign (`vpmaddubsw` would saturate on `q + 128`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_i8_madd(q: __m256i, qx: __m256i) -> __m256i {
    dot_madd(
        _mm256_setzero_si256(),
        _mm256_abs_epi8(q),
        _mm256_sign_epi8(qx, q),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[inline]
fn dot_avx_vnni(acc: __m256i, u: __m256i, qx: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, u, qx)
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
#[inline]
fn dot_avx512_vnni(acc: __m256i, u: __m256i, qx: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, qx)
}

/// The horizontal sums of four registers, in one register (lanes summed
/// in pairs, then the pairs, then the halves).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1))
}

/// `hsum(acc[r]) + extra[r]`, four rows per reduction (zeros pad the last
/// four), so a row's sum is the same whatever `N`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce<const N: usize>(acc: [__m256; N], extra: [f32; N]) -> [f32; N] {
    let mut out = extra;
    for g in (0..N).step_by(4) {
        let v = |i: usize| acc.get(g + i).copied().unwrap_or(_mm256_setzero_ps());
        let mut s = [0.0f32; 4];
        // SAFETY: `s` holds 4 writable floats; the store is unaligned.
        unsafe { _mm_storeu_ps(s.as_mut_ptr(), hsum4(v(0), v(1), v(2), v(3))) };
        for (o, v) in out[g..].iter_mut().zip(s) {
            *o += v;
        }
    }
    out
}

/// The `N` rows as arrays of `TS`-byte blocks, `n` each (each row must be
/// exactly that long).
#[inline(always)]
fn blocks_of<const TS: usize, const N: usize>(w: [&[u8]; N], n: usize) -> [&[[u8; TS]]; N] {
    assert!(
        w.iter().all(|r| r.len() == n * TS),
        "quant_rows_dot: weight rows of {:?} bytes for {n} blocks of {TS}",
        w.map(|r| r.len())
    );
    w.map(|r| r.as_chunks::<TS>().0)
}

/// `f` itself: lets a closure that must be inlined (so that its shifts
/// become immediates) carry `#[inline(always)]` where a `let` cannot.
#[inline(always)]
fn inlined<A, F: FnMut(A)>(f: F) -> F {
    f
}

/// The bytes `at..at + M` of `b`, as an array.
#[inline(always)]
fn bytes<const M: usize>(b: &[u8], at: usize) -> &[u8; M] {
    b[at..at + M].try_into().expect("in the block")
}

/// `-bias * (the four bytes of each lane of qx summed)`: where the integer
/// sums of `u = q + bias` start, so that they end at `sum(q * qx)`.
macro_rules! minus_bias {
    ($dot:ident, $bias:expr, $qx:expr) => {
        _mm256_sub_epi32(
            _mm256_setzero_si256(),
            $dot(
                _mm256_setzero_si256(),
                _mm256_set1_epi8($bias as u8 as i8),
                $qx,
            ),
        )
    };
}

/// The kernels, compiled once per dot instruction (`$features` enable it,
/// `$dot` is its [`dot_madd`]; `$unsigned_q8`: Q8_0 as `q + 128`, which only
/// `vpdpbusd` multiplies without saturating).
macro_rules! row_kernels {
    ($name:ident, $features:literal, $dot:ident, $unsigned_q8:literal) => {
        mod $name {
            use super::*;

            #[target_feature(enable = $features)]
            pub(super) fn tile(t: QType, w: &[u8], xs: &[QRow<'_>], out: &mut [f32]) {
                match t {
                    QType::Q8_0 => by_four!(w, xs, out, q8_0::<_>),
                    QType::Q4_0 => by_four!(w, xs, out, small::<_, 18, 8>, |b: &[u8; 18]| {
                        nibbles(bytes(b, 2))
                    }),
                    QType::Q4_1 => by_four!(w, xs, out, small::<_, 20, 0>, |b: &[u8; 20]| {
                        nibbles(bytes(b, 4))
                    }),
                    QType::Q5_0 => by_four!(w, xs, out, small::<_, 22, 16>, |b: &[u8; 22]| {
                        _mm256_or_si256(nibbles(bytes(b, 6)), fifth_bits(bytes(b, 2)))
                    }),
                    QType::Q5_1 => by_four!(w, xs, out, small::<_, 24, 0>, |b: &[u8; 24]| {
                        _mm256_or_si256(nibbles(bytes(b, 8)), fifth_bits(bytes(b, 4)))
                    }),
                    QType::Q4K => by_four!(w, xs, out, k_quant::<_, 144, false>),
                    QType::Q5K => by_four!(w, xs, out, k_quant::<_, 176, true>),
                    QType::Q6K => by_four!(w, xs, out, q6k::<_>),
                }
            }

            #[target_feature(enable = $features)]
            fn q8_0<const N: usize>(w: [&[u8]; N], x: QRow<'_>) -> [f32; N] {
                let n = x.dx.len();
                let w = blocks_of::<34, N>(w, n);
                let mut acc = [_mm256_setzero_ps(); N];
                for c in 0..n {
                    let qx = load_qx(&x, c);
                    let dx = _mm256_set1_ps(x.dx[c]);
                    let minus_128 = minus_bias!($dot, 128, qx);
                    for r in 0..N {
                        let b = &w[r][c];
                        let q = load32(bytes(b, 2));
                        let sums = if $unsigned_q8 {
                            // (q + 128) . qx - 128 * sum(qx)
                            $dot(minus_128, _mm256_xor_si256(q, _mm256_set1_epi8(-128)), qx)
                        } else {
                            dot_i8_madd(q, qx)
                        };
                        let s = _mm256_mul_ps(half8(bytes(b, 0)), dx);
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, acc[r]);
                    }
                }
                reduce(acc, [0.0; N])
            }

            /// The 32-value blocks of `TS` bytes but Q8_0: `unpack` gives
            /// a block's `u`; `BIAS` 0 means `w = d * u + m` (`d` and `m`
            /// the block's first f16), else `w = d * (u - BIAS)`.
            #[target_feature(enable = $features)]
            #[inline]
            fn small<const N: usize, const TS: usize, const BIAS: u8>(
                w: [&[u8]; N],
                x: QRow<'_>,
                unpack: impl Fn(&[u8; TS]) -> __m256i,
            ) -> [f32; N] {
                let n = x.dx.len();
                let w = blocks_of::<TS, N>(w, n);
                let mut acc = [_mm256_setzero_ps(); N];
                // lanes 1, 3, ...: the sum of `m * sx`, in chunk order
                let mut off = [_mm256_setzero_ps(); N];
                for c in 0..n {
                    let qx = load_qx(&x, c);
                    let dx = _mm256_set1_ps(x.dx[c]);
                    let start = if BIAS == 0 {
                        _mm256_setzero_si256()
                    } else {
                        minus_bias!($dot, BIAS, qx)
                    };
                    let dx_sx = _mm256_unpacklo_ps(dx, _mm256_set1_ps(x.sx[c]));
                    for r in 0..N {
                        let b = &w[r][c];
                        let sums = $dot(start, unpack(b), qx);
                        let s = if BIAS == 0 {
                            // [d dx, m sx, d dx, m sx, ...]
                            let p = _mm256_mul_ps(halves8(bytes(b, 0)), dx_sx);
                            off[r] = _mm256_add_ps(off[r], p);
                            _mm256_moveldup_ps(p)
                        } else {
                            _mm256_mul_ps(half8(bytes(b, 0)), dx)
                        };
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, acc[r]);
                    }
                }
                let off = off.map(|o| _mm_cvtss_f32(_mm_movehdup_ps(_mm256_castps256_ps128(o))));
                reduce(acc, if BIAS == 0 { off } else { [0.0; N] })
            }

            /// Q4_K and, `HIGH`, Q5_K (whose fifth bits come from the
            /// block's `qh`): sub-block j of 32 is `d * sc_j * u - dmin * m_j`.
            #[target_feature(enable = $features)]
            #[inline]
            fn k_quant<const N: usize, const TS: usize, const HIGH: bool>(
                w: [&[u8]; N],
                x: QRow<'_>,
            ) -> [f32; N] {
                let qs_at = if HIGH { 48 } else { 16 };
                assert!(x.dx.len().is_multiple_of(8), "whole blocks of 256");
                let n = x.dx.len() / 8;
                let w = blocks_of::<TS, N>(w, n);
                let m4 = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); N];
                // lane j: minus the sum of `dmin * m_j * sx` over the blocks
                let mut off = [_mm256_setzero_ps(); N];
                let mut scale = [[0.0f32; 8]; N];
                for k in 0..n {
                    let (dx, sx) = (&x.dx[8 * k..8 * k + 8], &x.sx[8 * k..8 * k + 8]);
                    for r in 0..N {
                        let b = &w[r][k];
                        let dm = halves8(bytes(b, 0));
                        let (sc, m) = k_scales_mins(bytes(b, 4));
                        let d_sc = _mm256_mul_ps(_mm256_moveldup_ps(dm), sc);
                        // SAFETY: `dx` holds 8 floats, `scale[r]` 8 writable
                        // ones; the accesses are unaligned.
                        unsafe {
                            let s = _mm256_mul_ps(d_sc, _mm256_loadu_ps(dx.as_ptr()));
                            _mm256_storeu_ps(scale[r].as_mut_ptr(), s);
                        }
                        let dmin_m = _mm256_mul_ps(_mm256_movehdup_ps(dm), m);
                        // SAFETY: `sx` holds 8 floats; the load is unaligned.
                        let sxv = unsafe { _mm256_loadu_ps(sx.as_ptr()) };
                        off[r] = _mm256_sub_ps(off[r], _mm256_mul_ps(dmin_m, sxv));
                    }
                    for p in 0..4 {
                        // chunks 2p (low nibbles) and 2p + 1 (high), written
                        // out twice so that every shift is an immediate
                        let mut chunk = inlined(
                            #[inline(always)]
                            |h: usize| {
                                let j = 2 * p + h;
                                let qx = load_qx(&x, 8 * k + j);
                                for r in 0..N {
                                    let b = &w[r][k];
                                    let raw = load32(bytes(b, qs_at + 32 * p));
                                    let raw = if h == 0 {
                                        raw
                                    } else {
                                        _mm256_srli_epi16(raw, 4)
                                    };
                                    let low = _mm256_and_si256(raw, m4);
                                    let u = if HIGH {
                                        // bit j of each qh byte, moved to bit 4
                                        // (16-bit shifts: the mask keeps each
                                        // byte's own bit)
                                        let qh = _mm256_srl_epi16(
                                            load32(bytes(b, 16)),
                                            _mm_cvtsi32_si128(2 * p as i32),
                                        );
                                        let bit = if h == 0 {
                                            _mm256_slli_epi16(qh, 4)
                                        } else {
                                            _mm256_slli_epi16(qh, 3)
                                        };
                                        _mm256_or_si256(
                                            low,
                                            _mm256_and_si256(bit, _mm256_set1_epi8(0x10)),
                                        )
                                    } else {
                                        low
                                    };
                                    let sums = $dot(_mm256_setzero_si256(), u, qx);
                                    let s = _mm256_set1_ps(scale[r][j]);
                                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, acc[r]);
                                }
                            },
                        );
                        chunk(0);
                        chunk(1);
                    }
                }
                for r in 0..N {
                    acc[r] = _mm256_add_ps(acc[r], off[r]);
                }
                reduce(acc, [0.0; N])
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn q6k<const N: usize>(w: [&[u8]; N], x: QRow<'_>) -> [f32; N] {
                assert!(x.dx.len().is_multiple_of(8), "whole blocks of 256");
                let n = x.dx.len() / 8;
                let w = blocks_of::<210, N>(w, n);
                let m4 = _mm256_set1_epi8(0x0F);
                let pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
                let mut acc = [_mm256_setzero_ps(); N];
                // the 16 scales as floats, and room to load 8 from 2 * 7
                let mut sc = [[0.0f32; 24]; N];
                let mut d = [_mm256_setzero_ps(); N];
                for k in 0..n {
                    for r in 0..N {
                        let b = &w[r][k];
                        d[r] = half8(bytes(b, 208));
                        let raw = load16(bytes(b, 192));
                        let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
                        let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(raw, 8)));
                        // SAFETY: `sc[r]` holds 24 writable floats; the
                        // stores are unaligned.
                        unsafe {
                            _mm256_storeu_ps(sc[r].as_mut_ptr(), lo);
                            _mm256_storeu_ps(sc[r][8..].as_mut_ptr(), hi);
                        }
                    }
                    for h in 0..2 {
                        // chunk 4h + g: the low (g < 2) or high nibbles of
                        // 32 bytes of ql, and bits 2g, 2g + 1 of qh's bytes
                        // moved to bits 4, 5 (16-bit shifts; the mask keeps
                        // each byte's own bits); written out four times so
                        // that every shift is an immediate
                        let mut chunk = inlined(
                            #[inline(always)]
                            |g: usize| {
                                let j = 4 * h + g;
                                let c = 8 * k + j;
                                let qx = load_qx(&x, c);
                                let dx = _mm256_set1_ps(x.dx[c]);
                                let start = minus_bias!($dot, 32, qx);
                                for r in 0..N {
                                    let b = &w[r][k];
                                    let low = load32(bytes(b, 64 * h + 32 * (g % 2)));
                                    let low = if g < 2 {
                                        low
                                    } else {
                                        _mm256_srli_epi16(low, 4)
                                    };
                                    let low = _mm256_and_si256(low, m4);
                                    let qh = load32(bytes(b, 128 + 32 * h));
                                    let high = match g {
                                        0 => _mm256_slli_epi16(qh, 4),
                                        1 => _mm256_slli_epi16(qh, 2),
                                        2 => qh,
                                        _ => _mm256_srli_epi16(qh, 2),
                                    };
                                    let high = _mm256_and_si256(high, _mm256_set1_epi8(0x30));
                                    let sums = $dot(start, _mm256_or_si256(low, high), qx);
                                    // SAFETY: `sc[r]` holds 24 floats, 2 * j + 8 at most.
                                    let scs = unsafe { _mm256_loadu_ps(sc[r][2 * j..].as_ptr()) };
                                    let scs = _mm256_permutevar8x32_ps(scs, pair);
                                    let s = _mm256_mul_ps(_mm256_mul_ps(d[r], dx), scs);
                                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, acc[r]);
                                }
                            },
                        );
                        chunk(0);
                        chunk(1);
                        chunk(2);
                        chunk(3);
                    }
                }
                reduce(acc, [0.0; N])
            }
        }
    };
}

row_kernels!(madd, "avx2,fma,f16c", dot_madd, false);
row_kernels!(avx_vnni, "avx2,fma,f16c,avxvnni", dot_avx_vnni, true);
row_kernels!(
    avx512_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    dot_avx512_vnni,
    true
);

/// The eight 6-bit scales and mins of a Q4_K / Q5_K block (its 12 bytes at
/// 4..16) as floats: the scales' bytes are `s[0..4] & 63` then `s[8..12] &
/// 15 | (s[0..4] >> 6) << 4`, the mins' `s[4..8] & 63` then `s[8..12] >> 4 |
/// (s[4..8] >> 6) << 4` (blocks::k4_scale_min, four bytes at a time).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k_scales_mins(s: &[u8; 12]) -> (__m256, __m256) {
    let word = |i: usize| u32::from_le_bytes(*bytes(s, 4 * i));
    let (a, b, c) = (word(0), word(1), word(2));
    let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let scales = (a & low6) as u64 | (((c & low4) | (((a >> 6) & top2) << 4)) as u64) << 32;
    let mins = (b & low6) as u64 | ((((c >> 4) & low4) | (((b >> 6) & top2) << 4)) as u64) << 32;
    let f = |v: u64| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)));
    (f(scales), f(mins))
}
