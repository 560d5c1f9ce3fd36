//! Cross-entropy over logits `(N, V)` with integer targets, PyTorch
//! semantics: `ignore_index`, label smoothing, mean over counted rows.
//!
//! The forward reads each row twice (max and sum of logits, then the sum of
//! exponentials) and keeps the per-row log-sum-exp for the backward, which
//! writes `softmax - target` in one pass. Row losses are summed in f64 per
//! fixed chunk, then across chunks in order: the same bits on any pool.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::lanes;
use crate::simd::{dispatch, vectorized, Simd};
use crate::vec_math::{chunk_rows, exp, max_and_sum, sum_exp, Vf32};

/// Per row: `lse` written, and returns the chunk's
/// `sum (1 - eps)(lse - z[t]) + eps (lse - mean z)` over counted rows.
#[inline(always)]
fn forward_rows<V: Vf32>(
    _: impl Simd<V = V>,
    logits: &[f32],
    targets: &[i64],
    ignore_index: i64,
    smoothing: f32,
    lse: &mut [f32],
) -> f64 {
    let v = lse.len().max(1);
    let vocab = logits.len() / v;
    let mut loss = 0.0f64;
    for ((z, &t), out) in logits.chunks_exact(vocab).zip(targets).zip(lse.iter_mut()) {
        let (m, s) = max_and_sum::<V>(z);
        let row_lse = m as f64 + (sum_exp::<V>(z, 1.0, -m, None) as f64).ln();
        *out = row_lse as f32;
        if t != ignore_index {
            // A term of weight 0 is left out rather than multiplied by 0, so
            // that a -inf logit away from the target (an infinite smoothing
            // term) does not turn the loss into 0 * inf = NaN.
            let eps = smoothing as f64;
            if eps < 1.0 {
                loss += (1.0 - eps) * (row_lse - z[t as usize] as f64);
            }
            if eps > 0.0 {
                loss += eps * (row_lse - s as f64 / vocab as f64);
            }
        }
    }
    loss
}

/// `dz = g (softmax(z) - eps / V) - g (1 - eps) onehot(t)` per counted row,
/// 0 for ignored rows; `g = grad / count`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows<V: Vf32>(
    _: impl Simd<V = V>,
    logits: &[f32],
    targets: &[i64],
    lse: &[f32],
    ignore_index: i64,
    smoothing: f32,
    g: f32,
    dz: &mut [f32],
) {
    let vocab = logits.len() / lse.len().max(1);
    let rows = logits.chunks_exact(vocab).zip(dz.chunks_exact_mut(vocab));
    for ((z, d), (&t, &row_lse)) in rows.zip(targets.iter().zip(lse)) {
        if t == ignore_index {
            d.fill(0.0);
            continue;
        }
        let (gv, neg_lse) = (V::splat(g), V::splat(-row_lse));
        let off = V::splat(g * smoothing / vocab as f32);
        lanes!(V, vocab, l => {
            exp(V::get(z, l, 0.0) + neg_lse).mul_add(gv, V::zero() - off).put(d, l);
        });
        d[t as usize] -= g * (1.0 - smoothing);
    }
}

/// Checks every target and counts the rows that are not ignored.
fn count_targets(op: &str, targets: &[i64], vocab: usize, ignore_index: i64) -> Result<usize> {
    let mut count = 0;
    for (row, &t) in targets.iter().enumerate() {
        if t == ignore_index {
            continue;
        }
        if t < 0 || t as u64 >= vocab as u64 {
            return Err(Error::Index(format!(
                "{op}: target {t} at row {row} is outside [0, {vocab}) and is not ignore_index ({ignore_index})"
            )));
        }
        count += 1;
    }
    Ok(count)
}

fn check_smoothing(op: &str, smoothing: f32) -> Result<()> {
    if (0.0..=1.0).contains(&smoothing) {
        Ok(())
    } else {
        Err(Error::Value(format!(
            "{op}: label_smoothing must be in [0, 1], got {smoothing}"
        )))
    }
}

/// Cross-entropy: `logits (rows, vocab)`, `targets (rows,)`, `lse (rows,)`
/// written. Returns the mean loss over rows whose target is not
/// `ignore_index` (0.0 when every row is ignored).
pub fn cross_entropy_forward(
    logits: &[f32],
    targets: &[i64],
    ignore_index: i64,
    smoothing: f32,
    lse: &mut [f32],
    rows: usize,
    vocab: usize,
) -> Result<f64> {
    const OP: &str = "cross_entropy_forward";
    check_len(OP, "logits", logits.len(), &[rows, vocab])?;
    check_len(OP, "targets", targets.len(), &[rows])?;
    check_len(OP, "lse", lse.len(), &[rows])?;
    check_smoothing(OP, smoothing)?;
    if rows > 0 && vocab == 0 {
        return Err(Error::Shape(format!(
            "{OP}: logits have no classes (shape [{rows}, 0])"
        )));
    }
    let count = count_targets(OP, targets, vocab, ignore_index)?;
    if rows == 0 {
        return Ok(0.0);
    }
    let cr = chunk_rows(rows, vocab);
    let partials: Vec<f64> = dispatch!(|s| logits
        .par_chunks(cr * vocab)
        .zip(targets.par_chunks(cr))
        .zip(lse.par_chunks_mut(cr))
        .map(|((zc, tc), lc)| vectorized!(s, forward_rows(s, zc, tc, ignore_index, smoothing, lc)))
        .collect());
    if count == 0 {
        return Ok(0.0);
    }
    Ok(partials.iter().sum::<f64>() / count as f64)
}

/// Cross-entropy backward: `dlogits (rows, vocab)` for the loss scaled by
/// `grad`; `lse (rows,)` from the forward.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    logits: &[f32],
    targets: &[i64],
    lse: &[f32],
    ignore_index: i64,
    smoothing: f32,
    grad: f32,
    dlogits: &mut [f32],
    rows: usize,
    vocab: usize,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    check_len(OP, "logits", logits.len(), &[rows, vocab])?;
    check_len(OP, "dlogits", dlogits.len(), &[rows, vocab])?;
    check_len(OP, "targets", targets.len(), &[rows])?;
    check_len(OP, "lse", lse.len(), &[rows])?;
    check_smoothing(OP, smoothing)?;
    let count = count_targets(OP, targets, vocab, ignore_index)?;
    if rows == 0 || vocab == 0 {
        return Ok(());
    }
    let g = if count == 0 { 0.0 } else { grad / count as f32 };
    let cr = chunk_rows(rows, vocab);
    dispatch!(|s| dlogits
        .par_chunks_mut(cr * vocab)
        .zip(logits.par_chunks(cr * vocab))
        .zip(targets.par_chunks(cr).zip(lse.par_chunks(cr)))
        .for_each(|((dc, zc), (tc, lc))| {
            vectorized!(
                s,
                backward_rows(s, zc, tc, lc, ignore_index, smoothing, g, dc)
            )
        }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Arch;
    use crate::vec_math::testing::{assert_close, Rng, SIZES};

    /// (loss, lse, dlogits) in f64.
    fn naive(
        z: &[f32],
        t: &[i64],
        vocab: usize,
        ignore: i64,
        eps: f64,
        grad: f64,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let rows = t.len();
        let count = t.iter().filter(|&&v| v != ignore).count();
        let (mut loss, mut lse, mut dz) = (0.0, vec![0.0; rows], vec![0.0; rows * vocab]);
        for r in 0..rows {
            let zr: Vec<f64> = z[r * vocab..][..vocab].iter().map(|&v| v as f64).collect();
            let m = zr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = m + zr.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            lse[r] = l;
            if t[r] == ignore {
                continue;
            }
            let ti = t[r] as usize;
            let mean = zr.iter().sum::<f64>() / vocab as f64;
            loss += (1.0 - eps) * (l - zr[ti]) + eps * (l - mean);
            let g = grad / count as f64;
            for j in 0..vocab {
                let onehot = if j == ti { 1.0 } else { 0.0 };
                dz[r * vocab + j] =
                    g * ((zr[j] - l).exp() - (1.0 - eps) * onehot - eps / vocab as f64);
            }
        }
        (if count == 0 { 0.0 } else { loss / count as f64 }, lse, dz)
    }

    #[test]
    fn cross_entropy_matches_naive() {
        let mut rng = Rng::new(30);
        for arch in Arch::supported() {
            for &vocab in &SIZES {
                for (eps, ignore) in [(0.0f32, -100i64), (0.1, 0)] {
                    let rows = 9;
                    let z = rng.vec(rows * vocab, -6.0, 6.0);
                    let t: Vec<i64> = (0..rows)
                        .map(|r| {
                            if r == 4 {
                                ignore
                            } else {
                                (r * 7 % vocab) as i64
                            }
                        })
                        .collect();
                    let mut lse = vec![0.0; rows];
                    let loss = arch
                        .forced(|| {
                            cross_entropy_forward(&z, &t, ignore, eps, &mut lse, rows, vocab)
                        })
                        .unwrap();
                    let mut dz = vec![f32::NAN; rows * vocab];
                    arch.forced(|| {
                        cross_entropy_backward(&z, &t, &lse, ignore, eps, 2.0, &mut dz, rows, vocab)
                    })
                    .unwrap();
                    let (wl, wlse, wdz) = naive(&z, &t, vocab, ignore, eps as f64, 2.0);
                    let what = format!("{:?} vocab {vocab} eps {eps}", arch.level());
                    assert!(
                        (loss - wl).abs() <= 1e-5 * wl.abs() + 1e-6,
                        "{what}: loss {loss} want {wl}"
                    );
                    assert_close(&format!("{what} lse"), &lse, &wlse, 1e-6, 1e-6);
                    assert_close(&format!("{what} dlogits"), &dz, &wdz, 1e-5, 1e-7);
                }
            }
        }
    }

    #[test]
    fn cross_entropy_all_ignored_and_bad_targets() {
        let z = vec![0.5; 6];
        let mut lse = vec![0.0; 2];
        let loss = cross_entropy_forward(&z, &[-100, -100], -100, 0.0, &mut lse, 2, 3).unwrap();
        assert_eq!(loss, 0.0);
        let mut dz = vec![1.0; 6];
        cross_entropy_backward(&z, &[-100, -100], &lse, -100, 0.0, 1.0, &mut dz, 2, 3).unwrap();
        assert_eq!(dz, vec![0.0; 6]);
        match cross_entropy_forward(&z, &[1, 3], -100, 0.0, &mut lse, 2, 3) {
            Err(Error::Index(m)) => assert!(
                m.contains("cross_entropy_forward") && m.contains("row 1") && m.contains('3')
            ),
            other => panic!("expected an index error, got {other:?}"),
        }
        assert!(matches!(
            cross_entropy_backward(&z, &[-5, 0], &lse, -100, 0.0, 1.0, &mut dz, 2, 3),
            Err(Error::Index(_))
        ));
    }

    #[test]
    fn cross_entropy_large_parallel() {
        let (rows, vocab) = (64, 5000);
        let z = Rng::new(31).vec(rows * vocab, -10.0, 10.0);
        let t: Vec<i64> = (0..rows as i64).map(|r| r * 77 % vocab as i64).collect();
        let mut lse = vec![0.0; rows];
        let loss = cross_entropy_forward(&z, &t, -100, 0.0, &mut lse, rows, vocab).unwrap();
        let (wl, wlse, _) = naive(&z, &t, vocab, -100, 0.0, 1.0);
        assert!((loss - wl).abs() < 1e-5 * wl.abs());
        assert_close("lse", &lse, &wlse, 1e-6, 0.0);
    }
}
