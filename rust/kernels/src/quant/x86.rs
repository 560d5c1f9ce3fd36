//! The int8 mode's dot products on AVX2, straight from the block bytes.
//!
//! Each weight block is unpacked in registers (nibbles masked and shifted,
//! the fifth and sixth bits spread from their bit fields with a byte
//! shuffle and a compare) into 32 bytes per chunk and multiplied with the
//! chunk's int8 activations by `vpmaddubsw` (unsigned bytes times signed
//! bytes, pairs summed into 16 bits) and `vpmaddwd` (pairs into 32 bits):
//! eight exact integer partial sums, converted once per chunk and scaled
//! by `dx * scale` into a float accumulator. Nothing is written to memory
//! between the weight bytes and the sum.
//!
//! `vpmaddubsw` saturates a pair sum at 2^15; the operands never reach it:
//! unsigned weights are at most 31 (so `2 * 31 * 127 < 2^15`), and the
//! signed types (Q8_0, Q6_K) use the sign trick: `|q|` (at most 128) times
//! `qx` with q's sign, `2 * 128 * 127 = 32512 < 2^15`.
//!
//! Types with a minimum (Q4_1, Q5_1, Q4_K, Q5_K) are `w = scale * u +
//! offset` with u unsigned, so their chunks are `dx * scale * sum(u * qx) +
//! offset * sx` (`sx = dx * sum(qx)`), the identity of the module docs with
//! the integer sums exact; the others (Q8_0, Q4_0, Q5_0, Q6_K) are `scale *
//! q` with q signed (the bias subtracted in bytes) and no offset.

use std::arch::x86_64::*;

use super::blocks::{k4_scale_min, QType, CHUNK};
use crate::simd::Avx2;

/// One quantized row of activations: int8 values, and per chunk of 32 the
/// scale `dx` and `sx = dx * sum(qx)`.
#[derive(Clone, Copy)]
pub(super) struct QRow<'a> {
    pub qx: &'a [i8],
    pub dx: &'a [f32],
    pub sx: &'a [f32],
}

impl Avx2 {
    /// `sum(w * x)` for one weight row `w` (whole blocks of `t`) against
    /// one quantized activation row of the same length.
    #[inline(always)]
    pub(super) fn quant_row_dot(self, t: QType, w: &[u8], x: QRow<'_>) -> f32 {
        let n_ch = w.len() / t.type_size() * (t.block_size() / CHUNK);
        assert!(
            x.qx.len() == n_ch * CHUNK && x.dx.len() == n_ch && x.sx.len() == n_ch,
            "quant_row_dot: activation row of {} values for a weight row of {n_ch} chunks",
            x.qx.len()
        );
        // SAFETY: the token exists, so the CPU has AVX2, FMA and F16C, the
        // features these functions are compiled with; the lengths they index
        // by were checked above.
        unsafe {
            match t {
                QType::Q8_0 => dot_q8_0(w, x),
                QType::Q4_0 | QType::Q4_1 => dot_q4(t == QType::Q4_1, w, x),
                QType::Q5_0 | QType::Q5_1 => dot_q5(t == QType::Q5_1, w, x),
                QType::Q4K => dot_k(false, w, x),
                QType::Q5K => dot_k(true, w, x),
                QType::Q6K => dot_q6k(w, x),
            }
        }
    }
}

/// The f16 at byte `at` of `b` (F16C's exact conversion), for Q6_K's scale at
/// the end of its block (once per 256 values).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn half(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_insert_epi32::<0>(
        _mm_setzero_si128(),
        h as i32,
    )))
}

/// The two f16 at bytes 0..4 of `b` (a block's `d` and `m`; where the block
/// has only `d`, the second is its first data bytes, unused).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn halves2(b: &[u8]) -> (f32, f32) {
    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    // `black_box` keeps the whole 32-bit move: where only `d` is used, LLVM
    // otherwise narrows it to a 16-bit insert into whatever register is free
    // (the running sums), which chains every block to the one before and
    // halved the speed of Q4_0 and Q5_0.
    let iv = std::hint::black_box(_mm_cvtsi32_si128(v as i32));
    let f = _mm_cvtph_ps(iv);
    (_mm_cvtss_f32(f), _mm_cvtss_f32(_mm_movehdup_ps(f)))
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

/// 32 signed bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_i8(q: &[i8; 32]) -> __m256i {
    // SAFETY: `q` holds 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// The activation chunk `c` of `x` as 32 signed bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_qx(x: &QRow<'_>, c: usize) -> __m256i {
    load_i8(
        x.qx[c * CHUNK..(c + 1) * CHUNK]
            .try_into()
            .expect("a chunk"),
    )
}

/// `sum(a * b)` over 32 unsigned bytes `a` and signed bytes `b`, as eight
/// 32-bit partial sums: lanes 0-3 hold bytes 0-15, lanes 4-7 bytes 16-31.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_bytes(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// [`dot_bytes`] for signed `q` (at least -128): `|q|` times `b` with the
/// sign of q.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_signed(q: __m256i, b: __m256i) -> __m256i {
    dot_bytes(_mm256_abs_epi8(q), _mm256_sign_epi8(b, q))
}

/// `acc + sums * scale`, the sums converted to float.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scaled(acc: __m256, sums: __m256i, scale: __m256) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 bits of `bits` as 32 bytes, byte i = 0x10 where bit i is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
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

/// 16 bytes of packed nibbles as 32 bytes: the low nibbles, then the high.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles16(qs: &[u8; 16]) -> __m256i {
    let raw = load16(qs);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    _mm256_set_m128i(hi, lo)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[u8], x: QRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, (qx, &dx)) in w.chunks_exact(34).zip(x.qx.chunks_exact(CHUNK).zip(x.dx)) {
        let q = load32(b[2..34].try_into().expect("32 bytes"));
        let qx = load_i8(qx.try_into().expect("a chunk"));
        acc = scaled(acc, dot_signed(q, qx), _mm256_set1_ps(halves2(b).0 * dx));
    }
    hsum(acc)
}

/// Q4_0 (`d * (u - 8)`) and Q4_1 (`d * u + m`). Q4_0 takes `q = u - 8` signed
/// (the sign trick, as Q8_0) rather than `-8 d` as an offset: a scalar sum of
/// offsets per block made Q4_0 half as fast as Q4_1.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4(with_min: bool, w: &[u8], x: QRow<'_>) -> f32 {
    if !with_min {
        let eight = _mm256_set1_epi8(8);
        let mut acc = _mm256_setzero_ps();
        for (b, (qx, &dx)) in w.chunks_exact(18).zip(x.qx.chunks_exact(CHUNK).zip(x.dx)) {
            let q = _mm256_sub_epi8(nibbles16(b[2..18].try_into().expect("16 bytes")), eight);
            let qx = load_i8(qx.try_into().expect("a chunk"));
            acc = scaled(acc, dot_signed(q, qx), _mm256_set1_ps(halves2(b).0 * dx));
        }
        return hsum(acc);
    }
    let mut acc = _mm256_setzero_ps();
    let mut off = 0.0f32;
    let chunks = x.qx.chunks_exact(CHUNK).zip(x.dx).zip(x.sx);
    for (b, ((qx, &dx), &sx)) in w.chunks_exact(20).zip(chunks) {
        let (d, m) = halves2(b);
        let u = nibbles16(b[4..20].try_into().expect("16 bytes"));
        let qx = load_i8(qx.try_into().expect("a chunk"));
        acc = scaled(acc, dot_bytes(u, qx), _mm256_set1_ps(d * dx));
        off += m * sx;
    }
    hsum(acc) + off
}

/// Q5_0 (`d * (u - 16)`, signed as Q4_0) and Q5_1 (`d * u + m`).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5(with_min: bool, w: &[u8], x: QRow<'_>) -> f32 {
    let (ts, qh_at) = if with_min { (24, 4) } else { (22, 2) };
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = _mm256_setzero_ps();
    let mut off = 0.0f32;
    let chunks = x.qx.chunks_exact(CHUNK).zip(x.dx).zip(x.sx);
    for (b, ((qx, &dx), &sx)) in w.chunks_exact(ts).zip(chunks) {
        let (d, m) = halves2(b);
        let qh = u32::from_le_bytes(b[qh_at..qh_at + 4].try_into().expect("4 bytes"));
        let qs: &[u8; 16] = b[qh_at + 4..qh_at + 20].try_into().expect("16 bytes");
        let u = _mm256_or_si256(nibbles16(qs), fifth_bits(qh));
        let qx = load_i8(qx.try_into().expect("a chunk"));
        let s = _mm256_set1_ps(d * dx);
        if with_min {
            acc = scaled(acc, dot_bytes(u, qx), s);
            off += m * sx;
        } else {
            acc = scaled(acc, dot_signed(_mm256_sub_epi8(u, sixteen), qx), s);
        }
    }
    hsum(acc) + off
}

/// Q4_K and, `with_high`, Q5_K (whose fifth bits come from the block's `qh`):
/// sub-block j of 32 is `d * sc_j * u - dmin * m_j`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_k(with_high: bool, w: &[u8], x: QRow<'_>) -> f32 {
    let (ts, qs_at) = if with_high { (176, 48) } else { (144, 16) };
    let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let mut acc = _mm256_setzero_ps();
    let mut off = 0.0f32;
    for (k, b) in w.chunks_exact(ts).enumerate() {
        let (d, dmin) = halves2(b);
        let scales = &b[4..16];
        let qh = if with_high {
            load32(b[16..48].try_into().expect("32 bytes"))
        } else {
            _mm256_setzero_si256()
        };
        for p in 0..4 {
            let at = qs_at + 32 * p;
            let raw = load32(b[at..at + 32].try_into().expect("32 bytes"));
            let halves = [
                _mm256_and_si256(raw, m4),
                _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
            ];
            for (h, low) in halves.into_iter().enumerate() {
                let j = 2 * p + h;
                let c = 8 * k + j;
                let u = if with_high {
                    // bit j of each qh byte, moved to bit 4 (16-bit shifts: the
                    // mask keeps each byte's own bit)
                    let bit =
                        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), one);
                    _mm256_or_si256(low, _mm256_slli_epi16(bit, 4))
                } else {
                    low
                };
                let (sc, m) = k4_scale_min(scales, j);
                let s = _mm256_set1_ps(d * sc as f32 * x.dx[c]);
                acc = scaled(acc, dot_bytes(u, load_qx(&x, c)), s);
                off -= dmin * m as f32 * x.sx[c];
            }
        }
    }
    hsum(acc) + off
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(w: &[u8], x: QRow<'_>) -> f32 {
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let bias = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (k, b) in w.chunks_exact(210).enumerate() {
        let d = half(b, 208);
        let sc = &b[192..208];
        for j in 0..8 {
            let (h, g) = (j / 4, j % 4);
            let at = 64 * h + 32 * (g % 2);
            let low = load32(b[at..at + 32].try_into().expect("32 bytes"));
            let high = load32(b[128 + 32 * h..160 + 32 * h].try_into().expect("32 bytes"));
            let low = _mm256_and_si256(
                _mm256_srl_epi16(low, _mm_cvtsi32_si128(4 * (g / 2) as i32)),
                m4,
            );
            let high =
                _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * g as i32)), m2);
            let q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), bias);
            let c = 8 * k + j;
            let dd = d * x.dx[c];
            let s = _mm256_set_m128(
                _mm_set1_ps(dd * (sc[2 * j + 1] as i8) as f32),
                _mm_set1_ps(dd * (sc[2 * j] as i8) as f32),
            );
            acc = scaled(acc, dot_signed(q, load_qx(&x, c)), s);
        }
    }
    hsum(acc)
}
