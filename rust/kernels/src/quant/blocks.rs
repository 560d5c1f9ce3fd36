//! GGUF block types and their decoding into the kernel's 32-value chunks.
//!
//! Every supported block type decodes, 32 values at a time, to integers `q`
//! (int8), a scale per half of 16 values and one offset, so that the
//! weights are `w[l] = scale[l / 16] * q[l] + offset` with the scales and
//! offsets computed in float32 in llama.cpp's order (`(d * sc) * q - dmin *
//! m`). Layouts: python/ferroformer/quant/formats.py and ggml-common.h.

/// The block types the kernels multiply by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

/// Values per chunk: the activations are quantized per chunk too.
pub const CHUNK: usize = 32;

impl QType {
    pub const ALL: [QType; 8] = [
        QType::Q8_0,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
    ];

    /// The type of a GGUF name ("Q4_K", case-insensitive), if supported.
    pub fn from_name(name: &str) -> Option<QType> {
        let upper = name.to_ascii_uppercase();
        QType::ALL.into_iter().find(|t| t.name() == upper)
    }

    pub fn name(self) -> &'static str {
        match self {
            QType::Q8_0 => "Q8_0",
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q5_1 => "Q5_1",
            QType::Q4K => "Q4_K",
            QType::Q5K => "Q5_K",
            QType::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            QType::Q8_0 => 34,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    /// Byte offsets of the block's f16 fields (tests fill them with sane values).
    pub fn half_offsets(self) -> &'static [usize] {
        match self {
            QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => &[0],
            QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
            QType::Q6K => &[208],
        }
    }
}

/// IEEE half -> f32 (exact, subnormals, inf and NaN included).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // man * 2^-24, exact in f32
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The 6-bit scale and min of sub-block `j` of Q4_K / Q5_K (get_scale_min_k4).
#[inline(always)]
pub(super) fn k4_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// One decoded chunk's scales: `w = scale[l / 16] * q[l] + offset`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkScale {
    pub scale: [f32; 2],
    pub offset: f32,
}

/// Chunk `j` of `q` as a fixed-size array: no bounds checks in the loops,
/// which then vectorise.
#[inline(always)]
fn q32(q: &mut [i8], j: usize) -> &mut [i8; 32] {
    (&mut q[32 * j..32 * j + 32]).try_into().expect("32 values")
}

/// Decodes one block into `block_size / 32` chunks: `q` gets the block's
/// values as int8, `cs` one [`ChunkScale`] per chunk.
#[inline(always)]
pub fn decode_block(t: QType, b: &[u8], q: &mut [i8], cs: &mut [ChunkScale]) {
    match t {
        QType::Q8_0 => {
            let d = half(b, 0);
            let src: &[u8; 32] = b[2..34].try_into().expect("32 bytes");
            for (o, &v) in q32(q, 0).iter_mut().zip(src) {
                *o = v as i8;
            }
            cs[0] = ChunkScale {
                scale: [d, d],
                offset: 0.0,
            };
        }
        QType::Q4_0 | QType::Q4_1 => {
            let d = half(b, 0);
            let (qs, bias, offset) = if t == QType::Q4_0 {
                (&b[2..18], 8, 0.0)
            } else {
                (&b[4..20], 0, half(b, 2))
            };
            let qs: &[u8; 16] = qs.try_into().expect("16 bytes");
            let q = q32(q, 0);
            for l in 0..16 {
                q[l] = (qs[l] & 0x0F) as i8 - bias;
                q[l + 16] = (qs[l] >> 4) as i8 - bias;
            }
            cs[0] = ChunkScale {
                scale: [d, d],
                offset,
            };
        }
        QType::Q5_0 | QType::Q5_1 => {
            let d = half(b, 0);
            let (qh_at, qs, bias, offset) = if t == QType::Q5_0 {
                (2, &b[6..22], 16, 0.0)
            } else {
                (4, &b[8..24], 0, half(b, 2))
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            let qs: &[u8; 16] = qs.try_into().expect("16 bytes");
            let q = q32(q, 0);
            for l in 0..16 {
                let lo = (qs[l] & 0x0F) | ((((qh >> l) & 1) as u8) << 4);
                let hi = (qs[l] >> 4) | ((((qh >> (l + 16)) & 1) as u8) << 4);
                q[l] = lo as i8 - bias;
                q[l + 16] = hi as i8 - bias;
            }
            cs[0] = ChunkScale {
                scale: [d, d],
                offset,
            };
        }
        QType::Q4K | QType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if t == QType::Q4K {
                (None, &b[16..144])
            } else {
                (Some(&b[16..48]), &b[48..176])
            };
            for j in 0..8 {
                let (sc, m) = k4_scale_min(scales, j);
                let src: &[u8; 32] = qs[32 * (j / 2)..32 * (j / 2) + 32].try_into().expect("32");
                let shift = 4 * (j % 2);
                let dst = q32(q, j);
                match qh {
                    None => {
                        for l in 0..32 {
                            dst[l] = ((src[l] >> shift) & 0x0F) as i8;
                        }
                    }
                    Some(qh) => {
                        let qh: &[u8; 32] = qh.try_into().expect("32 bytes");
                        for l in 0..32 {
                            dst[l] = (((src[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4)) as i8;
                        }
                    }
                }
                let s = d * sc as f32;
                cs[j] = ChunkScale {
                    scale: [s, s],
                    offset: -(dmin * m as f32),
                };
            }
        }
        QType::Q6K => {
            let d = half(b, 208);
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            for j in 0..8 {
                let (h, g) = (j / 4, j % 4);
                let at = 64 * h + 32 * (g % 2);
                let low: &[u8; 32] = ql[at..at + 32].try_into().expect("32 bytes");
                let high: &[u8; 32] = qh[32 * h..32 * h + 32].try_into().expect("32 bytes");
                let shift = 4 * (g / 2);
                let dst = q32(q, j);
                for l in 0..32 {
                    let v = ((low[l] >> shift) & 0x0F) | (((high[l] >> (2 * g)) & 3) << 4);
                    dst[l] = v as i8 - 32;
                }
                cs[j] = ChunkScale {
                    scale: [
                        d * (sc[2 * j] as i8) as f32,
                        d * (sc[2 * j + 1] as i8) as f32,
                    ],
                    offset: 0.0,
                };
            }
        }
    }
}
