//! The quantized product against a float64 product with the decoded
//! weights, within the bound of activation quantization, on every token.

use super::blocks::{decode_block, ChunkScale, QType, CHUNK};
use super::{quantized_linear_forward, Activations};
use crate::simd::Arch;
use crate::vec_math::testing::Rng;

/// Random blocks whose f16 fields are finite values in [2^-10, 2^-6).
fn random_weight(t: QType, out_f: usize, in_f: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = out_f * in_f / t.block_size();
    let mut w: Vec<u8> = (0..n_blocks * t.type_size())
        .map(|_| rng.next_u64() as u8)
        .collect();
    for blk in w.chunks_exact_mut(t.type_size()) {
        for &at in t.half_offsets() {
            let h: u16 = 0x1400 | (rng.next_u64() as u16 & 0x0fff);
            blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    w
}

fn decode(t: QType, w: &[u8], out_f: usize, in_f: usize) -> Vec<f32> {
    let mut q = vec![0i8; in_f];
    let mut cs = vec![ChunkScale::default(); in_f / CHUNK];
    let mut out = Vec::with_capacity(out_f * in_f);
    let (bs, per) = (t.block_size(), t.block_size() / CHUNK);
    for row in w.chunks_exact(in_f / bs * t.type_size()) {
        for (k, blk) in row.chunks_exact(t.type_size()).enumerate() {
            decode_block(
                t,
                blk,
                &mut q[k * bs..(k + 1) * bs],
                &mut cs[k * per..(k + 1) * per],
            );
        }
        for (l, &v) in q.iter().enumerate() {
            let s = cs[l / CHUNK];
            out.push(s.scale[(l % CHUNK) / 16] * v as f32 + s.offset);
        }
    }
    out
}

fn check(t: QType, mode: Activations, rows: usize, in_f: usize, out_f: usize, with_bias: bool) {
    let mut rng = Rng::new((rows * 31 + in_f * 7 + out_f) as u64);
    let w = random_weight(t, out_f, in_f, &mut rng);
    let wf = decode(t, &w, out_f, in_f);
    let x: Vec<f32> = (0..rows * in_f).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let bias: Vec<f32> = (0..out_f).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b = with_bias.then_some(&bias[..]);
    for arch in Arch::supported() {
        let mut y = vec![f32::NAN; rows * out_f];
        arch.forced(|| quantized_linear_forward(&x, &w, t, mode, b, &mut y, rows, in_f, out_f))
            .unwrap();
        for r in 0..rows {
            for j in 0..out_f {
                let (xr, wr) = (&x[r * in_f..(r + 1) * in_f], &wf[j * in_f..(j + 1) * in_f]);
                let mut exact = if with_bias { bias[j] as f64 } else { 0.0 };
                let (mut bound, mut mag) = (0.0f64, 0.0f64);
                for c in 0..in_f / CHUNK {
                    let xc = &xr[c * CHUNK..(c + 1) * CHUNK];
                    let wc = &wr[c * CHUNK..(c + 1) * CHUNK];
                    let amax = xc.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
                    let wsum: f64 = wc.iter().map(|v| v.abs() as f64).sum();
                    bound += amax / 127.0 / 2.0 * wsum;
                    for l in 0..CHUNK {
                        exact += xc[l] as f64 * wc[l] as f64;
                        mag += (xc[l] as f64 * wc[l] as f64).abs();
                    }
                }
                let got = y[r * out_f + j] as f64;
                let bound = if mode == Activations::Int8 {
                    bound
                } else {
                    0.0
                };
                let tol = bound * 1.001 + 1e-5 * mag + 1e-6;
                assert!(
                    (got - exact).abs() <= tol,
                    "{} {:?} rows {rows} in {in_f} out {out_f}: y[{r},{j}] = {got}, exact {exact}, \
                     bound {tol}",
                    t.name(),
                    arch.level()
                );
            }
        }
    }
}

#[test]
fn quant_every_type_odd_sizes() {
    for t in QType::ALL {
        let bs = t.block_size();
        for &(rows, n_blocks, out_f) in
            &[(1, 1, 1), (2, 3, 17), (5, 1, 3), (1, 2, 1030), (64, 2, 33)]
        {
            for mode in [Activations::Float, Activations::Int8] {
                check(t, mode, rows, n_blocks * bs, out_f, rows % 2 == 1);
            }
        }
    }
}

#[test]
fn quant_nonfinite_rows_propagate() {
    let t = QType::Q4_0;
    let (rows, in_f, out_f) = (3, 64, 5);
    let mut rng = Rng::new(7);
    let w = random_weight(t, out_f, in_f, &mut rng);
    let mut x: Vec<f32> = (0..rows * in_f).map(|_| rng.uniform(-1.0, 1.0)).collect();
    x[in_f + 3] = f32::NAN;
    x[2 * in_f + 40] = f32::INFINITY;
    let wf = decode(t, &w, out_f, in_f);
    for (arch, mode) in Arch::supported()
        .into_iter()
        .flat_map(|a| [(a, Activations::Float), (a, Activations::Int8)])
    {
        let mut y = vec![0.0; rows * out_f];
        arch.forced(|| quantized_linear_forward(&x, &w, t, mode, None, &mut y, rows, in_f, out_f))
            .unwrap();
        assert!(y[..out_f].iter().all(|v| v.is_finite()));
        assert!(y[out_f..2 * out_f].iter().all(|v| v.is_nan()));
        for j in 0..out_f {
            let wv = wf[j * in_f + 40];
            let got = y[2 * out_f + j];
            if wv == 0.0 {
                assert!(got.is_nan());
            } else {
                assert_eq!(got, f32::INFINITY * wv.signum());
            }
        }
    }
}

#[test]
fn quant_bad_shapes_refused() {
    let w = vec![0u8; 34 * 2];
    let x = vec![0.0f32; 64];
    // One row of x against w's (2, 64) Q8_0 blocks, into `out` outputs.
    let call = |x: &[f32], mode, inp, out: usize| {
        let mut y = vec![0.0f32; out];
        quantized_linear_forward(x, &w, QType::Q8_0, mode, None, &mut y, 1, inp, out)
    };
    assert!(call(&x, Activations::Float, 64, 2).is_err());
    assert!(call(&x, Activations::Float, 64, 1).is_ok());
    assert!(call(&x[..48], Activations::Int8, 48, 1).is_err());
    assert_eq!(QType::from_name("q4_k"), Some(QType::Q4K));
    assert_eq!(QType::from_name("Q2_K"), None);
}

/// The x86 int8 kernels, every dot instruction this CPU has, four rows per
/// pass and one: each row's result is the same bits whatever the
/// instruction and the grouping, and the portable int8 product's up to
/// float32 summation order.
#[cfg(target_arch = "x86_64")]
#[test]
fn quant_x86_kernels_match_portable() {
    use super::x86::{Dot, QRow};
    use super::{quantize_rows, row_dots};
    let Some(a) = crate::simd::Avx2::try_new() else {
        return;
    };
    for t in QType::ALL {
        for (n_blocks, out_f) in [(1, 1), (3, 7), (2, 9)] {
            let in_f = n_blocks * t.block_size();
            let mut rng = Rng::new((n_blocks * 131 + out_f) as u64);
            let w = random_weight(t, out_f, in_f, &mut rng);
            let wf = decode(t, &w, out_f, in_f);
            let x: Vec<f32> = (0..in_f).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let qr = quantize_rows(&x, 1, in_f);
            let xr = QRow {
                qx: &qr.qx,
                dx: &qr.dx,
                sx: &qr.sx,
            };
            let row_bytes = w.len() / out_f;
            let wr = |j: usize| &w[j * row_bytes..(j + 1) * row_bytes];
            // the portable int8 path, a row at a time
            let mut q = vec![0i8; in_f];
            let mut cs = vec![ChunkScale::default(); in_f / CHUNK];
            let per = t.block_size() / CHUNK;
            let portable: Vec<f32> = (0..out_f)
                .map(|j| {
                    for (k, blk) in wr(j).chunks_exact(t.type_size()).enumerate() {
                        let (bs, c) = (t.block_size(), k * per);
                        decode_block(t, blk, &mut q[k * bs..(k + 1) * bs], &mut cs[c..c + per]);
                    }
                    let mut o = [0.0f32];
                    row_dots(&q, &cs, &x, &qr, in_f, &mut o);
                    o[0]
                })
                .collect();
            let mut first: Option<Vec<f32>> = None;
            for dot in Dot::supported() {
                // each row alone, then all together (four per pass)
                let mut ones = vec![0.0f32; out_f];
                for (j, o) in ones.iter_mut().enumerate() {
                    a.quant_rows_dot(dot, t, wr(j), &[xr], std::slice::from_mut(o));
                }
                let mut all = vec![0.0f32; out_f];
                a.quant_rows_dot(dot, t, &w, &[xr], &mut all);
                assert_eq!(all, ones, "{} {dot:?}", t.name());
                // two rows of x: y transposed, rows of W major
                let mut two = vec![0.0f32; 2 * out_f];
                a.quant_rows_dot(dot, t, &w, &[xr, xr], &mut two);
                let pairs: Vec<f32> = ones.iter().flat_map(|&v| [v, v]).collect();
                assert_eq!(two, pairs, "{} {dot:?} two rows of x", t.name());
                for j in 0..out_f {
                    let mag: f32 = (0..in_f).map(|l| (wf[j * in_f + l] * x[l]).abs()).sum();
                    let tol = 1e-5 * mag + 1e-6;
                    assert!(
                        (ones[j] - portable[j]).abs() <= tol,
                        "{} {dot:?} row {j}: {} against the portable {}",
                        t.name(),
                        ones[j],
                        portable[j]
                    );
                }
                match &first {
                    None => first = Some(ones),
                    Some(f) => assert_eq!(f, &ones, "{} {dot:?} against the AVX2 pair", t.name()),
                }
            }
        }
    }
}
