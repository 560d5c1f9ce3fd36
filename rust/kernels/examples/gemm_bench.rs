//! GFLOP/s of `sgemm` alone (no Python, no NumPy), for tuning the kernels:
//! `cargo run -p ferroformer-kernels --release --example gemm_bench --
//! 512x512x512:nn,2048x768x3072:nt,2048x384x1152:lb [reps]`: `m x k x n`
//! and op(A), op(B) normal or transposed; `lb` times `linear_backward`
//! with rows x in x out (dx and dw: twice the FLOPs). Best and median of
//! `reps` runs on the ferroformer pool (FERROFORMER_NUM_THREADS, default
//! all cores).

use std::time::Instant;

use ferroformer_kernels::matmul::{linear_backward, sgemm, Layout};
use ferroformer_kernels::pool;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map_or("512x512x512:nn", String::as_str);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    for case in spec.split(',') {
        let (dims, mode) = case.split_once(':').unwrap_or((case, "nn"));
        let d: Vec<usize> = dims.split('x').map(|s| s.parse().unwrap()).collect();
        let (m, k, n) = (d[0], d[1], d[2]);
        let (ta, tb) = (mode.as_bytes()[0] == b't', mode.as_bytes()[1] == b't');
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
            .collect();
        let mut c = vec![0.0f32; m * n];
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
        let mut ts = Vec::new();
        let lb = mode == "lb";
        let (mut dx, mut dw, mut db) = if lb {
            (vec![0.0f32; m * k], vec![0.0f32; n * k], vec![0.0f32; n])
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        let dy: Vec<f32> = if lb {
            (0..m * n)
                .map(|i| ((i * 3 % 7) as f32 - 3.0) / 8.0)
                .collect()
        } else {
            Vec::new()
        };
        pool::install(|| {
            for r in 0..reps + 2 {
                let t = Instant::now();
                if lb {
                    // x = a (rows, in), w = b read as (out, in).
                    linear_backward(&dy, &a, &b, m, k, n, &mut dx, &mut dw, Some(&mut db), false)
                        .unwrap();
                } else {
                    sgemm(m, n, k, 1.0, &a, al, &b, bl, 0.0, &mut c, n).unwrap();
                }
                if r >= 2 {
                    ts.push(t.elapsed().as_secs_f64());
                }
            }
        });
        ts.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let g = if lb { 2.0 } else { 1.0 } * 2.0 * (m * n * k) as f64 / 1e9;
        println!(
            "{m}x{k}x{n}:{mode} best {:.0} median {:.0} GFLOP/s",
            g / ts[0],
            g / ts[ts.len() / 2]
        );
    }
}
