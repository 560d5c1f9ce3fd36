//! Packing: copies of op(A) and op(B) blocks into the contiguous,
//! zero-padded micro-panels the micro-kernels stream through.
//!
//! A transposed operand is only read with swapped strides here; nothing
//! else ever copies or transposes it.

/// A read-only strided matrix: element `(i, j)` lives at `ptr + i*rs + j*cs`.
/// A row-major `(r, c)` array is `rs = c, cs = 1`; its transpose is `rs = 1, cs = c`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a View only reads, and the caller keeps the data alive and
// unmodified for as long as any thread uses it.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be inside the matrix (or one past it, unread).
    #[inline]
    pub unsafe fn at(self, i: usize, j: usize) -> View {
        View {
            ptr: self.ptr.add(i * self.rs + j * self.cs),
            ..self
        }
    }
}

/// Depth rows handled per pass of the transposing copy: `64 * width`
/// floats of destination (8 KiB for width 32) stay in L1 while the source
/// rows are read contiguously.
const TRANSPOSE_CHUNK: usize = 64;

/// Packs one micro-panel: `dst (kc, width)` with `dst[p*width + i] =
/// src(i, p)` for `i < valid`, zero for `valid <= i < width`. `src(i, p)`
/// is at `ptr + i*stride_w + p*stride_k`.
///
/// # Safety
/// `dst` holds `kc * width` floats; `src` is readable for `i < valid`,
/// `p < kc`.
#[inline]
unsafe fn pack_panel(
    dst: &mut [f32],
    src: *const f32,
    stride_w: usize,
    stride_k: usize,
    width: usize,
    valid: usize,
    kc: usize,
) {
    debug_assert!(dst.len() >= kc * width && valid <= width);
    let dst = &mut dst[..kc * width];
    if stride_w == 1 {
        // Each depth step is a contiguous run of `valid` floats.
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            let s = std::slice::from_raw_parts(src.add(p * stride_k), valid);
            row[..valid].copy_from_slice(s);
            row[valid..].fill(0.0);
        }
    } else if stride_k == 1 {
        // Each of the `valid` lines is contiguous along depth: a transpose.
        if valid < width {
            for row in dst.chunks_exact_mut(width) {
                row[valid..].fill(0.0);
            }
        }
        for p0 in (0..kc).step_by(TRANSPOSE_CHUNK) {
            let len = TRANSPOSE_CHUNK.min(kc - p0);
            let block = &mut dst[p0 * width..(p0 + len) * width];
            for i in 0..valid {
                let s = std::slice::from_raw_parts(src.add(i * stride_w + p0), len);
                for (row, &v) in block.chunks_exact_mut(width).zip(s) {
                    row[i] = v;
                }
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            for (i, d) in row.iter_mut().enumerate() {
                *d = if i < valid {
                    *src.add(i * stride_w + p * stride_k)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Packs rows `[i0, i0 + rows)` and depth `[p0, p0 + kc)` of op(A) `a`
/// into `ceil(rows / mr)` micro-panels `(kc, mr)`, one after another in
/// `dst`; rows past the end are zero.
///
/// # Safety
/// The block lies inside `a`; `dst` holds `ceil(rows / mr) * kc * mr` floats.
pub unsafe fn pack_a(
    dst: &mut [f32],
    a: View,
    mr: usize,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
) {
    for (r, panel) in dst
        .chunks_exact_mut(kc * mr)
        .take(rows.div_ceil(mr))
        .enumerate()
    {
        let valid = mr.min(rows - r * mr);
        let src = a.at(i0 + r * mr, p0);
        pack_panel(panel, src.ptr, a.rs, a.cs, mr, valid, kc);
    }
}

/// Packs columns `[j0, j0 + nr)` (fewer, `valid`, at the right edge) of
/// op(B) `b` over the whole depth `k` into one micro-panel `dst (k, nr)`.
///
/// # Safety
/// The columns lie inside `b`; `dst` holds `k * nr` floats.
pub unsafe fn pack_b(dst: &mut [f32], b: View, nr: usize, j0: usize, valid: usize, k: usize) {
    let src = b.at(0, j0);
    pack_panel(dst, src.ptr, b.cs, b.rs, nr, valid, k);
}
