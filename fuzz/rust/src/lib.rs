//! Input helpers shared by the kernel fuzz targets: dimensions, buffer
//! lengths and values drawn from the fuzz input by `arbitrary`.
//!
//! A buffer's length usually agrees with the dims it goes with (so that
//! the kernels get past their checks and run), and otherwise is off by
//! one or arbitrary; dims are mostly small but sometimes huge, so that
//! element counts overflow. Every buffer is its own `Vec` of exactly its
//! length, so AddressSanitizer sees a read one past its end.

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};

/// Most elements any one buffer gets; keeps every run fast.
pub const MAX_ELEMS: usize = 1 << 14;

/// Dims that make element counts overflow or exceed memory.
const HUGE: [usize; 6] = [
    usize::MAX,
    usize::MAX / 2 + 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 62,
    isize::MAX as usize,
];

/// Whether huge dims are drawn: `FERROFORMER_FUZZ_HUGE=0` turns them off,
/// so that a run can look past a known overflow.
fn huge_dims() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROFORMER_FUZZ_HUGE").map_or(true, |v| v != "0"))
}

/// A size, at most `max` unless it is one of the huge ones (1 in 64).
pub fn dim(u: &mut Unstructured, max: usize) -> Result<usize> {
    let tag: u8 = u.arbitrary()?;
    if tag >= 252 && huge_dims() {
        return Ok(HUGE[(tag as usize + u.arbitrary::<u8>()? as usize) % HUGE.len()]);
    }
    u.int_in_range(0..=max)
}

/// The number of elements of `dims`, or None past [`MAX_ELEMS`] or on overflow.
pub fn count(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMS)
}

/// A length for a buffer that should hold `dims`: mostly exactly that,
/// sometimes one less or more, sometimes anything up to [`MAX_ELEMS`].
pub fn len_for(u: &mut Unstructured, dims: &[usize]) -> Result<usize> {
    let tag: u8 = u.arbitrary()?;
    let small = |u: &mut Unstructured| u.int_in_range(0..=64usize);
    Ok(match (count(dims), tag % 16) {
        (Some(n), 0) => n.saturating_sub(1),
        (Some(n), 1) => (n + 1).min(MAX_ELEMS),
        (Some(n), 2..=15) => n,
        (None, _) | (Some(_), _) => small(u)?,
    })
}

/// Whether `x` is one of the exact small multiples of 1/16 that [`value`] makes.
pub fn on_grid(x: f32) -> bool {
    x.abs() <= 8.0 && (x * 16.0).fract() == 0.0
}

/// One float: mostly a small multiple of 1/16 (exact products and sums),
/// sometimes zero of either sign, NaN, an infinity, a subnormal or a huge value.
pub fn value(u: &mut Unstructured) -> Result<f32> {
    let tag: u8 = u.arbitrary()?;
    Ok(match tag {
        0..=239 => (tag as i8) as f32 / 16.0,
        240 => f32::NAN,
        241 => f32::INFINITY,
        242 => f32::NEG_INFINITY,
        243 => -0.0,
        244 => f32::MIN_POSITIVE / 8.0,
        245 => f32::MAX,
        246 => -1e30,
        // any NaN as the canonical one: a signalling NaN's payload survives arithmetic
        // (0x7f80_dead comes out as UNWRITTEN), which would look like an unwritten output
        _ => match f32::from_bits(u.arbitrary()?) {
            x if x.is_nan() => f32::NAN,
            x => x,
        },
    })
}

/// A buffer of `len` floats; its tail is zero once the input runs out.
pub fn floats(u: &mut Unstructured, len: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; len];
    for x in out.iter_mut() {
        if u.is_empty() {
            break;
        }
        *x = value(u)?;
    }
    Ok(out)
}

/// A float buffer for `dims`, its length drawn by [`len_for`].
pub fn buffer(u: &mut Unstructured, dims: &[usize]) -> Result<Vec<f32>> {
    let len = len_for(u, dims)?;
    floats(u, len)
}

/// The NaN that pre-fills outputs; no input holds it, so finding it in an
/// output after Ok means the kernel left that element unwritten.
pub const UNWRITTEN: u32 = 0x7fc0_dead;

/// An output buffer for `dims`, of a [`len_for`] length, filled with
/// [`UNWRITTEN`].
pub fn output(u: &mut Unstructured, dims: &[usize]) -> Result<Vec<f32>> {
    Ok(vec![f32::from_bits(UNWRITTEN); len_for(u, dims)?])
}

/// Panics (a crash for the fuzzer) if `op` left any element of `name` unwritten.
pub fn assert_written(op: &str, name: &str, out: &[f32]) {
    if let Some(i) = out.iter().position(|x| x.to_bits() == UNWRITTEN) {
        panic!(
            "{op}: Ok, but {name}[{i}] of {} was never written",
            out.len()
        );
    }
}

/// Ids for a table of `vocab` rows: mostly in range, sometimes -1, the
/// table size itself, or any i64.
/// A `len` past [`MAX_ELEMS`] gives [`MAX_ELEMS`] ids (a kernel must then
/// refuse the short buffer), never a huge allocation of the harness's own.
pub fn ids(u: &mut Unstructured, len: usize, vocab: usize) -> Result<Vec<i64>> {
    let mut out = vec![0i64; len.min(MAX_ELEMS)];
    for x in out.iter_mut() {
        if u.is_empty() {
            break;
        }
        let tag: u8 = u.arbitrary()?;
        *x = match tag {
            0..=243 => (tag as usize % vocab.clamp(1, 1 << 20)) as i64,
            244 => -1,
            245 => -100,
            246 => vocab as i64,
            247 => i64::MIN,
            248 => i64::MAX,
            _ => u.arbitrary()?,
        };
    }
    Ok(out)
}

/// A scalar argument: mostly ordinary, sometimes zero, negative, NaN or infinite.
pub fn scalar(u: &mut Unstructured, ordinary: f64) -> Result<f64> {
    let tag: u8 = u.arbitrary()?;
    Ok(match tag {
        0..=199 => ordinary * (1.0 + tag as f64 / 200.0),
        200 => 0.0,
        201 => -ordinary,
        202 => f64::NAN,
        203 => f64::INFINITY,
        204 => f64::NEG_INFINITY,
        205 => 1.0,
        206 => 1e300,
        _ => u.arbitrary()?,
    })
}
