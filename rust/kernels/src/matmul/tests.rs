//! Every path of the matmul family against the naive oracle: each SIMD
//! token the CPU has, one thread and the pool, odd sizes across the
//! MR/NR/KC/NC edges, all four transpose combinations, beta and bias.

use super::gemm::GemmArgs;
use super::*;
use crate::simd::Arch;
use crate::vec_math::testing::{assert_close, in_pool, random};

/// `x @ w^T + bias` by the naive oracle: what `linear_forward` must give.
fn linear_naive(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Vec<f32> {
    let mut want = vec![0.0; rows * out_f];
    sgemm_naive(
        rows,
        out_f,
        in_f,
        1.0,
        x,
        Layout::normal(in_f),
        w,
        Layout::transposed(in_f),
        0.0,
        &mut want,
        out_f,
    )
    .unwrap();
    for (i, v) in want.iter_mut().enumerate() {
        *v += bias[i % out_f];
    }
    want
}

/// One product with token `arch` on `threads` threads against the oracle, with
/// padded leading dimensions so that strides differ from widths.
#[allow(clippy::too_many_arguments)]
fn check(
    arch: Arch,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
) {
    let pad = 3;
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
    let a = random(ar * lda, 1);
    let b = random(br * ldb, 2);
    let c0 = random(m * ldc, 3);
    let al = Layout { trans: ta, ld: lda };
    let bl = Layout { trans: tb, ld: ldb };
    let mut want = c0.clone();
    sgemm_naive(m, n, k, alpha, &a, al, &b, bl, beta, &mut want, ldc).unwrap();
    let mut got = c0.clone();
    let (av, bv) = checked_views("test", m, n, k, &a, al, &b, bl, got.len(), ldc).unwrap();
    let g = GemmArgs {
        m,
        n,
        k,
        alpha,
        beta,
        a: av,
        b: bv,
        c: got.as_mut_ptr(),
        ldc,
        bias: std::ptr::null(),
    };
    // SAFETY: checked_views checked the operands against the shapes.
    dispatch!(arch, |s| unsafe { run(s, &g, threads) });
    let what =
        format!("{arch:?} x{threads} m={m} n={n} k={k} ta={ta} tb={tb} alpha={alpha} beta={beta}");
    let tol = 1e-5 * (k as f64).sqrt().max(1.0);
    assert_close(&what, &got, &want, tol, tol);
}

#[test]
fn odd_sizes_every_token_and_transpose() {
    let sizes = [1, 7, 17, 65];
    in_pool(2, || {
        for arch in Arch::supported() {
            for &m in &sizes {
                for &n in &sizes {
                    for &k in &sizes {
                        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)]
                        {
                            check(arch, 1, m, n, k, ta, tb, 1.0, 0.0);
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn large_sizes_across_block_edges_threaded() {
    // 257: one past the AVX2 KC; 300 x 70: partial tiles both ways; k = 20000 makes
    // nc narrow enough that n = 500 spans several jc blocks.
    let shapes = [
        (257, 257, 257),
        (300, 70, 600),
        (29, 515, 301),
        (20, 500, 20000),
        // Several depth blocks and tasks wide enough for more than one
        // column chunk of C on every kernel.
        (300, 1600, 600),
        // Few row panels: the threads split the columns.
        (60, 333, 129),
        // Depth blocks of unequal length (1030 = 344 + 344 + 342 on AVX-512).
        (57, 130, 1030),
    ];
    in_pool(2, || {
        for arch in Arch::supported() {
            for &(m, n, k) in &shapes {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    check(arch, 2, m, n, k, ta, tb, 1.0, 0.0);
                }
            }
        }
    });
}

#[test]
fn vector_shapes_threaded() {
    in_pool(2, || {
        for arch in Arch::supported() {
            for &(m, n, k) in &[
                (1, 5000, 257),
                (4100, 1, 65),
                (1, 1, 1000),
                (1, 300, 1),
                (2, 3000, 300),
            ] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    check(arch, 2, m, n, k, ta, tb, 1.0, 0.0);
                }
            }
        }
    });
}

#[test]
fn small_m_every_token() {
    // m up to past small_m::MAX_M; k across the 16- and 8-lane tails; n
    // across the 4-row steps and the task split.
    let ks = [1, 7, 8, 15, 16, 17, 33, 100, 257];
    let ns = [2, 3, 4, 5, 7, 65, 301];
    in_pool(2, || {
        for arch in Arch::supported() {
            for m in 1..=small_m::MAX_M + 1 {
                for &n in &ns {
                    for &k in &ks {
                        for ta in [false, true] {
                            let threads = if n > 64 { 2 } else { 1 };
                            check(arch, threads, m, n, k, ta, true, 1.0, 0.0);
                        }
                    }
                }
                check(arch, 2, m, 1000, 768, false, true, 0.5, 1.0);
                check(arch, 2, m, 333, 300, true, true, 2.0, 0.5);
            }
        }
    });
}

#[test]
fn small_m_linear_forward_bias() {
    in_pool(2, || {
        for rows in 1..=small_m::MAX_M {
            let (in_f, out_f) = (37, 203);
            let x = random(rows * in_f, 12);
            let w = random(out_f * in_f, 13);
            let bias = random(out_f, 14);
            let mut y = vec![f32::NAN; rows * out_f];
            linear_forward(&x, &w, Some(&bias), &mut y, rows, in_f, out_f).unwrap();
            let want = linear_naive(&x, &w, &bias, rows, in_f, out_f);
            assert_close(
                &format!("linear_forward rows={rows}"),
                &y,
                &want,
                1e-5,
                1e-5,
            );
        }
    });
}

#[test]
fn alpha_beta_accumulate() {
    in_pool(2, || {
        for arch in Arch::supported() {
            for &(m, n, k) in &[(17, 65, 300), (65, 17, 7), (1, 65, 17), (65, 1, 17)] {
                for threads in [1, 2] {
                    check(arch, threads, m, n, k, false, true, 1.0, 1.0);
                    check(arch, threads, m, n, k, true, false, 2.0, 0.5);
                }
            }
        }
    });
}

#[test]
fn beta_zero_ignores_nan_in_c() {
    for arch in Arch::supported() {
        for &(m, n, k) in &[(20, 40, 30), (1, 40, 30), (20, 1, 30), (3, 3, 0)] {
            let a = random(m * k, 4);
            let b = random(k * n, 5);
            let mut c = vec![f32::NAN; m * n];
            let (av, bv) = checked_views(
                "t",
                m,
                n,
                k,
                &a,
                Layout::normal(k),
                &b,
                Layout::normal(n),
                c.len(),
                n,
            )
            .unwrap();
            let g = GemmArgs {
                m,
                n,
                k,
                alpha: 1.0,
                beta: 0.0,
                a: av,
                b: bv,
                c: c.as_mut_ptr(),
                ldc: n,
                bias: std::ptr::null(),
            };
            // SAFETY: checked_views checked the operands against the shapes.
            dispatch!(arch, |s| unsafe { run(s, &g, 1) });
            assert!(c.iter().all(|v| v.is_finite()), "{arch:?} {m}x{n}x{k}");
        }
    }
}

#[test]
fn k_zero_scales_c() {
    let mut c = vec![2.0; 6];
    sgemm(
        2,
        3,
        0,
        1.0,
        &[],
        Layout::normal(0),
        &[],
        Layout::normal(3),
        0.5,
        &mut c,
        3,
    )
    .unwrap();
    assert_eq!(c, vec![1.0; 6]);
}

#[test]
fn sgemm_rejects_short_operands() {
    let mut c = vec![0.0; 4];
    let err = sgemm(
        2,
        2,
        3,
        1.0,
        &[0.0; 5],
        Layout::normal(3),
        &[0.0; 6],
        Layout::normal(2),
        0.0,
        &mut c,
        2,
    );
    assert!(matches!(err, Err(Error::Shape(_))), "{err:?}");
    let err = sgemm(
        2,
        2,
        3,
        1.0,
        &[0.0; 6],
        Layout::normal(2),
        &[0.0; 6],
        Layout::normal(2),
        0.0,
        &mut c,
        2,
    );
    assert!(
        matches!(err, Err(Error::Shape(_))),
        "ld below width: {err:?}"
    );
}

/// Naive batched product with explicit broadcasting, for the oracle.
fn batched_naive(
    a: &[f32],
    ash: &[usize],
    ta: bool,
    b: &[f32],
    bsh: &[usize],
    tb: bool,
) -> (Vec<f32>, Vec<usize>) {
    let shape = matmul_shape(ash, ta, bsh, tb).unwrap();
    let rank = shape.len() - 2;
    let (m, n) = (shape[rank], shape[rank + 1]);
    let k = if ta {
        ash[ash.len() - 2]
    } else {
        ash[ash.len() - 1]
    };
    let count: usize = shape[..rank].iter().product();
    let mut out = vec![0.0; count * m * n];
    let offset = |t: usize, sh: &[usize], mat: usize| {
        let bsh = &sh[..sh.len() - 2];
        let (mut rest, mut off, mut step) = (t, 0, mat);
        let mut idx = vec![0; rank];
        for ax in (0..rank).rev() {
            idx[ax] = rest % shape[ax];
            rest /= shape[ax];
        }
        for (ax, &d) in bsh.iter().enumerate().rev() {
            let i = idx[rank - bsh.len() + ax];
            off += if d == 1 { 0 } else { i * step };
            step *= d;
        }
        off
    };
    for t in 0..count {
        let ao = offset(t, ash, m * k);
        let bo = offset(t, bsh, k * n);
        let al = if ta {
            Layout::transposed(m)
        } else {
            Layout::normal(k)
        };
        let bl = if tb {
            Layout::transposed(k)
        } else {
            Layout::normal(n)
        };
        sgemm_naive(
            m,
            n,
            k,
            1.0,
            &a[ao..ao + m * k],
            al,
            &b[bo..bo + k * n],
            bl,
            0.0,
            &mut out[t * m * n..(t + 1) * m * n],
            n,
        )
        .unwrap();
    }
    (out, shape)
}

#[test]
fn batched_broadcasting() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 17, 7], &[3, 7, 65]),
        (&[2, 1, 17, 7], &[4, 7, 65]),
        (&[17, 7], &[5, 7, 9]),
        (&[5, 65, 7], &[7, 20]),
        (&[2, 3, 1, 7], &[1, 3, 7, 1]),
        (&[8, 33, 40], &[8, 40, 33]),
        (&[0, 4, 5], &[5, 6]),
        (&[2, 4, 0], &[1, 0, 6]),
    ];
    in_pool(2, || {
        for &(ash, bsh) in cases {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let swap = |sh: &[usize], t: bool| {
                    let mut s = sh.to_vec();
                    if t {
                        let r = s.len();
                        s.swap(r - 1, r - 2);
                    }
                    s
                };
                let (ash, bsh) = (swap(ash, ta), swap(bsh, tb));
                let a = random(ash.iter().product(), 6);
                let b = random(bsh.iter().product(), 7);
                let (want, shape) = batched_naive(&a, &ash, ta, &b, &bsh, tb);
                let mut got = vec![f32::NAN; want.len()];
                matmul_batched(&a, &ash, ta, &b, &bsh, tb, &mut got).unwrap();
                assert_close(
                    &format!("{ash:?} {ta} @ {bsh:?} {tb} -> {shape:?}"),
                    &got,
                    &want,
                    1e-5,
                    1e-5,
                );
            }
        }
    });
}

#[test]
fn batched_rejects_bad_shapes() {
    let mut c = vec![0.0; 100];
    for (ash, bsh) in [
        (&[2, 3][..], &[4, 5][..]),
        (&[2, 3, 4][..], &[3, 4, 5][..]),
        (&[3][..], &[3, 4][..]),
    ] {
        let a = vec![0.0; ash.iter().product()];
        let b = vec![0.0; bsh.iter().product()];
        let err = matmul_batched(&a, ash, false, &b, bsh, false, &mut c);
        assert!(
            matches!(err, Err(Error::Shape(ref s)) if s.starts_with("matmul")),
            "{err:?}"
        );
    }
    let err = matmul_batched(
        &[0.0; 5],
        &[2, 3],
        false,
        &[0.0; 12],
        &[3, 4],
        false,
        &mut c[..8],
    );
    assert!(matches!(err, Err(Error::Shape(_))), "short a: {err:?}");
}

#[test]
fn linear_forward_and_backward() {
    in_pool(2, || {
        for &(rows, in_f, out_f) in &[
            (1, 17, 65),
            (65, 17, 7),
            (257, 65, 300),
            (7, 1, 1),
            (0, 3, 4),
        ] {
            let x = random(rows * in_f, 8);
            let w = random(out_f * in_f, 9);
            let bias = random(out_f, 10);
            let dy = random(rows * out_f, 11);

            let mut y = vec![0.0; rows * out_f];
            linear_forward(&x, &w, Some(&bias), &mut y, rows, in_f, out_f).unwrap();
            let want = linear_naive(&x, &w, &bias, rows, in_f, out_f);
            assert_close("linear_forward", &y, &want, 1e-5, 1e-5);

            let (mut dx, mut dw, mut db) = (
                vec![0.0; rows * in_f],
                vec![1.0; out_f * in_f],
                vec![1.0; out_f],
            );
            linear_backward(
                &dy,
                &x,
                &w,
                rows,
                in_f,
                out_f,
                &mut dx,
                &mut dw,
                Some(&mut db),
                false,
            )
            .unwrap();
            let mut want_dx = vec![0.0; rows * in_f];
            sgemm_naive(
                rows,
                in_f,
                out_f,
                1.0,
                &dy,
                Layout::normal(out_f),
                &w,
                Layout::normal(in_f),
                0.0,
                &mut want_dx,
                in_f,
            )
            .unwrap();
            let mut want_dw = vec![0.0; out_f * in_f];
            sgemm_naive(
                out_f,
                in_f,
                rows,
                1.0,
                &dy,
                Layout::transposed(out_f),
                &x,
                Layout::normal(in_f),
                0.0,
                &mut want_dw,
                in_f,
            )
            .unwrap();
            let want_db: Vec<f32> = (0..out_f)
                .map(|j| (0..rows).map(|i| dy[i * out_f + j]).sum())
                .collect();
            assert_close("dx", &dx, &want_dx, 1e-5, 1e-5);
            assert_close("dw", &dw, &want_dw, 1e-4, 1e-4);
            assert_close("db", &db, &want_db, 1e-4, 1e-4);

            // Accumulating adds the same gradients again.
            linear_backward(
                &dy,
                &x,
                &w,
                rows,
                in_f,
                out_f,
                &mut dx,
                &mut dw,
                Some(&mut db),
                true,
            )
            .unwrap();
            let twice = |v: &[f32]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
            assert_close("dw accumulated", &dw, &twice(&want_dw), 1e-4, 1e-4);
            assert_close("db accumulated", &db, &twice(&want_db), 1e-4, 1e-4);
        }
    });
}

#[test]
fn every_partial_row_panel_with_epilogue() {
    // m = 33..=46 leaves every remainder mod MR = 14 (AVX-512) and mod 6
    // (AVX2) in the last row panel, on the GEMM path (m > small_m's
    // MAX_M); n = 71 also has a partial column panel; both threads.
    in_pool(2, || {
        for arch in Arch::supported() {
            for m in 33..=46 {
                for (ta, tb) in [(false, false), (false, true), (true, false)] {
                    check(arch, 2, m, 71, 40, ta, tb, 0.5, 1.5);
                }
            }
        }
    });
    // The bias epilogue on partial row panels, through linear_forward.
    for rows in 33..=46 {
        check_linear_bias(rows, 48, 64);
    }
}

/// `linear_forward` with a bias, on the pool, against a float64 loop.
fn check_linear_bias(rows: usize, in_f: usize, out_f: usize) {
    let x = random(rows * in_f, 4);
    let w = random(out_f * in_f, 5);
    let b = random(out_f, 6);
    let mut y = vec![f32::NAN; rows * out_f];
    in_pool(2, || {
        linear_forward(&x, &w, Some(&b), &mut y, rows, in_f, out_f)
    })
    .unwrap();
    let mut want = vec![0.0f32; rows * out_f];
    for i in 0..rows {
        for j in 0..out_f {
            let dot: f64 = (0..in_f)
                .map(|p| x[i * in_f + p] as f64 * w[j * in_f + p] as f64)
                .sum();
            want[i * out_f + j] = (dot + b[j] as f64) as f32;
        }
    }
    assert_close(
        &format!("linear_forward rows={rows} in={in_f} out={out_f}"),
        &y,
        &want,
        1e-4,
        1e-4,
    );
}

#[test]
fn few_rows_against_w_in_place() {
    // The `swapped` path (AVX-512; 33..=256 rows of x against W (n, k)
    // read in place): partial x panels and W blocks, strided x (trans_a),
    // the epilogue, one and two threads; and the bias through linear_forward.
    in_pool(2, || {
        for arch in Arch::supported() {
            for &m in &[33, 47, 64, 100, 128, 256] {
                for &(n, k) in &[(28, 64), (71, 77), (300, 768)] {
                    for threads in [1, 2] {
                        check(arch, threads, m, n, k, false, true, 1.0, 0.0);
                        check(arch, threads, m, n, k, true, true, 0.5, 1.5);
                    }
                }
            }
        }
    });
    for rows in [40, 128] {
        check_linear_bias(rows, 96, 45);
    }
}

#[test]
fn a_huge_stride_or_size_is_refused_not_wrapped() {
    // (sr - 1) * ld + sc overflows for these: a wrapped span would pass the
    // length check with a short slice.
    let a = [0.0f32; 4];
    let mut c = [0.0f32; 4];
    let huge = usize::MAX / 2 + 1;
    let e = sgemm(
        2,
        2,
        2,
        1.0,
        &a,
        Layout::normal(huge),
        &a,
        Layout::normal(2),
        0.0,
        &mut c,
        2,
    );
    assert!(matches!(e, Err(crate::error::Error::Shape(_))), "{e:?}");
    let e = sgemm(
        huge,
        2,
        2,
        1.0,
        &a,
        Layout::normal(2),
        &a,
        Layout::normal(2),
        0.0,
        &mut c,
        2,
    );
    assert!(matches!(e, Err(crate::error::Error::Shape(_))), "{e:?}");
}
