//! The attention kernels against naive float64 loops, at every SIMD level
//! this CPU has.

use super::tile::{Acc, Tiles};
use super::*;
use crate::simd::Arch;
use crate::vec_math::testing::{assert_close, in_pool, random};

mod nonfinite;

/// `|got - want| <= tol · max(1, max |finite want|)`: one scale per output,
/// since an attention output sums whole rows; NaN where `want` is NaN and
/// the same infinities, as `assert_close` has it.
#[track_caller]
fn assert_scaled(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let big = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    assert_close(what, got, want, 0.0, tol * big);
}

/// A test problem: shapes, options and random inputs.
struct Case {
    shape: AttentionShape,
    causal: bool,
    scale: f32,
    mask: Option<Vec<bool>>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
}

impl Case {
    /// `(B, Hq, Hkv, Tq, Tk, D)`; `mask` hides a pseudo-random third of the
    /// keys, and every key of the last batch when there are two batches.
    fn new(
        dims: (usize, usize, usize, usize, usize, usize),
        causal: bool,
        mask: bool,
        seed: u64,
    ) -> Self {
        let (b, hq, hkv, tq, tk, d) = dims;
        let shape = AttentionShape {
            batch: b,
            q_heads: hq,
            kv_heads: hkv,
            q_len: tq,
            kv_len: tk,
            head_dim: d,
        };
        let mask = mask.then(|| {
            (0..b * tk)
                .map(|i| (i * 7 + 3) % 3 == 0 || (b == 2 && i >= tk))
                .collect()
        });
        let scale = 2.0 / (d as f32).sqrt();
        Case {
            shape,
            causal,
            scale,
            mask,
            q: random(b * hq * tq * d, seed),
            k: random(b * hkv * tk * d, seed + 1),
            v: random(b * hkv * tk * d, seed + 2),
            d_o: random(b * hq * tq * d, seed + 3),
        }
    }

    fn opts(&self) -> AttentionOptions<'_> {
        AttentionOptions {
            causal: self.causal,
            scale: self.scale,
            key_padding_mask: self.mask.as_deref(),
        }
    }

    fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        let s = &self.shape;
        let hidden = self.mask.as_ref().is_some_and(|m| m[b * s.kv_len + j]);
        !hidden && (!self.causal || j + s.q_len <= i + s.kv_len)
    }

    /// Naive float64 forward and backward: `(o, lse, dq, dk, dv)`, with the
    /// NumPy reference's semantics for non-finite values: only visible
    /// pairs take part; the softmax shifts by the row's maximum where that
    /// is finite and by 0 otherwise (so a NaN gives a NaN row and a +inf
    /// NaN there, 0 beside it); the backward takes `P = exp(s - lse)`, 0 on
    /// rows whose lse is not finite, and `delta = do·o`.
    #[allow(clippy::type_complexity)]
    fn reference(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = &self.shape;
        let (tq, tk, d) = (s.q_len, s.kv_len, s.head_dim);
        let g = s.q_heads / s.kv_heads;
        let mut o = vec![0.0; self.q.len()];
        let mut lse = vec![0.0; s.batch * s.q_heads * tq];
        let mut dq = vec![0.0; self.q.len()];
        let mut dk = vec![0.0; self.k.len()];
        let mut dv = vec![0.0; self.v.len()];
        let at = |x: &[f32], row: usize| -> Vec<f64> {
            x[row * d..(row + 1) * d]
                .iter()
                .map(|&v| v as f64)
                .collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for b in 0..s.batch {
            for h in 0..s.q_heads {
                let kvh = b * s.kv_heads + h / g;
                let bh = b * s.q_heads + h;
                for i in 0..tq {
                    let qi = at(&self.q, bh * tq + i);
                    let doi = at(&self.d_o, bh * tq + i);
                    let keys: Vec<usize> = (0..tk).filter(|&j| self.visible(b, i, j)).collect();
                    let sc: Vec<f64> = keys
                        .iter()
                        .map(|&j| dot(&qi, &at(&self.k, kvh * tk + j)) * self.scale as f64)
                        .collect();
                    let m = if sc.iter().any(|x| x.is_nan()) {
                        f64::NAN
                    } else {
                        sc.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x))
                    };
                    let shift = if m.is_finite() { m } else { 0.0 };
                    let e: Vec<f64> = sc.iter().map(|x| (x - shift).exp()).collect();
                    let l: f64 = e.iter().sum();
                    let row_lse = if l == 0.0 {
                        f64::NEG_INFINITY
                    } else {
                        l.ln() + shift
                    };
                    lse[bh * tq + i] = row_lse;
                    let p: Vec<f64> = e
                        .iter()
                        .map(|x| if l == 0.0 { *x } else { x / l })
                        .collect();
                    let orow = &mut o[(bh * tq + i) * d..(bh * tq + i + 1) * d];
                    for (n, &j) in keys.iter().enumerate() {
                        let vj = at(&self.v, kvh * tk + j);
                        for c in 0..d {
                            orow[c] += p[n] * vj[c];
                        }
                    }
                    let delta = dot(&doi, orow);
                    for (n, &j) in keys.iter().enumerate() {
                        let vj = at(&self.v, kvh * tk + j);
                        let kj = at(&self.k, kvh * tk + j);
                        let pb = if row_lse.is_finite() {
                            (sc[n] - row_lse).exp()
                        } else {
                            0.0
                        };
                        let ds = pb * (dot(&doi, &vj) - delta) * self.scale as f64;
                        for c in 0..d {
                            dq[(bh * tq + i) * d + c] += ds * kj[c];
                            dk[(kvh * tk + j) * d + c] += ds * qi[c];
                            dv[(kvh * tk + j) * d + c] += pb * doi[c];
                        }
                    }
                }
            }
        }
        (o, lse, dq, dk, dv)
    }

    fn forward(&self, level: Arch) -> (Vec<f32>, Vec<f32>) {
        let mut o = vec![f32::NAN; self.q.len()];
        let mut lse = vec![f32::NAN; self.q.len() / self.shape.head_dim];
        level
            .forced(|| {
                attention_forward(
                    &self.q,
                    &self.k,
                    &self.v,
                    self.shape,
                    self.opts(),
                    &mut o,
                    &mut lse,
                )
            })
            .unwrap();
        (o, lse)
    }

    /// The forward through a KV cache of `capacity >= kv_len` rows per
    /// head whose unused rows (and mask columns) hold NaN / true, which
    /// must not be read.
    fn forward_cached(&self, capacity: usize) -> (Vec<f32>, Vec<f32>) {
        let s = self.shape;
        let (tk, d) = (s.kv_len, s.head_dim);
        let spread = |x: &[f32]| {
            let mut out = vec![f32::NAN; s.batch * s.kv_heads * capacity * d];
            for (slab, rows) in x.chunks(tk * d).enumerate() {
                out[slab * capacity * d..slab * capacity * d + tk * d].copy_from_slice(rows);
            }
            out
        };
        let (k, v) = (spread(&self.k), spread(&self.v));
        let mask: Option<Vec<bool>> = self.mask.as_ref().map(|m| {
            let mut out = vec![true; s.batch * capacity];
            for b in 0..s.batch {
                out[b * capacity..b * capacity + tk].copy_from_slice(&m[b * tk..(b + 1) * tk]);
            }
            out
        });
        let opts = AttentionOptions {
            key_padding_mask: mask.as_deref(),
            ..self.opts()
        };
        let mut o = vec![f32::NAN; self.q.len()];
        let mut lse = vec![f32::NAN; self.q.len() / d];
        attention_forward_cached(&self.q, &k, &v, s, capacity, opts, &mut o, &mut lse).unwrap();
        (o, lse)
    }

    fn backward(&self, level: Arch, o: &[f32], lse: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dq = vec![f32::NAN; self.q.len()];
        let mut dk = vec![f32::NAN; self.k.len()];
        let mut dv = vec![f32::NAN; self.v.len()];
        level
            .forced(|| {
                attention_backward(
                    &self.d_o,
                    &self.q,
                    &self.k,
                    &self.v,
                    o,
                    lse,
                    self.shape,
                    self.opts(),
                    &mut dq,
                    &mut dk,
                    &mut dv,
                )
            })
            .unwrap();
        (dq, dk, dv)
    }

    /// Forward and backward at every level against the float64 loops.
    fn check(&self, what: &str) {
        let (o, lse, dq, dk, dv) = self.reference();
        let o32: Vec<f32> = o.iter().map(|&x| x as f32).collect();
        let lse32: Vec<f32> = lse.iter().map(|&x| x as f32).collect();
        for level in Arch::supported() {
            let tag = format!(
                "{what} {:?} causal={} mask={} {}",
                self.shape,
                self.causal,
                self.mask.is_some(),
                level.level().name()
            );
            let (go, glse) = self.forward(level);
            assert_scaled(&format!("{tag} o"), &go, &o, 2e-5);
            assert_scaled(&format!("{tag} lse"), &glse, &lse, 2e-5);
            let (gdq, gdk, gdv) = self.backward(level, &o32, &lse32);
            assert_scaled(&format!("{tag} dq"), &gdq, &dq, 5e-5);
            assert_scaled(&format!("{tag} dk"), &gdk, &dk, 5e-5);
            assert_scaled(&format!("{tag} dv"), &gdv, &dv, 5e-5);
        }
    }
}

#[test]
fn self_attention_odd_lengths() {
    for (n, &t) in [1, 7, 17, 65, 257].iter().enumerate() {
        for causal in [false, true] {
            Case::new((1, 2, 2, t, t, 64), causal, false, n as u64).check("self");
        }
    }
}

#[test]
fn head_dims() {
    for (n, &d) in [16, 24, 64, 80, 128, 256, 5].iter().enumerate() {
        Case::new((1, 2, 1, 70, 70, d), true, false, 10 + n as u64).check("head dim");
    }
}

#[test]
fn cross_attention_and_decode() {
    let shapes = [
        (1, 65),
        (1, 257),
        (1, 1),
        (3, 200),
        (4, 130),
        (7, 65),
        (65, 17),
        (100, 7),
        (130, 260),
    ];
    for (n, &(tq, tk)) in shapes.iter().enumerate() {
        for causal in [false, true] {
            Case::new((1, 4, 2, tq, tk, 32), causal, false, 20 + n as u64).check("cross");
        }
    }
}

#[test]
fn padding_masks() {
    for (n, &(tq, tk)) in [(17, 17), (65, 130), (1, 300), (3, 70), (257, 65)]
        .iter()
        .enumerate()
    {
        for causal in [false, true] {
            Case::new((2, 2, 1, tq, tk, 48), causal, true, 40 + n as u64).check("mask");
        }
    }
}

#[test]
fn grouped_and_multi_query() {
    Case::new((2, 6, 3, 33, 33, 16), true, false, 50).check("gqa");
    Case::new((1, 4, 1, 80, 80, 64), false, true, 51).check("mqa");
    Case::new((1, 8, 1, 1, 500, 64), true, false, 52).check("mqa decode");
}

#[test]
fn rows_without_keys_are_zero() {
    // Tq > Tk under causal: the first Tq - Tk rows see nothing.
    let case = Case::new((1, 1, 1, 20, 5, 16), true, false, 60);
    for level in Arch::supported() {
        let (o, lse) = case.forward(level);
        assert!(lse[..15].iter().all(|&x| x == f32::NEG_INFINITY));
        assert!(o[..15 * 16].iter().all(|&x| x == 0.0));
        let (dq, _, _) = case.backward(level, &o, &lse);
        assert!(dq[..15 * 16].iter().all(|&x| x == 0.0));
        assert!(dq.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn bits_do_not_depend_on_runs_or_threads() {
    let case = Case::new((1, 4, 2, 200, 200, 64), true, true, 70);
    let run = |threads: usize| {
        in_pool(threads, || {
            let (o, lse) = case.forward(Arch::best());
            let (dq, dk, dv) = case.backward(Arch::best(), &o, &lse);
            [o, lse, dq, dk, dv]
        })
    };
    let first = run(2);
    for threads in [2, 1, 3] {
        let again = run(threads);
        for (a, b) in first.iter().zip(&again) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "threads {threads}"
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let shape = AttentionShape {
        batch: 1,
        q_heads: 3,
        kv_heads: 2,
        q_len: 4,
        kv_len: 4,
        head_dim: 8,
    };
    let opts = AttentionOptions {
        causal: false,
        scale: 1.0,
        key_padding_mask: None,
    };
    let (q, k) = (vec![0.0; 96], vec![0.0; 64]);
    let (mut o, mut lse) = (vec![0.0; 96], vec![0.0; 12]);
    assert!(attention_forward(&q, &k, &k, shape, opts, &mut o, &mut lse).is_err());
    let shape = AttentionShape {
        q_heads: 2,
        ..shape
    };
    assert!(attention_forward(&q, &k, &k, shape, opts, &mut o, &mut lse).is_err());
    let mask = [false; 3];
    let opts = AttentionOptions {
        key_padding_mask: Some(&mask),
        ..opts
    };
    let (mut o, mut lse) = (vec![0.0; 64], vec![0.0; 8]);
    assert!(attention_forward(&q[..64], &k, &k, shape, opts, &mut o, &mut lse).is_err());
}

#[test]
fn tile_products_match_naive() {
    // C (m, n) = A (m, k) B (k, n) [+ C, + C·scale[r]], A read both ways,
    // odd m and k.
    for level in Arch::supported() {
        let t = level.forced(Tiles::new);
        for &(m, n, k) in &[
            (1, 16, 1),
            (7, 32, 17),
            (17, 48, 65),
            (65, 80, 7),
            (9, 112, 3),
            (9, 16, 0),
        ] {
            let a = random(m * k + 1, 1);
            let b = random(k * n + 1, 2);
            let scale = random(m, 4);
            for (rsa, csa) in [(k, 1), (1, m)] {
                for mode in 0..3 {
                    let mut c = random(m * n, 3);
                    let mut want: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                    for r in 0..m {
                        for j in 0..n {
                            want[r * n + j] *= [0.0, 1.0, scale[r] as f64][mode];
                            for p in 0..k {
                                want[r * n + j] +=
                                    a[r * rsa + p * csa] as f64 * b[p * n + j] as f64;
                            }
                        }
                    }
                    let acc = [Acc::No, Acc::Add, Acc::ScaleRows(&scale)][mode];
                    t.gemm((m, n, k), &a, (rsa, csa), &b, n, &mut c, n, acc);
                    let what = format!("gemm {m}x{n}x{k} {acc:?} {}", level.level().name());
                    assert_scaled(&what, &c, &want, 1e-5);
                }
            }
        }
    }
}

#[test]
fn transposed_packs_match_naive() {
    for level in Arch::supported() {
        let t = level.forced(Tiles::new);
        for &(rows, cols, ld) in &[
            (1, 1, 1),
            (7, 5, 9),
            (16, 64, 64),
            (17, 24, 32),
            (64, 80, 80),
        ] {
            let src = random(rows * ld, 5);
            let ldd = rows.div_ceil(16) * 16 + 16;
            let mut dst = vec![f32::NAN; cols * ldd];
            t.pack_transposed(&src, (rows, cols, ld), 0.5, &mut dst, ldd);
            for d in 0..cols {
                for c in 0..rows.div_ceil(16) * 16 {
                    let want = if c < rows { src[c * ld + d] * 0.5 } else { 0.0 };
                    assert_eq!(
                        dst[d * ldd + c],
                        want,
                        "{} ({rows}, {cols}) [{d}][{c}]",
                        level.level().name()
                    );
                }
            }
        }
    }
}

#[test]
fn exp2_is_accurate_and_exactly_zero_far_below() {
    let xs: Vec<f32> = (0..32 * 16)
        .map(|i| -140.0 + i as f32 * 0.3)
        .chain([f32::NEG_INFINITY; 16])
        .collect();
    for level in Arch::supported() {
        let t = level.forced(Tiles::new);
        let mut s = xs.clone();
        let rows = s.len() / 16;
        t.exp2_rows(&mut s, (rows, 16, 16), 1.0, &vec![0.0; rows]);
        for (&x, &y) in xs.iter().zip(&s) {
            if x < -125.0 {
                assert!(y < 1e-37, "{} exp2({x}) = {y}", level.level().name());
            } else {
                let want = (x as f64).exp2();
                assert!(
                    ((y as f64) - want).abs() <= 3e-7 * want,
                    "{} exp2({x}) = {y}",
                    level.level().name()
                );
            }
        }
        assert!(s[s.len() - 16..].iter().all(|&y| y == 0.0));
    }
}

#[test]
fn exp2_cols_takes_the_same_bits_for_nonpositive_exponents() {
    // exp2_cols relies on s - shift <= 0 to skip the overflow clamp; there
    // its exp2 must give exactly what the full one of exp2_rows gives.
    // Steps of 0.2 from -131 to 0, the edges of the range, and NaN lanes.
    let mut xs: Vec<f32> = (0..656).map(|i| -131.0 + i as f32 * 0.2).collect();
    xs.retain(|&x| x <= 0.0);
    let edges = [-0.0, -1e-30, -0.5, -124.5, -125.0, -125.5];
    xs.extend(edges.into_iter().chain([f32::NEG_INFINITY]));
    xs.resize(xs.len().div_ceil(16) * 16, f32::NAN);
    let rows = xs.len() / 16;
    for level in Arch::supported() {
        let t = level.forced(Tiles::new);
        let (mut cols, mut full) = (xs.clone(), xs.clone());
        t.exp2_cols(&mut cols, (rows, 16, 16), &[0.0; 16], &mut [0.0; 16]);
        t.exp2_rows(&mut full, (rows, 16, 16), 1.0, &vec![0.0; rows]);
        for ((&x, &a), &b) in xs.iter().zip(&cols).zip(&full) {
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(same, "{} exp2({x}): {a} vs {b}", level.level().name());
        }
    }
}

#[test]
fn kv_cache_capacity_reads_only_the_used_rows() {
    // decode (Tq = 1, 4) and prefill-after-prefix (Tq = 70) shapes, GQA, masks
    for &(dims, causal, mask) in &[
        ((2, 4, 2, 1, 37, 64), true, true),
        ((1, 3, 1, 4, 130, 32), true, false),
        ((2, 2, 2, 70, 101, 16), true, true),
        ((1, 2, 1, 5, 9, 24), false, true),
    ] {
        let case = Case::new(dims, causal, mask, 7);
        let (o, lse) = case.forward(Arch::best());
        for extra in [0, 1, 63] {
            let (oc, lc) = case.forward_cached(case.shape.kv_len + extra);
            assert_eq!(o, oc, "{dims:?} capacity +{extra}: o");
            assert_eq!(lse, lc, "{dims:?} capacity +{extra}: lse");
        }
    }
    let case = Case::new((1, 1, 1, 1, 8, 16), true, false, 1);
    let (mut o, mut lse) = (vec![0.0; 16], vec![0.0; 1]);
    let err = attention_forward_cached(
        &case.q,
        &case.k,
        &case.v,
        case.shape,
        4,
        case.opts(),
        &mut o,
        &mut lse,
    );
    assert!(err.is_err(), "kv_len beyond the capacity must be an error");
}
