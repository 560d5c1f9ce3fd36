// norm.cu: layernorm (CENTERED = true) and rmsnorm (CENTERED = false) over the
// last axis, forward and backward, and the column sum that finishes dgamma /
// dbeta deterministically. Compiled after common.cuh.

// x, y (rows, C); gamma, beta (C,) (beta unused by rmsnorm);
// mean (rows,) (layernorm only), rstd (rows,).
// One row per warp or block. The variance is summed about the mean in a
// second read of the row (L1/L2-hot), not as E[x^2] - mean^2, which cancels
// badly when |mean| >> std.
template <typename T, bool CENTERED>
__global__ void norm_forward(const T* x, const T* gamma, const T* beta, T* y, float* mean,
                             float* rstd, i64 rows, int C, float eps) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= rows) return;
    const T* xr = x + row * C;
    T* yr = y + row * C;

    float mu = 0.0f;
    if (CENTERED) {
        float sum = 0.0f;
        for (int j = threadIdx.x; j < C; j += blockDim.x) sum += to_float(xr[j]);
        mu = row_reduce<SumOp>(sum, scratch) / C;
    }
    float sq = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float d = to_float(xr[j]) - mu;
        sq += d * d;
    }
    const float r = 1.0f / sqrtf(row_reduce<SumOp>(sq, scratch) / C + eps);

    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float v = (to_float(xr[j]) - mu) * r * to_float(gamma[j]);
        if (CENTERED) v += to_float(beta[j]);
        yr[j] = from_float<T>(v);
    }
    if (threadIdx.x == 0) {
        if (CENTERED) mean[row] = mu;
        rstd[row] = r;
    }
}

// dy, x, dx (rows, C); gamma (C,); mean (layernorm only), rstd (rows,).
// With xhat = (x - mean) * rstd and g = dy * gamma:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (layernorm)
//   dx = rstd * (g - xhat * mean(g * xhat))             (rmsnorm)
// Block mode only (blockDim.y == 1). Block b takes rows
// [b * rows_per_block, (b + 1) * rows_per_block); thread t owns the columns
// t, t + blockDim.x, ... and sums their dgamma = dy * xhat and dbeta = dy over
// the block's rows into acc, which no other thread touches (so acc needs no
// synchronisation). acc is dynamic shared memory (2 * C floats) when
// acc_in_shared, else the block's own slice of partial. The block's sums
// end in partial (gridDim.x, 2, C), and column_sum adds the blocks in order.
template <typename T, bool CENTERED>
__global__ void norm_backward(const T* dy, const T* x, const T* gamma, const float* mean,
                              const float* rstd, T* dx, float* partial, i64 rows, int C,
                              i64 rows_per_block, int acc_in_shared) {
    extern __shared__ float shared_acc[];
    __shared__ float scratch[32];
    float* block_partial = partial + (i64)blockIdx.x * 2 * C;
    float* acc = acc_in_shared ? shared_acc : block_partial;
    float* dgamma = acc;
    float* dbeta = acc + C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        dgamma[j] = 0.0f;
        dbeta[j] = 0.0f;
    }

    const i64 first = (i64)blockIdx.x * rows_per_block;
    const i64 last = first + rows_per_block < rows ? first + rows_per_block : rows;
    for (i64 row = first; row < last; ++row) {
        const T* dyr = dy + row * C;
        const T* xr = x + row * C;
        T* dxr = dx + row * C;
        const float mu = CENTERED ? mean[row] : 0.0f;
        const float r = rstd[row];

        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float dyj = to_float(dyr[j]);
            const float xhat = (to_float(xr[j]) - mu) * r;
            const float g = dyj * to_float(gamma[j]);
            sum_g += g;
            sum_gx += g * xhat;
            dgamma[j] += dyj * xhat;
            if (CENTERED) dbeta[j] += dyj;
        }
        const float mean_g = row_reduce<SumOp>(sum_g, scratch) / C;
        const float mean_gx = row_reduce<SumOp>(sum_gx, scratch) / C;

        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float xhat = (to_float(xr[j]) - mu) * r;
            const float g = to_float(dyr[j]) * to_float(gamma[j]);
            const float centered = CENTERED ? g - mean_g : g;
            dxr[j] = from_float<T>(r * (centered - xhat * mean_gx));
        }
    }

    if (acc_in_shared) {
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            block_partial[j] = dgamma[j];
            block_partial[C + j] = dbeta[j];
        }
    }
}

// out (n,) = sum over p of partial (parts, n), added in the order p = 0, 1, ...
// One thread per column (a flat kernel).
template <typename T>
__global__ void column_sum(const float* partial, T* out, int parts, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float s = 0.0f;
        for (int p = 0; p < parts; ++p) s += partial[(i64)p * n + i];
        out[i] = from_float<T>(s);
    }
}
