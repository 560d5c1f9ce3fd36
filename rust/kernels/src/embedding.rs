//! Embedding lookup and its backward.
//!
//! The backward is deterministic by construction: token positions are
//! bucketed by id with a stable counting sort, then each vocabulary row
//! sums its tokens' gradients in token order, whichever thread owns it.

use rayon::prelude::*;

use crate::error::{check_len, Error, Result};
use crate::vec_math::chunk_rows;

fn check_ids(op: &str, ids: &[i64], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id < 0 || id as u64 >= vocab as u64) {
        Some(id) => Err(Error::Index(format!(
            "{op}: id {id} is out of range for an embedding of {vocab} rows"
        ))),
        None => Ok(()),
    }
}

/// `out[n] = weight[ids[n]]`: `weight (vocab, dim)`, `ids (n,)`, `out (n, dim)`.
pub fn embedding_forward(
    weight: &[f32],
    ids: &[i64],
    out: &mut [f32],
    vocab: usize,
    dim: usize,
) -> Result<()> {
    const OP: &str = "embedding_forward";
    check_len(OP, "weight", weight.len(), &[vocab, dim])?;
    check_len(OP, "out", out.len(), &[ids.len(), dim])?;
    check_ids(OP, ids, vocab)?;
    if dim == 0 || ids.is_empty() {
        return Ok(());
    }
    let cr = chunk_rows(ids.len(), dim);
    out.par_chunks_mut(cr * dim)
        .zip(ids.par_chunks(cr))
        .for_each(|(oc, ic)| {
            for (o, &id) in oc.chunks_exact_mut(dim).zip(ic) {
                let id = id as usize;
                o.copy_from_slice(&weight[id * dim..(id + 1) * dim]);
            }
        });
    Ok(())
}

/// `dweight[v] = sum of dy[n] over n with ids[n] == v`, in increasing `n`:
/// `dy (n, dim)`, `ids (n,)`, `dweight (vocab, dim)` overwritten.
pub fn embedding_backward(
    dy: &[f32],
    ids: &[i64],
    dweight: &mut [f32],
    vocab: usize,
    dim: usize,
) -> Result<()> {
    const OP: &str = "embedding_backward";
    check_len(OP, "dy", dy.len(), &[ids.len(), dim])?;
    check_len(OP, "dweight", dweight.len(), &[vocab, dim])?;
    check_ids(OP, ids, vocab)?;
    if dim == 0 || vocab == 0 {
        return Ok(());
    }
    // start[v] .. start[v + 1] indexes the positions of id v in `order`.
    let mut start = vec![0usize; vocab + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; ids.len()];
    for (n, &id) in ids.iter().enumerate() {
        order[next[id as usize]] = n;
        next[id as usize] += 1;
    }
    let cr = chunk_rows(vocab, dim);
    dweight
        .par_chunks_mut(cr * dim)
        .enumerate()
        .for_each(|(c, wc)| {
            for (k, row) in wc.chunks_exact_mut(dim).enumerate() {
                let v = c * cr + k;
                row.fill(0.0);
                for &n in &order[start[v]..start[v + 1]] {
                    for (a, b) in row.iter_mut().zip(&dy[n * dim..(n + 1) * dim]) {
                        *a += b;
                    }
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vec_math::testing::{assert_close, in_pool, Rng, SIZES};

    #[test]
    fn embedding_matches_naive() {
        let mut rng = Rng::new(40);
        for &dim in &SIZES {
            let (vocab, n) = (13, 50);
            let w = rng.vec(vocab * dim, -1.0, 1.0);
            let ids: Vec<i64> = (0..n).map(|_| (rng.next_u64() % 11) as i64).collect();
            let mut out = vec![0.0; n * dim];
            embedding_forward(&w, &ids, &mut out, vocab, dim).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(out[i * dim..][..dim], w[id as usize * dim..][..dim]);
            }
            let dy = rng.vec(n * dim, -1.0, 1.0);
            let mut dw = vec![f32::NAN; vocab * dim];
            embedding_backward(&dy, &ids, &mut dw, vocab, dim).unwrap();
            let mut want = vec![0.0f64; vocab * dim];
            for (i, &id) in ids.iter().enumerate() {
                for j in 0..dim {
                    want[id as usize * dim + j] += dy[i * dim + j] as f64;
                }
            }
            assert_close(&format!("dim {dim}"), &dw, &want, 1e-5, 1e-6);
        }
    }

    #[test]
    fn embedding_backward_same_bits_on_any_pool() {
        let (vocab, dim, n) = (1000, 96, 5000);
        let mut rng = Rng::new(41);
        let dy = rng.vec(n * dim, -1.0, 1.0);
        let ids: Vec<i64> = (0..n).map(|_| (rng.next_u64() % 37) as i64).collect();
        let run = |threads: usize| {
            let mut dw = vec![0.0; vocab * dim];
            in_pool(threads, || {
                embedding_backward(&dy, &ids, &mut dw, vocab, dim)
            })
            .unwrap();
            dw
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn embedding_rejects_bad_ids() {
        let mut out = vec![0.0; 4];
        match embedding_forward(&[0.0; 6], &[0, 3], &mut out, 3, 2) {
            Err(Error::Index(m)) => assert!(
                m.contains("embedding_forward") && m.contains("id 3") && m.contains("3 rows")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            embedding_forward(&[0.0; 6], &[-1, 0], &mut out, 3, 2),
            Err(Error::Index(_))
        ));
        let mut dw = vec![0.0; 6];
        assert!(matches!(
            embedding_backward(&[0.0; 4], &[0, 7], &mut dw, 3, 2),
            Err(Error::Index(_))
        ));
        assert!(embedding_backward(&[0.0; 3], &[0, 1], &mut dw, 3, 2).is_err());
    }
}
