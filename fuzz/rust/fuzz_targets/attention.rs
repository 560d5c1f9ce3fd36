//! Attention forward (plain and over a KV cache) and backward on
//! arbitrary shapes, lengths, masks and scales: every call returns Ok or
//! Err, and after Ok every output element was written.
#![no_main]

use arbitrary::{Result, Unstructured};
use ferroformer_fuzz::{assert_written, buffer, dim, len_for, output, value};
use ferroformer_kernels::attention::{
    attention_backward, attention_forward, attention_forward_cached, AttentionOptions,
    AttentionShape,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});

fn run(u: &mut Unstructured) -> Result<()> {
    let kv_heads = dim(u, 3)?;
    let group = dim(u, 3)?;
    let shape = AttentionShape {
        batch: dim(u, 2)?,
        q_heads: if u.ratio(7, 8)? {
            kv_heads.saturating_mul(group)
        } else {
            dim(u, 6)?
        },
        kv_heads,
        q_len: dim(u, 70)?,
        kv_len: dim(u, 70)?,
        // head dims on and off the 16-float tile width
        head_dim: dim(u, 40)?,
    };
    let s = shape;
    let which = u.int_in_range(0..=2u8)?;
    let capacity = if which == 1 {
        s.kv_len.saturating_add(dim(u, 20)?)
    } else {
        s.kv_len
    };
    let q_dims = [s.batch, s.q_heads, s.q_len, s.head_dim];
    let kv_dims = [s.batch, s.kv_heads, capacity, s.head_dim];
    let q = buffer(u, &q_dims)?;
    let k = buffer(u, &kv_dims)?;
    let v = buffer(u, &kv_dims)?;
    let mask: Option<Vec<bool>> = if u.arbitrary()? {
        let n = len_for(u, &[s.batch, capacity])?;
        Some((0..n).map(|_| u.arbitrary().unwrap_or(false)).collect())
    } else {
        None
    };
    let scale = match u.int_in_range(0..=3u8)? {
        0 | 1 => 1.0 / (s.head_dim.max(1) as f32).sqrt(),
        _ => value(u)?,
    };
    let opts = AttentionOptions {
        causal: u.arbitrary()?,
        scale,
        key_padding_mask: mask.as_deref(),
    };
    let mut o = output(u, &q_dims)?;
    let mut lse = output(u, &[s.batch, s.q_heads, s.q_len])?;
    match which {
        0 => {
            if attention_forward(&q, &k, &v, shape, opts, &mut o, &mut lse).is_ok() {
                assert_written("attention_forward", "o", &o);
                assert_written("attention_forward", "lse", &lse);
            }
        }
        1 => {
            let ok = attention_forward_cached(&q, &k, &v, shape, capacity, opts, &mut o, &mut lse);
            if ok.is_ok() {
                assert_written("attention_forward_cached", "o", &o);
                assert_written("attention_forward_cached", "lse", &lse);
            }
        }
        _ => {
            // o and lse from a forward pass most of the time, else arbitrary
            let forward = u.arbitrary::<bool>()?
                && attention_forward(&q, &k, &v, shape, opts, &mut o, &mut lse).is_ok();
            if !forward {
                // arbitrary o and lse, never the UNWRITTEN pattern a failed forward leaves
                o = buffer(u, &q_dims)?;
                lse = buffer(u, &[s.batch, s.q_heads, s.q_len])?;
            }
            let d_o = buffer(u, &q_dims)?;
            let mut dq = output(u, &q_dims)?;
            let mut dk = output(u, &kv_dims)?;
            let mut dv = output(u, &kv_dims)?;
            let ok = attention_backward(
                &d_o, &q, &k, &v, &o, &lse, shape, opts, &mut dq, &mut dk, &mut dv,
            );
            if ok.is_ok() {
                assert_written("attention_backward", "dq", &dq);
                assert_written("attention_backward", "dk", &dk);
                assert_written("attention_backward", "dv", &dv);
            }
        }
    }
    Ok(())
}
