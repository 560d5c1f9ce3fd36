//! The crate's one set of test helpers: a seeded generator and one
//! `assert_close` that prints where and by how much a kernel missed its
//! reference. Every test module uses these and `Arch::supported()` for
//! the SIMD instances, so a change to how tests compare or draw data is
//! made once.

/// Sizes every row-wise test sweeps: one lane, below, across and well past
/// each register width, and a long row.
pub const SIZES: [usize; 7] = [1, 7, 16, 17, 65, 257, 1029];

/// xorshift64*: deterministic, dependency-free test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `n` values uniform in `[-1, 1)` from `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(n, -1.0, 1.0)
}

/// Runs `f` inside a fresh rayon pool of `threads` threads, so that the
/// parallel splits run for real or a result can be compared across counts.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Asserts `|got - want| <= atol + rtol |want|` element-wise, printing the
/// first values and the worst miss on failure. Where `want` is NaN `got`
/// must be NaN, and where it is infinite, the same infinity. `want` is an
/// f64 reference or an f32 one (compared in f64, exactly as given).
#[track_caller]
// `!(err <= worst)` on purpose: a NaN miss is the worst one.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn assert_close<W: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[W],
    rtol: f64,
    atol: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w: f64 = w.into();
        let err = (g as f64 - w).abs();
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g as f64 == w
        } else {
            err <= atol + rtol * w.abs()
        };
        if !ok {
            bad += 1;
            if !(err <= worst.1) {
                worst = (i, err);
            }
        }
    }
    if bad > 0 {
        let head: Vec<(f32, f64)> = got
            .iter()
            .zip(want)
            .take(6)
            .map(|(&g, &w)| (g, w.into()))
            .collect();
        panic!(
            "{what}: {bad} of {} elements off; worst at {} got {} want {} (|diff| {:e}); first {head:?}",
            got.len(),
            worst.0,
            got[worst.0],
            want[worst.0].into(),
            worst.1
        );
    }
}
