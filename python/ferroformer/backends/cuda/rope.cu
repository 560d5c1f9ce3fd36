// rope.cu: rotary position embedding on adjacent pairs, forward and backward
// (one kernel: the backward rotates by the opposite angle). A flat kernel,
// compiled after common.cuh.

// x, out (rows, P, D) with D = 2 * half; cosines, sines (P, half). Pair p of
// the flattened x is (x[2p], x[2p + 1]), at position (p / half) % P and
// frequency p % half, with c its cosine and s its sine times sin_sign (+1
// forward, -1 backward):
//   out[2p]     = x[2p] c - x[2p + 1] s
//   out[2p + 1] = x[2p] s + x[2p + 1] c
template <typename T>
__global__ void rope(const T* x, const T* cosines, const T* sines, T* out, i64 pairs,
                     int positions, int half, float sin_sign) {
    GRID_STRIDE_LOOP(p, pairs) {
        const i64 freq = p % half;
        const i64 pos = (p / half) % positions;
        const float c = to_float(cosines[pos * half + freq]);
        const float s = sin_sign * to_float(sines[pos * half + freq]);
        const float x0 = to_float(x[2 * p]);
        const float x1 = to_float(x[2 * p + 1]);
        out[2 * p] = from_float<T>(x0 * c - x1 * s);
        out[2 * p + 1] = from_float<T>(x0 * s + x1 * c);
    }
}
