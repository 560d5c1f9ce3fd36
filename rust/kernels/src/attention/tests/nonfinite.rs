//! NaN and inf in the inputs: every path (tiled forward, decode, backward,
//! padded head dims, KV caches) gives the float64 reference's answer, NaN
//! where it has NaN, the same infinities, and nothing non-finite out of a
//! masked position.

use super::*;
use crate::vec_math::testing::Rng;

/// Puts NaN, +inf and -inf at `n` pseudo-random positions of `x`.
fn spoil(x: &mut [f32], n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for t in 0..n {
        let at = (rng.next_u64() >> 11) as usize % x.len();
        x[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][t % 3];
    }
}

#[test]
fn non_finite_inputs_follow_the_reference() {
    // Tiled forward (Tq > 4), decode (Tq <= 4), GQA, a padded head dim.
    let shapes = [
        (1, 2, 1, 70, 70, 16),
        (2, 4, 2, 3, 90, 32),
        (1, 2, 2, 20, 130, 72),
        (2, 3, 1, 1, 300, 24),
    ];
    let mut seed = 100;
    for &dims in &shapes {
        for (causal, mask) in [(false, false), (true, false), (false, true), (true, true)] {
            for which in 0..4 {
                seed += 1;
                let mut case = Case::new(dims, causal, mask, seed);
                let x = match which {
                    0 => &mut case.q,
                    1 => &mut case.k,
                    2 => &mut case.v,
                    _ => &mut case.d_o,
                };
                spoil(x, 3, seed);
                case.check(&format!("spoiled input {which}"));
            }
        }
    }
}

#[test]
fn masked_non_finite_values_change_nothing() {
    // NaN and inf in keys hidden from every query (padding, or past the last
    // query's causal limit): the outputs are the finite reference, and rows
    // that see nothing give o = 0, lse = -inf and zero gradients.
    for &(dims, causal) in &[
        ((2, 2, 1, 20, 20, 16), true),
        ((2, 2, 1, 70, 75, 40), true),
        ((2, 2, 2, 2, 80, 16), false),
        ((2, 1, 1, 1, 300, 72), true),
        ((1, 1, 1, 30, 10, 16), true),
    ] {
        let mut case = Case::new(dims, causal, true, 9);
        let s = case.shape;
        let (tk, d) = (s.kv_len, s.head_dim);
        let mask = case.mask.clone().unwrap();
        for b in 0..s.batch {
            for h in 0..s.kv_heads {
                for j in 0..tk {
                    if mask[b * tk + j] {
                        let at = ((b * s.kv_heads + h) * tk + j) * d;
                        case.k[at..at + d].fill(f32::NAN);
                        case.v[at..at + d].fill(f32::INFINITY);
                    }
                }
            }
        }
        // Keys that query 0 may not see (but later queries do) hold inf in
        // v and k: query 0's row stays finite.
        if causal && s.q_len > 1 && s.kv_len >= s.q_len {
            let first_hidden = tk + 1 - s.q_len;
            for slab in 0..s.batch * s.kv_heads {
                let at = (slab * tk + first_hidden) * d;
                case.v[at] = f32::INFINITY;
                case.k[at + 1] = f32::NEG_INFINITY;
            }
        }
        let (o, lse, dq, ..) = case.reference();
        let tq = s.q_len;
        for bh in 0..s.batch * s.q_heads {
            let row0 = &o[bh * tq * d..(bh * tq + 1) * d];
            assert!(
                row0.iter().all(|v| v.is_finite()),
                "{dims:?} reference o row 0"
            );
            let drow0 = &dq[bh * tq * d..(bh * tq + 1) * d];
            assert!(
                drow0.iter().all(|v| v.is_finite()),
                "{dims:?} reference dq row 0"
            );
        }
        assert!(lse.iter().all(|&v| !v.is_nan()));
        case.check("masked non-finite");
    }
}

#[test]
fn kv_cache_with_padded_head_dim_reads_only_the_used_rows() {
    // d = 72 pads each row to 80 floats: only rows [0, kv_len) are copied,
    // and the unused rows (NaN here) are never read.
    for &(tq, tk, cap) in &[(1, 10, 4096), (3, 70, 1000), (9, 40, 500)] {
        let case = Case::new((2, 3, 1, tq, tk, 72), true, true, 3);
        let (o, lse) = case.forward(Arch::best());
        let (oc, lc) = case.forward_cached(cap);
        assert_eq!(o, oc, "tq {tq} kv_len {tk} capacity {cap}: o");
        assert_eq!(lse, lc, "tq {tq} kv_len {tk} capacity {cap}: lse");
        let (want_o, want_lse, ..) = case.reference();
        assert_scaled("cached o", &oc, &want_o, 2e-5);
        assert_scaled("cached lse", &lc, &want_lse, 2e-5);
    }
}
