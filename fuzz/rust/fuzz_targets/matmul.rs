//! The matmul family (sgemm, matmul_batched, matmul_shape, linear_forward,
//! linear_backward) on arbitrary dims, strides, lengths and values: every
//! call returns Ok or Err; an Ok product on grid values equals the naive
//! oracle exactly, and NaN where the oracle has NaN.
#![no_main]

use arbitrary::{Result, Unstructured};
use ferroformer_fuzz::{assert_written, buffer, count, dim, floats, len_for, on_grid, output};
use ferroformer_kernels::matmul::{
    linear_backward, linear_forward, matmul_batched, matmul_shape, sgemm, sgemm_naive, Layout,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => fuzz_sgemm(&mut u),
        1 => fuzz_batched(&mut u),
        2 => fuzz_linear_forward(&mut u),
        _ => fuzz_linear_backward(&mut u),
    };
});

/// Rows and columns a stored operand of op(X) (rows, cols) has.
fn stored(layout: Layout, rows: usize, cols: usize) -> [usize; 2] {
    if layout.trans {
        [cols, rows]
    } else {
        [rows, cols]
    }
}

fn layout(u: &mut Unstructured, rows: usize, cols: usize) -> Result<Layout> {
    let trans: bool = u.arbitrary()?;
    let natural = if trans { rows } else { cols };
    // the natural stride, a padded one, or any (a huge one overflows offsets)
    let ld = match u.int_in_range(0..=3u8)? {
        0 | 1 => natural,
        2 => natural.saturating_add(u.int_in_range(1..=9usize)?),
        _ => dim(u, 80)?,
    };
    Ok(Layout { trans, ld })
}

fn fuzz_sgemm(u: &mut Unstructured) -> Result<()> {
    let (m, n, k) = (dim(u, 70)?, dim(u, 70)?, dim(u, 80)?);
    let (al, bl) = (layout(u, m, k)?, layout(u, k, n)?);
    let ldc = if u.arbitrary()? { n } else { dim(u, 80)? };
    // a stored operand spans (rows - 1) * ld + cols elements
    let span = |l: Layout, [r, c]: [usize; 2]| [r.saturating_sub(1), l.ld.max(c)];
    let a_dims = span(al, stored(al, m, k));
    let b_dims = span(bl, stored(bl, k, n));
    let mut a_len = len_for(u, &a_dims)?;
    let mut b_len = len_for(u, &b_dims)?;
    if count(&a_dims).is_some() && u.arbitrary()? {
        a_len = (a_dims[0] * a_dims[1] + stored(al, m, k)[1]).min(ferroformer_fuzz::MAX_ELEMS);
    }
    if count(&b_dims).is_some() && u.arbitrary()? {
        b_len = (b_dims[0] * b_dims[1] + stored(bl, k, n)[1]).min(ferroformer_fuzz::MAX_ELEMS);
    }
    let a = floats(u, a_len)?;
    let b = floats(u, b_len)?;
    let c0 = buffer(u, &[m, ldc])?;
    let alpha = if u.arbitrary()? {
        1.0
    } else {
        ferroformer_fuzz::value(u)?
    };
    let beta = match u.int_in_range(0..=3u8)? {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => ferroformer_fuzz::value(u)?,
    };
    let mut c = c0.clone();
    let got = sgemm(m, n, k, alpha, &a, al, &b, bl, beta, &mut c, ldc);
    let mut want = c0.clone();
    let oracle = sgemm_naive(m, n, k, alpha, &a, al, &b, bl, beta, &mut want, ldc);
    assert_eq!(
        got.is_ok(),
        oracle.is_ok(),
        "sgemm and the oracle disagree: {got:?} {oracle:?}"
    );
    if got.is_err() {
        return Ok(());
    }
    let exact = k <= 64
        && alpha == 1.0
        && (beta == 0.0 || beta == 1.0)
        && a.iter().chain(&b).chain(&c0).all(|&x| on_grid(x));
    for (i, (&g, &w)) in c.iter().zip(&want).enumerate() {
        if exact {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "sgemm c[{i}] = {g}, the oracle gives {w}"
            );
        } else if w.is_nan() && alpha != 0.0 {
            assert!(g.is_nan(), "sgemm c[{i}] = {g}, the oracle gives NaN");
        }
    }
    Ok(())
}

fn shape(u: &mut Unstructured) -> Result<Vec<usize>> {
    let rank = u.int_in_range(0..=5usize)?;
    (0..rank).map(|_| dim(u, 9)).collect()
}

fn fuzz_batched(u: &mut Unstructured) -> Result<()> {
    let a_shape = shape(u)?;
    let mut b_shape = shape(u)?;
    let (ta, tb): (bool, bool) = (u.arbitrary()?, u.arbitrary()?);
    if a_shape.len() >= 2 && b_shape.len() >= 2 && u.arbitrary()? {
        // make the inner sizes agree most of the time
        let ka = a_shape[a_shape.len() - if ta { 2 } else { 1 }];
        let at = b_shape.len() - if tb { 1 } else { 2 };
        b_shape[at] = ka;
    }
    let planned = matmul_shape(&a_shape, ta, &b_shape, tb);
    let a = buffer(u, &a_shape)?;
    let b = buffer(u, &b_shape)?;
    let out_shape = match &planned {
        Ok(s) => s.clone(),
        Err(_) => shape(u)?,
    };
    let mut c = output(u, &out_shape)?;
    let got = matmul_batched(&a, &a_shape, ta, &b, &b_shape, tb, &mut c);
    if got.is_ok() {
        assert!(
            planned.is_ok(),
            "matmul_batched Ok where matmul_shape fails"
        );
        assert_written("matmul_batched", "c", &c);
    }
    Ok(())
}

fn fuzz_linear_forward(u: &mut Unstructured) -> Result<()> {
    let (rows, in_f, out_f) = (dim(u, 80)?, dim(u, 70)?, dim(u, 70)?);
    let x = buffer(u, &[rows, in_f])?;
    let w = buffer(u, &[out_f, in_f])?;
    let b = if u.arbitrary()? {
        Some(buffer(u, &[out_f])?)
    } else {
        None
    };
    let mut y = output(u, &[rows, out_f])?;
    if linear_forward(&x, &w, b.as_deref(), &mut y, rows, in_f, out_f).is_ok() {
        assert_written("linear_forward", "y", &y);
    }
    Ok(())
}

fn fuzz_linear_backward(u: &mut Unstructured) -> Result<()> {
    let (rows, in_f, out_f) = (dim(u, 80)?, dim(u, 70)?, dim(u, 70)?);
    let dy = buffer(u, &[rows, out_f])?;
    let x = buffer(u, &[rows, in_f])?;
    let w = buffer(u, &[out_f, in_f])?;
    let accumulate: bool = u.arbitrary()?;
    let mut dx = output(u, &[rows, in_f])?;
    // accumulated gradients are read, so they start as values
    let mut dw = if accumulate {
        buffer(u, &[out_f, in_f])?
    } else {
        output(u, &[out_f, in_f])?
    };
    let mut db = match u.int_in_range(0..=2u8)? {
        0 => None,
        _ if accumulate => Some(buffer(u, &[out_f])?),
        _ => Some(output(u, &[out_f])?),
    };
    let got = linear_backward(
        &dy,
        &x,
        &w,
        rows,
        in_f,
        out_f,
        &mut dx,
        &mut dw,
        db.as_deref_mut(),
        accumulate,
    );
    if got.is_ok() {
        assert_written("linear_backward", "dx", &dx);
        assert_written("linear_backward", "dw", &dw);
        if let Some(db) = &db {
            assert_written("linear_backward", "db", db);
        }
    }
    Ok(())
}
