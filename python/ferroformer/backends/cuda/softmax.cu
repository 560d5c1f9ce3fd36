// softmax.cu: softmax over the last axis with scale, bottom-right causal mask
// and key padding mask (forward, backward), and the score-row step of
// attention_backward. Row kernels (see common.cuh), compiled after common.cuh.
//
// The forward reads a row once for its online max / sum, then again to write
// the probabilities; the second read hits L1/L2, so DRAM sees one read and
// one write per element.
//
// scale * x is rounded as a product of its own (__fmul_rn is never fused
// into an FMA) so that both reads see the same value: the row's maximum then
// gives exp(0) = 1 exactly.
__device__ __forceinline__ float scaled(float scale, float x) { return __fmul_rn(scale, x); }

// x, y (rows, C) with rows = (..., Tq) flattened, so query i = row % Tq.
// causal: key j is visible to query i when j <= i + C - Tq.
// key_mask (B, C) bool, or null: True masks key j for the rows of batch
//   b = row / rows_per_batch.
// lse (rows,), or null: log-sum-exp of the scaled visible values, -inf where
//   none is visible (such a row of y is all zeros).
// y may alias x.
template <typename T>
__global__ void softmax_forward(const T* x, T* y, float* lse, const bool* key_mask,
                                i64 rows, int C, int Tq, i64 rows_per_batch, float scale,
                                int causal) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= rows) return;
    const T* xr = x + row * C;
    T* yr = y + row * C;
    const bool* masked = key_mask ? key_mask + (row / rows_per_batch) * C : nullptr;
    const int visible = visible_keys(row, C, Tq, causal);

    float m = neg_inf(), s = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) {
        if (masked && masked[j]) continue;
        online_lse_update(m, s, scaled(scale, to_float(xr[j])));
    }
    float row_max;
    const float row_sum = online_lse_merge(m, s, row_max, scratch);

    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float p = 0.0f;
        if (j < visible && !(masked && masked[j]) && row_sum > 0.0f) {
            p = expf(scaled(scale, to_float(xr[j])) - row_max) / row_sum;
        }
        yr[j] = from_float<T>(p);
    }
    if (lse && threadIdx.x == 0) lse[row] = row_sum > 0.0f ? row_max + logf(row_sum) : neg_inf();
}

// dy, y, dx (rows, C): dx = scale * y * (dy - sum_j dy_j y_j).
template <typename T>
__global__ void softmax_backward(const T* dy, const T* y, T* dx, i64 rows, int C, float scale) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= rows) return;
    const T* dyr = dy + row * C;
    const T* yr = y + row * C;
    T* dxr = dx + row * C;

    float dot = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) dot += to_float(dyr[j]) * to_float(yr[j]);
    dot = row_reduce<SumOp>(dot, scratch);

    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float yj = to_float(yr[j]);
        dxr[j] = from_float<T>(scale * yj * (to_float(dyr[j]) - dot));
    }
}

// One score row of attention_backward, on the grouped layout the backend
// uses: rows = B * Hq * Tq (query heads of one key/value head side by side),
// C = Tk, and row r is query r % Tq.
// s_p (rows, C): the raw scores q.k, overwritten by p = exp(scale * s - lse)
//   on visible keys (0 on masked keys and on rows whose lse is not finite).
// dp_ds (rows, C): dp = do.v, overwritten by ds = scale * p * (dp - D), where
//   D = sum_d do * o over the row's query (d_out, out (rows, D)).
// lse (rows,) float; key_mask as in softmax_forward.
template <typename T>
__global__ void attention_backward_scores(T* s_p, T* dp_ds, const T* d_out, const T* out,
                                          const float* lse, const bool* key_mask, i64 rows,
                                          int C, int Tq, i64 rows_per_batch, int D, float scale,
                                          int causal) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= rows) return;
    T* sr = s_p + row * C;
    T* dr = dp_ds + row * C;
    const T* dor = d_out + row * D;
    const T* orow = out + row * D;
    const bool* masked = key_mask ? key_mask + (row / rows_per_batch) * C : nullptr;
    const int visible = visible_keys(row, C, Tq, causal);

    float delta = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) delta += to_float(dor[d]) * to_float(orow[d]);
    delta = row_reduce<SumOp>(delta, scratch);

    const float row_lse = lse[row];
    const bool any_visible = isfinite(row_lse);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float p = 0.0f;
        if (any_visible && j < visible && !(masked && masked[j])) {
            p = expf(scaled(scale, to_float(sr[j])) - row_lse);
        }
        sr[j] = from_float<T>(p);
        dr[j] = from_float<T>(scale * p * (to_float(dr[j]) - delta));
    }
}
