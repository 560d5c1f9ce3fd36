//! The row-wise kernels (softmax, layernorm, rmsnorm, activations, SwiGLU,
//! cross-entropy, embedding, RoPE, AdamW) on arbitrary dims, lengths,
//! flags and scalars: every call returns Ok or Err, and after Ok every
//! output element was written.
#![no_main]

use arbitrary::{Result, Unstructured};
use ferroformer_fuzz::{assert_written, buffer, dim, ids, len_for, output, scalar};
use ferroformer_kernels::activation::{self as act, Gelu};
use ferroformer_kernels::{embedding, loss, norm, optim, rope, softmax};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0..=11u8).unwrap_or(0) {
        0 => fuzz_softmax(&mut u),
        1 => fuzz_layernorm(&mut u),
        2 => fuzz_rmsnorm(&mut u),
        3 => fuzz_unary(&mut u),
        4 => fuzz_unary_backward(&mut u),
        5 => fuzz_swiglu(&mut u),
        6 => fuzz_cross_entropy(&mut u),
        7 => fuzz_embedding(&mut u),
        8 => fuzz_rope(&mut u),
        9 => fuzz_adamw(&mut u),
        10 => fuzz_gelu_parse(&mut u),
        _ => fuzz_softmax_backward(&mut u),
    };
});

/// (rows, cols) with cols up to 300 (past the SIMD widths and chunk sizes).
fn rows_cols(u: &mut Unstructured) -> Result<(usize, usize)> {
    Ok((dim(u, 70)?, dim(u, 300)?))
}

fn fuzz_softmax(u: &mut Unstructured) -> Result<()> {
    let (rows, cols) = rows_cols(u)?;
    let x = buffer(u, &[rows, cols])?;
    let mut y = output(u, &[rows, cols])?;
    let scale = scalar(u, 1.0)? as f32;
    let causal = match u.int_in_range(0..=3u8)? {
        0 | 1 => None,
        2 => Some(dim(u, 8)?),
        _ => Some(rows.max(1)),
    };
    if softmax::softmax_forward(&x, &mut y, rows, cols, scale, causal).is_ok() {
        assert_written("softmax_forward", "y", &y);
    }
    Ok(())
}

fn fuzz_softmax_backward(u: &mut Unstructured) -> Result<()> {
    let (rows, cols) = rows_cols(u)?;
    let dy = buffer(u, &[rows, cols])?;
    let y = buffer(u, &[rows, cols])?;
    let mut dx = output(u, &[rows, cols])?;
    let scale = scalar(u, 1.0)? as f32;
    if softmax::softmax_backward(&dy, &y, &mut dx, rows, cols, scale).is_ok() {
        assert_written("softmax_backward", "dx", &dx);
    }
    Ok(())
}

fn fuzz_layernorm(u: &mut Unstructured) -> Result<()> {
    let (rows, cols) = rows_cols(u)?;
    let x = buffer(u, &[rows, cols])?;
    let gamma = buffer(u, &[cols])?;
    let beta = buffer(u, &[cols])?;
    let eps = scalar(u, 1e-5)? as f32;
    let mut y = output(u, &[rows, cols])?;
    let mut mean = output(u, &[rows])?;
    let mut rstd = output(u, &[rows])?;
    let op = "layernorm_forward";
    let ok = norm::layernorm_forward(
        &x, &gamma, &beta, eps, &mut y, &mut mean, &mut rstd, rows, cols,
    );
    if ok.is_ok() {
        assert_written(op, "y", &y);
        assert_written(op, "mean", &mean);
        assert_written(op, "rstd", &rstd);
    }
    if u.arbitrary()? {
        if ok.is_err() {
            // the statistics still hold the UNWRITTEN pattern, which would flow into
            // the gradients: give backward values instead
            mean = buffer(u, &[rows])?;
            rstd = buffer(u, &[rows])?;
        }
        let dy = buffer(u, &[rows, cols])?;
        let mut dx = output(u, &[rows, cols])?;
        let mut dgamma = output(u, &[cols])?;
        let mut dbeta = output(u, &[cols])?;
        let op = "layernorm_backward";
        let ok = norm::layernorm_backward(
            &dy,
            &x,
            &gamma,
            &mean,
            &rstd,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            rows,
            cols,
        );
        if ok.is_ok() {
            assert_written(op, "dx", &dx);
            assert_written(op, "dgamma", &dgamma);
            assert_written(op, "dbeta", &dbeta);
        }
    }
    Ok(())
}

fn fuzz_rmsnorm(u: &mut Unstructured) -> Result<()> {
    let (rows, cols) = rows_cols(u)?;
    let x = buffer(u, &[rows, cols])?;
    let gamma = buffer(u, &[cols])?;
    let eps = scalar(u, 1e-6)? as f32;
    let mut y = output(u, &[rows, cols])?;
    let mut rstd = output(u, &[rows])?;
    let fwd = norm::rmsnorm_forward(&x, &gamma, eps, &mut y, &mut rstd, rows, cols);
    if fwd.is_ok() {
        assert_written("rmsnorm_forward", "y", &y);
        assert_written("rmsnorm_forward", "rstd", &rstd);
    }
    if u.arbitrary()? {
        if fwd.is_err() {
            rstd = buffer(u, &[rows])?; // not the UNWRITTEN pattern (see layernorm)
        }
        let dy = buffer(u, &[rows, cols])?;
        let mut dx = output(u, &[rows, cols])?;
        let mut dgamma = output(u, &[cols])?;
        let op = "rmsnorm_backward";
        if norm::rmsnorm_backward(&dy, &x, &gamma, &rstd, &mut dx, &mut dgamma, rows, cols).is_ok()
        {
            assert_written(op, "dx", &dx);
            assert_written(op, "dgamma", &dgamma);
        }
    }
    Ok(())
}

/// A flat element count, up to a few SIMD chunks.
fn flat(u: &mut Unstructured) -> Result<usize> {
    dim(u, 5000)
}

fn gelu(u: &mut Unstructured) -> Result<Gelu> {
    Ok(if u.arbitrary()? {
        Gelu::Tanh
    } else {
        Gelu::Erf
    })
}

fn fuzz_unary(u: &mut Unstructured) -> Result<()> {
    let n = flat(u)?;
    let x = buffer(u, &[n])?;
    let mut y = output(u, &[n])?;
    let (op, got) = match u.int_in_range(0..=2u8)? {
        0 => ("gelu_forward", act::gelu_forward(&x, &mut y, gelu(u)?)),
        1 => ("relu_forward", act::relu_forward(&x, &mut y)),
        _ => ("silu_forward", act::silu_forward(&x, &mut y)),
    };
    if got.is_ok() {
        assert_written(op, "y", &y);
    }
    Ok(())
}

fn fuzz_unary_backward(u: &mut Unstructured) -> Result<()> {
    let n = flat(u)?;
    let dy = buffer(u, &[n])?;
    let x = buffer(u, &[n])?;
    let mut dx = output(u, &[n])?;
    let (op, got) = match u.int_in_range(0..=2u8)? {
        0 => (
            "gelu_backward",
            act::gelu_backward(&dy, &x, &mut dx, gelu(u)?),
        ),
        1 => ("relu_backward", act::relu_backward(&dy, &x, &mut dx)),
        _ => ("silu_backward", act::silu_backward(&dy, &x, &mut dx)),
    };
    if got.is_ok() {
        assert_written(op, "dx", &dx);
    }
    Ok(())
}

fn fuzz_gelu_parse(u: &mut Unstructured) -> Result<()> {
    let s: &str = u.arbitrary()?;
    let _ = Gelu::parse("gelu_forward", s);
    Ok(())
}

fn fuzz_swiglu(u: &mut Unstructured) -> Result<()> {
    let n = flat(u)?;
    let gate = buffer(u, &[n])?;
    let up = buffer(u, &[n])?;
    if u.arbitrary()? {
        let mut h = output(u, &[n])?;
        if act::swiglu_forward(&gate, &up, &mut h).is_ok() {
            assert_written("swiglu_forward", "h", &h);
        }
    } else {
        let dh = buffer(u, &[n])?;
        let mut dgate = output(u, &[n])?;
        let mut dup = output(u, &[n])?;
        if act::swiglu_backward(&dh, &gate, &up, &mut dgate, &mut dup).is_ok() {
            assert_written("swiglu_backward", "dgate", &dgate);
            assert_written("swiglu_backward", "dup", &dup);
        }
    }
    Ok(())
}

fn fuzz_cross_entropy(u: &mut Unstructured) -> Result<()> {
    let (rows, vocab) = rows_cols(u)?;
    let logits = buffer(u, &[rows, vocab])?;
    let n_targets = len_for(u, &[rows])?;
    let targets = ids(u, n_targets, vocab)?;
    let ignore_index = match u.int_in_range(0..=3u8)? {
        0 | 1 => -100,
        2 => 0,
        _ => u.arbitrary()?,
    };
    let smoothing = match u.int_in_range(0..=3u8)? {
        0 | 1 => 0.0,
        2 => 0.1,
        _ => scalar(u, 0.5)? as f32,
    };
    let mut lse = output(u, &[rows])?;
    let op = "cross_entropy_forward";
    let fwd = loss::cross_entropy_forward(
        &logits,
        &targets,
        ignore_index,
        smoothing,
        &mut lse,
        rows,
        vocab,
    );
    if fwd.is_ok() {
        assert_written(op, "lse", &lse);
    }
    if u.arbitrary()? {
        let grad = scalar(u, 1.0)? as f32;
        let mut dlogits = output(u, &[rows, vocab])?;
        let op = "cross_entropy_backward";
        let bwd = loss::cross_entropy_backward(
            &logits,
            &targets,
            &lse,
            ignore_index,
            smoothing,
            grad,
            &mut dlogits,
            rows,
            vocab,
        );
        if bwd.is_ok() {
            assert_written(op, "dlogits", &dlogits);
        }
    }
    Ok(())
}

fn fuzz_embedding(u: &mut Unstructured) -> Result<()> {
    let (vocab, d) = (dim(u, 100)?, dim(u, 100)?);
    let n = dim(u, 100)?;
    let id = ids(u, n, vocab)?;
    if u.arbitrary()? {
        let weight = buffer(u, &[vocab, d])?;
        let mut out = output(u, &[n, d])?;
        if embedding::embedding_forward(&weight, &id, &mut out, vocab, d).is_ok() {
            assert_written("embedding_forward", "out", &out);
        }
    } else {
        let dy = buffer(u, &[n, d])?;
        let mut dweight = output(u, &[vocab, d])?;
        if embedding::embedding_backward(&dy, &id, &mut dweight, vocab, d).is_ok() {
            assert_written("embedding_backward", "dweight", &dweight);
        }
    }
    Ok(())
}

fn fuzz_rope(u: &mut Unstructured) -> Result<()> {
    let (t, d) = (dim(u, 40)?, dim(u, 130)?);
    let rows = if u.arbitrary()? {
        t.saturating_mul(dim(u, 4)?)
    } else {
        dim(u, 200)?
    };
    let x = buffer(u, &[rows, d])?;
    let cos = buffer(u, &[t, d / 2])?;
    let sin = buffer(u, &[t, d / 2])?;
    let mut y = output(u, &[rows, d])?;
    let (op, got) = if u.arbitrary()? {
        (
            "rope_forward",
            rope::rope_forward(&x, &cos, &sin, &mut y, rows, t, d),
        )
    } else {
        (
            "rope_backward",
            rope::rope_backward(&x, &cos, &sin, &mut y, rows, t, d),
        )
    };
    if got.is_ok() {
        assert_written(op, "y", &y);
    }
    Ok(())
}

fn fuzz_adamw(u: &mut Unstructured) -> Result<()> {
    let n = flat(u)?;
    let mut param = buffer(u, &[n])?;
    let grad = buffer(u, &[n])?;
    let mut m = buffer(u, &[n])?;
    let mut v = buffer(u, &[n])?;
    let lr = scalar(u, 1e-3)?;
    let beta1 = scalar(u, 0.9)?;
    let beta2 = scalar(u, 0.999)?;
    let eps = scalar(u, 1e-8)?;
    let wd = scalar(u, 0.01)?;
    let step = match u.int_in_range(0..=3u8)? {
        0 | 1 => u.int_in_range(1..=100u64)?,
        2 => 0,
        _ => u.arbitrary()?,
    };
    let _ = optim::adamw_step(
        &mut param, &grad, &mut m, &mut v, lr, beta1, beta2, eps, wd, step,
    );
    Ok(())
}
